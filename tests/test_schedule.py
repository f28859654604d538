"""Periodic jobs (SPEC section 9): the cron parser and next-run computation on the wall clock of a
time zone, the claim of each slot in the state store (once across workers, late rather than lost
when a worker dies before its push), catch_up and overlap, and real worker processes keeping a
1-second entry while one of them is SIGKILLed and restarted."""
import datetime as dt
import os
import signal
import time
import zoneinfo

import pytest

import queue
import testjobs
from conftest import backends
from helpers import ok, wait_for
from testjobs import runs, values

BERLIN, NEW_YORK, UTC = zoneinfo.ZoneInfo("Europe/Berlin"), zoneinfo.ZoneInfo("America/New_York"), dt.timezone.utc


def slots(expression, start, tz, count=3):
    """The next `count` slots of a cron expression after `start`, as wall-clock strings of tz."""
    cron, when, out = queue.Cron(expression), start.timestamp(), []
    for _ in range(count):
        when = cron.next_after(when, tz)
        out.append(dt.datetime.fromtimestamp(when, tz).strftime("%Y-%m-%d %H:%M %Z"))
    return out


@pytest.fixture(autouse=True)
def empty_schedule():
    saved = dict(queue._schedule)
    queue._schedule.clear()
    yield
    queue._schedule.clear()
    queue._schedule.update(saved)


# The parser and the next run ##################################################################
def test_a_daily_time_the_clocks_skip_runs_once_at_the_first_valid_time_after_it():
    assert slots("30 2 * * *", dt.datetime(2026, 3, 28, 12, tzinfo=BERLIN), BERLIN) == [
        "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"]
    assert slots("30 2 * * *", dt.datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), NEW_YORK) == [
        "2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT", "2026-03-10 02:30 EDT"]


def test_a_daily_time_the_clocks_repeat_runs_once_at_the_first_of_the_two():
    assert slots("30 2 * * *", dt.datetime(2026, 10, 24, 12, tzinfo=BERLIN), BERLIN) == [
        "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET", "2026-10-27 02:30 CET"]
    assert slots("30 1 * * *", dt.datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), NEW_YORK) == [
        "2026-11-01 01:30 EDT", "2026-11-02 01:30 EST", "2026-11-03 01:30 EST"]


def test_an_every_minute_entry_through_both_changes_never_repeats_a_slot():
    for tz, start in ((BERLIN, dt.datetime(2026, 3, 29, 1, 50, tzinfo=BERLIN)),
                      (BERLIN, dt.datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN)),
                      (NEW_YORK, dt.datetime(2026, 11, 1, 0, 50, tzinfo=NEW_YORK))):
        cron, when, seen = queue.Cron("* * * * *"), start.timestamp(), []
        for _ in range(200):
            when = cron.next_after(when, tz)
            seen.append(when)
        assert seen == sorted(set(seen)), "slots strictly increase"
        assert all(b - a <= 3600 + 60 for a, b in zip(seen, seen[1:]))


def test_month_ends_leap_days_steps_lists_names_and_macros():
    assert slots("0 0 31 * *", dt.datetime(2026, 1, 31, 1, tzinfo=UTC), UTC) == [
        "2026-03-31 00:00 UTC", "2026-05-31 00:00 UTC", "2026-07-31 00:00 UTC"]
    assert slots("0 12 29 FEB *", dt.datetime(2026, 1, 1, tzinfo=UTC), UTC, 2) == [
        "2028-02-29 12:00 UTC", "2032-02-29 12:00 UTC"]
    assert slots("*/20 9-10 * * *", dt.datetime(2026, 6, 1, 9, 5, tzinfo=UTC), UTC, 5) == [
        "2026-06-01 09:20 UTC", "2026-06-01 09:40 UTC", "2026-06-01 10:00 UTC", "2026-06-01 10:20 UTC",
        "2026-06-01 10:40 UTC"]
    assert slots("0 9 * * MON-FRI", dt.datetime(2026, 12, 4, 10, tzinfo=BERLIN), BERLIN) == [  # a Friday
        "2026-12-07 09:00 CET", "2026-12-08 09:00 CET", "2026-12-09 09:00 CET"]
    assert slots("5,35 0 1 jan,jul *", dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC), UTC) == [
        "2026-01-01 00:35 UTC", "2026-07-01 00:05 UTC", "2026-07-01 00:35 UTC"]
    assert slots("0 0 * * 7", dt.datetime(2026, 12, 7, tzinfo=UTC), UTC, 1) == ["2026-12-13 00:00 UTC"]  # Sunday
    assert slots("0 0 13 * FRI", dt.datetime(2026, 1, 1, tzinfo=UTC), UTC, 3) == [  # the 13th or a Friday
        "2026-01-02 00:00 UTC", "2026-01-09 00:00 UTC", "2026-01-13 00:00 UTC"]
    assert slots("@hourly", dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC), UTC, 1) == ["2026-01-01 01:00 UTC"]
    assert slots("@daily", dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC), UTC, 1) == ["2026-01-02 00:00 UTC"]
    assert slots("@weekly", dt.datetime(2026, 12, 7, tzinfo=UTC), UTC, 1) == ["2026-12-13 00:00 UTC"]
    assert slots("@monthly", dt.datetime(2026, 12, 7, tzinfo=UTC), UTC, 1) == ["2027-01-01 00:00 UTC"]


@pytest.mark.parametrize("expression, words", [
    ("* * * *", "five fields"), ("61 * * * *", "minute field '61'"), ("* 24 * * *", "hour field"),
    ("0 0 31 2 *", "never runs"), ("a * * * *", "not a number"), ("*/0 * * * *", "minute field"),
    ("0 0 * 13 *", "month field"), ("@often", "five fields"), ("1-2-3 * * * *", "minute field")])
def test_a_malformed_expression_is_refused_in_one_line_that_names_it(expression, words):
    with pytest.raises(queue.QueueError) as info:
        queue.schedule(expression, testjobs.Noop())
    assert expression in str(info.value) and words in str(info.value) and "\n" not in str(info.value)


def test_schedule_takes_a_cron_or_every_and_a_job():
    with pytest.raises(queue.QueueError, match="one of them"):
        queue.schedule("* * * * *", testjobs.Noop(), every=5)
    with pytest.raises(queue.QueueError, match="job"):
        queue.schedule("* * * * *", None)
    with pytest.raises(queue.QueueError, match="at least 1 second"):
        queue.schedule(every=0.5, job=testjobs.Noop())
    with pytest.raises(queue.ConfigError, match="Mars/Olympus"):
        queue.schedule("* * * * *", testjobs.Noop(), tz="Mars/Olympus")
    entry = queue.schedule(every="10 minutes", job=testjobs.Noop())
    assert entry.timing.next_after(1000.0, UTC) == 1200.0, "on whole multiples of the interval"


# Claiming slots ###############################################################################
def scheduler():
    return queue._Scheduler(queue._Flag())


@backends("sqlite", "mysql", "redis", "memory")
class TestSlots:
    """Schedulers ticking at chosen times (no real wait): what they push."""

    @pytest.fixture(autouse=True)
    def _setup(self, project, tmp_path):
        self.project, self.path = project, str(tmp_path / "record")
        self.t0 = 1_800_000_000.0  # a whole multiple of 10

    def pushed(self):
        counts = queue.driver().stats()
        return sum(c["ready"] + c["delayed"] for c in counts.values())

    def test_a_new_entry_starts_at_its_first_slot_after_it_was_seen_and_each_slot_goes_once(self):
        queue.schedule(every=10, job=testjobs.Record(self.path, "tick"))
        first, second = scheduler(), scheduler()  # two workers
        assert first.tick(self.t0 + 5) == [] and second.tick(self.t0 + 5) == []
        assert self.pushed() == 0, "no slot before it was first seen"
        assert first.tick(self.t0 + 10.01) == ["Record every 10 s"]
        assert second.tick(self.t0 + 10.02) == [], "the other worker finds the slot taken"
        assert first.tick(self.t0 + 11) == [] and second.tick(self.t0 + 19.9) == []
        assert second.tick(self.t0 + 20.01) == ["Record every 10 s"] and first.tick(self.t0 + 20.5) == []
        assert self.pushed() == 2
        late = scheduler()  # a worker started later sees what was pushed
        assert late.tick(self.t0 + 25) == [] and late.tick(self.t0 + 30.2) == ["Record every 10 s"]
        assert self.pushed() == 3
        [row] = queue.scheduled()
        assert row["runs"] == 3 and row["last"] == self.t0 + 30 and row["next"] >= self.t0 + 40

    def test_slots_missed_while_no_worker_ran_are_pushed_once_or_not_at_all(self):
        queue.schedule(every=10, job=testjobs.Record(self.path, "caught"), name="caught")
        queue.schedule(every=10, job=testjobs.Record(self.path, "skipped"), name="skipped", catch_up=False)
        before = scheduler()
        before.tick(self.t0 + 1)
        assert sorted(before.tick(self.t0 + 10.01)) == ["caught", "skipped"]
        back = scheduler()  # no worker ran for 95 s: nine slots missed
        assert back.tick(self.t0 + 105) == ["caught"], "once for the missed slots; catch_up=False: none"
        assert back.tick(self.t0 + 106) == []
        assert sorted(back.tick(self.t0 + 110.01)) == ["caught", "skipped"], "then on time again"
        assert self.pushed() == 5

    def test_overlap_false_skips_a_slot_while_the_last_run_is_still_queued(self):
        queue.schedule(every=10, job=testjobs.Record(self.path, "one"), overlap=False, name="one at a time")
        worker = scheduler()
        worker.tick(self.t0 + 1)
        assert worker.tick(self.t0 + 10.01) == ["one at a time"]
        assert worker.tick(self.t0 + 20.01) == [], "the last one is still queued"
        assert self.pushed() == 1
        queue.Worker(queue.driver(), poll=0, stop_when_empty=True).run()
        assert values(self.path) == ["one"]
        assert worker.tick(self.t0 + 30.01) == ["one at a time"], "it ran: the next slot goes"

    def test_a_slot_claimed_by_a_worker_that_died_before_its_push_is_pushed_late_by_another(self):
        entry = queue.schedule(every=10, job=testjobs.Record(self.path, "late"), name="late")
        worker = scheduler()
        worker.tick(self.t0 + 1)
        store = entry.store()
        assert store.lock(entry.key(f"slot:{self.t0 + 10!r}"), "a worker that was SIGKILLed", queue._SLOT_LEASE)
        assert worker.tick(self.t0 + 10.01) == [], "the slot is claimed"
        store.clock.advance(queue._SLOT_LEASE + 1)  # its lease ends: nobody marked the slot done
        again = scheduler()
        assert again.tick(self.t0 + 15) == ["late"], "pushed late, not lost"
        assert again.tick(self.t0 + 16) == [] and self.pushed() == 1

    def test_schedule_lists_every_entry_with_its_last_and_next_run(self):
        queue.schedule("*/5 * * * *", testjobs.Record(self.path, "x"), name="five", queue="reports", tz="Europe/Berlin")
        [row] = queue.scheduled()
        assert (row["name"], row["when"], row["tz"], row["queue"], row["last"], row["runs"]) == (
            "five", "*/5 * * * *", "Europe/Berlin", "reports", None, 0)
        assert row["next"] > time.time() - 1 and row["next"] % 300 == 0


def test_metrics_and_the_cli_show_the_schedule(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    with open(os.path.join(sqlite_project.folder, "jobs", "__init__.py"), "w") as f:
        f.write("import queue, testjobs\n"
                f"queue.schedule('0 4 * * *', testjobs.Record({path!r}, 'nightly'), name='nightly report')\n")
    out = ok(sqlite_project.cli("schedule"))
    assert "nightly report" in out and "0 4 * * *" in out and "never" in out
    queue.schedule("0 4 * * *", testjobs.Record(path, "nightly"), name="nightly report")
    worker = scheduler()
    worker.tick(1_800_000_000.0)
    worker.tick(1_800_000_000.0 + 86400 + 1)
    text = queue.metrics()
    assert 'queue_schedule_runs_total{entry="nightly report"} 1' in text
    assert 'queue_schedule_last_run_timestamp_seconds{entry="nightly report"}' in text
    assert any(row["name"] == "nightly report" for row in queue.dashboard_state()["schedule"])


# Real workers #################################################################################
@backends("sqlite", "mysql")  # redis: the same claims, tested in TestSlots and benchmarks/schedule_soak.py
def test_workers_push_each_second_once_while_one_is_killed_and_restarted(project, tmp_path, spawn):
    path = str(tmp_path / "record")
    with open(os.path.join(project.folder, "jobs", "__init__.py"), "w") as f:
        f.write(f"import queue, testjobs\nqueue.schedule(every=1, job=testjobs.Record({path!r}, 'tick'))\n")
    queue.driver().state_store().value_of("first-use")  # a new SQLite file: made here, not by 3 workers at once
    workers = [spawn(project, "work") for _ in range(3)]
    wait_for(lambda: len(values(path)) >= 3, 30, message="the schedule did not start")
    killed = workers[0]
    killed.proc.send_signal(signal.SIGKILL)
    killed.wait(10)
    time.sleep(2)  # two slots with one worker down  # noqa: the scenario, not a synchronisation
    workers[0] = spawn(project, "work")
    wait_for(lambda: len(values(path)) >= 10, 30, message="the schedule stopped")
    for worker in workers:
        worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(30)
    # Each push is logged by the worker that claimed its slot, once it pushed. The runs cannot say
    # which slot they are of: a job the killed worker was running runs again retry_after later.
    pushed = sorted(line.rsplit("the job of ", 1)[1].strip() for worker in [killed, *workers]
                    for line in worker.lines if "pushed the job of " in line)
    assert len(pushed) == len(set(pushed)) >= 9, f"a slot was pushed twice (or not logged): {pushed}"
    seconds = [int(run.at) for run in runs(path)]
    span = max(seconds) - min(seconds) + 1
    assert len(set(seconds)) >= span - 2, f"slots missed while two workers lived: {span} s, {sorted(seconds)}"
