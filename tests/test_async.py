"""The async driver: jobs run inside the pushing program, on threads, in processes, or (blocking:
True) inside push() itself; retries, backoff, chains and the failed store work as for every
driver, and jobs pushed just before a normal interpreter exit still run."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import queue
import testjobs
from conftest import Project
from helpers import failed_rows
from testjobs import Fail, FailTimes, Gate, Record, failures, runs, values, wait_for

JOIN = 20  # seconds a test waits for the pushed jobs at most


@pytest.fixture
def make_async(tmp_path, hooks):
    """make(**async_options) -> a configured project whose default driver is async (failed jobs
    in SQLite). Pending jobs are waited for (with a deadline) at the end of the test."""

    def make(**options):
        settings = {"blocking": False, "mode": "threading", "workers": 2, "attempts": 3}
        settings.update(options)
        drivers = {"default": "async", "async": settings,
                   "database": {"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                                "poll": 0.05, "retry_after": 2}}
        project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}})
        project.configure()
        project.driver = queue.driver()
        return project

    yield make
    leftovers = [d for d in list(queue._drivers.values()) if isinstance(d, queue.AsyncDriver)]
    unfinished = [d for d in leftovers if not d.join(JOIN)]
    queue._close_drivers()
    assert not unfinished, "async jobs were still running at the end of the test"


def path(tmp_path, name="record"):
    return str(tmp_path / f"{name}.txt")


def joined(project):
    assert project.driver.join(JOIN), f"the async jobs did not finish within {JOIN} s"


def run_python(project, code, timeout=60):
    """Run `python -c code` in the project folder (its queue.py and config.py), like an app would."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=project.folder, env=project.env(),
                          capture_output=True, text=True, timeout=timeout)


# Threading mode ###############################################################################
def test_threading_runs_jobs_on_other_threads_without_blocking_push(make_async, tmp_path):
    project = make_async()
    assert isinstance(project.driver, queue.AsyncDriver)
    threads = []
    queue.before(lambda job: threads.append(threading.current_thread()))
    gate = path(tmp_path, "gate")
    queue.push(Gate(path(tmp_path), gate, "g"))
    wait_for(lambda: values(path(tmp_path)) == ["g"])     # it started ...
    queue.push(Record(path(tmp_path, "r"), 1), Record(path(tmp_path, "r"), 2))  # ... push did not wait
    open(gate, "w").close()
    joined(project)
    assert values(path(tmp_path)) == ["g", "g-done"]
    assert sorted(values(path(tmp_path, "r"))) == ["1", "2"]
    assert {r.pid for r in runs(path(tmp_path, "r"))} == {os.getpid()}
    assert threads and threading.main_thread() not in threads
    assert failed_rows() == []


def test_threading_workers_run_jobs_concurrently(make_async, tmp_path):
    project = make_async(workers=2)
    gate = path(tmp_path, "gate")
    queue.push(Gate(path(tmp_path, "a"), gate, "a"), Gate(path(tmp_path, "b"), gate, "b"))
    wait_for(lambda: values(path(tmp_path, "a")) and values(path(tmp_path, "b")))  # both running at once
    open(gate, "w").close()
    joined(project)
    assert values(path(tmp_path, "a")) == ["a", "a-done"]


def test_failing_job_is_retried_then_failed_once_with_traceback(make_async, tmp_path):
    project = make_async()
    failing = []
    queue.failing(lambda job, exc: failing.append((job.value, repr(exc))))
    queue.push(Fail(path(tmp_path), "bad"), Record(path(tmp_path, "ok"), "ok"))
    joined(project)
    assert values(path(tmp_path)) == ["bad", "bad", "bad"]      # the driver's attempts: 3
    assert failures(path(tmp_path)) == ["ValueError: boom bad"]
    assert failing == [("bad", "ValueError('boom bad')")]
    assert values(path(tmp_path, "ok")) == ["ok"]
    [row] = failed_rows()
    assert row["driver"] == "async" and row["name"] == "Fail" and row["queue"] == "default"
    text = str(row["exception"])
    assert text.startswith("ValueError: boom bad\n\nTraceback (most recent call last):")
    assert "testjobs.py" in text
    assert queue.unpack(bytes(row["payload"]))["job"].value == "bad"


def test_tries_and_backoff_list(make_async, tmp_path):
    project = make_async()
    queue.push(FailTimes(path(tmp_path), 2, tries=3, backoff=[0.3, 1.2]), Fail(path(tmp_path, "one"), tries=1))
    joined(project)
    assert len(runs(path(tmp_path))) == 3 and failures(path(tmp_path)) == []
    g = testjobs.gaps(path(tmp_path))
    assert 0.3 <= g[0] < 1.1 and g[1] >= 1.2, g
    assert len(runs(path(tmp_path, "one"))) == 1
    assert [r["name"] for r in failed_rows()] == ["Fail"]


def test_delay(make_async, tmp_path):
    project = make_async()
    pushed = time.time()
    queue.push(Record(path(tmp_path), "late"), delay=1)
    assert project.driver.stats()["default"]["delayed"] == 1
    assert values(path(tmp_path)) == []
    joined(project)
    [run] = runs(path(tmp_path))
    assert run.at >= pushed + 0.95


def test_retry_until(make_async, tmp_path):
    project = make_async()
    pushed = time.time()
    queue.push(testjobs.Patient(path(tmp_path), "p"))
    joined(project)
    attempts = runs(path(tmp_path))
    assert len(attempts) > testjobs.Patient.tries
    assert pushed + 1.2 <= attempts[-1].at < pushed + 4
    assert failures(path(tmp_path)) == ["ValueError: boom p"]   # failed(exc) gets the job's own error
    [row] = failed_rows()
    assert str(row["exception"]).startswith("ValueError: boom p")


def test_chain(make_async, tmp_path):
    project = make_async()
    queue.chain(Record(path(tmp_path), 1), Record(path(tmp_path), 2), Record(path(tmp_path), 3))
    queue.chain(Record(path(tmp_path, "b"), "a"), testjobs.FailOnce(path(tmp_path, "b"), "b"),
                Record(path(tmp_path, "b"), "c"))
    joined(project)
    assert values(path(tmp_path)) == ["1", "2", "3"]
    assert values(path(tmp_path, "b")) == ["a", "b"]
    assert [r["name"] for r in failed_rows()] == ["FailOnce"]


def test_system_exit_in_a_job_is_a_failed_attempt(make_async, tmp_path):
    project = make_async()
    queue.push(testjobs.Exit(path(tmp_path), "exit", tries=2))
    joined(project)
    assert values(path(tmp_path)) == ["exit", "exit"]
    assert failures(path(tmp_path)) == ["SystemExit: 3"]
    queue.push(Record(path(tmp_path, "after"), "after"))   # the pool still works
    joined(project)
    assert values(path(tmp_path, "after")) == ["after"]


def test_push_refuses_a_job_without_handle(make_async, tmp_path):
    make_async()
    with pytest.raises(queue.QueueError, match="no handle"):
        queue.push(object())


# Blocking mode ################################################################################
def test_blocking_runs_the_job_inside_push(make_async, tmp_path):
    make_async(blocking=True)
    threads = []
    queue.before(lambda job: threads.append(threading.current_thread()))
    queue.push(Record(path(tmp_path), "now"))
    assert values(path(tmp_path)) == ["now"]          # done when push() returned
    assert threads == [threading.current_thread()]


def test_blocking_retries_and_fails_inside_push(make_async, tmp_path):
    make_async(blocking=True)
    queue.push(Fail(path(tmp_path), "bad", tries=2))
    assert values(path(tmp_path)) == ["bad", "bad"]
    assert failures(path(tmp_path)) == ["ValueError: boom bad"]
    assert [r["driver"] for r in failed_rows()] == ["async"]
    queue.push(FailTimes(path(tmp_path, "ft"), 1))
    assert len(runs(path(tmp_path, "ft"))) == 2 and failures(path(tmp_path, "ft")) == []


def test_blocking_job_over_its_timeout_is_failed_and_the_program_goes_on(make_async, tmp_path):
    # run in a child: a stray SIGALRM would kill the whole test process
    project = make_async(blocking=True)
    record = path(tmp_path)
    result = run_python(project, f"""
        import queue, testjobs
        queue.push(testjobs.Slow({record!r}, 5))
        print("still here", queue.driver("database").failed_store().failed_jobs()[0]["exception"].splitlines()[0])
    """)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "still here" in result.stdout and "JobTimeout" in result.stdout
    assert values(record) == ["sleep", "sleep"]


# Multiprocess mode ############################################################################
def test_multiprocess_runs_jobs_in_another_process(make_async, tmp_path):
    project = make_async(mode="multiprocess", workers=2)
    queue.push(*(Record(path(tmp_path), i) for i in range(4)))
    joined(project)
    assert sorted(values(path(tmp_path))) == ["0", "1", "2", "3"]
    assert os.getpid() not in {r.pid for r in runs(path(tmp_path))}
    assert failed_rows() == []


def test_multiprocess_retries_then_fails_with_the_childs_traceback(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(Fail(path(tmp_path), "bad", tries=2), FailTimes(path(tmp_path, "ft"), 1, backoff=0.2))
    joined(project)
    attempts = runs(path(tmp_path))
    assert len(attempts) == 2 and os.getpid() not in {r.pid for r in attempts}
    assert failures(path(tmp_path)) == ["ValueError: boom bad"]
    assert len(runs(path(tmp_path, "ft"))) == 2 and failures(path(tmp_path, "ft")) == []
    [row] = failed_rows()
    text = str(row["exception"])
    assert text.startswith("ValueError: boom bad\n\nTraceback") and 'raise ValueError(f"boom {self.value}")' in text


def test_multiprocess_survives_a_job_that_exits_its_process(make_async, tmp_path):
    project = make_async(mode="multiprocess")
    queue.push(testjobs.Exit(path(tmp_path), "exit", tries=1))
    joined(project)
    queue.push(Record(path(tmp_path, "after"), "after"))
    joined(project)
    assert values(path(tmp_path)) == ["exit"]
    assert values(path(tmp_path, "after")) == ["after"]
    assert [r["name"] for r in failed_rows()] == ["Exit"]


# Interpreter exit #############################################################################
@pytest.mark.parametrize("mode", ["threading", "multiprocess"])
def test_jobs_pushed_just_before_exit_still_run(make_async, tmp_path, mode):
    project = make_async(mode=mode)
    queue._close_drivers()
    record = path(tmp_path)
    result = run_python(project, f"""
        import queue, testjobs
        queue.push(testjobs.Sleep({record!r}, 0.3, "slow"))
        queue.push(testjobs.Record({record!r}, "quick"))
        queue.push(testjobs.FailTimes({path(tmp_path, "retry")!r}, 1, backoff=0.5))  # retried after 0.5 s
        queue.push(testjobs.Record({record!r}, "delayed"), delay=0.5)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(values(record)) == ["delayed", "quick", "slow", "slow-done"]
    assert len(runs(path(tmp_path, "retry"))) == 2
    assert failures(path(tmp_path, "retry")) == []
