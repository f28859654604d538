"""What is the beanstalkd driver's own (SPEC section 8): a server that keeps its binlog keeps the
jobs across a SIGKILL, tube names and job sizes the server would refuse are refused at push, a
server that does not answer is one line."""
import os
import signal
import subprocess
import threading
import time

import pytest

import queue
import testjobs
from conftest import Project, server_up, unique
from helpers import free_port, ok, one_line_error, wait_for
from testjobs import values


def start_beanstalkd(port, folder, max_job=None):
    args = ["beanstalkd", "-l", "127.0.0.1", "-p", str(port), "-b", str(folder)] + (["-z", str(max_job)] if max_job else [])
    proc = subprocess.Popen(args)
    wait_for(lambda: server_up("127.0.0.1", port, 0.2), 10, message="beanstalkd did not start")
    return proc


@pytest.fixture
def own_server(tmp_path):
    """A beanstalkd of this test's own with a binlog; (project, restart())."""
    port, folder = free_port(), tmp_path / "binlog"
    folder.mkdir()
    procs = [start_beanstalkd(port, folder, max_job=20000)]
    drivers = {"default": "beanstalkd", "beanstalkd": {"port": port, "queue": "jobs", "poll": 0.05, "retry_after": 2},
               "database": {"connection": "sqlite"}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}}, backend="beanstalkd")
    project.configure()

    def restart():
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs[0] = start_beanstalkd(port, folder, max_job=20000)
    yield project, restart
    queue._close_drivers()
    procs[0].kill()
    procs[0].wait()


def test_a_sigkilled_server_with_its_binlog_keeps_every_job(own_server, tmp_path):
    project, restart = own_server
    path = str(tmp_path / "record")
    queue.push(*(testjobs.Record(path, f"r{i}") for i in range(20)))
    queue.push(testjobs.Record(path, "later"), delay=1)
    queue._close_drivers()
    restart()
    ok(project.cli("work", "--max-jobs", "21"))
    assert sorted(values(path)) == sorted([f"r{i}" for i in range(20)] + ["later"])


def test_a_pusher_and_a_worker_go_on_after_the_server_restarts(own_server, tmp_path):
    project, restart = own_server
    path = str(tmp_path / "record")
    queue.push(testjobs.Record(path, "before"))
    restart()
    queue.push(testjobs.Record(path, "after"))  # this process's connection was lost: it connects again
    ok(project.cli("work", "--max-jobs", "2"))
    assert sorted(values(path)) == ["after", "before"]


def test_tube_names_and_sizes_the_server_refuses_are_refused_at_push(own_server, tmp_path):
    for name in ("-dash", "with space", "a,b", "ünï"):
        with pytest.raises(queue.QueueError, match="tube name"):
            queue.push(testjobs.Record(str(tmp_path / "r"), "x"), queue=name)
    with pytest.raises(queue.QueueError, match="max-job-size") as info:
        queue.push(testjobs.Record(str(tmp_path / "r"), "y" * 30000))
    assert "\n" not in str(info.value)


def test_a_server_that_does_not_answer_is_one_line(tmp_path):
    drivers = {"default": "beanstalkd", "beanstalkd": {"port": free_port()}, "database": {"connection": "sqlite"}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}})
    for command in (["status"], ["work"], ["clear", "--force"]):
        one_line_error(project.cli(*command, timeout=20), "beanstalkd", "127.0.0.1")


def test_a_job_body_the_driver_did_not_write_goes_to_the_failed_store(own_server, tmp_path):
    import greenstalk
    project, _ = own_server
    path = str(tmp_path / "record")
    port = project.drivers["beanstalkd"]["port"]
    with greenstalk.Client(("127.0.0.1", port), encoding=None, use="jobs") as client:
        client.put(b"not ours at all")
        client.put(b"Record\0not-a-number\0jobs\0payload")
    queue.push(testjobs.Record(path, "after"))
    ok(project.cli("work", "--stop-when-empty"))
    assert values(path) == ["after"], "the worker went on past them"
    rows = queue.driver().failed_store().failed_jobs()
    assert len(rows) == 2 and all("BadPayload" in row["exception"] for row in rows)


def test_a_job_finished_through_another_set_of_queues_is_deleted_by_the_next_pop(beanstalkd_project):
    """A finished job is deleted with the next reserve (one round trip); one taken by a
    `--queue high,low` pop is deleted by the next pop on any other set of queues too (a paused
    queue leaves a worker one), not left reserved until its TTR lapses and it runs again."""
    d, low, high = queue.driver(), beanstalkd_project.queue, beanstalkd_project.queue + "_high"
    queue.push(testjobs.Record("/nonexistent", "x"), queue=low, delay=1)
    message = d.pop([high, low], 5)  # taken by the wait on both tubes, once it is due
    assert message is not None and message.queue == low
    d.ack(message)
    assert d.pop([low], 0) is None
    assert d.stats([low])[low] == {"ready": 0, "delayed": 0, "reserved": 0}, "the finished job is deleted"
    d.clear(high)


def test_a_pop_counts_the_job_it_took_not_the_one_it_expected(beanstalkd_project, beanstalkd_server):
    """After each reserve a worker's connection peeks at the next ready job and asks for its
    stats with the next reserve, in the same round trip. When another worker took that job first,
    the attempts are still those of the job this pop took, and a pop that finds the tube empty
    then waits its whole timeout for a job, as any pop does."""
    import greenstalk
    d, name = queue.driver(), beanstalkd_project.queue
    other = greenstalk.Client((beanstalkd_server["host"], beanstalkd_server["port"]), encoding=None, use=name, watch=name)
    try:
        queue.push(testjobs.Record("/nonexistent", "a"), testjobs.Record("/nonexistent", "b"))
        first = d.pop([name], 0)  # a; the connection expects b next
        d.ack(first)
        held = other.reserve(timeout=0)  # b, taken by another worker
        queue.push(testjobs.Record("/nonexistent", "c"))
        tried = other.reserve(timeout=0)  # c, tried once by another worker and given back
        other.release(tried)
        message = d.pop([name], 0)
        assert message.id == str(tried.id) and message.attempts == 2, "c's reserves, not b's"
        d.ack(message)

        queue.push(testjobs.Record("/nonexistent", "d"), testjobs.Record("/nonexistent", "e"))
        d.ack(d.pop([name], 0))  # d; e expected next
        taken = other.reserve(timeout=0)  # e, taken by another worker: the tube is empty
        late = threading.Timer(0.3, lambda: queue.push(testjobs.Record("/nonexistent", "f")))
        late.start()
        message = d.pop([name], 5)
        late.join()
        assert message is not None and message.attempts == 1, "the pop waited for f"
        d.ack(message)
        for job in (held, taken):
            other.delete(job)
    finally:
        other.close()


def test_a_stop_whose_deletes_the_server_did_not_take_says_which_jobs_run_again(own_server, tmp_path):
    """A finished job is deleted with the next reserve or when the worker stops: a stop that finds
    the server gone names the jobs that will run again (the worker logs it), instead of saying nothing."""
    project, restart = own_server
    d = queue.driver()
    queue.push(testjobs.Record(str(tmp_path / "record"), "x"))
    message = d.pop(["jobs"], 1)
    d.ack(message)
    restart()  # the reservation goes with the old server's connection: the job is ready again
    with pytest.raises(queue.ConnectionFailed, match=rf"jobs \[{message.id}\].*run again"):
        d.close()
    assert d.pop(["jobs"], 1).id == message.id
