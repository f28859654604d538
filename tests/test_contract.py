"""One driver contract, run against every backend (huey's StorageTests pattern): TestContract
runs once per backend (conftest's `project` fixture, @backends), on the helpers of
helpers.DriverCase, whose `lapse(message)` makes a reserved-but-unacked message available again
the way that backend does it (database: the reservation expires after retry_after; amqp: the
consuming connection closes). The first half drives the Driver interface directly, the second
half runs real jobs through Worker.process / Worker.run in the test (main) thread.
"""
import hmac
import pickle
import threading
import time

import pytest

import queue
import testjobs
from conftest import BACKENDS, CLOCKED, backends
from helpers import POP_WAIT, DriverCase
from testjobs import Fail, FailOnce, Flaky, Patient, Record, Sleep, failures, runs, values, wait_for


@backends(*BACKENDS)
class TestContract(DriverCase):
    """The behaviour every driver owes its users."""

    def put_raw(self, payload, name="Forged"):
        self.driver.put([queue.Message(None, self.q, name, payload, 0, 0.0)])

    # The Driver interface #####################################################################
    def test_push_pop_is_fifo_within_a_queue(self):
        queue.push(*(Record(self.path(), i) for i in range(5)), queue=self.q)
        for i in range(5, 8):
            queue.push(Record(self.path(), i), queue=self.q)
        popped = [self.value(self.pop_one()) for _ in range(8)]
        assert popped == [str(i) for i in range(8)]

    def test_pop_returns_none_when_empty(self):
        assert self.driver.pop([self.q], 0) is None
        queue.push(Record(self.path()), queue=self.q)
        message = self.pop_one()
        assert self.driver.pop([self.q], 0) is None  # the only message is reserved
        self.driver.ack(message)
        assert self.driver.pop([self.q], 0) is None

    def test_message_fields(self):
        queue.push(Record(self.path(), "x"), queue=self.q)
        message = self.pop_one()
        assert message.queue == self.q
        assert message.name == "Record"
        assert message.attempts == 1
        job = queue.unpack(message.payload)["job"]
        assert isinstance(job, Record) and job.value == "x"

    def test_job_class_queue_and_driver_default_queue(self):
        default = self.driver.options.get("queue", "default")
        queue.push(testjobs.OnQueue(self.path(), "cls"))
        queue.push(Record(self.path(), "plain"))
        self.queues += [name for name in ("class-queue", default) if name not in self.queues]
        assert self.value(self.pop_one(["class-queue"])) == "cls"
        assert self.value(self.pop_one([default])) == "plain"

    def test_delayed_message_is_not_popped_before_it_is_due(self):
        started = time.monotonic()
        queue.push(Record(self.path(), "late"), queue=self.q, delay=1)
        queue.push(Record(self.path(), "now"), queue=self.q)
        assert self.value(self.pop_one()) == "now"
        assert self.driver.pop([self.q], 0) is None
        message = self.pop_one(timeout=6)
        assert self.value(message) == "late"
        assert time.monotonic() - started >= 0.95

    @pytest.mark.parametrize("delay", ["1 second", "timedelta", "datetime"])
    def test_delay_forms(self, delay):
        import datetime
        delay = {"timedelta": datetime.timedelta(seconds=1),
                 "datetime": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
                 }.get(delay, delay)
        started = time.monotonic()
        queue.push(Record(self.path(), "late"), queue=self.q, delay=delay)
        assert self.driver.pop([self.q], 0) is None
        self.pop_one(timeout=6)
        assert time.monotonic() - started >= 0.9

    def test_strict_priority_order_of_queues(self):
        high, low = self.other_queue("high"), self.other_queue("low")
        middle = self.q
        queue.push(Record(self.path(), "low1"), Record(self.path(), "low2"), queue=low)
        queue.push(Record(self.path(), "mid1"), queue=middle)
        queue.push(Record(self.path(), "high1"), Record(self.path(), "high2"), queue=high)
        for name, n in ((high, 2), (middle, 1), (low, 2)):
            self.wait_stats(name, ready=n)
        order = [high, middle, low]
        popped = [self.value(self.pop_one(order)) for _ in range(5)]
        assert popped == ["high1", "high2", "mid1", "low1", "low2"]
        assert self.driver.pop(order, 0) is None

    def test_a_queue_not_asked_for_is_not_popped(self):
        other = self.other_queue("other")
        queue.push(Record(self.path(), "elsewhere"), queue=other)
        self.wait_stats(other, ready=1)
        assert self.driver.pop([self.q], 0) is None
        assert self.value(self.pop_one([other])) == "elsewhere"

    def test_attempts_are_counted_per_pop(self):
        queue.push(Record(self.path()), queue=self.q)
        for attempt in (1, 2, 3):
            message = self.pop_one()
            assert message.attempts == attempt
            self.driver.release(message, 0)

    def test_release_with_delay_keeps_attempts_and_delays(self):
        queue.push(Record(self.path(), "again"), queue=self.q)
        first = self.pop_one()
        released = time.monotonic()
        self.driver.release(first, 1)
        assert self.driver.pop([self.q], 0) is None
        second = self.pop_one(timeout=6)
        assert time.monotonic() - released >= 0.95
        assert self.value(second) == "again"
        assert second.attempts == 2
        assert second.payload == first.payload

    def test_ack_removes_the_message(self):
        queue.push(Record(self.path(), "a"), Record(self.path(), "b"), queue=self.q)
        message = self.pop_one()
        self.driver.ack(message)
        other = self.pop_one()           # the database driver completes the ack in this pop
        assert self.value(other) == "b"
        self.driver.ack(other)
        self.driver.close()               # ... or in close()
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)
        assert self.driver.pop([self.q], 0) is None

    def test_acked_message_does_not_come_back_after_it_would_have_lapsed(self):
        queue.push(Record(self.path(), "once"), queue=self.q)
        message = self.pop_one()
        self.driver.ack(message)
        self.driver.close()
        queue.push(Record(self.path(), "probe"), queue=self.q)
        probe = self.pop_one()
        self.lapse(probe)
        again = self.pop_one(timeout=10)
        assert self.value(again) == "probe"  # the probe lapsed; the acked message did not
        self.driver.ack(again)
        assert self.driver.pop([self.q], 0) is None

    def test_two_pops_never_return_the_same_message(self):
        # four workers, each with a driver instance (connections) of its own, race for 40 jobs
        count = 40
        queue.push(*(Record(self.path(), i) for i in range(count)), queue=self.q)
        self.wait_stats(self.q, ready=count)
        got, lock, errors = [], threading.Lock(), []
        deadline = time.monotonic() + 20
        start = threading.Barrier(4)

        def consume():
            driver = type(self.driver)(self.driver.options, self.driver.config)
            try:
                start.wait(10)
                while time.monotonic() < deadline:
                    message = driver.pop([self.q], POP_WAIT)
                    with lock:
                        if message is not None:
                            got.append(self.value(message))
                        elif len(got) >= count:
                            break
                    if message is not None:
                        driver.ack(message)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                driver.close()

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert sorted(got, key=int) == [str(i) for i in range(count)]
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_a_lapsed_reservation_is_popped_again(self):
        queue.push(Record(self.path(), "lost"), queue=self.q)
        first = self.pop_one()
        assert self.driver.pop([self.q], 0) is None
        self.lapse(first)
        again = self.pop_one(timeout=10)
        assert self.value(again) == "lost"
        assert again.attempts > first.attempts

    @backends(*CLOCKED)
    def test_a_job_retried_after_its_reservation_would_lapse_keeps_its_place(self):
        """Released to a time past its reservation's end, a job waits behind a job due before it
        (the memory driver once took it at its old reservation's time)."""
        later = self.driver.retry_after + 10
        queue.push(Record(self.path(), "first"), queue=self.q, delay=later)
        queue.push(Record(self.path(), "retried"), queue=self.q)
        self.driver.release(self.pop_one(), later)
        self.driver.clock.advance(later + 1)
        assert [self.value(self.pop_one()), self.value(self.pop_one())] == ["first", "retried"]

    def test_keep_renews_a_reservation(self):
        if not hasattr(self.driver, "retry_after"):
            pytest.skip("reservations of this driver do not lapse with time")
        queue.push(Record(self.path(), "long"), queue=self.q)
        message = self.pop_one()
        for _ in range(5):  # a keeper renewing a running job's reservation, on the driver's clock
            self.driver.clock.advance(self.driver.retry_after / 2)
            self.driver.keep(message)
            assert self.driver.pop([self.q], 0) is None
        self.lapse(message)  # no more keep(): it lapses
        assert self.value(self.pop_one(timeout=10)) == "long"

    @backends(*CLOCKED)
    def test_stats_count_ready_delayed_reserved(self):
        queue.push(Record(self.path(), "r1"), Record(self.path(), "r2"), Record(self.path(), "r3"), queue=self.q)
        queue.push(Record(self.path(), "d"), queue=self.q, delay=60)
        self.wait_stats(self.q, ready=3, delayed=1, reserved=0)
        message = self.pop_one()
        self.wait_stats(self.q, ready=2, delayed=1, reserved=1)
        self.driver.release(message, 60)
        self.wait_stats(self.q, ready=2, delayed=2, reserved=0)
        other = self.other_queue("stats")
        counts = self.driver.stats([other])
        assert counts.get(other, {"ready": 0, "delayed": 0, "reserved": 0}) == \
            {"ready": 0, "delayed": 0, "reserved": 0}

    @backends("amqp")
    def test_stats_count_ready_and_reserved_and_the_delay_ladder_on_the_broker(self):
        # The broker hands a consumer up to `prefetch` messages at once (all of them count as
        # unacked); with prefetch 1 the counts read like the database driver's.
        self.driver.prefetch = 1
        queue.push(Record(self.path(), "r1"), Record(self.path(), "r2"), Record(self.path(), "r3"), queue=self.q)
        queue.push(Record(self.path(), "d"), queue=self.q, delay=60)
        self.wait_stats(self.q, ready=3, reserved=0)
        message = self.pop_one()
        self.wait_stats(self.q, ready=2, reserved=1)
        self.driver.release(message, 60)
        # the released message waits in the delay ladder; the freed prefetch slot takes the next one
        self.wait_stats(self.q, ready=1, reserved=1)
        wait_for(lambda: self.driver.delayed_total() >= 2, self.stats_timeout, interval=0.2,
                 message="the delay ladder does not hold the two delayed messages")

    def test_push_to_a_named_queue_changes_nothing_for_later_pushes(self):
        # Masonite's drivers stored push(queue=...) in their options, so later jobs leaked there.
        import copy
        config = queue._get_config()
        before = copy.deepcopy((config.drivers, config.databases, self.driver.options))
        other = self.other_queue("named")
        queue.push(Record(self.path(), "named"), queue=other, delay=30)
        queue.push(Record(self.path(), "default"))
        assert copy.deepcopy((config.drivers, config.databases, self.driver.options)) == before
        assert self.value(self.pop_one([self.driver.default_queue])) == "default"

    def test_push_many_in_one_call_all_arrive(self):
        jobs = [Record(self.path(), i) for i in range(25)]
        queue.push(*jobs, queue=self.q)
        self.wait_stats(self.q, ready=25)
        popped = []
        for _ in range(25):
            message = self.pop_one()
            popped.append(self.value(message))
            self.driver.ack(message)
        assert popped == [str(i) for i in range(25)]

    def test_put_stores_raw_messages(self):
        payload = queue.pack(Record(self.path(), "raw"))
        self.driver.put([queue.Message(None, self.q, "Record", payload, 0, 0.0),
                         queue.Message(None, self.q, "Record", payload, 0, 0.0)])
        a, b = self.pop_one(), self.pop_one()
        assert a.payload == b.payload == payload
        assert a.name == "Record"

    # Jobs through the worker ##################################################################
    def test_process_runs_and_acks_a_job(self):
        queue.push(Record(self.path(), "job"), queue=self.q)
        worker = self.worker()
        assert worker.process(self.pop_one()) == "done"
        assert values(self.path()) == ["job"]
        assert self.driver.pop([self.q], 0) is None
        self.driver.close()
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_process_releases_then_fails(self):
        queue.push(Fail(self.path(), "x", tries=2), queue=self.q)
        worker = self.worker()
        assert worker.process(self.pop_one()) == "released"
        assert failures(self.path()) == []
        assert worker.process(self.pop_one()) == "failed"
        assert values(self.path()) == ["x", "x"]
        assert failures(self.path()) == ["ValueError: boom x"]
        assert [r["name"] for r in self.failed_rows()] == ["Fail"]

    def test_run_stop_when_empty_and_once(self):
        queue.push(Record(self.path(), 1), Record(self.path(), 2), Record(self.path(), 3), queue=self.q)
        self.wait_stats(self.q, ready=3)
        worker = self.worker(once=True)
        assert worker.run() == 0
        assert values(self.path()) == ["1"]
        worker = self.drain()
        assert values(self.path()) == ["1", "2", "3"]
        assert worker.processed == 2

    def test_failing_job_is_retried_until_tries_then_failed_once(self):
        queue.push(Fail(self.path(), "bad"), queue=self.q)  # tries: the driver's attempts (3)
        queue.push(Record(self.path("ok"), "ok"), queue=self.q)
        self.work(lambda: self.failed_rows() and values(self.path("ok")))
        assert values(self.path()) == ["bad", "bad", "bad"]
        assert failures(self.path()) == ["ValueError: boom bad"]
        [row] = self.failed_rows()
        assert row["name"] == "Fail" and row["queue"] == self.q
        assert row["driver"] == self.driver.name
        assert row["connection"] == self.driver.connection_name
        text = str(row["exception"])
        assert text.startswith("ValueError: boom bad\n\n")
        assert "Traceback (most recent call last):" in text
        assert "testjobs.py" in text and 'raise ValueError(f"boom {self.value}")' in text
        job = queue.unpack(bytes(row["payload"]))["job"]  # the payload is kept, retry-able
        assert isinstance(job, Fail) and job.value == "bad"
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_class_tries_override_the_driver_attempts(self):
        queue.push(FailOnce(self.path(), "one"), queue=self.q)
        queue.push(Fail(self.path("five"), "five", tries=5), queue=self.q)
        self.drain()
        assert values(self.path()) == ["one"]
        assert values(self.path("five")) == ["five"] * 5
        assert sorted(r["name"] for r in self.failed_rows()) == ["Fail", "FailOnce"]

    def test_worker_attempts_option_is_the_default_tries(self):
        queue.push(Fail(self.path(), "w"), queue=self.q)
        self.drain(attempts=2)
        assert values(self.path()) == ["w", "w"]
        assert len(self.failed_rows()) == 1

    def test_a_job_that_succeeds_on_a_later_attempt_is_not_failed(self):
        queue.push(testjobs.FailTimes(self.path(), 2), queue=self.q)
        self.drain()
        assert len(runs(self.path())) == 3
        assert failures(self.path()) == [] and self.failed_rows() == []
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_backoff_list_is_honoured_and_its_last_value_repeats(self):
        queue.push(testjobs.FailTimes(self.path(), 3, tries=4, backoff=[0.3, 1.2]), queue=self.q)
        self.work(lambda: len(runs(self.path())) == 4 and self.driver.stats([self.q])[self.q]["ready"] == 0)
        g = testjobs.gaps(self.path())
        assert len(g) == 3
        assert 0.3 <= g[0] < 1.1, g      # backoff[0] before attempt 2, not backoff[1]
        assert g[1] >= 1.2 and g[2] >= 1.2, g
        assert self.failed_rows() == []

    def test_class_backoff(self):
        queue.push(Flaky(self.path(), 2), queue=self.q)
        self.work(lambda: len(runs(self.path())) == 3)
        g = testjobs.gaps(self.path())
        assert 0.3 <= g[0] < 1.1 and g[1] >= 1.2, g

    def test_retry_until_is_a_deadline_instead_of_tries(self):
        pushed = time.time()
        queue.push(Patient(self.path(), "late"), queue=self.q)
        self.work(self.failed_rows)
        attempts = runs(self.path())
        assert len(attempts) > Patient.tries     # tries is ignored when retry_until is given
        assert attempts[-1].at >= pushed + Patient.retry_for - 0.25
        assert attempts[-1].at < pushed + Patient.retry_for + 3
        assert failures(self.path()) == ["ValueError: boom late"]

    def test_chain_runs_in_order_each_after_the_previous_succeeded(self):
        flaky = self.path("flaky")
        queue.chain(Record(self.path(), 1), testjobs.FailTimes(flaky, 1, "2"), Record(self.path(), 3),
                    queue=self.q)
        self.wait_stats(self.q, ready=1)   # only the head of the chain is queued
        self.drain()
        assert values(self.path()) == ["1", "3"] and values(flaky) == ["2", "2"]
        first, last = runs(self.path())
        assert first.at < runs(flaky)[0].at and runs(flaky)[1].at < last.at  # 3 waited for 2 to succeed
        assert self.failed_rows() == []

    def test_chain_stops_at_a_failure(self):
        queue.chain(Record(self.path(), "a"), FailOnce(self.path(), "b"), Record(self.path(), "c"), queue=self.q)
        self.drain()
        assert values(self.path()) == ["a", "b"]
        assert [r["name"] for r in self.failed_rows()] == ["FailOnce"]
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_hooks_before_after_failing(self):
        calls = []

        def before(job):
            calls.append(("before", job.value, len(runs(job.path))))

        queue.before(before)
        queue.after(lambda job: calls.append(("after", job.value, len(runs(job.path)))))
        queue.failing(lambda job, exc: calls.append(("failing", job.value, type(exc).__name__, str(exc))))
        queue.push(Record(self.path("ok"), "ok"), queue=self.q)
        queue.push(Fail(self.path("bad"), "bad", tries=2), queue=self.q)
        self.drain()
        assert calls == [("before", "ok", 0), ("after", "ok", 1),
                         ("before", "bad", 0), ("before", "bad", 1),
                         ("failing", "bad", "ValueError", "boom bad")]

    def test_a_raising_hook_does_not_stop_the_job(self):
        def broken(job):
            raise RuntimeError("hook bug")

        queue.before(broken)
        queue.after(broken)
        queue.push(Record(self.path(), "fine"), queue=self.q)
        self.drain()
        assert values(self.path()) == ["fine"]
        assert self.failed_rows() == []

    def test_looping_hook_runs_before_each_pop_and_false_pauses(self):
        seen = []

        def loop():
            seen.append(len(runs(self.path())))
            return len(seen) > 3       # paused for the first three turns

        queue.looping(loop)
        queue.push(Record(self.path(), "x"), queue=self.q)
        self.drain()
        assert values(self.path()) == ["x"]
        assert seen[:4] == [0, 0, 0, 0]   # nothing ran while paused
        assert len(seen) >= 5             # one more turn found the queue empty

    def test_timeout_is_a_failed_attempt_and_the_worker_goes_on(self):
        queue.push(testjobs.Slow(self.path("slow"), 30), queue=self.q)
        queue.push(Record(self.path("next"), "next"), queue=self.q)
        started = time.monotonic()
        self.work(lambda: self.failed_rows() and values(self.path("next")))
        assert time.monotonic() - started < 10
        assert values(self.path("slow")) == ["sleep", "sleep"]   # two attempts, neither finished
        assert failures(self.path("slow")) == ["JobTimeout: the job ran past its timeout of 0.5 s"]
        [row] = self.failed_rows()
        summary = str(row["exception"]).splitlines()[0]
        assert row["name"] == "Slow" and summary.endswith("JobTimeout: the job ran past its timeout of 0.5 s")
        assert values(self.path("next")) == ["next"]

    def test_worker_timeout_applies_to_jobs_without_one(self):
        queue.push(Sleep(self.path(), 30, tries=1), queue=self.q)
        started = time.monotonic()
        self.work(self.failed_rows, within=15, timeout=0.5)
        assert time.monotonic() - started < 10
        assert "JobTimeout" in str(self.failed_rows()[0]["exception"])

    def test_a_job_over_its_timeout_does_not_kill_a_later_job(self):
        queue.push(Sleep(self.path("quick"), 0.01, "quick", timeout=0.5), queue=self.q)
        queue.push(Sleep(self.path("later"), 0.8, "later"), queue=self.q)  # no timeout of its own
        self.drain()
        assert values(self.path("later")) == ["later", "later-done"]   # the 0.5 s alarm is gone
        assert self.failed_rows() == []

    def forged(self, body):
        return [
            ("garbage", b"definitely not a payload", "BadPayload: malformed payload"),
            ("unsigned", b"Q1" + b"\0" * 32 + body, "BadPayload: signature mismatch"),
            ("other key", b"Q1" + hmac.digest(b"another-key-0123456789", body, "sha256") + body,
             "BadPayload: signature mismatch"),
        ]

    def test_forged_payloads_go_to_the_failed_store_unpickled(self):
        marker = self.path("unpickled")
        body = pickle.dumps({"v": 1, "job": testjobs.Marker(marker), "chain": [], "until": None})
        signed = queue.pack(Record(self.path("tampered"), "t"))
        tampered = signed[:-5] + bytes([signed[-5] ^ 1]) + signed[-4:]
        cases = self.forged(body) + [("tampered", tampered, "BadPayload: signature mismatch")]
        for name, payload, _ in cases:
            self.put_raw(payload, name)
        queue.push(Record(self.path(), "after"), queue=self.q)
        worker = self.drain()
        assert values(self.path()) == ["after"]               # the worker went on
        assert worker.processed == len(cases) + 1
        assert testjobs.lines(marker) == []                   # never unpickled
        assert values(self.path("tampered")) == []
        rows = {r["name"]: r for r in self.failed_rows()}
        assert sorted(rows) == sorted(name for name, _, _ in cases)
        for name, payload, reason in cases:
            assert str(rows[name]["exception"]).startswith(reason), (name, rows[name]["exception"])
            assert bytes(rows[name]["payload"]) == payload
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)

    def test_a_job_whose_unpickling_raises_goes_to_the_failed_store(self):
        queue.push(testjobs.Unloadable(self.path(), "u"), queue=self.q)
        queue.push(Record(self.path("after"), "after"), queue=self.q)
        self.drain()
        assert values(self.path("after")) == ["after"]
        [row] = self.failed_rows()
        assert row["name"] == "Unloadable"
        text = str(row["exception"])
        assert text.startswith("BadPayload: cannot load the job: RuntimeError: cannot unpickle: u"), text
        assert values(self.path()) == []

    def test_system_exit_in_handle_is_a_failed_attempt_not_a_worker_death(self):
        queue.push(testjobs.Exit(self.path(), "exit", tries=2), queue=self.q)
        queue.push(Record(self.path("after"), "after"), queue=self.q)
        worker = self.drain()
        assert values(self.path()) == ["exit", "exit"]
        assert values(self.path("after")) == ["after"]
        assert failures(self.path()) == ["SystemExit: 3"]
        [row] = self.failed_rows()
        assert str(row["exception"]).startswith("SystemExit: 3")
        assert worker.processed == 3

    def test_a_job_popped_more_often_than_its_tries_is_failed_without_running(self):
        # an attempt that died with its worker (the reservation lapsed) still counts
        queue.push(FailOnce(self.path(), "died"), queue=self.q)
        first = self.pop_one()
        self.lapse(first)
        again = self.pop_one(timeout=10)
        assert self.worker().process(again) == "failed"
        assert values(self.path()) == []
        assert failures(self.path()) and failures(self.path())[0].startswith("MaxAttemptsExceeded")
        [row] = self.failed_rows()
        assert str(row["exception"]).startswith("MaxAttemptsExceeded")

    def test_failed_table_none_keeps_no_failed_jobs(self):
        if self.driver.own_stores and self.driver.name != "database":
            pytest.skip(f"failed_table is the database driver's: the {self.driver.name} driver keeps its own failed jobs")
        store = self.store
        self.project.drivers["database"]["failed_table"] = None
        self.project.write_config()
        self.project.configure()
        self.driver, self.store = queue.driver(), queue.driver("database")
        queue.push(FailOnce(self.path(), "dropped"), queue=self.q)
        queue.push(Record(self.path("after"), "after"), queue=self.q)
        self.drain()
        self.store = store  # the failed table of before, still there
        assert failures(self.path()) == ["ValueError: boom dropped"]
        assert values(self.path("after")) == ["after"]
        assert self.failed_rows() == []
        self.wait_stats(self.q, ready=0, delayed=0, reserved=0)
