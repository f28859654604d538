"""The job API of SPEC section 5 (and the worker options and commands of section 3 that came
with it), on every backend: jobs that steer themselves (release, fail, delete, attempts, job_id),
the class attributes `delay` and `max_exceptions`, pushing a class, a plain object, a function
(queue.call, @queue.task), run_now, Masonite 4's failed(payload, exc), the queue of every link of
a chain, and the released and stopping hooks.

`TestJobAPI` runs on SQLite, MariaDB, PostgreSQL, RabbitMQ and the memory driver (conftest's
`project` fixture, @backends), on the helpers of helpers.DriverCase, as test_contract.py does. The
command line tests at the end run on SQLite only. The job classes are in tests/apijobs.py.
"""
import datetime
import functools
import os
import sqlite3
import subprocess
import sys
import time

import pytest

import apijobs
import queue
import testjobs
from apijobs import notes, seen
from conftest import BACKENDS, backends
from helpers import DriverCase, ok
from testjobs import Fail, FailTimes, Record, failures, lines, runs, values


def one_line(exc_info):
    """The message of a raised QueueError, asserted to be one line."""
    text = str(exc_info.value)
    assert text and "\n" not in text, repr(text)
    return text


@backends(*BACKENDS)
class TestJobAPI(DriverCase):
    """The job API every driver owes its users."""

    def also_queue(self, name):
        """Count a queue that is not named after the test (a class's, the driver's default) as
        one of the test's: its failed rows are the test's, and it is deleted afterwards (amqp)."""
        if name not in self.queues:
            self.queues.append(name)
        return name

    def ready(self, name):
        return self.driver.stats([name]).get(name, {}).get("ready", 0)

    def proves_nothing_follows(self, name="sentinel"):
        """Push a sentinel behind whatever is on self.q and run jobs until it ran: a job that
        was (wrongly) put back at once, or a chain link pushed by an earlier job, runs first."""
        sentinel = self.path(name)
        queue.push(Record(sentinel, name), queue=self.q)
        self.work(lambda: values(sentinel))
        return sentinel

    # release() ################################################################################
    def test_release_runs_the_job_again_and_attempts_and_job_id_are_set(self):
        queue.push(apijobs.ReleaseOnce(self.path(), "r"), queue=self.q)
        worker = self.worker()
        first = self.pop_one()
        assert worker.process(first) == "released"
        second = self.pop_one(timeout=6)
        assert worker.process(second) == "done"
        got = notes(self.path())
        assert [n["attempts"] for n in got] == [1, 2]
        assert [n["job_id"] for n in got] == [first.id, second.id]
        assert None not in [n["job_id"] for n in got]
        assert failures(self.path()) == [] and self.failed_rows() == []
        self.proves_nothing_follows()
        assert len(notes(self.path())) == 2     # acked after attempt 2

    def test_release_waits_its_delay(self):
        queue.push(apijobs.ReleaseOnce(self.path(), "later", delay=1), queue=self.q)
        worker = self.worker()
        assert worker.process(self.pop_one()) == "released"
        released = time.monotonic()
        assert self.driver.pop([self.q], 0) is None
        assert worker.process(self.pop_one(timeout=6)) == "done"
        assert time.monotonic() - released >= 0.95
        assert seen(self.path()) == ["later", "later"]

    def test_a_job_released_on_every_attempt_fails_after_its_tries(self):
        queue.push(apijobs.ReleaseAlways(self.path(), "loop"), queue=self.q)   # tries = 3
        self.work(self.failed_rows)
        assert [n["attempts"] for n in notes(self.path())] == [1, 2, 3]        # the releases counted
        [failure] = failures(self.path())                                       # failed() ran once
        assert failure.startswith("MaxAttemptsExceeded"), failure
        [row] = self.failed_rows()
        assert row["name"] == "ReleaseAlways"
        assert str(row["exception"]).startswith("MaxAttemptsExceeded"), row["exception"]

    def test_a_released_job_keeps_its_chain(self):
        after = self.path("after")
        queue.chain(apijobs.ReleaseOnce(self.path(), "head"), Record(after, "next"), queue=self.q)
        self.work(lambda: values(after))
        head = notes(self.path())
        assert [n["attempts"] for n in head] == [1, 2]
        assert values(after) == ["next"]
        assert runs(after)[0].at > head[1]["at"]      # the next link waited for the success
        assert self.failed_rows() == []

    # fail() ###################################################################################
    def test_fail_with_an_exception_fails_for_good_at_once(self):
        queue.push(apijobs.FailItself(self.path(), "f", error="given up"), queue=self.q)   # tries = 3
        assert self.worker().process(self.pop_one()) == "failed"
        assert failures(self.path()) == ["ValueError: given up"]      # failed() got that exception
        [row] = self.failed_rows()
        assert row["name"] == "FailItself" and row["queue"] == self.q
        assert str(row["exception"]).startswith("ValueError: given up")
        self.proves_nothing_follows()
        assert seen(self.path()) == ["f"]                             # tries were not used up
        assert failures(self.path()) == ["ValueError: given up"]

    def test_fail_without_an_exception_gives_failed_a_job_failed(self):
        queue.push(apijobs.FailItself(self.path(), "plain"), queue=self.q)
        assert self.worker().process(self.pop_one()) == "failed"
        [failure] = failures(self.path())
        assert failure.startswith("JobFailed"), failure
        assert issubclass(queue.JobFailed, Exception)
        [row] = self.failed_rows()
        assert str(row["exception"]).startswith("JobFailed"), row["exception"]
        self.proves_nothing_follows()
        assert seen(self.path()) == ["plain"]

    # delete() #################################################################################
    def test_delete_ends_the_job_and_stops_its_chain(self):
        later = self.path("later")
        queue.chain(apijobs.DeleteItself(self.path(), "gone"), Record(later, "never"), queue=self.q)
        self.worker().process(self.pop_one())
        self.proves_nothing_follows()
        assert seen(self.path()) == ["gone"]          # not run again
        assert values(later) == []                    # the chain stopped
        assert failures(self.path()) == [] and self.failed_rows() == []   # not failed

    # class attributes: delay, max_exceptions ##################################################
    def test_class_delay_delays_every_push_and_push_delay_overrides_it(self):
        started = time.monotonic()
        queue.push(apijobs.Later(self.path(), "late"), queue=self.q)
        queue.push(apijobs.Later(self.path(), "now"), queue=self.q, delay=0)
        assert self.value(self.pop_one()) == "now"
        assert self.driver.pop([self.q], 0) is None
        assert self.value(self.pop_one(timeout=6)) == "late"
        assert time.monotonic() - started >= 0.95

    def test_max_exceptions_counts_attempts_that_raised_not_releases(self):
        queue.push(apijobs.ReleaseThenRaise(self.path(), "mx"), queue=self.q)   # tries 10, max_exceptions 2
        self.work(self.failed_rows)
        # attempts 1 and 3 released, 2 and 4 raised: failed after the second one that raised
        assert [n["attempts"] for n in notes(self.path())] == [1, 2, 3, 4]
        assert failures(self.path()) == ["ValueError: attempt 4 raises"]
        [row] = self.failed_rows()
        assert row["name"] == "ReleaseThenRaise"
        assert str(row["exception"]).startswith("ValueError: attempt 4 raises")

    # other things to push #####################################################################
    def test_pushing_a_class_pushes_an_instance_made_without_arguments(self, monkeypatch):
        monkeypatch.setattr(apijobs, "NOARGS_PATH", self.path())
        queue.push(apijobs.NoArgs, queue=self.q)
        message = self.pop_one()
        assert message.name == "NoArgs"
        assert isinstance(queue.unpack(message.payload)["job"], apijobs.NoArgs)
        assert self.worker().process(message) == "done"
        assert lines(self.path()) == ["noargs 1"]

    def test_a_class_that_needs_arguments_is_refused_at_push(self):
        with pytest.raises(queue.QueueError) as refused:
            queue.push(apijobs.NeedsArgs, queue=self.q)
        assert "NeedsArgs" in one_line(refused)
        assert self.driver.pop([self.q], 0) is None

    @pytest.mark.parametrize("what", ["no handle", "a number", "a class without handle"])
    def test_something_without_handle_is_refused_at_push(self, what):
        thing = {"no handle": apijobs.NoHandle(), "a number": 42, "a class without handle": apijobs.NoHandle}[what]
        with pytest.raises(queue.QueueError) as refused:
            queue.push(Record(self.path(), "not alone"), thing, queue=self.q)   # all or none
        assert "handle" in one_line(refused)
        assert self.driver.pop([self.q], 0) is None

    def test_a_plain_object_with_handle_runs(self):
        queue.push(apijobs.Plain(self.path(), "plain"), queue=self.q)
        assert self.worker().process(self.pop_one()) == "done"
        assert lines(self.path()) == ["plain"]

    def test_call_runs_a_function_a_bound_method_and_a_partial(self):
        path = self.path()
        queue.push(queue.call(apijobs.write_line, path, "function", suffix="!"),
                   queue.call(apijobs.Writer(path).write, "method"),
                   queue.call(functools.partial(apijobs.write_line, path, suffix="?"), "partial"),
                   queue=self.q)
        self.work(lambda: len(lines(path)) == 3)
        assert lines(path) == ["function!", "method", "partial?"]
        assert self.failed_rows() == []

    def test_call_refuses_a_lambda_and_a_nested_function(self):
        def nested(path):
            testjobs.append(path, "nested")

        for fn in (lambda path: None, nested):
            with pytest.raises(queue.QueueError) as refused:
                queue.push(queue.call(fn, self.path()), queue=self.q)
            one_line(refused)
        assert self.driver.pop([self.q], 0) is None

    def test_task_decorator_pushes_a_call(self):
        default = self.also_queue(self.driver.default_queue)   # fn.push takes no queue
        apijobs.tasked.push(self.path(), "tasked")
        self.work(lambda: lines(self.path()), queues=[default])
        assert lines(self.path()) == ["tasked"]
        apijobs.tasked(self.path(), "direct")                  # still a plain function
        assert lines(self.path()) == ["tasked", "direct"]

    def test_task_decorator_with_tries(self):
        default = self.also_queue(self.driver.default_queue)
        apijobs.tasked_fail.push(self.path(), "t")
        self.work(self.failed_rows, queues=[default])
        assert lines(self.path()) == ["t", "t"]          # tries=2, not the driver's attempts (3)
        [row] = self.failed_rows()
        assert str(row["exception"]).startswith("ValueError: task t fails"), row["exception"]

    # run_now ##################################################################################
    def test_run_now_runs_in_this_process_at_once(self):
        assert queue.run_now(Record(self.path(), "now", queue=self.q)) == "done"
        [run] = runs(self.path())                   # already done when run_now returned
        assert run.value == "now" and run.pid == os.getpid()
        assert self.driver.pop([self.q], 0) is None     # nothing was queued
        assert self.failed_rows() == []

    def test_run_now_retries_at_once_then_fails(self):
        started = time.monotonic()
        assert queue.run_now(Fail(self.path(), "bad", tries=3, backoff=30, queue=self.q)) == "failed"
        assert time.monotonic() - started < 10          # the backoff of 30 s was not waited
        assert values(self.path()) == ["bad", "bad", "bad"]
        assert failures(self.path()) == ["ValueError: boom bad"]
        [row] = self.failed_rows()
        assert row["name"] == "Fail"
        assert str(row["exception"]).startswith("ValueError: boom bad")
        assert self.driver.pop([self.q], 0) is None

    # Masonite 4 ###############################################################################
    def test_a_masonite_4_failed_gets_the_payload_and_the_exception(self):
        queue.push(apijobs.MasoniteFour(self.path(), "m"), queue=self.q)
        assert self.worker().process(self.pop_one()) == "failed"
        [got] = notes(self.path() + ".failed")
        assert got["payload_type"] == "dict" and "obj" in got["keys"]
        assert got["job_type"] == "MasoniteFour" and got["job_value"] == "m"
        assert (got["exc_type"], got["exc"]) == ("ValueError", "m4 m fails")
        [row] = self.failed_rows()
        assert row["name"] == "MasoniteFour"

    # chain(queue=Q) ###########################################################################
    def test_chain_queue_applies_to_every_link_without_a_queue_of_its_own(self):
        chained, other = self.other_queue("chain"), self.other_queue("own")
        cls_queue = self.also_queue(apijobs.OwnClassQueue.queue)
        default = self.also_queue(self.driver.default_queue)   # where a link without any queue would go
        path = self.path()
        queue.chain(apijobs.Steered(path, "a"), apijobs.Steered(path, "b", queue=other),
                    apijobs.OwnClassQueue(path, "c"), apijobs.Steered(path, "d"), queue=chained)
        # each link runs on a worker of its queue only; the next link must then wait on its queue
        # (d on the chain's queue: not on c's, nor on the driver's default)
        for step, (runs_on, next_on) in enumerate([(chained, other), (other, cls_queue),
                                                   (cls_queue, chained), (chained, None)]):
            self.wait_stats(runs_on, ready=1)
            self.work(lambda: len(seen(path)) == step + 1, queues=[runs_on])
            assert seen(path) == ["a", "b", "c", "d"][:step + 1]
            if next_on is not None:
                self.wait_stats(next_on, ready=1)
                for name in {chained, other, cls_queue, default} - {next_on}:
                    assert self.ready(name) == 0, (step, name, self.driver.stats([name]))
        assert self.failed_rows() == []

    def test_chain_checks_every_link_at_push(self):
        for bad in (apijobs.NeedsArgs, apijobs.NoHandle()):
            with pytest.raises(queue.QueueError) as refused:
                queue.chain(Record(self.path(), "head"), Record(self.path(), "second"), bad, queue=self.q)
            one_line(refused)
        assert self.driver.pop([self.q], 0) is None

    # hooks ####################################################################################
    def test_released_hook_fires_for_release_and_for_a_retry(self):
        calls = []
        queue.released(lambda job, delay: calls.append((type(job).__name__, job.value, delay)))
        queue.push(apijobs.ReleaseOnce(self.path(), "asked", delay=0.25), queue=self.q)
        queue.push(FailTimes(self.path("retry"), 1, "retried", backoff=0.5), queue=self.q)
        queue.push(Record(self.path("ok"), "ok"), queue=self.q)
        worker = self.worker()
        assert [worker.process(self.pop_one()) for _ in range(3)] == ["released", "released", "done"]
        assert calls == [("ReleaseOnce", "asked", pytest.approx(0.25)),
                         ("FailTimes", "retried", pytest.approx(0.5))]

    def test_stopping_hook_says_why_the_worker_stopped(self):
        reasons = []
        queue.stopping(reasons.append)
        self.drain()
        assert reasons == ["empty"]
        queue.push(Record(self.path(), 1), Record(self.path(), 2), queue=self.q)
        self.wait_stats(self.q, ready=2)
        assert self.worker(max_jobs=1).run() == 0
        assert values(self.path()) == ["1"]
        assert reasons == ["empty", "max-jobs"]


# The command line (SQLite) ####################################################################
def drain(queues=("default",)):
    """Run a worker in this process until the queues are empty."""
    assert queue.Worker(queue.driver(), list(queues), poll=0.05, stop_when_empty=True).run() == 0


def failed_names(project):
    db = sqlite3.connect(os.path.join(project.folder, "queue.sqlite3"))
    try:
        return [row[0] for row in db.execute("SELECT name FROM failed_jobs ORDER BY id")]
    finally:
        db.close()


def test_work_tries_is_attempts(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(Fail(out, "f"))                        # sets no tries: the config says 3
    ok(sqlite_project.cli("work", "--tries", "2", "--stop-when-empty"))
    assert values(out) == ["f", "f"]
    assert failures(out) == ["ValueError: boom f"]
    assert failed_names(sqlite_project) == ["Fail"]


def test_work_sleep_is_poll(sqlite_project, tmp_path):
    sqlite_project.drivers["database"]["poll"] = 30     # the worker's config: a long idle wait
    sqlite_project.write_config()
    out = str(tmp_path / "out")
    pushed = time.time()
    queue.push(Record(out, "due"), delay=1.5)          # due while the worker waits between polls
    try:
        ok(sqlite_project.cli("work", "--sleep", "0.1", "--max-jobs", "1", timeout=20))
    except subprocess.TimeoutExpired:
        pytest.fail("the worker waited its config's poll of 30 s, not --sleep 0.1")
    [run] = runs(out)
    assert pushed + 1.4 <= run.at < pushed + 10


def test_work_backoff_is_the_default_backoff(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(FailTimes(out, 1, "b"))                # no backoff of its own
    ok(sqlite_project.cli("work", "--backoff", "0.4", "--max-jobs", "2", timeout=30))
    assert values(out) == ["b", "b"]
    [gap] = testjobs.gaps(out)
    assert 0.4 <= gap < 5, gap
    assert failed_names(sqlite_project) == []


def test_work_memory_exits_after_the_first_job_over_the_limit(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(Record(out, "one"), Record(out, "two"))
    ok(sqlite_project.cli("work", "--memory", "1", "--max-time", "10", timeout=30))    # any python is over 1 MB
    assert values(out) == ["one"]
    assert queue.driver().stats(["default"])["default"]["ready"] == 1


def test_clear_force_deletes_ready_and_delayed_jobs_of_one_queue(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(Record(out, "r1"), Record(out, "r2"), queue="q")
    queue.push(Record(out, "d"), queue="q", delay=600)
    queue.push(Record(out, "other"), queue="keep")
    reserved = queue.driver().pop(["q"])
    assert reserved is not None
    ok(sqlite_project.cli("clear", "--queue", "q", "--force"))
    stats = queue.driver().stats(["q", "keep"])
    assert stats["q"] == {"ready": 0, "delayed": 0, "reserved": 1}     # the reserved job is running
    assert stats["keep"] == {"ready": 1, "delayed": 0, "reserved": 0}


def test_clear_without_force_and_without_a_tty_deletes_nothing(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(Record(out, "stays"))
    # Project.cli inherits this process's stdin (a tty when pytest runs in a terminal): not here
    result = subprocess.run([sys.executable, "queue.py", "clear"], cwd=sqlite_project.folder,
                            env=sqlite_project.env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("queue.py: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert queue.driver().stats(["default"])["default"]["ready"] == 1


def test_flush_hours_deletes_only_older_failed_jobs(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.FailOnce(out, "old"), testjobs.FailOnce(out, "new"))
    drain()
    two_hours_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    db = sqlite3.connect(os.path.join(sqlite_project.folder, "queue.sqlite3"))
    try:
        [(old_id,)] = db.execute("SELECT id FROM failed_jobs WHERE exception LIKE 'ValueError: boom old%'")
        db.execute("UPDATE failed_jobs SET failed_at = ? WHERE id = ?",
                   (two_hours_ago.strftime("%Y-%m-%d %H:%M:%S.%f"), old_id))
        db.commit()
    finally:
        db.close()
    ok(sqlite_project.cli("flush", "--hours", "1"))
    [row] = queue.driver("database").failed_store().failed_jobs()
    assert str(row["exception"]).startswith("ValueError: boom new")


def test_failed_limit_lists_the_newest_first(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    for value in ("a", "b", "c"):
        queue.push(testjobs.FailOnce(out, value))
        drain()
    listed = ok(sqlite_project.cli("failed", "--limit", "2")).splitlines()
    rows = [line for line in listed[1:] if line.strip()]
    assert len(rows) == 2, listed
    assert "boom c" in rows[0] and "boom b" in rows[1], listed
    assert "boom a" not in "\n".join(listed)
