"""Findings of an independent review of this release's changes, each a test that failed before
its fix: a job's SIGTERM handler that calls the worker's, run_now() of a job its middleware holds
back, async jobs' event loops, the async driver's broken pool on Python 3.12+, PostgreSQL's
largest push, MariaDB's skip scan past 1,000 queues."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import queue
import reviewjobs
import testjobs
from conftest import backends
from helpers import stop, wait_worker


def test_a_job_handler_that_calls_the_workers_one_lets_the_job_finish(sqlite_project, tmp_path, spawn):
    path = str(tmp_path / "r")
    queue.push(reviewjobs.ChainsHandler(path), testjobs.Record(str(tmp_path / "next"), "next"))
    worker = spawn(sqlite_project, "work")
    wait_worker(worker, lambda: "start" in testjobs.lines(path), 20, "the job did not start")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output
    assert testjobs.lines(path) == ["start", "cleanup", "end"], worker.output
    assert "RecursionError" not in worker.output
    assert testjobs.lines(str(tmp_path / "next")) == [], "the worker took another job after SIGTERM"


def test_run_now_of_a_job_its_middleware_holds_back_waits_instead_of_spinning(sqlite_project, tmp_path):
    path, key = str(tmp_path / "h"), "review-held"
    ok = queue.funnel(key, limit=1, hold=60)
    assert ok.__enter__()
    threading.Timer(1.5, ok.__exit__, (None, None, None)).start()
    started = time.process_time()
    assert queue.run_now(reviewjobs.Held(path, key)) == "done"
    assert testjobs.lines(path) == ["ran"]
    assert time.process_time() - started < 1.0, "it spun while the slot was held"


def test_an_async_jobs_event_loop_outlives_another_jobs_exception(sqlite_project):
    del reviewjobs.LOOPS[:]
    queue.push(reviewjobs.LoopBound(), reviewjobs.LoopBound(raise_it=True), reviewjobs.LoopBound())
    queue.Worker(queue.driver(), stop_when_empty=True).run()
    first, _, third = reviewjobs.LOOPS
    assert first == third, "a loop-bound client of the first job would not work in the third"


def test_run_now_of_an_async_job_inside_a_running_event_loop(sqlite_project, tmp_path):
    import asyncio
    path = str(tmp_path / "a")

    async def endpoint():
        return queue.run_now(reviewjobs.AsyncNote(path))
    assert asyncio.run(endpoint()) == "done"
    assert testjobs.lines(path) == ["ran"]


def pythons_from_3_12():
    """This interpreter, and the pyenv Pythons 3.12 and 3.13 where they are."""
    found = [sys.executable]
    root = os.path.expanduser("~/.pyenv/versions")
    for version in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        if version.startswith(("3.12", "3.13")) and os.path.exists(os.path.join(root, version, "bin", "python3")):
            found.append(os.path.join(root, version, "bin", "python3"))
    return found


@pytest.mark.parametrize("python", pythons_from_3_12())
def test_a_child_that_dies_does_not_deadlock_the_async_pool(tmp_path, python):
    project = tmp_path / "p"
    project.mkdir()
    shutil.copy(queue.__file__, project)
    (project / "config.py").write_text('DRIVERS = {"default": "async", "async": {"mode": "multiprocess", "workers": 1}}\n'
                                       'KEY = "k" * 20\n')
    code = ("import queue, reviewjobs, testjobs\n"
            f"queue.push(reviewjobs.DiesInChild(), testjobs.Record({str(tmp_path / 'r')!r}, 'after'))\n"
            "print('joined', queue.driver().join(30))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([python, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert "joined True" in done.stdout, done.stdout + done.stderr[-2000:]
    assert testjobs.values(str(tmp_path / "r")) == ["after"]


@backends("postgres")
def test_a_push_of_twenty_thousand_jobs_in_one_call(project):
    assert queue.push(*(testjobs.Noop() for _ in range(20000)))
    assert queue.status()["default"]["ready"] >= 10000


@backends("mysql")
def test_status_lists_more_than_a_thousand_queues(project):
    for i in range(1100):
        queue.push(testjobs.Noop(), queue=f"q{i:04d}")
    assert len(queue.status()) == 1100
