"""What the benchmark scripts share: the servers they use, the path set-up that makes `import queue`
find this repository's queue.py (not the standard library's queue), temporary projects, and the
peak RSS of a child process.

A script in benchmarks/ imports it as it is (its folder is sys.path[0]); one in a subfolder
(chaos/) first puts benchmarks/ on sys.path. Then:

    import common
    queue = common.import_queue()            # ROOT first on sys.path, then import and check queue.py

Nothing here imports the standard library's queue, so `import common` may come first.
"""
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
TESTS = os.path.join(ROOT, "tests")

# The servers (README: "Servers on this machine"); psycopg 3 for PostgreSQL, pika for RabbitMQ,
# redis-py for Redis (a shared server: a script uses keys of a prefix of its own, never FLUSHDB).
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": "", "database": "test"}
AMQP = {"host": "127.0.0.1", "port": 5672, "username": "guest", "password": "guest"}
REDIS = {"host": "127.0.0.1", "port": 6379}
SERVERS = {"mysql": ("MariaDB", MYSQL), "postgres": ("PostgreSQL", POSTGRES), "amqp": ("RabbitMQ", AMQP),
           "redis": ("Redis", REDIS)}

# A fixed test key, written into every temporary config.py, so that subprocess workers verify the
# payloads this process pushes (never a real project's key).
KEY = "bench-signing-key-0123456789abcdef"


def import_queue(*folders):
    """Put `folders` (job modules) and then ROOT at the front of sys.path, ROOT first, and return
    ROOT's queue.py imported as `queue` (asserting that it is not the standard library's)."""
    for path in (*reversed(folders), ROOT):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    import queue
    assert hasattr(queue, "Queueable"), f"imported {queue.__file__}, not {ROOT}/queue.py"
    return queue


def queue_py_id(queue):
    """'VERSION sha256:HEX12' of ROOT/queue.py as it is now (the copy a temporary project gets),
    for the header of a table: the working tree may hold uncommitted changes."""
    import hashlib
    with open(os.path.join(ROOT, "queue.py"), "rb") as f:
        return f"{queue.__version__} sha256:{hashlib.sha256(f.read()).hexdigest()[:12]}"


def server_up(host, port, timeout=2.0):
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def available(backend):
    """(True, '') or (False, why) for a backend's server and its client package."""
    if backend not in SERVERS:
        return True, ""
    name, server = SERVERS[backend]
    try:
        __import__({"mysql": "pymysql", "postgres": "psycopg", "amqp": "pika", "redis": "redis"}[backend])
    except ImportError as exc:
        return False, f"{exc.name} not installed"
    if not server_up(server["host"], server["port"]):
        return False, f"{name} unreachable"
    return True, ""


# Temporary projects ###########################################################################
def database(backend, **options):
    """A DATABASES entry for 'sqlite' (a file in the project folder), 'mysql' or 'postgres'."""
    if backend == "sqlite":
        return dict({"driver": "sqlite", "database": "queue.sqlite3"}, **options)
    return dict({"mysql": MYSQL, "postgres": POSTGRES}[backend], driver=backend, **options)


# jobs/__init__.py of a benchmark project (bench.py, scale.py): in a worker, logging at WARNING
# unless BENCH_WORKER_LOG=info (the CLI logs a line per job), and with BENCH_LOOP_FILE, the time of
# the worker's first loop iteration written there (start-up excluded from a drain's rate).
JOBS_INIT = '''"""Benchmark project hooks, written by benchmarks/common.py."""
import logging
import os
import time

import queue

if os.environ.get("BENCH_WORKER_LOG", "warning") == "warning":
    logging.getLogger("queue").setLevel(logging.WARNING)

_MARK = os.environ.get("BENCH_LOOP_FILE")
if _MARK:
    _seen = []

    @queue.looping
    def _loop_started():
        """Write the time of the worker's first loop iteration (start-up time)."""
        if not _seen:
            _seen.append(True)
            with open(_MARK, "w") as f:
                f.write(repr(time.time()))
        return True
'''


def make_project(drivers, databases, prefix="queue-bench-", folder=None, key=KEY, jobs_init="", jobs=None):
    """A project folder as a user has one: queue.py copied in, config.py (DRIVERS, DATABASES,
    KEY) and a jobs/ package (`jobs_init` its __init__.py, `jobs` {module name: source}).
    Return the folder (a new temporary one unless `folder` is given)."""
    folder = folder or tempfile.mkdtemp(prefix=prefix)
    shutil.copy(os.path.join(ROOT, "queue.py"), folder)
    os.makedirs(os.path.join(folder, "jobs"), exist_ok=True)
    with open(os.path.join(folder, "jobs", "__init__.py"), "w") as f:
        f.write(jobs_init)
    for name, source in (jobs or {}).items():
        with open(os.path.join(folder, "jobs", f"{name}.py"), "w") as f:
            f.write(source)
    with open(os.path.join(folder, "config.py"), "w") as f:
        f.write(f"DRIVERS = {drivers!r}\nDATABASES = {databases!r}\nKEY = {key!r}\n")
    return folder


def project_env(pythonpath=None, **extra):
    """The environment of a subprocess run in a temporary project: its config.py and KEY, not
    the caller's $QUEUE_CONFIG or $QUEUE_KEY; `pythonpath` for job modules outside the project."""
    env = dict(os.environ)
    env.pop("QUEUE_CONFIG", None)
    env.pop("QUEUE_KEY", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update({k: str(v) for k, v in extra.items()})
    return env


def stamp(plus=0.0):
    """Now (+ plus seconds) as the database driver stores timestamps ('YYYY-MM-DD HH:MM:SS.ffffff', UTC)."""
    import datetime as dt
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=plus)
    return when.replace(tzinfo=None).isoformat(" ", "microseconds")


# Server connections and clean-up ##############################################################
def pg_kwargs():
    """POSTGRES as psycopg.connect() keywords."""
    kwargs = {"host": POSTGRES["host"], "port": POSTGRES["port"], "user": POSTGRES["user"],
              "dbname": POSTGRES["database"]}
    if POSTGRES["password"]:
        kwargs["password"] = POSTGRES["password"]
    return kwargs


def pg_connect(**extra):
    """A psycopg 3 connection to POSTGRES, in autocommit mode."""
    import psycopg
    return psycopg.connect(autocommit=True, **pg_kwargs(), **extra)


def mysql_connect(**extra):
    """A pymysql connection to MYSQL, in autocommit mode."""
    import pymysql
    return pymysql.connect(autocommit=True, **MYSQL, **extra)


def drop_tables(backend, *names):
    """DROP TABLE IF EXISTS on MySQL or PostgreSQL, on a connection of its own (the server may have
    restarted meanwhile); nothing on SQLite, whose file goes with its project folder."""
    if not names or backend == "sqlite":
        return
    if backend == "mysql":
        conn = mysql_connect(connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {', '.join(names)}")
        finally:
            conn.close()
    elif backend == "postgres":
        conn = pg_connect(connect_timeout=5)
        try:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(names)}")
        finally:
            conn.close()
    else:
        raise ValueError(f"no tables on {backend!r}")


def close_quietly(conn):
    try:
        conn.close()
    except Exception:
        pass


# Peak RSS of a child ##########################################################################
# os.wait4()'s ru_maxrss is no measure of a child's own peak on Linux: a child begins as a copy (or,
# with vfork, a borrower) of its parent's memory, and exec keeps that memory's high-water mark in
# the child's signal struct, which getrusage() and wait4() report (RUSAGE_SELF in the child too).
# So a child of a big parent reports at least the parent's RSS at the fork. The kernel's VmHWM
# (/proc/PID/status) is the high-water mark of the memory the child has since exec: its own.
# It is readable only while the process lives: PeakRSS polls it and keeps the last reading.
def vmhwm_kib(pid):
    """VmHWM of a live process in KiB, or None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class PeakRSS:
    """Poll the VmHWM of a child process every `every` seconds on a thread, from start() until it
    exits (or stop()); `kib` and `mib` are the last reading, the peak up to then. The last
    `every` seconds of the process are not seen: the high-water mark only grows, so the reading
    is short of the true peak only if the process grew in its last moment (poll faster, or
    have the child report resource.getrusage(RUSAGE_SELF) itself, if that matters)."""

    def __init__(self, pid, every=0.02):
        self.pid, self.every, self.kib = pid, every, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vmhwm-{pid}", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            value = vmhwm_kib(self.pid)
            if value is None:
                return
            self.kib = value
            self._stop.wait(self.every)

    def stop(self):
        """Stop polling (after the process exited, the thread stops on its own); return `kib`."""
        self._stop.set()
        self._thread.join(5)
        return self.kib

    @property
    def mib(self):
        return None if self.kib is None else self.kib / 1024


def wait_for(predicate, timeout, what, every=0.05, proc=None):
    """Poll `predicate()` until it is true; raise RuntimeError naming `what` after `timeout`
    seconds, or at once if `proc` (a Popen) exited meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def table(title, header, groups, lines):
    """A plain-text table under its title: the first and last columns left-aligned, the others
    right-aligned, a blank line between rows of different groups (backends)."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if 0 < i < len(cells) - 1 else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out, last = [title, line(header), line(["-" * w for w in widths])], None
    for group, cells in zip(groups, lines):
        if last is not None and group != last:
            out.append("")
        out.append(line(cells))
        last = group
    return "\n".join(out)
