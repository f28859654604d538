"""RabbitMQ with real `python queue.py work` processes: a SIGKILLed worker's job is redelivered
and runs elsewhere, a job may outlast several heartbeat intervals, delays come due in due order
and survive a broker restart, a worker rides out a broker restart, `--queue high,low` is a
priority order, tries/backoff/the failed store/`retry` work across processes, a job that kills
its worker ends in the failed store, and bad settings are one line.

Tests that stop the broker start it again in a `finally` and wait until it answers.
"""
import os
import signal
import subprocess
import time

import pytest

pika = pytest.importorskip("pika")

import queue  # noqa: E402
import testjobs  # noqa: E402
from conftest import restarts_a_server, AMQP  # noqa: E402
from helpers import failed_rows, log_lines, no_loss, one_line_error, stop, wait_worker  # noqa: E402
from test_cli import status  # noqa: E402
from testjobs import failures, lines, runs, values, wait_for  # noqa: E402

DIE = '''
import os
from testjobs import Job


class Die(Job):
    """Records the attempt, then ends its worker process at once (no cleanup, no ack)."""

    def handle(self):
        self.record()
        os._exit(1)
'''


# The broker ###################################################################################
def broker_answers():
    try:
        credentials = pika.PlainCredentials(AMQP["username"], AMQP["password"])
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            AMQP["host"], AMQP["port"], credentials=credentials, socket_timeout=2, connection_attempts=1))
    except Exception:
        return False
    connection.close()
    return True


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def stop_broker():
    rabbitmqctl("stop_app")
    wait_for(lambda: not broker_answers(), 30, interval=0.1, message="RabbitMQ still answers after stop_app")


def start_broker():
    """Start RabbitMQ's app (if it is stopped) and wait until it accepts connections."""
    rabbitmqctl("start_app")
    wait_for(broker_answers, 60, interval=0.1, message="RabbitMQ did not answer within 60 s of start_app")


@pytest.fixture
def amqp(amqp_project, tmp_path):
    """The amqp project, with jobs/Record.py and jobs/Die.py for `push`; at the end, every queue
    whose name starts with the project's queue name is deleted (and those in project.extra)."""
    with open(os.path.join(amqp_project.folder, "jobs", "Record.py"), "w") as f:
        f.write("from testjobs import Record\n")
    with open(os.path.join(amqp_project.folder, "jobs", "Die.py"), "w") as f:
        f.write(DIE)
    amqp_project.extra = []
    yield amqp_project
    # every queue named after the project's (its delay queues too, whoever declared them); the
    # amqp_project fixture deletes only the delay queues this process still knows of
    if broker_answers():
        driver = queue.driver("amqp")
        listed = driver._management_queues() or []
        names = {q["name"] for q in listed if q["name"].startswith(amqp_project.queue)}
        names.update(amqp_project.extra)
        names.discard(amqp_project.queue)
        if names:
            driver.delete_queues(*sorted(names))


def configure(project, **options):
    """Change DRIVERS['amqp'] options in the project's config.py (and in this process)."""
    project.drivers["amqp"].update(options)
    project.write_config()
    project.configure()


# Draining ####################################################################################
def test_stop_when_empty_drains_a_long_queue_to_the_end(amqp, tmp_path):
    """The broker hands a consumer `prefetch` messages at a time, the next ones as acks arrive: a
    moment with an empty local buffer is not an empty queue (the worker used to stop after a
    few hundred of these jobs)."""
    configure(amqp, queue_type="classic")  # where the broker's deliveries lag the acks most
    for _ in range(40):
        queue.push(*(testjobs.Noop() for _ in range(500)))
    result = amqp.cli("work", "--stop-when-empty", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stopped after 20000 job(s): empty" in result.stderr, result.stderr[-300:]
    assert queue.driver().stats([amqp.queue])[amqp.queue]["ready"] == 0


def test_pausing_one_of_its_queues_leaves_a_running_lane_its_delivery(amqp, tmp_path, spawn):
    """A worker of two queues with two lanes: pausing the second queue must not close the
    connection that delivered the first lane's running job (the broker would hand that job to
    the other lane while it still runs)."""
    other = amqp.queue + "_other"
    amqp.extra.append(other)
    held, gate, after = str(tmp_path / "held"), str(tmp_path / "gate"), str(tmp_path / "after")
    queue.push(testjobs.Gate(held, gate))
    worker = spawn(amqp, "work", "--queue", f"{amqp.queue},{other}", "--concurrency", "2")
    wait_worker(worker, lambda: values(held) == ["gate"], 30, "the gated job did not start")
    queue.pause(other)
    deadline = time.monotonic() + 1.5  # a worker sees a pause within a second: give it more
    while time.monotonic() < deadline:
        assert values(held) == ["gate"], "the running job was delivered again to the other lane"
        time.sleep(0.1)
    queue.push(testjobs.Record(after, "after"))
    wait_worker(worker, lambda: values(after) == ["after"], 15, "the other lane took no job")
    assert values(held) == ["gate"], "the running job was delivered again to the other lane"
    open(gate, "w").close()
    wait_worker(worker, lambda: values(held) == ["gate", "gate-done"], 15, "the gated job did not finish")
    queue.resume(other)
    stop(worker)
    assert values(held) == ["gate", "gate-done"]


# Worker deaths and long jobs ##################################################################
def test_a_sigkilled_workers_job_is_redelivered_and_nothing_is_lost(amqp, tmp_path, spawn):
    held, gate, quick = str(tmp_path / "held"), str(tmp_path / "gate"), str(tmp_path / "quick")
    queue.push(testjobs.Gate(held, gate, "held"))
    names = [f"q{i}" for i in range(20)]
    queue.push(*(testjobs.Record(quick, name) for name in names))

    first = spawn(amqp, "work")
    wait_worker(first, lambda: values(held), 30, "the first worker did not start the job")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert values(quick) == [], "the first worker was busy with the held job"

    open(gate, "w").close()
    second = spawn(amqp, "work")
    wait_worker(second, lambda: len(values(quick)) == len(names) and "held-done" in values(held), 30,
                "the second worker did not run everything")
    stop(second)
    assert [(r.value, r.pid) for r in runs(held)] == [
        ("held", first.proc.pid), ("held", second.proc.pid), ("held-done", second.proc.pid)]
    assert sorted(values(quick)) == sorted(names), "every other job exactly once"
    assert {r.pid for r in runs(quick)} == {second.proc.pid}
    assert failed_rows() == []


def test_a_job_longer_than_three_heartbeats_keeps_its_connection(amqp, tmp_path, spawn):
    configure(amqp, heartbeat=2)
    long, after = str(tmp_path / "long"), str(tmp_path / "after")
    queue.push(testjobs.Sleep(long, 6.5, "long"))
    queue.push(testjobs.Record(after, "after"))

    worker = spawn(amqp, "work", "--max-jobs", "2")
    assert worker.wait(40) == 0, worker.output
    assert values(long) == ["long", "long-done"], "the long job ran once"
    assert values(after) == ["after"], "the next job ran"
    assert not log_lines(worker, "reconnect"), "the connection dropped during the long job:\n" + worker.output
    assert failed_rows() == []


# Delays #######################################################################################
def test_a_shorter_delay_pushed_later_runs_first_and_none_runs_early(amqp, tmp_path, spawn):
    path = str(tmp_path / "record")
    worker = spawn(amqp, "work")
    pushed = {}
    for name, delay in (("three", 3), ("one", 1)):
        pushed[name] = time.time() + delay
        queue.push(testjobs.Record(path, name), delay=delay)
    wait_worker(worker, lambda: len(lines(path)) == 2, 20, "the delayed jobs did not run")
    stop(worker)
    done = runs(path)
    assert [r.value for r in done] == ["one", "three"]
    for r in done:
        assert r.at >= pushed[r.value], f"{r.value} ran {pushed[r.value] - r.at:.3f} s before it was due"


@restarts_a_server
def test_a_delayed_job_survives_a_broker_restart(amqp, tmp_path, spawn):
    path, delay = str(tmp_path / "record"), 8
    due = time.time() + delay
    queue.push(testjobs.Record(path, "later"), delay=delay)
    queue._close_drivers()  # this process's publisher connection is about to be dropped
    try:
        stop_broker()
        assert time.time() < due, "the broker stopped after the job was due: the test proves nothing"
    finally:
        start_broker()
    worker = spawn(amqp, "work")
    wait_worker(worker, lambda: lines(path), due - time.time() + 20, "the delayed job did not run")
    stop(worker)
    assert values(path) == ["later"]
    assert runs(path)[0].at >= due


@restarts_a_server
def test_a_worker_survives_a_broker_restart(amqp, tmp_path, spawn):
    path, held, gate = str(tmp_path / "record"), str(tmp_path / "held"), str(tmp_path / "gate")
    prefetch = amqp.drivers["amqp"]["prefetch"]
    names = [f"a{i}" for i in range(250)]
    queue.push(*(testjobs.Record(path, name) for name in names))
    queue.push(testjobs.Gate(held, gate, "held"))
    names += [f"b{i}" for i in range(250)]
    queue.push(*(testjobs.Record(path, name) for name in names[250:]))
    queue._close_drivers()

    worker = spawn(amqp, "work")
    wait_worker(worker, lambda: values(held), 30, "the worker did not reach the job in the middle")
    try:
        stop_broker()
        open(gate, "w").close()  # the job in flight ends while the broker is down
        wait_worker(worker, lambda: "held-done" in values(held), 30, "the held job did not finish")
        wait_worker(worker, lambda: log_lines(worker, "reconnecting"), 30, "the worker did not notice the outage")
    finally:
        start_broker()

    wait_worker(worker, lambda: set(values(path)) == set(names), 60, "not every job ran after the restart")
    stop(worker)
    no_loss(path, names, allowed_doubles=prefetch)
    assert values(held) == ["held", "held-done"], "the job in flight at the restart ran once"
    assert len(log_lines(worker, "reconnecting")) == 1, "one line for the outage, not one per retry:\n" + worker.output
    assert len(log_lines(worker, "reconnected")) == 1, worker.output
    assert "Traceback" not in worker.output, worker.output
    assert failed_rows() == []


# Priority #####################################################################################
def test_queue_option_is_a_priority_order_with_prefetch_1(amqp, tmp_path, spawn):
    configure(amqp, prefetch=1)
    high, low = f"{amqp.queue}_high", f"{amqp.queue}_low"
    amqp.extra += [high, low]
    path = str(tmp_path / "record")
    queue.push(*(testjobs.Record(path, f"low{i}") for i in range(10)), queue=low)
    queue.push(*(testjobs.Record(path, f"high{i}") for i in range(10)), queue=high)

    worker = spawn(amqp, "work", "--queue", f"{high},{low}", "--max-jobs", "20")
    assert worker.wait(30) == 0, worker.output
    order = values(path)
    assert sorted(order) == sorted([f"low{i}" for i in range(10)] + [f"high{i}" for i in range(10)])
    last_high = max(i for i, value in enumerate(order) if value.startswith("high"))
    early_lows = [value for value in order[:last_high] if value.startswith("low")]
    assert len(early_lows) <= 1, f"low jobs ran before high ones: {order}"


# Failures #####################################################################################
def test_tries_backoff_failed_store_and_retry_across_processes(amqp, tmp_path, spawn):
    path = str(tmp_path / "record")
    queue.push(testjobs.FailTimes(path, 2, tries=2, backoff=0.5))
    worker = spawn(amqp, "work")

    rows = wait_worker(worker, failed_rows, 30, "the job did not reach the failed store")
    assert len(lines(path)) == 2, "tried `tries` times"
    assert testjobs.gaps(path)[0] >= 0.5, "the backoff was honoured"
    # failed() runs once the failed store has the job: its record may come a moment after the row
    wait_worker(worker, lambda: failures(path), 30, "failed() did not run")
    assert failures(path) == ["ValueError: attempt 2 of try fails"]
    [row] = rows
    assert (row["driver"], row["queue"], row["name"]) == ("amqp", amqp.queue, "FailTimes")
    assert row["exception"].startswith("ValueError: attempt 2 of try fails\n\nTraceback")

    retried = amqp.cli("retry")
    assert retried.returncode == 0, retried.stderr
    wait_worker(worker, lambda: len(lines(path)) == 3, 30, "the retried job did not run again")
    stop(worker)
    assert failed_rows() == []
    assert failures(path) == ["ValueError: attempt 2 of try fails"], "failed() ran once"


def test_a_job_that_kills_its_worker_ends_in_the_failed_store(amqp, tmp_path, spawn):
    path, quick, tries = str(tmp_path / "die"), str(tmp_path / "quick"), 2
    names = [f"q{i}" for i in range(10)]
    # tries=5: messages prefetched by a dying worker count an attempt each time (see README)
    queue.push(*(testjobs.Record(quick, name, tries=5) for name in names[:5]))
    pushed = amqp.cli("push", "Die", path, f"tries={tries}")
    assert pushed.returncode == 0, pushed.stderr
    queue.push(*(testjobs.Record(quick, name, tries=5) for name in names[5:]))

    def settled():  # every name ran (a dying worker's jobs may run twice: count names, not lines)
        return failed_rows() and set(values(quick)) >= set(names)

    workers = []
    while not settled():  # a supervisor: start a worker whenever the last one died
        assert len(workers) <= tries + 1, f"{len(workers)} workers were needed: a loop?\n{workers[-1].output}"
        worker = spawn(amqp, "work")
        workers.append(worker)
        wait_worker(worker, lambda: settled() or worker.proc.poll() is not None, 30, "neither done nor dead")
    stop(workers[-1])

    assert [w.proc.returncode for w in workers[:-1]] == [1] * tries, "each attempt of the job ended its worker"
    assert len(lines(path)) == tries, "the job ran `tries` times, then not again"
    [row] = failed_rows()
    assert row["name"] == "Die" and row["exception"].startswith("MaxAttemptsExceeded: ")
    assert failures(path) and failures(path)[0].startswith("MaxAttemptsExceeded: ")
    # every other job ran; a worker that dies may run again the few jobs whose acks it had not
    # sent yet (acks go out every prefetch/4 jobs; README, RabbitMQ)
    ran = values(quick)
    assert set(ran) == set(names), "every other job ran"
    send_every = max(1, queue.driver("amqp").prefetch // 4)
    assert len(ran) - len(names) <= send_every * tries, f"more doubles than unsent acks explain: {sorted(ran)}"


def test_jobs_that_kill_their_workers_do_not_multiply(amqp, tmp_path, spawn):
    """A redelivered message is published again with its attempt counted, then acked. If that ack
    waited in a dying worker's buffer, both copies would survive the death and the jobs would
    multiply; so it is sent at once (only acks of completed jobs wait to be sent in groups).
    The first worker holds 3 messages and dies; the next one (prefetch 20) gets those 3 back,
    republishes them, then meets a fresh killer job while those acks would still be waiting."""
    path, tries, count = str(tmp_path / "die"), 3, 5
    for n in range(count):
        pushed = amqp.cli("push", "Die", path, f"d{n}", f"tries={tries}")
        assert pushed.returncode == 0, pushed.stderr
    configure(amqp, prefetch=3)
    first = spawn(amqp, "work")
    wait_worker(first, lambda: first.proc.poll() is not None, 30, "the first job did not end its worker")
    configure(amqp, prefetch=20)

    workers = [first]
    while len(failed_rows()) < count:  # a supervisor: start a worker whenever the last one died
        assert len(workers) <= count * tries + 1, f"{len(workers)} workers were needed: the jobs multiplied"
        worker = spawn(amqp, "work")
        workers.append(worker)
        wait_worker(worker, lambda: len(failed_rows()) >= count or worker.proc.poll() is not None, 30,
                    "neither done nor dead")
    stop(workers[-1])
    # (a message prefetched by a dying worker also counts an attempt, so some may fail unrun)
    assert len(values(path)) <= count * tries, f"the jobs ran more often than they may: {values(path)}"
    wait_for(lambda: status(amqp)[amqp.queue]["ready"] == 0, 5, message="copies of the jobs are left")
    assert sorted(r["name"] for r in failed_rows()) == ["Die"] * count, "each job failed once, no copy"


# The command line #############################################################################
@pytest.mark.parametrize("setting, words", [({"password": "wrong"}, ["password"]), ({"port": 1}, ["127.0.0.1:1"])],
                         ids=["wrong-password", "port-1"])
@pytest.mark.parametrize("command", [["push", "Record", "out", "x"], ["status"], ["work"]], ids=lambda c: c[0])
def test_bad_connection_settings_are_one_line(amqp, setting, words, command):
    amqp.drivers["amqp"].update(setting)
    amqp.write_config()
    started = time.monotonic()
    one_line_error(amqp.cli(*command, timeout=30), *words)
    assert time.monotonic() - started < 15


def test_status_shows_ready_reserved_and_delayed(amqp, tmp_path, spawn):
    configure(amqp, prefetch=1)
    held, gate, path = str(tmp_path / "held"), str(tmp_path / "gate"), str(tmp_path / "record")
    queue.push(testjobs.Gate(held, gate, "held"))
    queue.push(*(testjobs.Record(path, f"r{i}") for i in range(3)))
    queue.push(*(testjobs.Record(path, f"d{i}") for i in range(2)), delay=120)
    assert status(amqp)[amqp.queue]["ready"] == 4, "ready counts are exact at once"

    worker = spawn(amqp, "work")
    wait_worker(worker, lambda: values(held), 30, "the worker did not start the held job")
    expected = {"ready": 3, "delayed": None, "reserved": 1, "failed": 0}  # delayed: in the shared ladder
    seen = []  # the management API's figures lag by up to ~5 s
    try:
        wait_for(lambda: seen.append(status(amqp)[amqp.queue]) or seen[-1] == expected, 12, interval=0.5)
    except AssertionError:
        raise AssertionError(f"status never showed {expected}; last: {seen[-1]}") from None
    open(gate, "w").close()
    wait_worker(worker, lambda: len(lines(path)) == 3, 30, "the ready jobs did not run")
    stop(worker)


# The delay ladder: a fixed set of broker objects, whatever the delays ########################
def broker_queue_names():
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", AMQP["vhost"], "name"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and line.strip() != "name"]


def test_a_thousand_distinct_delays_make_no_queue_of_their_own(amqp):
    """1,000 delays between 1 s and 1 day: the broker holds the ladder (30 queues) and our queue,
    however many delays there are (queue.py 1.0 made one queue per delay)."""
    before = set(broker_queue_names())
    delays = [1 + i * 86399 / 999 for i in range(1000)]
    for i, delay in enumerate(delays):
        queue.push(testjobs.Record("/nonexistent", f"x{i}"), delay=delay)
    new = set(broker_queue_names()) - before
    ladder, delivery = queue.driver("amqp").ladder_names()
    fixed = set(ladder) | {delivery + ".lost", amqp.queue}
    assert new <= fixed, f"queues made for delays: {sorted(new - fixed)[:5]}"
    assert len(set(broker_queue_names())) <= len(before) + len(fixed)
    queue.driver("amqp").clear(amqp.queue)


def test_delays_run_no_earlier_than_due_and_at_most_a_second_late(amqp, tmp_path, spawn):
    path = str(tmp_path / "record")
    worker = spawn(amqp, "work")
    due = {}
    for name, delay in (("a", 2.7), ("b", 0.3), ("c", 1.45), ("d", 3.9)):
        due[name] = time.time() + delay
        queue.push(testjobs.Record(path, name), delay=delay)
    wait_worker(worker, lambda: len(lines(path)) == 4, 20, "the delayed jobs did not run")
    stop(worker)
    done = runs(path)
    assert [r.value for r in done] == ["b", "c", "a", "d"], "in due order"
    for r in done:
        assert due[r.value] <= r.at <= due[r.value] + 1.0, f"{r.value}: {r.at - due[r.value]:+.3f} s from due"


def test_a_delay_longer_than_the_ladder_is_refused_at_push_on_every_driver(amqp, sqlite_project):
    for driver in ("amqp", "database"):
        with pytest.raises(queue.QueueError, match="longest"):
            queue.push(testjobs.Record("/nonexistent", "far"), driver=driver, delay="1800 days")


def test_a_long_queue_name_still_retries_with_backoff(amqp, tmp_path, spawn):
    """A 200-byte name (the longest queue.py takes) through the ladder: no suffix passes AMQP's limit."""
    name = "q" * 200
    path = str(tmp_path / "record")
    try:
        queue.push(testjobs.FailTimes(path, 1, "long", backoff=0.5), queue=name)
        worker = spawn(amqp, "work", "--queue", name)
        wait_worker(worker, lambda: len(values(path)) == 2, 30, "the retry did not come back")
        stop(worker)
    finally:
        queue.driver("amqp").delete_queues(name)


def test_a_dead_host_first_in_the_list_is_skipped(amqp, tmp_path, spawn):
    configure(amqp, host=["127.0.0.1:1", "127.0.0.1"])  # a dead port, then the broker
    path = str(tmp_path / "record")
    queue.push(testjobs.Record(path, "cluster"))
    assert amqp.cli("work", "--stop-when-empty").returncode == 0
    assert values(path) == ["cluster"]
    configure(amqp, host=AMQP["host"])


def test_a_broker_that_never_finishes_the_handshake_is_one_line(amqp):
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP, says nothing
    try:
        configure(amqp, port=silent.getsockname()[1])
        for command in (["status"], ["push", "Record", "/nonexistent", "x"], ["work", "--once"]):
            started = time.monotonic()
            result = amqp.cli(*command, timeout=60)
            assert result.returncode == 1, (command, result.stderr)
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert time.monotonic() - started < 30
    finally:
        silent.close()
        configure(amqp, port=AMQP["port"])  # the fixture deletes the queue through it
