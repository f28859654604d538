"""Regression tests: what a job, a payload, a clock, a network or a second command can do to a
worker, and what queue.py promises anyway (SPEC section 4: a worker never dies of what a job
does, failed() runs at most once, push() stores each job exactly once, times are compared in
UTC, every rejected input is one line).

Workers run as real `python queue.py work` subprocesses in a temporary project (conftest's
sqlite_project / mysql_project; retry_after 2 s). The poison jobs live in tests/poisonjobs.py,
importable by the workers through PYTHONPATH=tests. Tables and files are checked with raw SQL
(sqlite3, or pymysql straight to MariaDB) rather than through the queue.py under test.
"""
import datetime
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

import poisonjobs
import queue
import testjobs
from conftest import MYSQL, TESTS, Project, backends
from helpers import failed_count, failed_table, job_count, jobs_table, one_line_error, sql
from testjobs import failures, lines, runs, values, wait_for

on_sqlite_and_mysql = backends("sqlite", "mysql")


# Looking at the tables directly (helpers.sql) ###############################################
def failed_table_rows(project):
    """[(name, queue, exception)] of the failed table, oldest first."""
    return sql(project, f"SELECT name, queue, exception FROM {failed_table(project)} ORDER BY id")


def queued_total(project):
    """ready + delayed + reserved over every queue, as queue.py's stats() counts them."""
    return sum(sum(counts.values()) for counts in queue.driver().stats().values())


def one_line(exc):
    text = str(exc)
    assert text.strip() and "\n" not in text.strip(), f"not a one-line message: {text!r}"
    return text


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result.stdout


def write_job_module(project, name="Record.py", text="from testjobs import Record\n"):
    with open(os.path.join(project.folder, "jobs", name), "w") as f:
        f.write(text)


# A TCP proxy in front of MariaDB ##############################################################
class Proxy:
    """Forwards 127.0.0.1:<port> to MariaDB, one pair of pump threads per connection.

    stop() closes the listener and every forwarded socket: the database becomes unreachable.
    drop_insert_reply=True: the first COM_QUERY packet that contains b"INSERT INTO" is forwarded
    to the server, then, as soon as the server's reply arrives (the INSERT has run and, in
    autocommit, committed), both sockets are closed without forwarding that reply. Connections
    after that one pass through untouched."""

    def __init__(self, drop_insert_reply=False):
        self.drop_insert_reply = drop_insert_reply
        self.dropped = threading.Event()
        self.closed = False
        self.sockets = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection((MYSQL["host"], MYSQL["port"]), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self.lock:
                if self.closed:
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            state = {"dropping": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    @staticmethod
    def _recv(sock):
        try:
            return sock.recv(1 << 16)
        except OSError:
            return b""

    @staticmethod
    def _close(*socks):
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def _upstream(self, client, server, state):
        """client -> server; with drop_insert_reply, parse MySQL packets until the INSERT passed."""
        buffer = b""
        try:
            while True:
                data = self._recv(client)
                if not data:
                    break
                if not self.drop_insert_reply or self.dropped.is_set():
                    server.sendall(buffer + data)
                    buffer = b""
                    continue
                buffer += data
                while len(buffer) >= 4:
                    length = int.from_bytes(buffer[:3], "little")
                    if len(buffer) < 4 + length:
                        break
                    packet, buffer = buffer[:4 + length], buffer[4 + length:]
                    if packet[4:5] == b"\x03" and b"INSERT INTO" in packet and not self.dropped.is_set():
                        state["dropping"] = True  # before the packet goes: its reply is the one dropped
                        self.dropped.set()
                    server.sendall(packet)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _downstream(self, server, client, state):
        """server -> client; the reply to the marked INSERT is swallowed and both sockets closed."""
        try:
            while True:
                data = self._recv(server)
                if not data or state["dropping"]:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def stop(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            self._close(*self.sockets)
        self.thread.join(2)


# 1. Poison jobs never kill a worker ###########################################################
@on_sqlite_and_mysql
def test_sys_exit_in_failed_does_not_kill_the_worker(project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(poisonjobs.ExitInFailed(out, "x"), testjobs.Record(after, "next"))
    worker = spawn(project, "work", "--stop-when-empty")
    assert worker.wait(30) == 0, worker.output
    assert values(out) == ["x"]
    assert failures(out) == ["ValueError: boom x"], "failed() must run exactly once"
    rows = failed_table_rows(project)
    assert [name for name, _, _ in rows] == ["ExitInFailed"], rows
    assert rows[0][2].startswith("ValueError: boom x"), rows[0][2]
    assert values(after) == ["next"], "the worker went on with the next job"
    assert job_count(project) == 0


@on_sqlite_and_mysql
def test_system_exit_while_unpickling_does_not_kill_the_worker(project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(poisonjobs.ExitOnLoad(out, "x"), testjobs.Record(after, "next"))
    worker = spawn(project, "work", "--stop-when-empty")
    assert worker.wait(30) == 0, worker.output
    assert values(out) == []
    rows = failed_table_rows(project)
    assert [name for name, _, _ in rows] == ["ExitOnLoad"], rows
    assert "SystemExit" in rows[0][2], rows[0][2]
    assert values(after) == ["next"], "a good job after the poison one still runs"
    assert job_count(project) == 0


@on_sqlite_and_mysql
def test_a_string_tries_is_refused_at_push(project, tmp_path):
    with pytest.raises(queue.QueueError) as raised:
        queue.push(poisonjobs.StringTries(tmp_path / "out", "x"))
    assert "tries" in one_line(raised.value)
    assert queued_total(project) == 0 and job_count(project) == 0


@on_sqlite_and_mysql
def test_an_exception_text_that_is_not_utf8_is_failed_once_with_its_own_type(project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(poisonjobs.SurrogateFail(out, "s"), testjobs.Record(after, "next"))
    worker = spawn(project, "work", "--stop-when-empty")
    assert worker.wait(30) == 0, worker.output
    assert values(out) == ["s", "s"], "tries = 2: two attempts"
    assert failures(out) == [r"ValueError: 'bad \udcff byte'"], "failed() must run exactly once"
    rows = failed_table_rows(project)
    assert len(rows) == 1, rows
    assert rows[0][2].startswith("ValueError"), rows[0][2]
    assert values(after) == ["next"]
    assert job_count(project) == 0


# 2. A chain with a hole ######################################################################
@on_sqlite_and_mysql
def test_chain_with_none_is_refused_at_push(project, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(queue.QueueError):
        queue.chain(testjobs.Record(out, "a"), testjobs.Record(out, "b"), None)
    assert job_count(project) == 0


# 3. An unpickle that blocks ###################################################################
@on_sqlite_and_mysql
def test_a_blocking_unpickle_is_held_to_the_job_timeout(project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(poisonjobs.SlowLoadTimeout(out, "slow"), testjobs.Record(after, "next"))
    started = time.monotonic()
    worker = spawn(project, "work", "--stop-when-empty")
    assert worker.wait(15) == 0, worker.output
    assert time.monotonic() - started < 10, "the job's timeout of 1 s did not stop its unpickling"
    assert lines(out + ".loading"), "the job was never unpickled: the test proves nothing"
    rows = failed_table_rows(project)
    assert [name for name, _, _ in rows] == ["SlowLoadTimeout"], rows
    assert "JobTimeout" in rows[0][2] and "timeout" in rows[0][2].lower(), rows[0][2]
    assert values(after) == ["next"]
    assert job_count(project) == 0


@on_sqlite_and_mysql
def test_two_sigterms_stop_a_worker_stuck_in_an_unpickle_and_lose_nothing(project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(poisonjobs.SlowLoad(out, "slow"))
    worker = spawn(project, "work")
    wait_for(lambda: lines(out + ".loading"), 20, message="the job's unpickling did not start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: signal_taken(worker.proc.pid, signal.SIGTERM), 10, interval=0.001,
             message="the kernel never delivered the SIGTERM")
    # Python runs its handler on the main thread a moment after the kernel delivered the signal;
    # a second SIGTERM arriving before that counts as the same one. Nothing outside the worker
    # shows when the handler ran, so this one pause cannot be a poll.
    time.sleep(0.2)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output
    assert queued_total(project) == 1, f"the job is no longer in the jobs table; failed store: {failed_table_rows(project)}"
    assert failed_count(project) == 0, failed_table_rows(project)
    assert values(out) == []


def signal_taken(pid, signum):
    """The kernel has delivered signum to process pid: it is pending neither for the process nor
    for its main thread (Linux /proc/PID/status, SigPnd and ShdPnd)."""
    bit = 1 << (int(signum) - 1)
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return not any(int(fields[key].strip(), 16) & bit for key in ("SigPnd", "ShdPnd"))


# 4. Jobs that fork ############################################################################
@pytest.mark.parametrize("mode", ["return", "exit"], ids=["child-returns", "child-sys-exit"])
@on_sqlite_and_mysql
def test_a_forking_job_does_not_clone_the_worker(project, tmp_path, spawn, mode):
    out, rec = str(tmp_path / "fork"), str(tmp_path / "rec")
    queue.push(poisonjobs.Forker(out, mode), *(testjobs.Record(rec, f"r{i}") for i in range(5)))
    worker = spawn(project, "work", "--stop-when-empty")
    assert worker.wait(30) == 0, worker.output
    done = values(out)
    assert done.count("fork") == 1, f"the forking job's handle() ran {done.count('fork')} times: {done}"
    assert "child" in done and done[-1] == "parent-done", done
    records = runs(rec)
    assert sorted(r.value for r in records) == [f"r{i}" for i in range(5)], "every Record job exactly once"
    assert {r.pid for r in records} == {worker.proc.pid}, "Record jobs ran in a process other than the worker"
    assert failed_count(project) == 0, failed_table_rows(project)
    assert job_count(project) == 0


# 5. Jobs that change signal handlers ##########################################################
def settled(project):
    """The job ran and the worker went back for more: its row is gone from the jobs table."""
    return lambda: job_count(project) == 0


def test_a_job_that_ignores_sigterm_does_not_make_the_worker_unstoppable(sqlite_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(poisonjobs.IgnoreTerm(out, "ign"))
    worker = spawn(sqlite_project, "work")
    wait_for(lambda: values(out), 20, message="the job did not run")
    wait_for(settled(sqlite_project), 10, message="the worker did not go back to its loop")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output


def test_a_job_that_sets_an_alarm_does_not_kill_the_idle_worker(sqlite_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(poisonjobs.Alarm(out, "alarm"))
    worker = spawn(sqlite_project, "work")
    wait_for(lambda: runs(out), 20, message="the job did not run")
    wait_for(settled(sqlite_project), 10, message="the worker did not go back to its loop")
    ran = runs(out)[0].at
    try:
        code = worker.proc.wait(max(0.0, ran + 2.5 - time.time()))
    except subprocess.TimeoutExpired:
        code = None
    assert code is None, f"the idle worker died (exit {code}) after the job's alarm went off:\n{worker.output}"
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output


# 6. SIGTERM while the database is unreachable #################################################
def test_sigterm_stops_a_worker_whose_database_is_unreachable(mysql_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(testjobs.Record(out, "one"))
    proxy = Proxy()
    try:
        mysql_project.databases = {"mysql": dict(MYSQL, port=proxy.port)}
        mysql_project.write_config()
        worker = spawn(mysql_project, "work")
        wait_for(lambda: values(out), 20, message=f"the worker did not run the job:\n{worker.output}")
    finally:
        proxy.stop()
    wait_for(lambda: re.search(r"reconnect|lost|cannot connect|unreachable", worker.output, re.I), 10,
             message=f"the worker did not notice that the database went away:\n{worker.output}")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output
    assert values(out) == ["one"]


# 7. Time ######################################################################################
def test_timestamps_are_stored_in_utc_whatever_tz_says(sqlite_project, tmp_path):
    sqlite_project.drivers["database"]["tz"] = "America/New_York"
    sqlite_project.write_config()
    sqlite_project.configure()
    out = str(tmp_path / "out")
    queue.push(testjobs.Record(out, "now"))
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    ((available_at, created_at),) = sql(sqlite_project, "SELECT available_at, created_at FROM jobs")
    for column, text in (("available_at", available_at), ("created_at", created_at)):
        stamp = datetime.datetime.fromisoformat(str(text))
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        assert abs((stamp - now).total_seconds()) < 5, f"{column} {text!r} is not UTC (now is {now} UTC)"
    ok(sqlite_project.cli("work", "--stop-when-empty"))
    assert values(out) == ["now"]


SKEWED_SITE = '''
"""Loaded by a worker through PYTHONPATH: this process's wall clock runs an hour ahead."""
import datetime as _datetime
import time as _time

SKEW = 3600
_real_time, _real_time_ns, _real_datetime = _time.time, _time.time_ns, _datetime.datetime
_time.time = lambda: _real_time() + SKEW
_time.time_ns = lambda: _real_time_ns() + SKEW * 1_000_000_000


class _SkewedDatetime(_real_datetime):
    @classmethod
    def now(cls, tz=None):
        return _real_datetime.fromtimestamp(_time.time(), tz)

    @classmethod
    def utcnow(cls):
        return _real_datetime.fromtimestamp(_time.time(), _datetime.timezone.utc).replace(tzinfo=None)

    @classmethod
    def today(cls):
        return cls.now()


_datetime.datetime = _SkewedDatetime
'''


def test_a_server_that_stalls_while_it_tells_the_time_does_not_set_the_clock_ahead(mysql_project):
    """The server's time counts at the midpoint of the round trip: a reply held back for a second
    (a server just restarted, say) would put the clock half a second ahead, and two workers whose
    clocks differ by retry_after both claim one job. The reading of the shortest round trip counts."""
    driver = queue.driver("database")
    dialect, real, calls = driver.dialect, driver.dialect.server_time, []

    def stalling(cur, driver=None):
        now = real(cur)
        calls.append(now)
        if len(calls) == 1:
            time.sleep(1.0)  # the point: the first reply arrives a second after the server read its clock
        return now
    dialect.server_time = stalling
    try:
        driver._sync_clock(driver._conn())
    finally:
        del dialect.server_time
    cur = driver._conn().cursor()
    before = time.monotonic()
    server = real(cur)
    after = time.monotonic()
    ours = driver.clock.time() - (time.monotonic() - (before + after) / 2)
    assert len(calls) >= 2, "one slow reading was taken as it was"
    assert abs(ours - server) < 0.1, f"the clock is {ours - server:+.3f} s off the server's"


def test_a_worker_with_a_clock_an_hour_ahead_does_not_take_a_running_job(mysql_project, tmp_path, spawn):
    retry_after = mysql_project.drivers["database"]["retry_after"]
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(SKEWED_SITE)
    skewed_path = f"{skew}{os.pathsep}{TESTS}"
    check = subprocess.run([sys.executable, "-c", "import time, datetime; print(time.time()); "
                            "print(datetime.datetime.now(datetime.timezone.utc).timestamp())"],
                           env=mysql_project.env(PYTHONPATH=skewed_path), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    for seen in map(float, check.stdout.split()):  # the control: that process's clocks do run an hour ahead
        assert abs(seen - time.time() - 3600) < 60, check.stdout

    long, gate, probe = str(tmp_path / "long"), str(tmp_path / "gate"), str(tmp_path / "probe")
    queue.push(testjobs.Gate(long, gate, "long", limit=60))
    normal = spawn(mysql_project, "work")
    wait_for(lambda: runs(long), 20, message="the long job did not start")
    began = runs(long)[0].at
    wait_for(lambda: time.time() > began + 2 * retry_after + 0.5, 3 * retry_after + 5)  # outlive 2 x retry_after

    queue.push(testjobs.Record(probe, "probe"))  # something the skewed worker may run
    skewed = spawn(mysql_project, "work", "--stop-when-empty", PYTHONPATH=skewed_path)
    wait_for(lambda: skewed.proc.poll() is not None or len(runs(long)) > 1, 20,
             message=f"the skewed worker neither finished nor started the long job:\n{skewed.output}")
    assert [(r.value, r.pid) for r in runs(long)] == [("long", normal.proc.pid)], \
        "the worker whose clock runs an hour ahead started the job another worker was running"
    assert skewed.wait(20) == 0, skewed.output
    assert [(r.value, r.pid) for r in runs(probe)] == [("probe", skewed.proc.pid)], "the skewed worker works"

    open(gate, "w").close()
    wait_for(lambda: len(runs(long)) == 2, 20, message="the long job did not finish")
    normal.proc.send_signal(signal.SIGTERM)
    assert normal.wait(20) == 0, normal.output
    assert [(r.value, r.pid) for r in runs(long)] == [("long", normal.proc.pid), ("long-done", normal.proc.pid)]
    assert failed_count(mysql_project) == 0


# 8. Exactly-once push #########################################################################
@on_sqlite_and_mysql
def test_a_batch_with_one_unpicklable_job_stores_nothing(project, tmp_path):
    out = tmp_path / "out"
    bad = testjobs.Record(out, "bad")
    bad.hook = lambda: None  # a lambda cannot be pickled
    with pytest.raises(queue.QueueError):
        queue.push(*(testjobs.Record(out, f"g{i}") for i in range(30)), bad)
    assert job_count(project) == 0


def test_a_push_whose_reply_is_lost_after_the_insert_stores_the_job_once(mysql_project, tmp_path):
    proxy = Proxy(drop_insert_reply=True)
    try:
        mysql_project.databases = {"mysql": dict(MYSQL, port=proxy.port)}
        mysql_project.write_config()
        mysql_project.configure()
        queue.driver().stats()  # connected once through the proxy: a later loss is a lost connection
        queue.push(testjobs.Record(tmp_path / "out", "once"))
        assert proxy.dropped.is_set(), "the proxy never saw the INSERT: the test proves nothing"
    finally:
        queue._close_drivers()
        proxy.stop()
    assert job_count(mysql_project) == 1, "a push retried after a lost reply stored the job twice (or not at all)"


# 9. The key file race #########################################################################
def test_threads_pushing_at_once_create_one_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("QUEUE_KEY", raising=False)
    drivers = {"default": "database",
               "database": {"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                            "attempts": 3, "poll": 0.05, "retry_after": 2}}
    databases = {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}}
    try:
        for round_ in range(5):
            folder = tmp_path / f"round{round_}"
            folder.mkdir()
            project = Project(folder, drivers, databases, key=None)
            with open(project.config_path) as f:
                assert "KEY = None" in f.read()
            project.configure()
            out = str(folder / "out")
            barrier, errors = threading.Barrier(8), []

            def push(n):
                barrier.wait()
                try:
                    queue.push(testjobs.Record(out, f"k{n}"))
                except BaseException as exc:  # noqa: B036 - any error fails the test
                    errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == [], f"round {round_}: {errors}"
            assert job_count(project) == 8
            assert sorted(name for name in os.listdir(folder) if name.startswith(".queue.key")) == [".queue.key"]
            ok(project.cli("work", "--stop-when-empty"))
            assert sorted(values(out)) == [f"k{n}" for n in range(8)], "every job is signed with the one key"
            assert failed_count(project) == 0
            queue._close_drivers()
    finally:
        queue._close_drivers()


# 10. A job too big for the server #############################################################
def test_a_job_bigger_than_max_allowed_packet_is_refused_at_once(mysql_project, tmp_path):
    job = testjobs.Record(tmp_path / "out", "big")
    job.data = os.urandom(20_000_000)
    started = time.monotonic()
    with pytest.raises(queue.QueueError) as raised:
        queue.push(job)
    assert time.monotonic() - started < 5
    assert "max_allowed_packet" in one_line(raised.value)
    assert job_count(mysql_project) == 0


# 11. Queue and table names on MySQL ###########################################################
def test_queue_names_are_compared_exactly_on_mysql(mysql_project, tmp_path):
    out = str(tmp_path / "out")
    names = ["reports", "Reports", "REPORTS", "répörts"]
    for i, name in enumerate(names):
        queue.push(testjobs.Record(out, f"q{i}"), queue=name)
    ok(mysql_project.cli("work", "--queue", "reports", "--stop-when-empty"))
    assert values(out) == ["q0"], "a worker of `reports` took jobs of other queues"
    left = sql(mysql_project, f"SELECT queue, attempts, reserved_at FROM {jobs_table(mysql_project)}")
    assert sorted(left) == sorted((name, 0, None) for name in names[1:]), left


@pytest.mark.parametrize("name", ["reports ", "x" * 201, "é" * 101],
                         ids=["trailing-space", "201-bytes", "202-bytes-101-chars"])
def test_a_queue_name_mysql_cannot_keep_apart_is_refused_at_push(mysql_project, tmp_path, name):
    with pytest.raises(queue.QueueError) as raised:
        queue.push(testjobs.Record(tmp_path / "out", "x"), queue=name)
    assert name.strip()[:30] in one_line(raised.value)
    assert job_count(mysql_project) == 0


def drop_table(name):
    import pymysql
    conn = pymysql.connect(autocommit=True, **{k: v for k, v in MYSQL.items() if k != "driver"})
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{name}`")
    finally:
        conn.close()


def test_a_49_character_table_name_is_a_one_line_config_error(mysql_project):
    name = (f"t_{uuid.uuid4().hex}_" + "x" * 49)[:49]
    mysql_project.drivers["database"]["table"] = name
    mysql_project.write_config()
    try:
        one_line_error(mysql_project.cli("table"), "table")
    finally:
        drop_table(name)


def test_a_reserved_word_as_table_name_works_or_is_one_line(mysql_project, tmp_path):
    exists = sql(mysql_project, "SELECT COUNT(*) FROM information_schema.tables "
                                "WHERE table_schema = DATABASE() AND table_name = 'order'")[0][0]
    if exists:
        pytest.skip("a table `order` exists in the test database already; not touching it")
    write_job_module(mysql_project)
    mysql_project.drivers["database"]["table"] = "order"
    mysql_project.write_config()
    out = str(tmp_path / "out")
    try:
        result = mysql_project.cli("table")
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        if result.returncode == 0:
            ok(mysql_project.cli("push", "Record", out, "x"))
            ok(mysql_project.cli("work", "--stop-when-empty"))
            assert values(out) == ["x"]
        else:
            one_line_error(result)
    finally:
        drop_table("order")


# 12. failed and retry at scale ################################################################
def make_failed(project, total):
    """`total` failed Record jobs (values n0, n1, ...), ids and failed_at rising with n: pushed
    for real (so their payloads are what queue.py writes), then moved to the failed table."""
    out = os.path.join(project.folder, "failed-out")
    for start in range(0, total, 500):
        queue.push(*(testjobs.Record(out, f"n{i}") for i in range(start, min(total, start + 500))))
    rows = sql(project, f"SELECT name, queue, payload FROM {jobs_table(project)} ORDER BY id")
    base = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=2)
    stamps = [(base + datetime.timedelta(seconds=i)).isoformat(" ", "microseconds") for i in range(total)]
    sql(project, f"INSERT INTO {failed_table(project)} (driver, connection, queue, name, payload, exception, "
                 "failed_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        many=[("database", "sqlite", q, name, payload, f"ValueError: n{i}\n\nTraceback: ...", stamps[i], stamps[i])
              for i, (name, q, payload) in enumerate(rows)])
    sql(project, f"DELETE FROM {jobs_table(project)}")
    queue._close_drivers()
    assert failed_count(project) == total and job_count(project) == 0


def listed_ids(output):
    """The ids of the rows of `python queue.py failed` (other lines, such as a header, are skipped)."""
    return [int(m[1]) for m in (re.match(r"^\s*(\d+)\s+database\b", line) for line in output.splitlines()) if m]


def test_failed_lists_newest_first_and_at_most_50_by_default(sqlite_project):
    make_failed(sqlite_project, 60)
    newest = [row[0] for row in sql(sqlite_project, "SELECT id FROM failed_jobs ORDER BY failed_at DESC, id DESC")]
    out = ok(sqlite_project.cli("failed"))
    assert listed_ids(out) == newest[:50], out
    out = ok(sqlite_project.cli("failed", "--limit", "5"))
    assert listed_ids(out) == newest[:5], out


def jobs_and_failed(project):
    """Every payload in the jobs table and the failed table, as a list."""
    return [row[0] for row in sql(project, "SELECT payload FROM jobs UNION ALL SELECT payload FROM failed_jobs")]


def test_two_concurrent_retry_all_move_each_job_once(sqlite_project, spawn):
    make_failed(sqlite_project, 300)
    retries = [spawn(sqlite_project, "retry", "all") for _ in range(2)]
    for retry in retries:
        assert retry.wait(60) == 0, retry.output
        assert "Traceback" not in retry.output, retry.output
    payloads = jobs_and_failed(sqlite_project)
    assert len(payloads) == 300, f"{job_count(sqlite_project)} jobs + {failed_count(sqlite_project)} failed"
    assert len(set(payloads)) == 300


def test_a_retry_all_killed_midway_neither_loses_nor_duplicates(sqlite_project, spawn):
    make_failed(sqlite_project, 2000)
    for round_ in range(3):
        before = job_count(sqlite_project)
        retry = spawn(sqlite_project, "retry", "all")
        wait_for(lambda: retry.proc.poll() is not None or job_count(sqlite_project) > before, 30, interval=0.005,
                 message="retry all moved nothing")
        retry.proc.send_signal(signal.SIGKILL)
        retry.proc.wait(10)
        payloads = jobs_and_failed(sqlite_project)
        assert len(payloads) == 2000, (f"round {round_}: {job_count(sqlite_project)} jobs + "
                                       f"{failed_count(sqlite_project)} failed after a SIGKILL")
        assert len(set(payloads)) == 2000


# 13. One-line errors ##########################################################################
def test_a_key_file_that_is_a_directory_is_one_line_and_claims_nothing(sqlite_project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.Record(out, "x"))  # signed with the config's KEY
    queue._close_drivers()
    sqlite_project.key = None
    sqlite_project.write_config()
    os.mkdir(os.path.join(sqlite_project.folder, ".queue.key"))
    one_line_error(sqlite_project.cli("work", "--once"))
    assert sql(sqlite_project, "SELECT attempts, reserved_at FROM jobs") == [(0, None)], "the job was claimed"
    assert values(out) == []


def without_dac_override():
    """A command prefix under which root obeys file modes (or [] when not root); None if impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe")
        open(path, "w").close()
        os.chmod(path, 0o444)
        probe = subprocess.run(prefix + [sys.executable, "-c", f"open({path!r}, 'a')"], capture_output=True)
    return prefix if probe.returncode != 0 else None


@pytest.mark.parametrize("folder_too", [False, True], ids=["file-0444", "file-and-folder-0444"])
def test_a_read_only_sqlite_database_is_one_line(sqlite_project, tmp_path, folder_too):
    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: file modes do not stop root's writes")
    write_job_module(sqlite_project)
    queue.driver().create_tables()
    queue._close_drivers()
    db = os.path.join(sqlite_project.folder, "queue.sqlite3")
    os.chmod(db, 0o444)
    if folder_too:
        os.chmod(sqlite_project.folder, 0o555)
    try:
        result = subprocess.run(prefix + [sys.executable, "queue.py", "push", "Record", str(tmp_path / "out"), "x"],
                                cwd=sqlite_project.folder, env=sqlite_project.env(), capture_output=True,
                                text=True, timeout=60)
    finally:
        os.chmod(sqlite_project.folder, 0o755)
        os.chmod(db, 0o644)
    one_line_error(result)
    assert job_count(sqlite_project) == 0


def test_a_database_locked_longer_than_the_busy_timeout_is_one_line(sqlite_project, tmp_path):
    write_job_module(sqlite_project)
    queue.driver().create_tables()
    queue._close_drivers()
    sqlite_project.databases["sqlite"]["timeout"] = 0.5
    sqlite_project.write_config()
    holder = sqlite3.connect(os.path.join(sqlite_project.folder, "queue.sqlite3"), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            result = sqlite_project.cli("push", "Record", str(tmp_path / "out"), "x", timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("push waited more than 15 s for the lock: DATABASES['sqlite']['timeout'] = 0.5 was not applied")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    one_line_error(result, "locked")
    assert job_count(sqlite_project) == 0


# 14. Replayed and tampered rows ###############################################################
@on_sqlite_and_mysql
def test_a_payload_copied_to_another_queue_or_name_is_not_run(project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.Record(out, "orig"), queue="a")
    table = jobs_table(project)
    copy = (f"INSERT INTO {table} (name, queue, payload, attempts, available_at, created_at) "
            f"SELECT {{name}}, {{queue}}, payload, 0, available_at, created_at FROM {table} WHERE queue = 'a'")
    sql(project, copy.format(name="name", queue="'b'"))         # the same job, replayed on queue b
    sql(project, copy.format(name="'Renamed'", queue="queue"))  # the same payload under another name, on a
    assert job_count(project) == 3

    ok(project.cli("work", "--queue", "b", "--stop-when-empty"))
    assert values(out) == [], "a payload copied to another queue was run"
    rows = failed_table_rows(project)
    assert [(name, q) for name, q, _ in rows] == [("Record", "b")], rows
    assert "signed for" in rows[0][2], rows[0][2]

    ok(project.cli("work", "--queue", "a", "--stop-when-empty"))
    assert values(out) == ["orig"], "the original runs, once; the renamed copy does not"
    rows = failed_table_rows(project)
    assert [(name, q) for name, q, _ in rows] == [("Record", "b"), ("Renamed", "a")], rows
    assert "signed for" in rows[1][2], rows[1][2]
    assert job_count(project) == 0
