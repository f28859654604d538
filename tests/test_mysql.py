"""MariaDB under load and under faults, with real `python queue.py work` processes: an idle
worker takes a push at once, a worker survives its connections being killed and the server being
restarted (nothing lost, no double run beyond a job in flight), a job that is running when its
connection drops is acked after the reconnect and not run again, and the CLI says in one line
what is wrong with a table or an unreachable server. (Several workers sharing one queue:
test_recovery.py.)

Tests that stop the server start it again in a `finally` and wait until it answers.
"""
import datetime
import os
import signal
import subprocess
import sys
import time

import pytest

import queue
import testjobs
from conftest import restarts_a_server, MYSQL
from helpers import log_lines, mysql, no_loss, ok, one_line_error, push_records, stop, table_empty, wait_worker
from testjobs import lines, values, wait_for


# The server ###################################################################################
def answers():
    import pymysql
    try:
        mysql("SELECT 1")
        return True
    except pymysql.err.MySQLError:
        return False


def start_server():
    """Start MariaDB (if it is not running) and wait until it answers."""
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                   check=True, capture_output=True, timeout=30)
    wait_for(answers, 60, interval=0.1, message="MariaDB did not answer within 60 s of its start")


def stop_server():
    subprocess.run(["mariadb-admin", "-uroot", "shutdown"], check=True, capture_output=True, timeout=60)
    wait_for(lambda: not answers(), 30, interval=0.05, message="MariaDB still answers after shutdown")


def local_ports(pid):
    """The local TCP ports of the sockets that process pid holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in lines(table)[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def connections_of(pid):
    """processlist ids of the connections that process pid has open (never the test's own)."""
    ports = local_ports(pid)
    rows = mysql("SELECT id, host FROM information_schema.processlist WHERE id <> CONNECTION_ID()")
    return [id_ for id_, host in rows if ":" in (host or "") and int(host.rsplit(":", 1)[1]) in ports]


def kill_connections(pid):
    """KILL every connection of process pid; return how many were killed."""
    killed = 0
    for id_ in connections_of(pid):
        try:
            mysql(f"KILL {int(id_)}")
            killed += 1
        except Exception as exc:  # it closed meanwhile (ER_NO_SUCH_THREAD)
            if getattr(exc, "args", (None,))[0] != 1094:
                raise
    return killed


# Helpers #####################################################################################
def utc(epoch):
    """A time as the naive UTC datetime that queue.py stores."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(tzinfo=None)


# One worker ##################################################################################
def test_an_app_that_pushes_exits_without_a_traceback(mysql_project, tmp_path):
    """The app's process ends with its connection open: queue.py closes it at exit, before the
    interpreter's teardown (where pymysql's finalizer printed 'Exception ignored ...')."""
    path = str(tmp_path / "record")
    app = subprocess.run([sys.executable, "-c", f"import queue, testjobs; queue.push(testjobs.Record({path!r}, 'a'))"],
                         cwd=mysql_project.folder, env=mysql_project.env(), capture_output=True, text=True, timeout=60)
    assert app.returncode == 0 and app.stderr == "", app.stderr
    ok(mysql_project.cli("work", "--stop-when-empty"))
    assert values(path) == ["a"]


def test_an_idle_worker_takes_a_push_long_before_its_poll_and_stops_at_once(mysql_project, tmp_path, spawn):
    """poll is 30 s: the worker looks for a ready job every 20 ms (on MariaDB, the server looks
    for it, in a block the worker waits on), and a SIGTERM still ends it at once."""
    path = str(tmp_path / "record")
    worker = spawn(mysql_project, "work", "--poll", "30")
    queue.push(testjobs.Record(path, "first"))
    wait_worker(worker, lambda: len(values(path)) == 1, 20, "the worker did not start")
    for n in range(3):
        queue.push(testjobs.Record(path, f"r{n}"))
        wait_worker(worker, lambda: len(values(path)) == n + 2, 5, f"push {n} was not taken within 5 s")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(2) == 0, worker.output


# Lost connections #############################################################################
def test_a_worker_whose_connections_are_killed_recovers_by_itself(mysql_project, tmp_path, spawn):
    path = str(tmp_path / "record")
    names = push_records(path, 1000)
    worker = spawn(mysql_project, "work")

    kills = 0
    for progress in (150, 400, 650):
        wait_for(lambda: len(lines(path)) >= progress, 30, interval=0.005, message=f"{progress} jobs did not run")
        killed = kill_connections(worker.proc.pid)
        assert len(lines(path)) < len(names), "the worker had finished before the kill: the test proves nothing"
        assert killed >= 1, "the worker had no connection to kill"
        kills += 1

    wait_worker(worker, lambda: len(set(values(path))) == len(names), 60, f"not every job ran after {kills} kills")
    stop(worker)
    no_loss(path, names, allowed_doubles=kills)
    assert log_lines(worker, "reconnected"), worker.output
    assert "Traceback" not in worker.output, worker.output
    table_empty(mysql_project)


@restarts_a_server
def test_a_worker_survives_a_server_restart(mysql_project, tmp_path, spawn):
    path, gate_path, gate = str(tmp_path / "record"), str(tmp_path / "gate-record"), str(tmp_path / "gate")
    names = push_records(path, 500, "a")
    queue.push(testjobs.Gate(gate_path, gate, "held"))
    names += push_records(path, 500, "b")
    worker = spawn(mysql_project, "work")

    wait_for(lambda: values(gate_path), 30, message="the worker did not reach the job in the middle")
    try:
        stop_server()
        open(gate, "w").close()  # the job in flight ends while the server is down
        wait_for(lambda: values(gate_path) == ["held", "held-done"], 30)
        wait_worker(worker, lambda: log_lines(worker, "reconnecting"), 30, "the worker did not notice the outage")
        # keep the server down for a while: the worker retries several times meanwhile
        outage = time.monotonic() + 2
        wait_for(lambda: time.monotonic() > outage, 5)
    finally:
        start_server()

    wait_worker(worker, lambda: len(set(values(path))) == len(names), 60, "not every job ran after the restart")
    stop(worker)
    no_loss(path, names, allowed_doubles=1)
    assert values(gate_path) == ["held", "held-done"], "the job in flight at the restart ran once"
    assert len(log_lines(worker, "reconnecting")) == 1, "one line for the outage, not one per retry:\n" + worker.output
    assert len(log_lines(worker, "reconnected")) == 1, worker.output
    assert "Traceback" not in worker.output, worker.output
    table_empty(mysql_project)


def test_a_job_running_when_its_connection_drops_is_acked_after_the_reconnect(mysql_project, tmp_path, spawn):
    path, gate, after = str(tmp_path / "record"), str(tmp_path / "gate"), str(tmp_path / "after")
    retry_after = mysql_project.drivers["database"]["retry_after"]
    table = mysql_project.drivers["database"]["table"]
    queue.push(testjobs.Gate(path, gate, "held"))
    queue.push(testjobs.Record(after, "after"))
    worker = spawn(mysql_project, "work", "--stop-when-empty")

    wait_for(lambda: values(path), 30, message="the job did not start")
    # the keeper thread renews the reservation on a connection of its own: wait until it has one
    wait_for(lambda: len(connections_of(worker.proc.pid)) >= 2, 10, interval=0.05,
             message="the worker did not open a second connection to renew the reservation")
    killed_at = time.time()
    assert kill_connections(worker.proc.pid) >= 2

    # the reservation is renewed on a new connection after the kill: it does not lapse
    def renewed():
        row = mysql(f"SELECT available_at FROM {table} WHERE reserved_at IS NOT NULL")  # UTC (tz "UTC")
        return row and row[0][0] > utc(killed_at + retry_after)
    wait_worker(worker, renewed, 3 * retry_after, "the reservation was not renewed after the kill")
    assert values(path) == ["held"], "the job is still running"
    open(gate, "w").close()

    assert worker.wait(30) == 0, worker.output
    assert values(path) == ["held", "held-done"], "the job ran exactly once"
    assert values(after) == ["after"]
    assert log_lines(worker, "reconnected"), worker.output
    table_empty(mysql_project)


# The command line #############################################################################
MASONITE_COLUMNS = {  # a Masonite-shaped jobs table: the columns queue.py reads and writes
    "id": "BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY", "name": "VARCHAR(255) NOT NULL",
    "queue": "VARCHAR(255) NOT NULL", "payload": "LONGBLOB NOT NULL", "attempts": "INT NOT NULL DEFAULT 0",
    "ran_at": "DATETIME(6) NULL", "available_at": "DATETIME(6) NULL", "reserved_at": "DATETIME(6) NULL",
    "created_at": "DATETIME(6) NULL",
}


@pytest.mark.parametrize("missing, command", [("reserved_at", "work"), ("available_at", "push")])
def test_a_table_lacking_a_column_is_one_line_naming_it(mysql_project, tmp_path, missing, command):
    with open(os.path.join(mysql_project.folder, "jobs", "Record.py"), "w") as f:
        f.write("from testjobs import Record\n")
    table = mysql_project.drivers["database"]["table"]
    mysql(f"DROP TABLE {table}")
    columns = ", ".join(f"{name} {kind}" for name, kind in MASONITE_COLUMNS.items() if name != missing)
    mysql(f"CREATE TABLE {table} ({columns})")

    made = mysql_project.cli("table", "--connection", "mysql")
    if made.returncode != 0:  # refusing the table at once is fine too, if it names the column
        one_line_error(made, missing)
    path = str(tmp_path / "record")
    if command == "work":
        pushed = mysql_project.cli("push", "Record", path, "x")
        assert pushed.returncode == 0, pushed.stderr
        one_line_error(mysql_project.cli("work", "--stop-when-empty", timeout=30), f"'{missing}'")
    else:
        one_line_error(mysql_project.cli("push", "Record", path, "x"), f"'{missing}'")
    assert lines(path) == []


def test_work_against_an_unreachable_server_is_one_line(mysql_project):
    mysql_project.databases = {"mysql": dict(MYSQL, port=1)}
    mysql_project.write_config()
    started = time.monotonic()
    one_line_error(mysql_project.cli("work", timeout=30), "127.0.0.1:1")
    assert time.monotonic() - started < 5
