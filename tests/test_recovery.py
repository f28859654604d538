"""At-least-once with real processes: several workers sharing a queue run every job exactly
once (MariaDB, PostgreSQL), a worker killed with SIGKILL mid-job loses nothing (its job runs again
once retry_after has passed), and a long job that is alive keeps its reservation, so a second
worker never runs it at the same time. Run against SQLite, MariaDB and PostgreSQL (the fixtures
set retry_after to 2 s).
"""
import collections
import os
import signal
import time

import pytest

import queue
import testjobs
from conftest import SQL_BACKENDS, backends
from helpers import push_records, table_empty
from test_cli import JOB_FILES
from testjobs import lines, runs, values, wait_for

pytestmark = backends(*SQL_BACKENDS, "redis", "beanstalkd")

BARRIER = '''
import os
import queue

_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ready = []


@queue.looping
def _wait_for_go():
    """Hold every worker until the test creates `go`, so that they start taking jobs together."""
    if not _ready:
        open(os.path.join(_here, f"ready.{os.getpid()}"), "w").close()
        _ready.append(True)
    return os.path.exists(os.path.join(_here, "go"))
'''


def block_events(path):
    """[(what, pid, time)] recorded by Block jobs in path."""
    return [(what, int(pid), float(at)) for what, _, pid, at in (line.split() for line in lines(path))]


def empty(project):
    """Nothing left in the jobs table of the project, nothing failed."""
    driver = queue.driver()
    counts = driver.stats([project.queue] if project.backend == "beanstalkd" else None)  # a server of the whole run
    assert all(c == {"ready": 0, "delayed": 0, "reserved": 0} for c in counts.values()), counts
    assert driver.failed_store().failed_jobs() == []


@pytest.mark.parametrize("project, workers, jobs, within, fair_share", [
    ("mysql", 2, 2000, 60, 1 / 4), ("mysql", 4, 2000, 60, 1 / 4), ("postgres", 3, 1500, 90, None),
], ids=["mysql-2", "mysql-4", "postgres-3"], indirect=["project"])
def test_workers_share_a_queue_and_run_every_job_exactly_once(project, tmp_path, spawn, workers, jobs, within,
                                                              fair_share):
    """Every worker takes jobs (on MariaDB, at least `fair_share` of its fair share)."""
    with open(os.path.join(project.folder, "jobs", "__init__.py"), "w") as f:
        f.write(BARRIER)
    path = str(tmp_path / "record")
    names = push_records(path, jobs)

    started = [spawn(project, "work", "--stop-when-empty") for _ in range(workers)]
    wait_for(lambda: len([f for f in os.listdir(project.folder) if f.startswith("ready.")]) == workers,
             30, message="the workers did not start")
    open(os.path.join(project.folder, "go"), "w").close()
    for worker in started:
        assert worker.wait(within) == 0, worker.output

    done = runs(path)
    assert sorted(r.value for r in done) == sorted(names), "every job exactly once"
    shares = collections.Counter(r.pid for r in done)
    assert set(shares) == {w.proc.pid for w in started}, f"jobs ran in other processes: {shares}"
    if fair_share is not None:
        fair = len(names) / workers
        assert min(shares.values()) >= fair * fair_share, f"a worker ran less than {fair_share:.0%} of its fair share: {shares}"
    table_empty(project)


def test_a_worker_killed_mid_job_loses_nothing(project, tmp_path, spawn):
    retry_after = project.drivers[project.drivers["default"]]["retry_after"]
    with open(os.path.join(project.folder, "jobs", "Block.py"), "w") as f:
        f.write(JOB_FILES["Block.py"])
    long, gate, quick = str(tmp_path / "long"), str(tmp_path / "gate"), str(tmp_path / "quick")

    queue.push(*(testjobs.Record(quick, f"q{i}") for i in range(10)))
    pushed = project.cli("push", "Block", long, "long", gate)
    assert pushed.returncode == 0, pushed.stderr
    queue.push(*(testjobs.Record(quick, f"q{i}") for i in range(10, 20)))

    first = spawn(project, "work")
    wait_for(lambda: block_events(long), 30, message="the long job did not start")
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL
    assert sorted(values(quick)) == sorted(f"q{i}" for i in range(10)), "jobs before the long one"

    open(gate, "w").close()
    second = spawn(project, "work", "--max-jobs", "11")  # the 10 quick jobs left, and the long one
    assert second.wait(60) == 0, second.output

    events = block_events(long)
    assert [what for what, _, _ in events] == ["start", "start", "end"], events
    assert events[0][1] == first.proc.pid and events[1][1] == second.proc.pid
    waited = events[1][2] - events[0][2]
    if project.backend != "beanstalkd":  # beanstalkd gives a closed connection's jobs back at once
        assert waited >= retry_after - 0.25, f"the killed job ran again after {waited:.2f} s, before retry_after"
    counted = sorted(values(quick))
    assert counted == sorted(f"q{i}" for i in range(20)), "every quick job ran exactly once"
    empty(project)


@backends(*SQL_BACKENDS, "redis")  # the drivers that claim jobs ahead and count each as it starts
def test_a_job_that_kills_its_worker_is_counted_each_time_and_its_neighbours_never(project, tmp_path, spawn):
    """Its attempt reaches the server before it runs, though the worker does not wait for the
    reply (PostgreSQL): killed twice, it fails at its third claim; the jobs claimed with it run
    once each, on their first attempt."""
    path = str(tmp_path / "record")
    queue.push(*(testjobs.RecordAttempt(path, f"a{i}") for i in range(40)), testjobs.KillWorker(path, "kill", tries=2),
               *(testjobs.RecordAttempt(path, f"b{i}") for i in range(10)))
    for death in (1, 2):
        worker = spawn(project, "work")
        assert worker.wait(60) == -signal.SIGKILL, worker.output
        assert values(path).count(f"kill:{death}") == 1, values(path)
    last = spawn(project, "work")
    wait_for(lambda: queue.driver().failed_store().failed_jobs(), 30, message="the job was not failed")
    wait_for(lambda: len(values(path)) == 52, 30, message=f"jobs left: {values(path)}")
    last.proc.send_signal(signal.SIGTERM)
    assert last.wait(30) == 0, last.output
    assert sorted(values(path)) == sorted([f"a{i}:1" for i in range(40)] + [f"b{i}:1" for i in range(10)]
                                          + ["kill:1", "kill:2"])
    [failed] = queue.driver().failed_store().failed_jobs()
    assert "KillWorker" in failed["name"] and "MaxAttemptsExceeded" in failed["exception"], failed
    assert all(c == {"ready": 0, "delayed": 0, "reserved": 0} for c in queue.driver().stats().values())


@pytest.mark.parametrize("warm_stop", [False, True], ids=["running", "after SIGTERM"])
def test_a_live_long_job_is_not_run_by_a_second_worker(project, tmp_path, spawn, warm_stop):
    """The reservation is renewed while the job runs, also after a SIGTERM asked its worker to stop."""
    retry_after = project.drivers[project.drivers["default"]]["retry_after"]
    long, probe = str(tmp_path / "long"), str(tmp_path / "probe")
    queue.push(testjobs.Sleep(long, 3 * retry_after, "long"))

    first = spawn(project, "work", "--max-jobs", "1")
    wait_for(lambda: values(long), 30, message="the long job did not start")
    if warm_stop:
        first.proc.send_signal(signal.SIGTERM)
    began = runs(long)[0].at
    second = spawn(project, "work")
    queue.push(testjobs.Record(probe, "probe"))  # the second worker is alive and taking jobs
    wait_for(lambda: runs(probe), 30, message="the second worker did not take the probe job")
    assert runs(probe)[0].pid == second.proc.pid

    # well past retry_after, the long job is still reserved, not ready again
    wait_for(lambda: time.time() > began + 1.5 * retry_after, 3 * retry_after)
    name = queue.driver().default_queue
    assert queue.driver().stats([name])[name] == {"ready": 0, "delayed": 0, "reserved": 1}

    assert first.wait(6 * retry_after + 30) == 0, first.output
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, second.output
    assert [(r.value, r.pid) for r in runs(long)] == [("long", first.proc.pid), ("long-done", first.proc.pid)]
    empty(project)
