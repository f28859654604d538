"""The sync and null drivers (Laravel's connections of those names, SPEC section 8): a push to
sync runs the job at once in the pushing thread, as a worker would; a push to null discards it."""
import threading

import pytest

import queue
import testjobs
from testjobs import failures, values

from helpers import failed_rows, ok, one_line_error


def test_sync_runs_the_job_inside_push_in_the_pushing_thread(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    ran_in = []

    def record(job):
        ran_in.append(threading.current_thread())
    queue.before(record)
    try:
        assert queue.push(testjobs.Record(path, "now"), driver="sync") is True
    finally:
        queue._hooks["before"].remove(record)
    assert values(path) == ["now"], "the job ran before push() returned"
    assert ran_in == [threading.current_thread()]


def test_sync_spends_the_tries_at_once_then_fails_into_the_failed_store(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    queue.push(testjobs.Fail(path, "bad", tries=3, backoff=60), driver="sync")
    assert values(path) == ["bad", "bad", "bad"], "three tries, without waiting out the backoff"
    assert failures(path) == ["ValueError: boom bad"], "failed() ran once"
    [row] = failed_rows()
    assert row["driver"] == "sync" and row["exception"].startswith("ValueError: boom bad")


def test_retry_onto_sync_runs_the_failed_job_at_once(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    queue.push(testjobs.FailOnce(path, "again", tries=1), driver="sync")
    assert len(failed_rows()) == 1
    ok(sqlite_project.cli("retry", "all", "--driver", "sync"))
    assert values(path) == ["again", "again"], "retry --driver sync ran it in the retry command's process"
    [row] = failed_rows()  # it failed again (tries=1), once: the retry took only the jobs failed before it began
    assert row["driver"] == "sync"


def test_work_on_sync_says_why_in_one_line(sqlite_project):
    one_line_error(sqlite_project.cli("work", "--driver", "sync"), "sync", "inside the program")


def test_null_discards_every_job_and_status_shows_nothing(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    assert queue.push(testjobs.Record(path, "gone"), testjobs.Fail(path, "gone too"), driver="null") is True
    assert values(path) == [] and failures(path) == []
    assert queue.status(driver="null") == {}
    out = ok(sqlite_project.cli("status", "--driver", "null"))
    assert "0 live worker(s)" in out
    ok(sqlite_project.cli("work", "--driver", "null", "--stop-when-empty"))
    ok(sqlite_project.cli("clear", "--driver", "null", "--force"))


def test_a_driver_that_misses_a_required_method_fails_when_its_class_is_made():
    with pytest.raises(TypeError) as info:
        class Half(queue.Driver):
            name = "half-written"

            def put(self, messages):
                pass
    assert "pop, ack, release, stats, clear" in str(info.value)
    assert "half-written" not in queue.Driver.registry


def test_sync_runs_a_job_with_a_timeout_in_any_thread(sqlite_project, tmp_path):
    """A sync push runs the job in the pushing thread with its timeout: the main thread's alarm
    there, a deadline in any other thread (a thread has no signals), whichever pushed first."""
    path = str(tmp_path / "record")
    assert queue.push(testjobs.Record(path, "main", timeout=5), driver="sync") is True
    errors = []

    def push_from_a_thread():
        try:
            queue.push(testjobs.Record(path, "thread", timeout=5), driver="sync")
        except BaseException as exc:
            errors.append(exc)
    thread = threading.Thread(target=push_from_a_thread)
    thread.start()
    thread.join(30)
    assert errors == [] and values(path) == ["main", "thread"]
    assert failures(path) == []
