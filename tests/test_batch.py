"""Batch claims of the database and redis drivers: one claim takes up to `prefetch` ready jobs
when jobs are short, each with its own reservation (renewed while it waits) and its own attempt;
the jobs claimed ahead go back, uncounted, when the worker stops, and lapse with a worker that
dies. Run on SQLite, MySQL/MariaDB, PostgreSQL and Redis (the clock is the driver's injectable
one)."""
import signal

import pytest

import queue
import testjobs
from conftest import SQL_BACKENDS, backends, unique
from testjobs import Record, runs, values, wait_for

pytestmark = backends(*SQL_BACKENDS, "redis")


def quick_pops(driver, queues, count):
    """pop() `count` times as a worker of instant jobs would (ack each before the next pop)."""
    taken = []
    for _ in range(count):
        message = driver.pop(queues)
        if message is None:
            break
        taken.append(message)
        driver.ack(message)
    return taken


def value(message):
    return queue.unpack(message.payload)["job"].value


def ints(path):
    return sorted(int(value) for value in values(path))


def stats(driver, name):
    return driver.stats([name])[name]


def test_short_jobs_are_claimed_several_at_a_time_each_reserved_and_counted(project, tmp_path):
    driver, name = queue.driver(), unique("q")
    driver.prefetch = 5
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(12)), queue=name)
    first, second = quick_pops(driver, [name], 2)
    # the first pop knew nothing of the jobs' length (one job); the second claimed five
    assert stats(driver, name) == {"ready": 12 - 1 - 5, "delayed": 0, "reserved": 5}
    rest = quick_pops(driver, [name], 10)
    taken = [first, second] + rest
    assert [value(m) for m in taken] == [str(i) for i in range(12)], "FIFO order"
    assert all(m.attempts == 1 for m in taken)
    driver.close()
    assert stats(driver, name) == {"ready": 0, "delayed": 0, "reserved": 0}


def test_a_long_job_is_claimed_alone(project, tmp_path):
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(5)), queue=name)
    driver.ack(driver.pop([name]))
    driver.clock.advance(queue._BATCH_WORK * 2)  # the job took longer than a claim's worth of work
    driver.ack(driver.pop([name]))
    assert stats(driver, name)["reserved"] == 1
    driver.close()


def test_jobs_claimed_ahead_go_back_uncounted_and_in_place_when_the_worker_closes(project, tmp_path):
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(6)), queue=name)
    quick_pops(driver, [name], 2)           # the second pop claims the other five
    driver.close()
    assert stats(driver, name) == {"ready": 4, "delayed": 0, "reserved": 0}
    queue.push(Record(str(tmp_path / "r"), "later"), queue=name)
    again = quick_pops(driver, [name], 5)
    assert [value(m) for m in again] == ["2", "3", "4", "5", "later"]
    assert [m.attempts for m in again] == [1] * 5
    driver.close()


def test_keep_renews_the_jobs_waiting_in_a_claim(project, tmp_path):
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(6)), queue=name)
    driver.ack(driver.pop([name]))
    running = driver.pop([name])            # claims 5: one runs, four wait
    for _ in range(3):                      # the job runs for 1.8 x retry_after, kept every 0.6 x
        driver.clock.advance(driver.retry_after * 0.6)
        driver.keep(running)
    assert stats(driver, name) == {"ready": 0, "delayed": 0, "reserved": 5}, "none lapsed"
    driver.ack(running)
    assert len(quick_pops(driver, [name], 4)) == 4, "the waiting jobs are still this worker's"
    driver.close()
    assert stats(driver, name) == {"ready": 0, "delayed": 0, "reserved": 0}


@pytest.mark.parametrize("taken_by_another", [False, True], ids=["lapsed", "taken by another worker"])
def test_a_job_claimed_ahead_whose_reservation_ran_out_is_not_started(project, tmp_path, taken_by_another):
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(3)), queue=name)
    driver.ack(driver.pop([name]))
    running = driver.pop([name])            # claims the other two; one waits
    driver.clock.advance(driver.retry_after + 1)  # no keep(): the waiting one has lapsed
    driver.ack(running)
    if taken_by_another:
        other = type(driver)(driver.options, driver.config)
        other.clock.advance(driver.retry_after + 1)
        theirs = {value(m): m for m in quick_pops(other, [name], 2)}  # "1": its ack was not written yet
        assert theirs["2"].attempts == 1, "a job that never started counted no attempt"
        assert driver.pop([name]) is None, "this worker does not start it too"
        other.close()
    else:
        again = driver.pop([name])
        assert (value(again), again.attempts) == ("2", 1), "still this worker's (nobody took it): started"
        driver.ack(again)
    driver.close()
    assert stats(driver, name) == {"ready": 0, "delayed": 0, "reserved": 0}


def test_a_job_started_late_in_its_claim_is_not_taken_by_another_worker(project, tmp_path):
    """A waiting job's reservation is renewed when it starts (database), or a job whose
    reservation ends within retry_after / 2 is claimed anew (redis): started 0.6 x retry_after
    after its claim, it must not lapse before the keeper's first renewal (a third of retry_after on)."""
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(4)), queue=name)
    driver.ack(driver.pop([name]))
    driver.ack(driver.pop([name]))          # claims the other three; the next two wait
    driver.clock.advance(driver.retry_after * 0.6)  # that job ran long (its keeper renewed it)
    running = driver.pop([name])
    other = type(driver)(driver.options, driver.config)
    other.clock.advance(driver.retry_after * 1.1)  # later: the claim's own reservation ran out
    taken = [value(m) for m in quick_pops(other, [name], 3)]
    assert value(running) not in taken, "two workers run one job"
    if project.backend != "redis":  # redis claimed "3" anew with "2"
        assert taken == ["3"], "the job that had not started lapsed, and was taken"
    driver.ack(running)
    assert driver.pop([name]) is None, "this worker does not start the job the other one took"
    driver.close()
    other.close()


def test_a_worker_that_stalled_past_its_claim_neither_renews_nor_starts_what_another_took(project, tmp_path):
    """A worker stalls past its reservation (a pause, a partition); another takes its jobs. The
    stalled worker's keeper wakes: it must not renew (or take over) the other worker's
    reservations, and the stalled worker must not start the jobs it had claimed ahead."""
    driver, name = queue.driver(), unique("q")
    queue.push(*(Record(str(tmp_path / "r"), i) for i in range(4)), queue=name)
    driver.ack(driver.pop([name]))
    running = driver.pop([name])            # claims the other three: one runs, two wait
    other = type(driver)(driver.options, driver.config)
    other.clock.advance(driver.retry_after + 1)  # later: this worker's reservations ran out
    first = other.pop([name])               # the other worker takes one of them...
    driver.keep(running)                    # ...as this worker's keeper wakes up
    other.ack(first)
    second = other.pop([name])              # and the others, claimed together
    assert second is not None
    driver.clock.advance(driver.retry_after + 1)  # this worker's thread wakes: its clock went on meanwhile
    assert driver.pop([name]) is None, "this worker starts none of the jobs the other one holds"
    other.ack(second)
    taken = [first, second] + quick_pops(other, [name], 3)
    assert sorted(value(m) for m in taken) == ["1", "2", "3"], "the other worker ran each once"
    driver.ack(running)                     # (it ran here too, during the stall)
    other.close()
    driver.close()
    assert stats(driver, name) == {"ready": 0, "delayed": 0, "reserved": 0}


def test_a_claim_keeps_the_priority_order_of_queues(project, tmp_path):
    driver, high, low = queue.driver(), unique("high"), unique("low")
    out = str(tmp_path / "r")
    queue.push(*(Record(out, f"low{i}") for i in range(3)), queue=low)
    queue.push(*(Record(out, f"high{i}") for i in range(2)), queue=high)
    taken = quick_pops(driver, [high, low], 5)
    assert [value(m) for m in taken] == ["high0", "high1", "low0", "low1", "low2"]
    driver.close()


def test_a_worker_that_stops_hands_back_what_it_claimed_ahead(project, tmp_path):
    out = str(tmp_path / "r")
    queue.push(*(Record(out, i) for i in range(40)))
    result = project.cli("work", "--max-jobs", "10")
    assert result.returncode == 0, result.stderr
    assert ints(out) == list(range(10))
    driver = queue.driver()
    assert stats(driver, driver.default_queue) == {"ready": 30, "delayed": 0, "reserved": 0}, \
        "ready at once, not after retry_after"
    assert project.cli("work", "--stop-when-empty").returncode == 0
    assert ints(out) == list(range(40)), "every job once"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_jobs_claimed_with_a_running_one_go_back_on_sigterm_and_lapse_on_sigkill(project, tmp_path, spawn, stop):
    out, gate, started = str(tmp_path / "r"), str(tmp_path / "gate"), str(tmp_path / "started")
    queue.push(*(Record(out, i) for i in range(30)))
    worker = spawn(project, "work")
    wait_for(lambda: len(values(out)) == 30, 30, message="the quick jobs did not run")
    # the worker waits, paced by quick jobs: its next claim takes the blocking job and those
    # pushed with it (one push, one transaction), whatever the claims before it took
    queue.push(testjobs.Gate(started, gate), *(Record(out, i) for i in range(30, 40)))
    wait_for(lambda: values(started) == ["gate"], 30, message="the blocking job did not start")
    driver = queue.driver()
    name = driver.default_queue
    counts = stats(driver, name)
    assert counts["reserved"] >= 2, f"no job after the blocking one was claimed with it: {counts}"
    worker.proc.send_signal(stop)
    if stop == signal.SIGTERM:
        open(gate, "w").close()
        assert worker.wait(30) == 0, worker.output
        assert stats(driver, name) == {"ready": 10, "delayed": 0, "reserved": 0}, "back at once"
    else:
        assert worker.proc.wait(10) == -signal.SIGKILL
        open(gate, "w").close()
        wait_for(lambda: stats(driver, name)["reserved"] == 0, driver.retry_after + 10,
                 message="the killed worker's reservations did not lapse")
    assert ints(out) == list(range(30)), "the jobs before it ran once"
    assert project.cli("work", "--stop-when-empty").returncode == 0
    assert ints(out) == list(range(40)), "every job once"
