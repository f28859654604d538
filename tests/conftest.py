"""Shared fixtures: a temporary project per test, and the real servers (MariaDB, PostgreSQL,
RabbitMQ). The helpers the test modules share are in tests/helpers.py.

A test that takes `project` runs once per backend named by its (its class's, its module's)
@backends(...) mark: sqlite, mysql, postgres (the database driver on each), memory, amqp. It gets
that backend's project fixture below; project.backend names it.

Server tests skip when a server is unreachable, except under CI=true, where that is a failure.
"""
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
for path in (TESTS, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import queue  # noqa: E402  (our file, shadowing the standard library's)

assert hasattr(queue, "Queueable"), f"tests imported {queue.__file__}, not queue.py of {ROOT}"

CI = os.environ.get("CI") == "true"
# Tests that stop or restart MariaDB or RabbitMQ run only when asked (.ci/run asks), so that the
# README's test command never stops a developer's own servers.
restarts_a_server = pytest.mark.skipif(os.environ.get("QUEUE_TEST_RESTARTS") != "1",
                                       reason="stops a server: set QUEUE_TEST_RESTARTS=1 (.ci/run does)")
MYSQL = {"driver": "mysql", "host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
AMQP = {"host": "127.0.0.1", "port": 5672, "username": "guest", "password": "guest",
        "vhost": f"queue-py-tests-{os.getpid()}-{uuid.uuid4().hex[:6]}"}  # made and deleted by the run
REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}
POSTGRES = {"driver": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres", "password": "",
            "database": "test"}

# The backends a test can run on (the `project` fixture's), and groups of them.
BACKENDS = ("sqlite", "mysql", "postgres", "memory", "amqp", "redis", "beanstalkd", "sqs")
SQL_BACKENDS = ("sqlite", "mysql", "postgres")     # the database driver on each dialect
CLOCKED = ("sqlite", "mysql", "postgres", "memory", "redis")  # reservations lapse on the driver's injectable clock


@pytest.fixture(autouse=True)
def _a_restart_runs_alone(request, tmp_path_factory):
    """Under pytest-xdist (the README's command runs the suite in several processes), a test that
    stops a shared server runs while no other test runs, and no other test starts until it ends: a
    readers-writer lock of two files shared by the run's processes, the writer first in line (it
    holds the turnstile while it waits, so the readers cannot starve it)."""
    alone = any(mark == restarts_a_server.mark for mark in request.node.iter_markers("skipif"))
    with _servers_kept(tmp_path_factory, alone):
        yield


@contextlib.contextmanager
def _servers_kept(tmp_path_factory, alone=False):
    """Shared (alone: exclusive) hold of the run's servers while the block runs; nothing outside
    pytest-xdist, where one process runs one test at a time."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    folder = tmp_path_factory.getbasetemp().parent  # the run's, shared by its workers
    with open(folder / "turnstile.lock", "a") as turnstile, open(folder / "servers.lock", "a") as servers:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(servers, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


def backends(*names):
    """Mark a test, a class or a module (pytestmark) to run once per backend named, with the
    `project` fixture of that backend."""
    unknown = set(names) - set(BACKENDS)
    assert names and not unknown, f"backends({', '.join(names)}): not one of {BACKENDS}"
    return pytest.mark.backends(*names)


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run the test once per backend named, with its `project`")


def pytest_generate_tests(metafunc):
    """Parametrize `project` with the backends of the closest @backends mark (a test that
    parametrizes `project` itself, indirectly, names its own)."""
    mark = metafunc.definition.get_closest_marker("backends")
    if mark is None or "project" not in metafunc.fixturenames:
        return
    for parametrize in metafunc.definition.iter_markers("parametrize"):
        names = parametrize.args[0]
        if "project" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    metafunc.parametrize("project", mark.args, indirect=True)


def server_up(host, port, timeout=2.0):
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name, host, port):
    """Skip (or, under CI=true, fail) a test whose server is unreachable."""
    if not server_up(host, port):
        message = f"{name} is not reachable on {host}:{port}"
        if CI:
            pytest.fail(message + " (CI=true: an unreachable server is a failure)")
        pytest.skip(message)


class Project:
    """A temporary project: queue.py copied in, config.py written from dicts, jobs/ ready."""

    def __init__(self, folder, drivers, databases, key="test-key-0123456789abcdef", backend=None):
        self.folder = str(folder)
        self.drivers, self.databases, self.key = drivers, databases, key
        self.backend = backend  # the name of the backend fixture that made it (sqlite, mysql, ...)
        shutil.copy(os.path.join(ROOT, "queue.py"), self.folder)
        os.makedirs(os.path.join(self.folder, "jobs"), exist_ok=True)
        open(os.path.join(self.folder, "jobs", "__init__.py"), "a").close()
        self.write_config()

    @property
    def config_path(self):
        return os.path.join(self.folder, "config.py")

    def write_config(self, extra=""):
        with open(self.config_path, "w") as f:
            f.write(f"DRIVERS = {self.drivers!r}\nDATABASES = {self.databases!r}\nKEY = {self.key!r}\n{extra}")

    def configure(self):
        """Point this process's queue module at the project."""
        return queue.configure(self.config_path)

    def env(self, **extra):
        env = dict(os.environ)
        env.pop("QUEUE_CONFIG", None)
        env.pop("QUEUE_KEY", None)
        env["PYTHONPATH"] = TESTS  # tests/testjobs.py is importable by workers
        env.update(extra)
        return env

    def cli(self, *args, python=sys.executable, timeout=60, **env):
        """Run `python queue.py ARGS` in the project; return the CompletedProcess."""
        return subprocess.run([python, "queue.py", *map(str, args)], cwd=self.folder, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def spawn(self, *args, python=sys.executable, **env):
        """Start `python queue.py ARGS` in the project; return the Popen."""
        return subprocess.Popen([python, "queue.py", *map(str, args)], cwd=self.folder, env=self.env(**env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def unique(prefix="t"):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sqlite_project(tmp_path):
    """A project on the database driver with SQLite (short retry_after and poll for fast tests)."""
    drivers = {"default": "database",
               "database": {"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                            "attempts": 3, "poll": 0.05, "retry_after": 2}}
    databases = {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}}
    project = Project(tmp_path, drivers, databases, backend="sqlite")
    project.configure()
    yield project
    queue._close_drivers()


@pytest.fixture
def memory_project(tmp_path):
    """A project on the in-memory driver; its failed jobs and state in memory too."""
    drivers = {"default": "memory", "memory": {"poll": 0.05, "retry_after": 2},
               "database": {"connection": "sqlite", "poll": 0.05, "retry_after": 2}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}},
                      backend="memory")
    project.configure()
    queue.MemoryDriver._jobs.clear()  # the jobs, failed jobs and state of the process: none left by an earlier test
    queue._MemoryState._entries.clear()
    queue._MemoryFailed._rows.clear()
    queue._MemoryFailed._marks.clear()
    yield project
    queue._close_drivers()


def server_project(tmp_path, backend, name, server, connection, settings, drop):
    """A project on the database driver with a server database, on tables of its own that
    drop(*names) removes afterwards (a generator, for the fixtures below)."""
    require(name, server["host"], server["port"])
    table = unique("jobs")
    drivers = {"default": "database",
               "database": {"connection": connection, "table": table, "failed_table": table + "_failed",
                            "state_table": table + "_state", "attempts": 3, "poll": 0.05, "retry_after": 2}}
    project = Project(tmp_path, drivers, {connection: dict(settings)}, backend=backend)
    project.configure()
    queue.driver().create_tables()
    yield project
    queue._close_drivers()
    drop(table, table + "_failed", table + "_state")


@pytest.fixture
def mysql_project(tmp_path):
    """A project on the database driver with MariaDB, on tables of its own, dropped afterwards."""
    yield from server_project(tmp_path, "mysql", "MariaDB", MYSQL, "mysql", MYSQL, drop_mysql_tables)


@pytest.fixture
def postgres_project(tmp_path):
    """A project on the database driver with PostgreSQL, on tables of its own, dropped afterwards."""
    yield from server_project(tmp_path, "postgres", "PostgreSQL", POSTGRES, "pg", POSTGRES, drop_postgres_tables)


def drop_mysql_tables(*names):
    import pymysql
    conn = pymysql.connect(**{k: v for k, v in MYSQL.items() if k != "driver"})
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {', '.join(names)}")
    finally:
        conn.close()


def drop_postgres_tables(*names):
    import psycopg
    with psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], user=POSTGRES["user"],
                         dbname=POSTGRES["database"], autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(names)}")


_USED_THE_BROKER = []  # set by the amqp_project fixture, once it made the test vhost


def _broker_admin(method, path, body=None):
    """A call of RabbitMQ's management API as AMQP's user (an administrator, as guest is)."""
    import base64
    import json
    import urllib.request
    auth = base64.b64encode(f"{AMQP['username']}:{AMQP['password']}".encode()).decode()
    request = urllib.request.Request(f"http://{AMQP['host']}:15672/api/{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def _vhost(action):
    """Make (action "add") or delete ("delete") the test run's own vhost: through the management
    API, else rabbitmqctl (a broker without the management plugin)."""
    from urllib.parse import quote
    name = AMQP["vhost"]
    try:
        if action == "add":
            _broker_admin("PUT", f"vhosts/{quote(name, safe='')}")
            _broker_admin("PUT", f"permissions/{quote(name, safe='')}/{quote(AMQP['username'], safe='')}",
                          {"configure": ".*", "write": ".*", "read": ".*"})
        else:
            _broker_admin("DELETE", f"vhosts/{quote(name, safe='')}")
    except OSError:
        commands = ([["add_vhost", name], ["set_permissions", "-p", name, AMQP["username"], ".*", ".*", ".*"]]
                    if action == "add" else [["delete_vhost", name]])
        for command in commands:
            subprocess.run(["rabbitmqctl", "-q", *command], check=True, capture_output=True, timeout=120)


def test_vhost():
    """The test run's own vhost, made on first use (deleted at the end of the run)."""
    if not _USED_THE_BROKER:
        _vhost("add")
        _USED_THE_BROKER.append(True)
    return AMQP["vhost"]


test_vhost.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session", autouse=True)
def _delete_the_test_vhost_at_the_end(tmp_path_factory):
    """The amqp tests run in a vhost of their own (AMQP["vhost"]), made on first use: its queues,
    its delay ladder and its exchanges go with it at the end, and nothing of a broker shared with
    an app (the ladder of vhost /, say) is touched; not while another process restarts it."""
    yield
    with _servers_kept(tmp_path_factory):
        if _USED_THE_BROKER and server_up(AMQP["host"], AMQP["port"]):
            _vhost("delete")


@pytest.fixture
def amqp_project(tmp_path):
    """A project on the amqp driver with RabbitMQ, on queue names of its own, deleted afterwards;
    failed jobs go to SQLite."""
    require("RabbitMQ", AMQP["host"], AMQP["port"])
    test_vhost()
    name = unique("q")
    drivers = {"default": "amqp",
               "amqp": dict(AMQP, queue=name, prefetch=10, poll=0.05, heartbeat=10),
               "database": {"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                            "poll": 0.05, "retry_after": 2}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}},
                      backend="amqp")
    project.queue = name
    project.configure()
    yield project
    queue.driver("amqp").delete_queues(name)  # before closing: the publisher knows its delay queues
    queue._close_drivers()


def redis_keys(prefix, delete=False):
    """The keys of a test's own prefix in the shared Redis (deleted with delete=True): nothing
    else of the server is read or touched."""
    import redis
    client = redis.Redis(host=REDIS["host"], port=REDIS["port"], db=REDIS["db"])
    try:
        keys = list(client.scan_iter(match=prefix.replace("[", "\\[") + "*", count=1000))
        if delete and keys:
            client.delete(*keys)
        return keys
    finally:
        client.close()


@pytest.fixture
def redis_project(tmp_path):
    """A project on the redis driver, on keys of a prefix of its own, deleted afterwards; its
    failed jobs and state in Redis too (no SQLite file)."""
    require("Redis", REDIS["host"], REDIS["port"])
    prefix = f"{unique('qpt')}:"
    drivers = {"default": "redis", "redis": dict(REDIS, prefix=prefix, attempts=3, poll=0.05, retry_after=2)}
    project = Project(tmp_path, drivers, {}, backend="redis")
    project.prefix = prefix
    project.configure()
    yield project
    queue._close_drivers()
    redis_keys(prefix, delete=True)


@pytest.fixture(scope="session")
def beanstalkd_server(tmp_path_factory):
    """The test run's own beanstalkd (Debian's package), on a free port with a binlog in a
    temporary folder, stopped at the end of the run."""
    import shutil as _shutil
    import time as _time
    binary = _shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
    if not os.path.exists(binary):
        message = "beanstalkd is not installed (apt-get install beanstalkd)"
        pytest.fail(message) if CI else pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("beanstalkd")
    proc = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-b", str(folder)])
    deadline = _time.monotonic() + 10
    while not server_up("127.0.0.1", port, 0.2):
        assert _time.monotonic() < deadline, "beanstalkd did not start"
        _time.sleep(0.05)
    yield {"host": "127.0.0.1", "port": port}
    proc.kill()
    proc.wait()


@pytest.fixture
def beanstalkd_project(tmp_path, beanstalkd_server):
    """A project on the beanstalkd driver, on a tube of its own; failed jobs and state in SQLite."""
    name = unique("q")
    drivers = {"default": "beanstalkd",
               "beanstalkd": dict(beanstalkd_server, queue=name, attempts=3, poll=0.05, retry_after=2),
               "database": {"connection": "sqlite", "poll": 0.05, "retry_after": 2}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}},
                      backend="beanstalkd")
    project.queue = name
    project.configure()
    yield project
    project.configure()
    queue.driver("beanstalkd").clear(name)  # the tube goes once it is empty and nobody watches it
    queue._close_drivers()


@pytest.fixture(scope="session")
def sqs_server():
    """moto's standalone SQS server (`moto[server]`), the only SQS endpoint these machines reach,
    on a free port for the run."""
    import shutil as _shutil
    import time as _time
    binary = _shutil.which("moto_server")
    if binary is None:
        message = "moto_server is not installed (pip install 'moto[server]')"
        pytest.fail(message) if CI else pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = _time.monotonic() + 30
    while not server_up("127.0.0.1", port, 0.2):
        assert _time.monotonic() < deadline, "moto_server did not start"
        _time.sleep(0.1)
    yield {"endpoint": f"http://127.0.0.1:{port}", "region": "us-east-1", "key": "test", "secret": "test"}
    proc.kill()
    proc.wait()


@pytest.fixture
def sqs_project(tmp_path, sqs_server):
    """A project on the sqs driver (moto's server), its queues under a prefix of its own, deleted
    afterwards; failed jobs and state in SQLite."""
    prefix = unique("t") + "-"
    drivers = {"default": "sqs", "sqs": dict(sqs_server, prefix=prefix, attempts=3, poll=0.05, retry_after=2),
               "database": {"connection": "sqlite", "poll": 0.05, "retry_after": 2}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}}, backend="sqs")
    project.configure()
    yield project
    project.configure()
    client = queue.driver("sqs").client()
    for url in client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", ()):
        client.delete_queue(QueueUrl=url)
    queue._close_drivers()


@pytest.fixture
def project(request):
    """The project of the backend this test runs on (see backends()); project.backend names it."""
    backend = getattr(request, "param", None)
    if backend is None:
        pytest.fail("`project` needs a backend: mark the test (its class, its module) with @backends(...)")
    return request.getfixturevalue(f"{backend}_project")


@pytest.fixture
def hooks():
    """Restore queue._hooks after the test, whatever it registered."""
    saved = {kind: list(fns) for kind, fns in queue._hooks.items()}
    yield queue._hooks
    for kind, fns in saved.items():
        queue._hooks[kind][:] = fns


class Spawned:
    """A running `python queue.py ...`; its output is read by a thread (so the pipe never fills)."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait(self, timeout=30):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the worker did not exit within {timeout} s; its output:\n{self.output}")
        self.reader.join(5)
        return code


@pytest.fixture
def spawn():
    """spawn(project, *args) -> Spawned; every process still running at the end is killed."""
    started = []

    def start(project, *args, **env):
        spawned = Spawned(project.spawn(*args, **env))
        started.append(spawned)
        return spawned

    yield start
    for spawned in started:
        if spawned.proc.poll() is None:
            spawned.proc.kill()
            spawned.proc.wait()
