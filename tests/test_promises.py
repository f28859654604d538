"""Promises that queue.py 1.0 broke and 1.1 keeps (commit ee4ba98); each test here failed on the
code before it:

1. The async driver's multiprocess mode runs a worker's own attempt path in its child: the job
   knows self.attempts and self.job_id; self.release(), self.fail() and self.delete() take
   effect; its timeout is enforced; before hooks, middleware and an `async def handle()` run.
2. WithoutOverlapping: jobs that meet a held key come back within about a second and spend none
   of their tries, so six of them with tries = 1 all run, one at a time, within seconds.
3. Rolling deploys: a job whose module the worker cannot import is released with its backoff
   (CodeMissing), runs once the module is back, and is failed only after its tries.
4. `retry --driver database` of a job that failed on amqp uses the database driver's own
   connection, not the broker's address that the failed row names.
5. push(using=conn) takes a unique job's lock through the app's connection (a second push
   returns False), and refuses a connection of another kind than the database driver's.
"""
import os
import shutil
import signal
import sqlite3
import time

import pytest

import promisejobs
import queue
import testjobs
from conftest import unique
from test_async import failed_rows, joined, make_async, path  # noqa: F401  (make_async: a fixture)
from testjobs import failures, lines, runs, values, wait_for

try:  # make_async's `hooks` fixture: in test_async.py at first, in conftest.py since the tests' refactoring
    from test_async import hooks  # noqa: F401
except ImportError:
    pass


def ready(queue_name="default"):
    """Ready jobs of a queue of the default driver."""
    return queue.driver().stats([queue_name]).get(queue_name, {}).get("ready", 0)


def stopped(worker):
    """SIGTERM a spawned worker; it finishes its current job and exits 0."""
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output


# 1. The async driver's multiprocess mode ######################################################
def test_multiprocess_job_knows_its_attempt_number_and_id(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(promisejobs.Numbered(path(tmp_path), fails=1, tries=2))
    joined(project)
    attempts = runs(path(tmp_path))
    assert os.getpid() not in {r.pid for r in attempts}, "the attempts ran in this process, not a child"
    numbers = [r.value.split(":", 1) for r in attempts]
    assert [n for n, _ in numbers] == ["1", "2"], f"self.attempts in the child: {[n for n, _ in numbers]}"
    ids = {i for _, i in numbers}
    assert len(ids) == 1 and ids.isdisjoint({"None", ""}), f"self.job_id in the child: {ids}"
    assert failed_rows() == []


def test_multiprocess_release_runs_the_job_again_after_its_delay(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(promisejobs.ReleaseOnce(path(tmp_path), 0.3, tries=3))
    joined(project)
    assert values(path(tmp_path)) == ["first", "again"], "self.release() in the child did not run it again"
    assert testjobs.gaps(path(tmp_path))[0] >= 0.3
    assert failed_rows() == []


def test_multiprocess_fail_fails_the_job_once_in_the_parent(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(promisejobs.FailsItself(path(tmp_path), "f", tries=3))
    joined(project)
    assert values(path(tmp_path)) == ["f"], "a job that failed itself was tried again"
    assert failures(path(tmp_path)) == [f"ValueError: declined {os.getpid()}"], "failed() did not run once, here"
    [row] = failed_rows()
    assert row["driver"] == "async" and row["name"] == "FailsItself"
    assert str(row["exception"]).startswith("ValueError: declined")


def test_multiprocess_delete_ends_the_job_even_if_it_raises_after(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(promisejobs.DeletesThenRaises(path(tmp_path), "d", tries=3))
    joined(project)
    assert values(path(tmp_path)) == ["d"], "a job that deleted itself was tried again"
    assert failures(path(tmp_path)) == []
    assert failed_rows() == []


def test_multiprocess_job_over_its_timeout_is_stopped_and_failed(make_async, tmp_path):
    project = make_async(mode="multiprocess", workers=1)
    record, after = path(tmp_path), path(tmp_path, "after")
    started = time.monotonic()
    queue.push(testjobs.Sleep(record, 4, "sleep", timeout=1, tries=1))
    rows = wait_for(failed_rows, 3.5, message="a timeout=1 job that sleeps 4 s was not failed within 3.5 s")
    # the pool's only child is free again at once: the job was stopped there, not left sleeping
    queue.push(testjobs.Record(after, "after"))
    wait_for(lambda: values(after) == ["after"], 3.5, message="the child was still busy with the timed-out job")
    assert time.monotonic() - started < 3.5
    joined(project)
    [row] = rows
    assert row["name"] == "Sleep" and str(row["exception"]).startswith("JobTimeout"), row["exception"]
    assert values(record) == ["sleep"], "the job went on past its timeout (it wrote its finished marker)"
    assert [line.split(":")[0] for line in failures(record)] == ["JobTimeout"]


def test_multiprocess_runs_the_before_hooks_in_the_child(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    seen = path(tmp_path, "before")
    queue.before(lambda job: testjobs.append(seen, f"{type(job).__name__} {os.getpid()}"))
    queue.push(testjobs.Record(path(tmp_path), "r"))
    joined(project)
    [run] = runs(path(tmp_path))
    assert run.pid != os.getpid()
    assert lines(seen) == [f"Record {run.pid}"], "the before hook did not run (in the child, once)"


def test_multiprocess_runs_the_jobs_middleware(make_async, tmp_path):
    """RateLimited(allow=1, every=1): of two jobs run at once, one waits a second for the slot;
    with tries = 1, a job held back by its middleware is not failed (that release spends no try)."""
    project = make_async(mode="multiprocess", workers=2)
    key = unique("limit")
    queue.push(*(promisejobs.Limited(path(tmp_path), tag, key, every=1, tries=1) for tag in ("a", "b")))
    joined(project)
    attempts = runs(path(tmp_path))
    assert sorted(r.value for r in attempts) == ["a", "b"]
    assert attempts[1].at - attempts[0].at >= 0.9, "RateLimited(allow=1, every=1) let two jobs start at once"
    assert failed_rows() == []


def test_multiprocess_awaits_an_async_handle(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(testjobs.AsyncSleep(path(tmp_path), 0.05, "coro"))
    joined(project)
    assert values(path(tmp_path)) == ["coro", "coro-done"], "the coroutine of async def handle() never ran"
    assert os.getpid() not in {r.pid for r in runs(path(tmp_path))}
    assert failed_rows() == []


# 2. WithoutOverlapping ########################################################################
def test_without_overlapping_runs_six_jobs_one_at_a_time_within_seconds(sqlite_project, tmp_path, spawn):
    record, key = path(tmp_path), unique("k")
    tags = [f"j{i}" for i in range(6)]
    # a lease far longer than the test: a job that met the held key and came back only when the
    # holder's slot (expire_after = retry_after) would lapse could not finish in time
    sqlite_project.drivers["database"]["retry_after"] = 20
    sqlite_project.write_config()
    worker = spawn(sqlite_project, "work", "--concurrency", "3")
    started = time.monotonic()
    queue.push(*(promisejobs.Exclusive(record, 0.3, tag, key, tries=1) for tag in tags))

    def finished_or_failed():
        return sum(v.endswith("-done") for v in values(record)) == len(tags) or failed_rows()
    try:
        wait_for(finished_or_failed, 10)
    except AssertionError:
        raise AssertionError(f"the six jobs did not all run within 10 s: {values(record)}; worker output:\n"
                             f"{worker.output}") from None
    elapsed = time.monotonic() - started
    stopped(worker)

    assert [(r["name"], str(r["exception"]).splitlines()[0]) for r in failed_rows()] == []
    recorded = runs(record)
    begun = {r.value: r.at for r in recorded if not r.value.endswith("-done")}
    ended = {r.value[:-len("-done")]: r.at for r in recorded if r.value.endswith("-done")}
    assert len(recorded) == 12 and sorted(begun) == tags and sorted(ended) == tags, "each job runs once"
    spans = sorted((begun[tag], ended[tag], tag) for tag in tags)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        assert start >= end, f"{second} started {end - start:.3f} s before {first} ended"
    assert "released" in worker.output, "no job met the held key: the test proves nothing"
    assert elapsed < 10


# 3. Rolling deploys: a job whose code the worker does not have (yet) ##########################
DEPLOYED = '''\
import os
import time

from queue import Queueable


class Deployed(Queueable):
    """Written by tests/test_promises.py: records each run."""

    def __init__(self, path, tries, backoff):
        self.path, self.tries, self.backoff = path, tries, backoff

    def handle(self):
        with open(self.path, "a") as f:
            f.write(f"ran {os.getpid()} {time.time():.6f}\\n")
'''


def deploy(project):
    with open(os.path.join(project.folder, "jobs", "Deployed.py"), "w") as f:
        f.write(DEPLOYED)


def undeploy(project):
    """Remove jobs/Deployed.py and every compiled copy of it."""
    os.remove(os.path.join(project.folder, "jobs", "Deployed.py"))
    shutil.rmtree(os.path.join(project.folder, "jobs", "__pycache__"), ignore_errors=True)


def push_deployed(project, record, tries, backoff):
    """Push a Deployed job from the app (`python queue.py push`), where jobs/Deployed.py exists."""
    result = project.cli("push", "Deployed", repr(record), str(tries), str(backoff))
    assert result.returncode == 0, result.stdout + result.stderr


def worker_lines(worker, word):
    return [line for line in worker.lines if word in line]


def test_a_job_whose_module_is_missing_is_released_and_runs_once_the_module_is_back(sqlite_project, tmp_path,
                                                                                    spawn):
    record = path(tmp_path)
    deploy(sqlite_project)
    push_deployed(sqlite_project, record, tries=5, backoff=2)
    undeploy(sqlite_project)  # this worker runs older code: no jobs/Deployed.py
    worker = spawn(sqlite_project, "work")
    wait_for(lambda: worker_lines(worker, "Deployed #") or failed_rows(), 15,
             message=f"the job was not taken; worker output:\n{worker.output}")
    assert failed_rows() == [], f"failed at its first attempt:\n{worker.output}"
    [line] = worker_lines(worker, "Deployed #")
    assert "released" in line and "(attempt 1)" in line, line
    assert "jobs.Deployed" in line and "older code" in line, line
    counts = queue.driver().stats(["default"])["default"]
    assert counts["delayed"] == 1 and counts["ready"] == 0, f"not released with its backoff of 2 s: {counts}"

    deploy(sqlite_project)  # the new code reaches the worker
    wait_for(lambda: lines(record), 15, message=f"the job did not run once its module was back:\n{worker.output}")
    stopped(worker)
    assert len(lines(record)) == 1
    assert failed_rows() == []
    assert ready() == 0


def test_a_job_whose_module_stays_missing_is_failed_after_its_tries(sqlite_project, tmp_path, spawn):
    record = path(tmp_path)
    deploy(sqlite_project)
    push_deployed(sqlite_project, record, tries=2, backoff=0.2)
    undeploy(sqlite_project)
    worker = spawn(sqlite_project, "work")
    [row] = wait_for(failed_rows, 15, message=f"the job was not failed:\n{worker.output}")
    stopped(worker)
    taken = worker_lines(worker, "Deployed #")
    assert len(taken) == 2, taken
    assert "released" in taken[0] and "(attempt 1)" in taken[0], taken
    assert "failed" in taken[1] and "(attempt 2)" in taken[1], taken
    exception = str(row["exception"])
    assert exception.startswith("CodeMissing") and "ModuleNotFoundError" in exception, exception
    assert "jobs.Deployed" in exception
    assert lines(record) == []


# 4. retry --driver database of a job that failed on amqp ######################################
def failed_on_amqp(record):
    """A failed-store row as the amqp driver writes it (driver amqp, connection the broker's
    address), with a real payload of a Record job; returns its id."""
    driver = queue.driver("database")
    payload = driver.messages([testjobs.Record(record, "back")])[0].payload
    driver.failed_store().add_failed("amqp", "127.0.0.1:5672", queue.Message(None, "default", "Record", payload), "boom")
    [row] = failed_rows()
    assert (row["driver"], row["connection"]) == ("amqp", "127.0.0.1:5672")
    return row["id"]


def test_retry_onto_the_database_driver_of_a_job_failed_on_amqp(sqlite_project, tmp_path):
    record = path(tmp_path)
    failed_id = failed_on_amqp(record)
    moved = []
    assert queue.retry([failed_id], driver="database", each=moved.append) == 1
    assert [row["id"] for row in moved] == [failed_id]
    assert failed_rows() == []
    assert ready() == 1
    done = sqlite_project.cli("work", "--stop-when-empty")
    assert done.returncode == 0, done.stdout + done.stderr
    assert values(record) == ["back"]


def test_retry_command_onto_the_database_driver_of_a_job_failed_on_amqp(sqlite_project, tmp_path):
    failed_id = failed_on_amqp(path(tmp_path))
    result = sqlite_project.cli("retry", failed_id, "--driver", "database")
    assert result.returncode == 0, result.stdout + result.stderr
    assert failed_rows() == []
    assert ready() == 1


# 5. push(using=conn) ##########################################################################
def test_push_using_the_apps_connection_stores_a_unique_job_once(sqlite_project, tmp_path):
    record = path(tmp_path)
    queue.driver().create_tables()
    conn = sqlite3.connect(os.path.join(sqlite_project.folder, "queue.sqlite3"), timeout=30)
    try:
        first = queue.push(promisejobs.UniqueRecord(record), using=conn)
        second = queue.push(promisejobs.UniqueRecord(record), using=conn)
        conn.commit()
    finally:
        conn.close()
    assert (first, second) == (True, False)
    assert ready() == 1, "the unique job was stored twice"
    assert queue.push(promisejobs.UniqueRecord(record)) is False, "the lock did not commit with the app's rows"
    assert ready() == 1


@pytest.mark.parametrize("server", ["mysql_project", "postgres_project"])
def test_push_using_a_connection_of_another_kind_is_refused(server, request, tmp_path):
    request.getfixturevalue(server)
    conn = sqlite3.connect(str(tmp_path / "app.sqlite3"))
    try:
        with pytest.raises(queue.QueueError) as refused:
            queue.push(testjobs.Record(path(tmp_path)), using=conn)
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    finally:
        conn.close()
    message = str(refused.value)
    assert "\n" not in message and "sqlite" in message, message
    assert tables == [], "something was written through the refused connection"
    assert ready() == 0
