"""Flow control (SPEC section 6) on SQLite, MariaDB and, where the state table serves another
driver, RabbitMQ (its state lives in the SQLite database of the failed store):

- throttle(key, allow, every): at most `allow` starts in any `every` seconds; retry_after says
  when a slot frees; the limit holds across threads (connections) and worker processes;
- funnel(key, limit, hold): at most `limit` holders at once; a slot frees at block exit (also
  on an exception) or `hold` seconds after a holder that never exits, whose late exit then
  frees nothing of its successor's;
- middleware: RateLimited releases a job over the limit and it runs later, exactly once;
  WithoutOverlapping never lets two bodies with the same key run at once (2 worker processes);
  ThrottlesExceptions releases the attempts after `max_exceptions` raised ones until `decay`;
- unique jobs: a second push returns False and stores nothing while the first is queued or
  running; a new push is stored once the first ended (done, failed, deleted) or after
  unique_for; 100 concurrent pushes from 8 threads store exactly one job;
- a job with no middleware and no unique_for makes no state-table query (what a worker reports
  about itself every few seconds, SPEC section 7, aside).

Time is the driver's clock where it can be (queue.driver("database").clock.advance moves the
store's clock forward: leases and delays lapse without waiting); real-time tests poll with a
deadline. Job bodies record into files with one O_APPEND write per event (tests/flowjobs.py).
"""
import collections
import sqlite3
import threading
import time

import pytest

import flowjobs
import queue
from conftest import backends, unique
from flowjobs import events, most_running, most_surely_within
from helpers import dialect, log_lines, sql, stop, wait_worker
from testjobs import wait_for

pytestmark = backends("sqlite", "mysql", "amqp", "redis", "memory", "beanstalkd")  # sqs: its state is the database driver's, tested here on sqlite
on_the_databases = backends("sqlite", "mysql")  # the tests of the database driver only


# Helpers ######################################################################################
def state():
    """The StateStore that keeps the limits: the default driver's (the database driver's for amqp)."""
    return queue.driver().state_store()


MARGIN = queue._SLOT_MARGIN + 0.01  # a slot's lease outlasts its period by queue._SLOT_MARGIN


def advance(seconds):
    """Move the state store's clock (its driver's: for the database driver also the jobs' clock) forward."""
    state().clock.advance(seconds)


def tables(project):
    options = project.drivers["database"]
    return (options.get("table", "jobs"), options.get("failed_table", "failed_jobs"),
            options.get("state_table", "queue_state"))


def stored(project):
    """How many jobs the project's queues hold (RabbitMQ: messages ready in its queue)."""
    if project.backend == "amqp":
        return queue.driver("amqp").stats([project.queue])[project.queue]["ready"]
    if project.backend == "beanstalkd":  # a server of the whole run: this test's tube only
        return sum(queue.driver().stats([project.queue])[project.queue].values())
    return sum(sum(c.values()) for c in queue.driver().stats().values())


def failed(project):
    """(name, first line of the exception) of every job in the failed store."""
    return [(row["name"], str(row["exception"]).splitlines()[0]) for row in queue.driver().failed_store().failed_jobs()]


def state_rows(project):
    """The live entries of the state store (a plain job adds none)."""
    store = state()
    return sorted((name, value) for prefix in map(chr, range(32, 127)) for name, value in store.entries(prefix).items())


def work_until_empty(project):
    """`python queue.py work --stop-when-empty`; for a driver whose jobs live in this process, a
    worker here."""
    if queue.driver().shared:
        result = project.cli("work", "--stop-when-empty")
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert queue.Worker(queue.driver(), poll=0, stop_when_empty=True).run() == 0


def start_workers(spawn, project, count):
    """`count` plain `python queue.py work` processes, returned once each has made its first pop.

    The state store is opened first, by this process: workers that open a brand-new SQLite file
    at once can die with "cannot open SQLite database ...: database is locked" (about 1 start in
    100, a first-use race of `PRAGMA journal_mode=WAL`), which is not what these tests are about."""
    if not queue.driver().shared:
        pytest.skip(f"worker processes: the {project.backend} driver's jobs live in this process only")
    state().value_of("first-use")
    workers = [spawn(project, "work") for _ in range(count)]
    for worker in workers:
        wait_worker(worker, lambda w=worker: "driver, queues" in w.output, 30, "a worker did not start")
    return workers


def run_due(worker, limit=200):
    """Run, in this process, every job that is due now (a released one is due again only
    when its delay has passed); return their statuses in order."""
    statuses = []
    for _ in range(limit):
        message = worker.driver.pop(worker.queues)
        if message is None:
            return statuses
        statuses.append(worker.process(message))
    raise AssertionError(f"still jobs due after {limit} attempts: {collections.Counter(statuses)}")


def in_process_worker():
    return queue.Worker(queue.driver(), poll=0)


def enter(limit):
    """Enter a throttle or funnel and return (ok, limit): for limits that are not exited."""
    return limit.__enter__(), limit


def together(count, fn):
    """Run fn(i) in `count` threads released at once by a barrier; return the results in order.

    The state store is opened first, in this thread (see start_workers: the same first-use race
    of a brand-new SQLite file fails a thread with ConnectionFailed "database is locked")."""
    state().value_of("first-use")
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def run(i):
        try:
            barrier.wait(10)
            results[i] = fn(i)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


# throttle #####################################################################################
def test_throttle_denies_the_extra_start_and_admits_again_after_the_period(project):
    key = unique("mail")
    admitted = []
    for _ in range(4):
        with queue.throttle(key, allow=3, every=10) as ok:
            admitted.append(ok)
    assert admitted == [True, True, True, False]

    denied = queue.throttle(key, allow=3, every=10)
    with denied as ok:
        assert not ok
    assert 9.0 < denied.retry_after <= 10.0 + MARGIN, denied.retry_after

    advance(denied.retry_after - 0.5)  # half a second before the first slot frees: still full
    with queue.throttle(key, allow=3, every=10) as ok:
        assert not ok
    advance(0.5 + MARGIN)  # the period of the first start has passed
    with queue.throttle(key, allow=3, every=10) as ok:
        assert ok, "the first start's slot was not free after its period"
    advance(10 + MARGIN)  # every period has passed
    admitted = []
    for _ in range(4):
        with queue.throttle(key, allow=3, every=10) as ok:
            admitted.append(ok)
    assert admitted == [True, True, True, False], "after the period, N starts again and no more"


def test_throttle_in_real_time_admits_once_the_period_has_passed(project):
    key = unique("api")
    first = time.monotonic()
    for _ in range(2):
        with queue.throttle(key, allow=2, every=0.5) as ok:
            assert ok
    denied = queue.throttle(key, allow=2, every=0.5)
    with denied as ok:
        assert not ok
    assert 0 < denied.retry_after <= 0.5 + MARGIN

    def admitted():
        with queue.throttle(key, allow=2, every=0.5) as ok:
            return ok and time.monotonic()
    at = wait_for(admitted, 5, interval=0.01, message="no start admitted within 5 s of a 0.5 s period")
    assert at - first >= 0.5 - 0.02, f"admitted {at - first:.3f} s after the first start of a 0.5 s period"


def test_throttle_holds_across_threads_each_with_its_own_connection(project):
    key = unique("race")

    def tries(_):
        won = 0
        for _ in range(10):
            with queue.throttle(key, allow=5, every=60) as ok:
                won += ok
        return won
    assert sum(together(8, tries)) == 5, "80 concurrent tries of a 5-per-60-s throttle"


def test_throttle_rejects_bad_arguments(sqlite_project):
    for args in [("", 1, 1), ("k", 0, 1), ("k", 1, 0), ("k", "many", 1), (None, 1, 1)]:
        with pytest.raises(queue.QueueError) as info:
            queue.throttle(*args)
        assert "\n" not in str(info.value)


# funnel #######################################################################################
def test_funnel_admits_limit_holders_denies_the_next_and_frees_on_exit(project):
    key = unique("invoice")
    with queue.funnel(key, limit=2, hold=30) as first:
        with queue.funnel(key, limit=2, hold=30) as second:
            third = queue.funnel(key, limit=2, hold=30)
            with third as ok:
                assert (first, second, ok) == (True, True, False)
            assert 0 < third.retry_after <= 30 + MARGIN
            with queue.funnel(key, limit=2, hold=30) as ok:
                assert not ok, "a denied holder's exit freed a slot"
        with queue.funnel(key, limit=2, hold=30) as ok:
            assert ok, "the slot of a holder that exited is not free"
    with queue.funnel(key, limit=2, hold=30) as one, queue.funnel(key, limit=2, hold=30) as two:
        assert one and two

    with pytest.raises(ValueError):
        with queue.funnel(key, limit=1, hold=30) as ok:
            assert ok
            raise ValueError("the block raised")
    with queue.funnel(key, limit=1, hold=30) as ok:
        assert ok, "a block that raised kept its slot"


def test_funnel_holder_that_never_exits_lapses_after_hold(project):
    key = unique("lapse")
    ok, stale = enter(queue.funnel(key, limit=1, hold=5))
    assert ok
    with queue.funnel(key, limit=1, hold=5) as ok:
        assert not ok
    advance(4.5)
    with queue.funnel(key, limit=1, hold=5) as ok:
        assert not ok, "the slot lapsed before `hold`"
    advance(0.5 + MARGIN)
    with queue.funnel(key, limit=1, hold=5) as newcomer:
        assert newcomer, "the slot of a holder that never exited did not lapse after `hold`"
        stale.__exit__(None, None, None)  # the lapsed holder ends late: it frees nothing of the newcomer's
        with queue.funnel(key, limit=1, hold=5) as ok:
            assert not ok, "a lapsed holder's late exit freed its successor's slot"
    with queue.funnel(key, limit=1, hold=5) as ok:
        assert ok


def test_funnel_lapse_in_real_time(project):
    key = unique("lapse")
    first = time.monotonic()
    ok, stale = enter(queue.funnel(key, limit=1, hold=0.5))
    assert ok

    def admitted():
        with queue.funnel(key, limit=1, hold=0.5) as ok:
            return ok and time.monotonic()
    at = wait_for(admitted, 5, interval=0.01, message="a dead holder's slot did not lapse within 5 s")
    assert at - first >= 0.5 - 0.02, f"a 0.5 s hold lapsed after {at - first:.3f} s"
    stale.__exit__(None, None, None)


def test_funnel_holds_across_threads_each_with_its_own_connection(project):
    key = unique("race")
    held = together(8, lambda i: enter(queue.funnel(key, limit=3, hold=30)))
    assert sum(ok for ok, _ in held) == 3, "8 concurrent holders of a 3-slot funnel"
    for _, limit in held:
        limit.__exit__(None, None, None)
    held = [enter(queue.funnel(key, limit=3, hold=30)) for _ in range(4)]
    assert [ok for ok, _ in held] == [True, True, True, False], "the slots were not all freed"
    for _, limit in held:
        limit.__exit__(None, None, None)


# RateLimited ##################################################################################
@on_the_databases
def test_rate_limited_releases_the_job_over_the_limit_and_runs_it_later(project, tmp_path):
    path, key = str(tmp_path / "record"), unique("rl")
    tags = [f"j{i}" for i in range(5)]
    assert queue.push(*(flowjobs.Limited(path, tag, key, allow=2, every=10) for tag in tags))
    worker = in_process_worker()

    assert collections.Counter(run_due(worker)) == {"done": 2, "released": 3}
    assert len(events(path, "start")) == 2
    assert run_due(worker) == [], "a released job came back before a slot could be free"
    advance(10 + MARGIN)
    assert collections.Counter(run_due(worker)) == {"done": 2, "released": 1}
    advance(10 + MARGIN)
    assert run_due(worker) == ["done"]

    starts = events(path, "start")
    assert sorted(e.tag for e in starts) == tags, "every job runs exactly once"
    assert sorted(e.attempt for e in starts) == [1] * 5, "a release by middleware spends none of the job's tries"
    assert failed(project) == []
    assert stored(project) == 0


def test_rate_limited_across_worker_processes(project, tmp_path, spawn):
    path, key = str(tmp_path / "record"), unique("rl")
    tags = [f"j{i}" for i in range(8)]
    workers = start_workers(spawn, project, 2)
    queue.push(*(flowjobs.Limited(path, tag, key, allow=2, every=0.5) for tag in tags))
    wait_worker(workers, lambda: len(events(path, "end")) == len(tags), 30, "the jobs did not all run")
    stop(*workers)

    starts = events(path, "start")
    assert sorted(e.tag for e in starts) == tags, "every job runs exactly once"
    assert failed(project) == []
    assert {e.attempt for e in starts} == {1}, "a release by middleware spends none of the job's tries"
    assert any(log_lines(w, "released") for w in workers), "no job was released by the limiter"
    times = [e.at for e in starts]
    # 8 starts at 2 per 0.5 s: the 7th and 8th start at least 1.5 s after the first (less 0.1 s
    # for the delay between taking a slot and writing the record); and no 3 slot takes surely
    # fell within 0.5 s (each take happened between the attempt's entering its middleware and
    # its body's start; without the limit, all 8 start within 0.2 s)
    assert max(times) - min(times) >= 1.5 - 0.1, sorted(t - min(times) for t in times)
    assert most_surely_within(starts, 0.5) <= 2, sorted((e.entered - min(times), e.at - min(times)) for e in starts)


# WithoutOverlapping ###########################################################################
def test_without_overlapping_never_runs_two_bodies_with_one_key_at_once(project, tmp_path, spawn):
    path, key = str(tmp_path / "record"), unique("user")
    tags = [f"j{i}" for i in range(6)]
    workers = start_workers(spawn, project, 2)
    queue.push(*(flowjobs.Exclusive(path, tag, key, seconds=0.15, release_after=0.05) for tag in tags))
    wait_worker(workers, lambda: len(events(path, "end")) == len(tags), 30, "the jobs did not all run")
    stop(*workers)

    recorded = events(path)
    assert sorted(e.tag for e in recorded if e.event == "start") == tags, "every job runs exactly once"
    assert most_running(recorded) == 1, "two jobs with the same key ran at the same time"
    assert {e.attempt for e in recorded} == {1}, "a release by middleware spends none of the job's tries"
    # a job released by the middleware proves the two workers met on the key: one worker alone
    # takes its next job only after the last one freed the key
    assert any(log_lines(w, "released") for w in workers), "no job was released: the workers never met on the key"
    assert failed(project) == []


def renewal_case(project, tmp_path, spawn, expire_after, seconds):
    path, key = str(tmp_path / "record"), unique("long")
    if project.backend == "amqp":  # a busy worker's prefetch would hold the other job until the key is free
        project.drivers["amqp"]["prefetch"] = 1
        project.write_config()
    workers = start_workers(spawn, project, 2)
    queue.push(*(flowjobs.Exclusive(path, tag, key, seconds=seconds, release_after=0.05, expire_after=expire_after)
                 for tag in ("j0", "j1")))
    wait_worker(workers, lambda: len(events(path, "end")) == 2, 30, "the jobs did not both run")
    stop(*workers)
    recorded = events(path)
    start = min(e.at for e in recorded)
    assert most_running(recorded) == 1, (
        f"the slot of a job that was still running lapsed after expire_after={expire_after} s: "
        f"{[(e.event, e.tag, e.pid, round(e.at - start, 3)) for e in recorded]}")
    assert failed(project) == []


def test_without_overlapping_slot_is_renewed_while_a_long_job_runs(project, tmp_path, spawn):
    """A job that runs longer than its slot's `expire_after` keeps the slot: the worker's keeper
    renews it while the job runs, so a second worker never gets in (the slot lapses only
    `expire_after` seconds after its holder died)."""
    renewal_case(project, tmp_path, spawn, expire_after=1.5, seconds=2.2)


def test_without_overlapping_slot_shorter_than_the_keepers_period_is_renewed(sqlite_project, tmp_path, spawn):
    """The same with an expire_after (0.3 s) shorter than the period at which the keeper renews a
    job's reservation (retry_after / 3 = 0.67 s here)."""
    renewal_case(sqlite_project, tmp_path, spawn, expire_after=0.3, seconds=1.2)


@on_the_databases
def test_without_overlapping_runs_within_a_second_of_the_holder_ending_by_default(project, tmp_path):
    """Without release_after, a job that meets a held key looks again within a second, not when
    the holder's slot would lapse (SPEC 6), and its releases spend none of its tries."""
    path, key = str(tmp_path / "record"), unique("user")
    ok, holder = enter(queue.funnel(key, limit=1, hold=20))  # WithoutOverlapping's slot, held elsewhere
    assert ok
    queue.push(flowjobs.Exclusive(path, "j", key, seconds=0, expire_after=20))
    worker = in_process_worker()
    assert run_due(worker) == ["released"]
    for _ in range(4):  # more looks than the job has tries: none of them counts
        advance(1 + MARGIN)
        assert run_due(worker) == ["released"], "the slot is still held"
    holder.__exit__(None, None, None)  # the slot frees at once
    advance(1 + MARGIN)
    assert run_due(worker) == ["done"]
    assert [(e.event, e.attempt) for e in events(path)] == [("start", 1), ("end", 1)]


# ThrottlesExceptions ##########################################################################
@on_the_databases
def test_throttles_exceptions_releases_attempts_after_max_exceptions_until_decay(project, tmp_path):
    path, key = str(tmp_path / "record"), unique("flaky")
    queue.push(flowjobs.Erratic(path, "a", most=2, decay=30, key=key))
    worker = in_process_worker()

    assert run_due(worker) == ["released"] * 3
    assert [e.attempt for e in events(path, "run")] == [1, 2], "the 3rd attempt ran after 2 raised"

    queue.push(flowjobs.Erratic(path, "b", most=2, decay=30, key=key, succeed_at=1))
    assert run_due(worker) == ["released"], "another job with the same key ran during the decay"
    advance(29)
    assert run_due(worker) == [], "released for less than the decay"
    assert len(events(path, "run")) == 2

    advance(1.5)  # the decay has passed: the key admits attempts again
    run_due(worker)
    runs = events(path, "run")
    assert [e.attempt for e in runs if e.tag == "b"] == [1], "the other job ran once, after the decay"
    assert [e.attempt for e in runs if e.tag == "a"][:3] == [1, 2, 3], "a release by middleware spends no try"
    assert failed(project) == []


def test_throttles_exceptions_across_worker_processes(project, tmp_path, spawn):
    path, key = str(tmp_path / "record"), unique("flaky")
    workers = start_workers(spawn, project, 1)
    # decay 2 s: attempts 1 and 2 must raise within it, even on a loaded machine
    queue.push(flowjobs.Erratic(path, "a", most=2, decay=2.0, key=key, succeed_at=3))
    wait_worker(workers, lambda: len(events(path, "run")) == 3, 30, "the job did not run 3 times")
    stop(*workers)

    runs = events(path, "run")
    assert [e.attempt for e in runs] == [1, 2, 3], "held back without running, and without spending a try"
    assert runs[2].at - runs[1].at >= 2.0 - 0.05, "attempt 4 ran before the decay had passed"
    assert failed(project) == []


# Unique jobs ##################################################################################
def test_unique_push_stores_nothing_while_one_is_queued_and_again_after_it_ran(project, tmp_path):
    path = str(tmp_path / "record")
    assert queue.push(flowjobs.UniqueRun(path, "a")) is True
    assert queue.push(flowjobs.UniqueRun(path, "b")) is False
    assert stored(project) == 1
    assert queue.push(flowjobs.UniqueRun(path, "c", ident="two")) is True, "another unique_id is another job"
    assert queue.push(flowjobs.UniqueRun(path, "d", ident="two")) is False
    assert stored(project) == 2

    work_until_empty(project)
    assert sorted(e.tag for e in events(path, "run")) == ["a", "c"]
    assert stored(project) == 0

    assert queue.push(flowjobs.UniqueRun(path, "e")) is True, "the lock outlived the job"
    assert stored(project) == 1


@on_the_databases
def test_unique_without_unique_id_is_one_per_class(project, tmp_path):
    path = str(tmp_path / "record")
    assert queue.push(flowjobs.UniqueByClass(path, "a")) is True
    assert queue.push(flowjobs.UniqueByClass(path, "b")) is False
    assert stored(project) == 1


def test_unique_push_stores_nothing_while_one_is_running(project, tmp_path, spawn):
    path, gate = str(tmp_path / "record"), str(tmp_path / "gate")
    assert queue.push(flowjobs.UniqueGate(path, "a", gate=gate)) is True
    workers = start_workers(spawn, project, 1)
    wait_worker(workers, lambda: events(path, "start"), 30, "the job did not start")
    assert queue.push(flowjobs.UniqueGate(path, "b", gate=gate)) is False, "pushed while its twin runs"
    open(gate, "w").close()
    wait_worker(workers, lambda: events(path, "end"), 30, "the job did not end")
    assert wait_for(lambda: queue.push(flowjobs.UniqueGate(path, "c", gate=gate)), 10), \
        "the lock was not freed after the job ended"
    wait_worker(workers, lambda: len(events(path, "end")) == 2, 30, "the new push did not run")
    stop(*workers)
    assert [e.tag for e in events(path, "start")] == ["a", "c"]


@pytest.mark.parametrize("job", [flowjobs.UniqueFails, flowjobs.UniqueDeletes])
def test_unique_lock_is_freed_when_the_job_fails_or_deletes_itself(project, tmp_path, job):
    path = str(tmp_path / "record")
    assert queue.push(job(path, "a")) is True
    assert queue.push(job(path, "b")) is False
    work_until_empty(project)
    assert [e.tag for e in events(path, "run")] == ["a"]
    assert len(failed(project)) == (1 if job is flowjobs.UniqueFails else 0)
    assert queue.push(job(path, "c")) is True, "the lock outlived the job"
    assert stored(project) == 1


def test_unique_lock_lapses_after_unique_for(project, tmp_path):
    path = str(tmp_path / "record")
    assert queue.push(flowjobs.UniqueRun(path, "a")) is True
    advance(60 + MARGIN)
    assert queue.push(flowjobs.UniqueRun(path, "b")) is True, "the lock outlived unique_for"
    assert stored(project) == 2


def test_a_refused_unique_push_does_not_extend_the_lock(project, tmp_path):
    """The lock lapses unique_for seconds after the push that took it, however many pushes were
    refused meanwhile (else a job pushed more often than unique_for, whose queued twin was lost,
    would never be stored again)."""
    path = str(tmp_path / "record")
    assert queue.push(flowjobs.UniqueRun(path, "a")) is True
    for _ in range(3):
        advance(19)
        assert queue.push(flowjobs.UniqueRun(path, "refused")) is False, "the lock lapsed before unique_for"
    advance(3 + MARGIN)  # 60.01 s after the first push
    assert queue.push(flowjobs.UniqueRun(path, "b")) is True, \
        "the lock did not lapse unique_for after it was taken: a refused push extended it"


def test_unique_concurrent_pushes_store_exactly_one_job(project, tmp_path):
    path = str(tmp_path / "record")

    def pushes(i):
        return [queue.push(flowjobs.UniqueRun(path, f"t{i}-{n}")) for n in range(i, 100, 8)]
    results = [ok for batch in together(8, pushes) for ok in batch]
    assert len(results) == 100
    assert results.count(True) == 1, f"{results.count(True)} of 100 concurrent pushes returned True"
    assert results.count(False) == 99
    assert stored(project) == 1


def test_unique_for_must_be_seconds(sqlite_project, tmp_path):
    queue.driver().create_tables()
    job = flowjobs.UniqueRun(str(tmp_path / "record"))
    job.unique_for = "an hour"
    with pytest.raises(queue.QueueError) as info:
        queue.push(job)
    assert "unique_for" in str(info.value) and "\n" not in str(info.value)
    assert stored(sqlite_project) == 0


# No cost for jobs that do not use it ##########################################################
def test_a_plain_job_adds_no_state_table_row(project, tmp_path, spawn):
    path = str(tmp_path / "record")
    with queue.throttle(unique("seed"), allow=1, every=3600) as ok:  # the state table exists and has a row
        assert ok
    before = state_rows(project)
    tags = [f"p{i}" for i in range(50)]
    queue.push(*(flowjobs.Plain(path, tag) for tag in tags))
    workers = start_workers(spawn, project, 1)
    wait_worker(workers, lambda: len(events(path, "run")) == len(tags), 30, "the jobs did not all run")
    stop(*workers)
    assert sorted(e.tag for e in events(path, "run")) == sorted(tags)

    after = state_rows(project)
    markers = project.backend != "redis" and dialect(project) == "mysql"
    new = [row for row in after if row not in before]
    # allowed: MySQL's exactly-once markers of the pushes, and what a worker reports about itself
    # every few seconds, whatever it runs (SPEC section 7: its beat, and the metrics it batches)
    beat = ("worker:", "metric:", "series:")
    assert [row for row in new if not ((markers and row[0].startswith("once:")) or row[0].startswith(beat))] == [], \
        "plain jobs wrote to the state table"
    assert [row for row in before if row not in after] == [], "plain jobs changed the state table"


def test_a_plain_job_sends_no_state_table_statement_sqlite(sqlite_project, tmp_path):
    """SQLite's trace of this thread's connection: pushing and running 50 plain jobs in this
    process sends no statement that names the state table."""
    path = str(tmp_path / "record")
    driver = queue.driver()
    statements = []
    conn = driver._conn()  # this thread's connection, which push() and an in-process worker use
    conn.set_trace_callback(statements.append)
    try:
        queue.push(*(flowjobs.Plain(path, f"p{i}") for i in range(25)))
        for i in range(25, 50):
            queue.push(flowjobs.Plain(path, f"p{i}"))
        assert queue.Worker(driver, poll=0, stop_when_empty=True).run() == 0
    finally:
        try:
            conn.set_trace_callback(None)
        except sqlite3.ProgrammingError:
            pass  # the worker closed the connection when it stopped
    assert len(events(path, "run")) == 50
    assert any(" jobs" in s or '"jobs"' in s for s in statements), "the trace saw nothing: it proves nothing"
    state_table = tables(sqlite_project)[2]
    touching = [s for s in statements if state_table in s]
    # allowed: the worker's look at the paused queues before its first claim, and its last beat
    # when it stops (SPEC section 7: itself and its batched metrics), a few statements whatever
    # the number of jobs
    beat = [s for s in touching if any(f"'{prefix}" in s for prefix in ("worker:", "metric:", "series:", "paused:"))]
    assert [s for s in touching if s not in beat] == [], f"plain jobs queried the state table: {touching[:3]}"
    assert len(beat) < 25, f"{len(beat)} state-table statements for 50 jobs: one per job?"
