"""Helpers the test modules share (the fixtures are in conftest.py): looking at a project's tables
with SQL of the test's own, the failed store, commands and worker processes, a free port, and
DriverCase, the base of the test classes that run on every driver."""
import collections
import os
import signal
import socket
import sqlite3
import time

import pytest

import queue
import testjobs
from conftest import MYSQL, POSTGRES, unique
from testjobs import values, wait_for


# Looking at the tables directly ###############################################################
def mysql(statement, *params):
    """Rows of one statement on MariaDB's test database, through an autocommit connection of the
    test's own (pymysql's %s marks parameters)."""
    import pymysql
    conn = pymysql.connect(autocommit=True, **{k: v for k, v in MYSQL.items() if k != "driver"})
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def pg():
    """An autocommit connection of the test's own to PostgreSQL's test database."""
    import psycopg
    return psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], user=POSTGRES["user"],
                           dbname=POSTGRES["database"], autocommit=True)


def dialect(project):
    """The database of the project's database driver (the state and failed store of every
    driver): "sqlite", "mysql" or "postgres"."""
    return project.databases[project.drivers["database"]["connection"]]["driver"]


def sql(project, statement, *params, many=None):
    """Run one statement on the project's database (its SQLite file, or MariaDB or PostgreSQL
    straight on their usual ports, whatever the project's config says); return its rows.
    `?` marks parameters; many=[params, ...] runs it once per item (in one transaction)."""
    kind = dialect(project)
    if kind == "sqlite":
        db = project.databases[project.drivers["database"]["connection"]]
        conn = sqlite3.connect(os.path.join(project.folder, db["database"]), timeout=30, isolation_level=None)
    else:
        import pymysql
        conn = pymysql.connect(autocommit=True, **{k: v for k, v in MYSQL.items() if k != "driver"}) \
            if kind == "mysql" else pg()
        statement = statement.replace("?", "%s")
    try:
        cur = conn.cursor()
        if many is not None:
            if kind == "sqlite":
                cur.execute("BEGIN")
            cur.executemany(statement, many)
            if kind == "sqlite":
                cur.execute("COMMIT")
            return []
        cur.execute(statement, *([params] if params else []))
        return [tuple(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def jobs_table(project):
    return project.drivers["database"]["table"]


def failed_table(project):
    return project.drivers["database"]["failed_table"]


def count(project, table):
    """Rows in a table; 0 if SQLite has no such table yet (queue.py creates them on first use)."""
    try:
        return sql(project, f"SELECT COUNT(*) FROM {table}")[0][0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise


def job_count(project):
    return count(project, jobs_table(project))


def failed_count(project):
    return count(project, failed_table(project))


def table_empty(project):
    assert job_count(project) == 0, "jobs are left in the table"
    assert failed_count(project) == 0, "jobs ended in the failed store"


def failed_rows():
    """The rows of the failed store, as queue.py's database driver reads them."""
    return queue.driver("database").failed_store().failed_jobs()


# Commands #####################################################################################
def ok(result):
    """Assert a command succeeded; return its stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def one_line_error(result, *words):
    """Assert a runtime error: exit 1, one line on stderr starting 'queue.py: error:', naming words."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert error[0].startswith("queue.py: error: "), error[0]
    for word in words:
        assert word in error[0], f"{word!r} not in {error[0]!r}"
    return error[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Worker processes (conftest's spawn) ##########################################################
def wait_worker(workers, predicate, timeout, what):
    """wait_for(predicate), failing with `what` and the output of the worker (or list of
    workers) as it is then."""
    workers = workers if isinstance(workers, list) else [workers]
    try:
        return wait_for(predicate, timeout, interval=0.02)
    except AssertionError:
        outputs = "\n".join(f"--- worker {w.proc.pid}:\n{w.output}" for w in workers)
        raise AssertionError(f"{what}; worker output:\n{outputs}") from None


def stop(*workers):
    """SIGTERM every worker; each finishes its current job and exits 0."""
    for worker in workers:
        worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0, worker.output


def log_lines(worker, word):
    return [line for line in worker.lines if word in line]


def push_records(path, count, prefix="j", batch=250):
    """Push `count` Record jobs (values prefix0, prefix1, ...), `batch` a push; return the values."""
    names = [f"{prefix}{i}" for i in range(count)]
    for start in range(0, count, batch):
        queue.push(*(testjobs.Record(path, name) for name in names[start:start + batch]))
    return names


def no_loss(path, names, allowed_doubles):
    """Every job ran; at most allowed_doubles of them ran twice (none more often)."""
    counts = collections.Counter(values(path))
    missing = [name for name in names if name not in counts]
    assert not missing, f"{len(missing)} job(s) never ran: {missing[:10]}"
    assert set(counts) == set(names), f"unexpected values: {sorted(set(counts) - set(names))[:10]}"
    doubles = {name: n for name, n in counts.items() if n > 1}
    assert all(n == 2 for n in doubles.values()), f"jobs ran more than twice: {doubles}"
    assert len(doubles) <= allowed_doubles, f"{len(doubles)} jobs ran twice (at most {allowed_doubles}): {doubles}"


# Test classes that run on every driver ########################################################
POP_WAIT = 0.05


class DriverCase:
    """The base of the test classes that run on every driver (test_contract.py, test_job_api.py;
    mark the class with @backends): before each test, the backend's project, its driver, the
    failed store, a queue of the test's own, and the helpers below.

    lapse(message) makes a reserved-but-unacked message available again the way that backend
    does it (database and memory drivers: the reservation expires after retry_after, on the
    driver's clock; amqp: the consuming connection closes)."""

    @pytest.fixture(autouse=True)
    def _project(self, hooks, tmp_path, project):
        self.project = project
        self.broker = project.backend == "amqp"
        self.driver = queue.driver()
        self.store = self.driver.failed_store()     # the failed store of the driver under test
        base = getattr(project, "queue", None) or unique("q")
        self.q = base
        self.queues = [base]
        self.tmp = tmp_path
        yield
        if self.broker:  # the amqp_project fixture deletes its own queue; the test's others go here
            delete = queue.driver("amqp").delete_queues
            for name in self.queues[1:]:
                delete(name)

    def lapse(self, message):
        if self.project.backend == "sqs":  # what a lapsed visibility timeout does, at once
            self.driver.client().change_message_visibility(QueueUrl=self.driver.url(message.queue),
                                                           ReceiptHandle=message.receipt[0], VisibilityTimeout=0)
            return
        if self.broker or self.project.backend == "beanstalkd":
            self.driver.close()  # the server requeues an unacked message when the consuming connection closes
            return
        # the reservation expires retry_after seconds after pop (or the last keep()): move the
        # driver's clock past it (the injectable clock; no real wait)
        self.driver.clock.advance(self.driver.retry_after + 0.001)
        assert self.driver.stats([message.queue])[message.queue]["reserved"] == 0

    def other_queue(self, suffix):
        """A second queue name of this test (deleted afterwards where the backend needs it)."""
        name = f"{self.q}_{suffix}"
        self.queues.append(name)
        return name

    def path(self, name="record"):
        return str(self.tmp / f"{name}.txt")

    def pop_one(self, queues=None, timeout=5.0):
        """Poll pop() until it returns a message (brokers deliver asynchronously)."""
        return wait_for(lambda: self.driver.pop(queues or [self.q], POP_WAIT), timeout,
                        interval=0.01, message=f"nothing to pop from {queues or [self.q]}")

    def value(self, message):
        return queue.unpack(message.payload)["job"].value

    @property
    def stats_timeout(self):
        # amqp: unacked counts come from the management API, which lags up to 5 s
        return 12.0 if self.broker else 5.0

    def wait_stats(self, queue_name, timeout=None, **expected):
        """Poll stats() until the counts of queue_name include `expected`; return them. (On amqp,
        delayed messages wait in the vhost's shared delay ladder: no count per queue, None.)"""
        timeout = timeout or self.stats_timeout
        if self.broker:
            expected.pop("delayed", None)

        def check():
            counts = self.driver.stats([queue_name]).get(queue_name, {})
            got = {k: counts.get(k, 0) for k in expected}
            check.last = counts
            return counts if got == expected else None
        check.last = None
        try:
            counts = wait_for(check, timeout, interval=0.02)
        except AssertionError:
            raise AssertionError(f"stats of {queue_name}: {check.last}, expected {expected}") from None
        if self.broker:
            assert counts["delayed"] is None
        return counts

    def failed_rows(self):
        return [r for r in self.store.failed_jobs() if r["queue"] in self.queues]

    def worker(self, queues=None, **options):
        options.setdefault("poll", 0.05)
        return queue.Worker(self.driver, queues or [self.q], **options)

    def work(self, until, within=20.0, queues=None, **options):
        """Run a worker in this thread until until() is true (checked before each pop); fail
        after `within` seconds. Returns the worker."""
        worker = self.worker(queues, **options)
        deadline = time.monotonic() + within
        state = {"timed_out": False}

        def stop_when_done():
            if until():
                worker.stopping.set()
                return False
            if time.monotonic() > deadline:
                state["timed_out"] = True
                worker.stopping.set()
                return False
            return True

        queue.looping(stop_when_done)
        try:
            assert worker.run() == 0
        finally:
            queue._hooks["looping"].remove(stop_when_done)
        assert not state["timed_out"], f"the worker did not get there within {within} s"
        return worker

    def drain(self, queues=None, **options):
        """Run a worker until its queues are empty (stop_when_empty)."""
        worker = self.worker(queues, stop_when_empty=True, **options)
        assert worker.run() == 0
        return worker
