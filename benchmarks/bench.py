#!/usr/bin/env python3
"""Benchmark of queue.py: our jobs/s beside the raw floor of the same backend, measured in the same run.

    python benchmarks/bench.py                       # every available driver, N=5000
    python benchmarks/bench.py --driver sqlite --synchronous normal,full
    python benchmarks/bench.py --driver mysql --jobs 20000 --json
    python benchmarks/bench.py --driver postgres
    python benchmarks/bench.py --driver sqlite --rss   # also a 100,000-job worker for peak RSS
    python benchmarks/bench.py --driver redis,beanstalkd,sqs   # sqs at --sqs-jobs (1000: moto is slow)

Everything runs in a temporary project (queue.py copied in, config.py written, jobs/__init__.py with
two benchmark hooks); jobs are benchjobs.Noop, importable by subprocess workers through PYTHONPATH.
MySQL and PostgreSQL tables and RabbitMQ queues get unique names and are dropped afterwards; Redis (the
shared server on 127.0.0.1:6379) is used only on keys of a prefix of this run's, deleted afterwards;
beanstalkd and SQS (moto_server) run as servers of this run's own, on free ports, killed afterwards.
See README.md.
"""
import argparse
import cProfile
import datetime as _dt
import json
import logging
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import common
from common import AMQP, BENCHMARKS as HERE, MYSQL, REDIS, close_quietly, pg_connect, pg_kwargs

queue = common.import_queue(HERE)  # ROOT first: `import queue` must find our queue.py, not the stdlib's
from benchjobs import Noop, noop  # noqa: E402

DRIVERS = ("sqlite", "async", "mysql", "postgres", "amqp", "redis", "beanstalkd", "sqs")
BATCH = 1000
QUEUE = "bench"


def say(*parts):
    """Progress on stderr (stdout is the table or the JSON)."""
    print(*parts, file=sys.stderr, flush=True)


def stamp(plus=0.0):
    """A timestamp as the database driver stores it ('YYYY-MM-DD HH:MM:SS.ffffff', UTC)."""
    when = _dt.datetime.now(_dt.timezone.utc)
    if plus:
        when += _dt.timedelta(seconds=plus)
    return when.replace(tzinfo=None).isoformat(" ", "microseconds")


def batches(n, size=BATCH):
    """Sizes of the batches that make n jobs."""
    return [min(size, n - i) for i in range(0, n, size)]


def free_port():
    """A TCP port of 127.0.0.1 free just now (for a server of this run's own)."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quantiles(values, *qs):
    """The qs quantiles of values (0.5: the median; else the value at index int(len * q))."""
    values = sorted(values)
    return tuple(statistics.median(values) if q == 0.5 else values[min(len(values) - 1, int(len(values) * q))]
                 for q in qs)


class Bench:
    """One run: the temporary project, the rows measured so far, and the clean-up to do."""

    def __init__(self, args):
        self.args = args
        self.n = args.jobs
        self.rows = []
        self.cleanups = []
        self.uid = uuid.uuid4().hex[:8]
        self.table = f"bench_{self.uid}"
        self.amqp_queue = f"bench_{self.uid}"
        self.redis_prefix = f"bench_{self.uid}:"          # every Redis key of this run starts with it
        self.sqs_prefix = f"bench_{self.uid}_"            # every SQS queue name of this run too
        self.beanstalkd_port = free_port()                # our own servers, started by their benchmark
        self.sqs_port = free_port()
        self.folder = tempfile.mkdtemp(prefix="queue-bench-")
        self.syncs = args.synchronous
        self._make_project()
        self.config = queue.configure(os.path.join(self.folder, "config.py"))
        logging.getLogger("queue").setLevel(logging.WARNING)
        logging.getLogger("pika").setLevel(logging.WARNING)

    # the project
    def sqlite_connection(self, sync):
        return "sqlite" if sync == self.syncs[0] else f"sqlite_{sync}"

    def _make_project(self):
        databases = {self.sqlite_connection(s): {"driver": "sqlite", "database": f"queue_{s}.sqlite3",
                                                  "synchronous": s} for s in self.syncs}
        databases["mysql"] = common.database("mysql")
        databases["pg"] = common.database("postgres")
        drivers = {"default": "database",
                   "database": {"connection": "sqlite", "table": self.table, "failed_table": self.table + "_failed",
                                "state_table": self.table + "_state", "retry_after": 90, "queue": QUEUE},
                   "amqp": dict(AMQP, queue=self.amqp_queue, queue_type=self.args.amqp_queue_type),
                   "async": {},
                   # failed jobs and state in Redis too (the driver's default), under the same prefix
                   "redis": dict(REDIS, prefix=self.redis_prefix, queue=QUEUE),
                   # failed jobs and state: the database driver's connection (SQLite, above)
                   "beanstalkd": {"host": "127.0.0.1", "port": self.beanstalkd_port, "queue": QUEUE},
                   "sqs": {"endpoint": f"http://127.0.0.1:{self.sqs_port}", "region": "us-east-1", "key": "test",
                           "secret": "test", "prefix": self.sqs_prefix, "queue": QUEUE}}
        common.make_project(drivers, databases, folder=self.folder, jobs_init=JOBS_INIT)

    def env(self, **extra):
        return common.project_env(HERE, BENCH_WORKER_LOG=self.args.worker_log, **extra)  # HERE: benchjobs.py

    # results
    def add(self, driver, measure, ours, floor, unit="jobs/s", note=""):
        row = {"driver": driver, "measure": measure, "ours": ours, "floor": floor, "unit": unit, "note": note}
        if isinstance(ours, (int, float)) and isinstance(floor, (int, float)) and floor:
            row["ratio"] = ours / floor
        self.rows.append(row)
        say(f"  {driver:<12} {measure:<34} ours={fmt(ours, unit)} floor={fmt(floor, unit)} {note}")
        return row

    def run(self, label, fn, profile=False):
        """Run fn() once (under cProfile with --profile and profile=True); fn returns the seconds of
        its timed part, or (seconds, jobs). Return jobs/s."""
        if profile and self.args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            result = fn()
            profiler.disable()
            say(f"\n--- profile: {label} (top {self.args.profile} by tottime) ---")
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(self.args.profile)
        else:
            result = fn()
        seconds, jobs = result if isinstance(result, tuple) else (result, self.n)
        return jobs / seconds

    def rate(self, label, fn, profile=False):
        """Median jobs/s of fn over --repeat runs."""
        return statistics.median(self.run(label, fn, profile) for _ in range(self.args.repeat))

    def pair(self, label, ours, floor):
        """Median jobs/s of ours() and of floor(), run alternately --repeat times (so that a drift of
        the machine, e.g. fsync latency, touches both)."""
        a, b = [], []
        for _ in range(self.args.repeat):
            a.append(self.run(label, ours, profile=True))
            b.append(self.run(label + " (floor)", floor))
        return statistics.median(a), statistics.median(b)

    # the subprocess worker
    def worker(self, *argv, count=1, mark=False):
        """Run `count` workers `python queue.py work ARGV` at once in the project; return (wall seconds
        until the last exited, [peak RSS KiB of each], [seconds from spawn to the first loop iteration]).
        The peak RSS is the worker's own: its VmHWM, polled every 10 ms until it exits (common.PeakRSS;
        os.wait4's ru_maxrss would count this process's memory at the fork)."""
        marks = [os.path.join(self.folder, f".loop-mark-{i}") for i in range(count)]
        for path in marks:
            if os.path.exists(path):
                os.unlink(path)
        logs = [open(os.path.join(self.folder, f"worker-{i}.log"), "w+") for i in range(count)]
        procs, peaks = [], []
        t0, p0 = time.time(), time.perf_counter()
        for i in range(count):
            env = self.env(BENCH_LOOP_FILE=marks[i]) if mark else self.env()
            procs.append(subprocess.Popen([sys.executable, "queue.py", "work", *argv], cwd=self.folder, env=env,
                                          stdin=subprocess.DEVNULL, stdout=logs[i], stderr=subprocess.STDOUT))
            peaks.append(common.PeakRSS(procs[-1].pid, every=0.01).start())
        rss = []
        for proc, log, peak in zip(procs, logs, peaks):
            proc.wait()
            rss.append(peak.stop() or 0)
            if proc.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"worker exited {proc.returncode}: {log.read()[-500:]}")
        wall = time.perf_counter() - p0
        for log in logs:
            log.close()
        loops = []
        for path in marks:
            if mark and os.path.exists(path):
                with open(path) as f:
                    loops.append(float(f.read()) - t0)
        return wall, rss, loops

    def close(self):
        try:
            queue._close_drivers()
        except Exception as exc:
            say(f"closing drivers: {exc}")
        for what, fn in reversed(self.cleanups):
            deadline = time.monotonic() + 30  # a server may be restarting: try again for a while
            while True:
                try:
                    fn()
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        say(f"clean-up failed, {what} left behind: {type(exc).__name__}: {exc}")
                        break
                    time.sleep(1)
        if not self.args.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            say(f"project kept in {self.folder}")


JOBS_INIT = common.JOBS_INIT


# Database driver: shared parts ###############################################################
def push_single(bench, driver, connection=None, queue_name=QUEUE):
    start = time.perf_counter()
    for _ in range(bench.n):
        queue.push(Noop(), driver=driver, connection=connection, queue=queue_name)
    return time.perf_counter() - start


def push_batch(bench, driver, connection=None, queue_name=QUEUE):
    start = time.perf_counter()
    for size in batches(bench.n):
        queue.push(*[Noop() for _ in range(size)], driver=driver, connection=connection, queue=queue_name)
    return time.perf_counter() - start


def worker_drain(bench, d, poll=0.0, last_job_time=False):
    """Drain with queue.Worker(...).run() in this (main) thread; return (seconds, jobs run)."""
    finished = []
    hook = queue.after(lambda job: finished.append(time.perf_counter())) if last_job_time else None
    worker = queue.Worker(d, [QUEUE if d.name != "amqp" else bench.amqp_queue], poll=poll, stop_when_empty=True)
    try:
        start = time.perf_counter()
        worker.run()
        end = time.perf_counter()
    finally:
        if hook:
            queue._hooks["after"].remove(hook)
    if worker.processed != bench.n:
        raise RuntimeError(f"the worker ran {worker.processed} jobs, not {bench.n}")
    return ((finished[-1] if finished else end) - start), worker.processed


def database_rows(bench, label, connection, raw, count, clear):
    """Our push single / push batch / drain on the database driver, each beside its raw floor."""
    d = queue.driver("database", connection)
    n = bench.n

    def ours_push(fn):
        def run():
            clear()
            seconds = fn(bench, "database", connection)
            assert count() == n, f"{count()} rows, not {n}"
            return seconds
        return run

    def ours_drain():
        clear()
        push_batch(bench, "database", connection)
        seconds, jobs = worker_drain(bench, d)
        assert count() == 0, f"{count()} rows left"
        return seconds, jobs

    single, floor_single = bench.pair(f"{label} push single", ours_push(push_single), raw.push_single)
    bench.add(label, "push single", single, floor_single, note=raw.single_note)
    batch, floor_batch = bench.pair(f"{label} push batch", ours_push(push_batch), raw.push_batch)
    bench.add(label, f"push batch ({BATCH}), per job", batch, floor_batch,
              note=f"{raw.batch_note}; batch/single: ours x{batch / single:.1f}, floor x{floor_batch / floor_single:.1f}")
    drain_note = raw.before_drain(d)
    drain, floor_drain = bench.pair(f"{label} drain", ours_drain, raw.drain)
    bench.add(label, "drain (Worker.run, 1 thread)", drain, floor_drain, note=drain_note)
    clear()


class RawSQLite:
    """The sqlite3 floor: same schema (our DDL), WAL and `synchronous` as the driver, one connection."""

    single_note = "floor: autocommit INSERT per job"
    batch_note = "floor: executemany in 1 txn per batch"
    drain_note = "floor: txn{claim}+txn{DELETE} per job"
    _LEVELS = {0: "off", 1: "normal", 2: "full", 3: "extra"}

    def __init__(self, bench, d, sync):
        self.bench, self.n = bench, bench.n
        self.sync = self.drain_sync = sync
        self.table = f"floor_{bench.uid}"
        self.path = os.path.join(bench.folder, f"floor_{sync}.sqlite3")
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={sync}")
        for statement in queue.DatabaseDriver(dict(d.options, table=self.table, failed_table=None), d.config).ddl():
            self.conn.execute(statement)
        self.payload = queue.pack(Noop())
        t = self.table
        self.insert = (f"INSERT INTO {t} (name, queue, payload, attempts, available_at, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)")
        self.next = (f"SELECT id, name, payload, attempts FROM {t} WHERE queue = ? AND available_at <= ? "
                     "ORDER BY available_at, id LIMIT 1")
        self.reserve = f"UPDATE {t} SET reserved_at = ?, ran_at = ?, available_at = ?, attempts = attempts + 1 WHERE id = ?"
        self.delete = f"DELETE FROM {t} WHERE id = ?"

    def before_drain(self, d):
        """Run the floor's drain at the `synchronous` our worker's connection really uses (the
        driver may lower it for a worker's own commits); return the note of the drain row."""
        d.pop([f"probe_{self.bench.uid}"])  # an empty queue: sets up this thread as a worker
        level = d._local.conn.execute("PRAGMA synchronous").fetchone()[0]
        d.close()
        self.drain_sync = self._LEVELS.get(level, str(level))
        note = f"{self.drain_note}, synchronous={self.drain_sync}"
        if self.drain_sync != self.sync:
            note += f" (as our worker's connection; pushes at {self.sync})"
        return note

    def clear(self):
        self.conn.execute(f"DELETE FROM {self.table}")

    def count(self):
        return self.conn.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def push_single(self):
        self.clear()
        cur, sql, payload = self.conn.cursor(), self.insert, self.payload
        start = time.perf_counter()
        for _ in range(self.n):
            now = stamp()
            cur.execute(sql, ("Noop", QUEUE, payload, 0, now, now))
        seconds = time.perf_counter() - start
        assert self.count() == self.n
        return seconds

    def _batch(self, cur, size):
        now = stamp()
        cur.execute("BEGIN")
        cur.executemany(self.insert, [("Noop", QUEUE, self.payload, 0, now, now)] * size)
        cur.execute("COMMIT")

    def push_batch(self):
        self.clear()
        cur = self.conn.cursor()
        start = time.perf_counter()
        for size in batches(self.n):
            self._batch(cur, size)
        seconds = time.perf_counter() - start
        assert self.count() == self.n
        return seconds

    def drain(self):
        """Per job: {BEGIN IMMEDIATE; SELECT next ready; UPDATE reserved; COMMIT}, run, {DELETE; COMMIT}."""
        self.clear()
        cur = self.conn.cursor()
        for size in batches(self.n):
            self._batch(cur, size)
        cur.execute(f"PRAGMA synchronous={self.drain_sync}")
        jobs = 0
        start = time.perf_counter()
        while True:
            cur.execute("BEGIN IMMEDIATE")
            now = stamp()
            row = cur.execute(self.next, (QUEUE, now)).fetchone()
            if row is None:
                cur.execute("COMMIT")
                break
            cur.execute(self.reserve, (now, now, stamp(90), row[0]))
            cur.execute("COMMIT")
            noop()
            cur.execute(self.delete, (row[0],))  # autocommit: {DELETE; COMMIT}
            jobs += 1
        seconds = time.perf_counter() - start
        cur.execute(f"PRAGMA synchronous={self.sync}")
        assert jobs == self.n and self.count() == 0
        return seconds, jobs


class RawMySQL(RawSQLite):
    """The pymysql floor: same schema (our DDL), one autocommit connection."""

    single_note = "floor: autocommit INSERT per job"
    batch_note = "floor: 1 multi-row INSERT per batch"
    drain_note = "floor: BEGIN;SELECT..SKIP LOCKED;run;DELETE;COMMIT"

    def __init__(self, bench, d):
        import pymysql
        self.bench, self.n = bench, bench.n
        self.table = f"bench_floor_{bench.uid}"
        self.conn = pymysql.connect(autocommit=True, charset="utf8mb4", **MYSQL)
        bench.cleanups.append(("a pymysql connection", lambda: close_quietly(self.conn)))
        bench.cleanups.append((f"MySQL table test.{self.table}", lambda: drop_tables(self.table)))
        with self.conn.cursor() as cur:
            for statement in queue.DatabaseDriver(dict(d.options, table=self.table, failed_table=None), d.config).ddl():
                cur.execute(statement)
        self.payload = queue.pack(Noop())
        t = self.table
        self.insert = (f"INSERT INTO {t} (name, queue, payload, attempts, available_at, created_at) "
                       "VALUES (%s, %s, %s, %s, %s, %s)")
        self.next = (f"SELECT id, name, payload, attempts FROM {t} WHERE queue = %s AND available_at <= %s "
                     "ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED")
        self.delete = f"DELETE FROM {t} WHERE id = %s"

    def before_drain(self, d):
        return self.drain_note

    def clear(self):
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {self.table}")

    def count(self):
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {self.table}")
            return cur.fetchone()[0]

    def _batch(self, cur, size):
        now = stamp()
        cur.executemany(self.insert, [("Noop", QUEUE, self.payload, 0, now, now)] * size)  # one multi-row INSERT

    def drain(self):
        """Per job: BEGIN; SELECT ... FOR UPDATE SKIP LOCKED; run; DELETE; COMMIT."""
        self.clear()
        cur = self.conn.cursor()
        for size in batches(self.n):
            self._batch(cur, size)
        jobs = 0
        start = time.perf_counter()
        while True:
            cur.execute("BEGIN")
            cur.execute(self.next, (QUEUE, stamp()))
            row = cur.fetchone()
            if row is None:
                cur.execute("COMMIT")
                break
            noop()
            cur.execute(self.delete, (row[0],))
            cur.execute("COMMIT")
            jobs += 1
        seconds = time.perf_counter() - start
        assert jobs == self.n and self.count() == 0
        return seconds, jobs


def drop_tables(*names):
    """Drop MySQL tables on a connection of its own (the server may have restarted meanwhile)."""
    common.drop_tables("mysql", *names)


# SQLite ######################################################################################
def bench_sqlite(bench):
    for sync in bench.syncs:
        connection = bench.sqlite_connection(sync)
        label = "sqlite" if len(bench.syncs) == 1 else f"sqlite/{sync}"
        say(f"{label}: synchronous={sync}, N={bench.n}")
        d = queue.driver("database", connection)
        d.create_tables()
        path = d.dialect.path
        side = sqlite3.connect(path, isolation_level=None, timeout=60)

        def clear():
            side.execute(f"DELETE FROM {d.table}")

        def count():
            return side.execute(f"SELECT COUNT(*) FROM {d.table}").fetchone()[0]

        raw = RawSQLite(bench, d, sync)
        database_rows(bench, label, connection, raw, count, clear)
        raw.conn.close()
        side.close()
    bench_statements(bench)
    bench_startup(bench)
    bench_rss(bench)
    bench_processes(bench)
    bench_concurrency(bench, "database", QUEUE)


def bench_statements(bench):
    """SQL statements per job of an in-process worker draining plain jobs (SQLite's trace): the
    worker's beats, paused-queue looks, funnel renewals and flow control add none per job."""
    say("sqlite: statements per job")
    d = queue.driver("database", "sqlite")
    d.create_tables()
    n = 1000
    queue.push(*(Noop() for _ in range(n)), connection="sqlite", queue=QUEUE)
    statements = []
    conn = d._conn()  # the worker runs on this thread: this connection is its own
    conn.set_trace_callback(statements.append)
    queue.Worker(d, [QUEUE], poll=0, stop_when_empty=True).run()
    state = [s for s in statements if d.state_table in s]
    per_job = len(statements) / n
    bench.add("sqlite", "SQL statements per plain job (worker)", per_job, None, unit="stmts",
              note=f"of {len(statements)} statements for {n} jobs, {len(state)} touch the state table "
                   "(once at start, once at stop): nothing per job for beats, pauses or limits")


def bench_startup(bench):
    """`python queue.py work --once --poll 0` on an empty SQLite queue, beside `python -c pass`."""
    say("sqlite: worker start-up")
    d = queue.driver("database", "sqlite")
    d.create_tables()
    walls, loops, rss = [], [], []
    for _ in range(5):
        wall, peak, loop = bench.worker("--once", "--poll", "0", "--queue", QUEUE, mark=True)
        walls.append(wall)
        rss.extend(peak)
        loops.extend(loop)
    bare = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=bench.env())
        bare.append(time.perf_counter() - start)
    bench.add("worker", "start-up: `work --once` wall, median/5", statistics.median(walls) * 1000,
              statistics.median(bare) * 1000, unit="ms", note="floor: `python -c pass`")
    if loops:
        bench.add("worker", "start-up: spawn -> first loop", statistics.median(loops) * 1000,
                  statistics.median(bare) * 1000, unit="ms", note="looping() hook; floor: `python -c pass`")
    bench.idle_rss = statistics.median(rss) / 1024


def bench_rss(bench):
    """Peak RSS of a `work --stop-when-empty` subprocess after 10,000 (and, with --rss, 100,000) jobs."""
    sizes = [10_000] + ([100_000] if bench.args.rss else [])
    d = queue.driver("database", "sqlite")
    for size in sizes:
        say(f"sqlite: subprocess worker draining {size:,} jobs")
        for left in batches(size):
            queue.push(*[Noop() for _ in range(left)], driver="database", connection="sqlite", queue=QUEUE)
        wall, peak, loops = bench.worker("--stop-when-empty", "--queue", QUEUE, mark=True)
        left = d.stats([QUEUE])[QUEUE]
        if left["ready"] or left["reserved"]:
            raise RuntimeError(f"the worker left {left} jobs")
        bench.add("worker", f"peak RSS, drained {size:,} (CLI)", peak[0] / 1024, bench.idle_rss, unit="MiB",
                  note="the worker's own VmHWM (polled); floor: that of `work --once` on an empty queue")
        note = f"wall incl. start-up; from first loop: {size / (wall - loops[0]):,.0f}/s" if loops else "wall incl. start-up"
        bench.add("worker", f"sqlite drain {size:,}, 1 process (CLI)", size / wall, None, note=note)


def bench_processes(bench, jobs=1000, spin=0.01):
    """CPU-bound jobs (10 ms of CPU each) drained by `work --processes 2` beside one process."""
    from benchjobs import Spin
    say(f"sqlite: {jobs} CPU-bound jobs, --processes 1 and 2")
    rates = {}
    for count in (1, 2):
        queue.push(*[Spin(spin) for _ in range(jobs)], driver="database", connection="sqlite", queue=QUEUE)
        wall, _, loops = bench.worker("--stop-when-empty", "--queue", QUEUE, "--processes", str(count))
        rates[count] = jobs / wall
    bench.add("worker", "CPU-bound 10 ms jobs, --processes 2 (CLI)", rates[2], rates[1],
              note=f"floor: one process ({os.cpu_count()} CPUs); wall incl. start-up")


def bench_concurrency(bench, driver, queue_name, extra=()):
    """I/O-bound jobs in one worker with --concurrency: 20 ms sleeps at 32 lanes (the ideal is
    32 / 0.02 s = 1,600/s) and, on SQLite, `async def` jobs awaiting 0.1 s at 200 lanes."""
    from benchjobs import AsyncNap, Nap
    runs = [("20 ms sleep jobs, --concurrency 32", Nap(0.02), 32, 32 / 0.02)]
    if driver == "database":
        runs.append(("async 0.1 s jobs, --concurrency 200", AsyncNap(0.1), 200, 200 / 0.1))
    for label, job, lanes, ideal in runs:
        jobs = 10000  # some seconds of steady state: the lanes start one after another
        say(f"{driver}: {jobs} {label}")
        for left in batches(jobs):
            queue.push(*[job] * left, driver=driver, queue=queue_name)
        wall, _, loops = bench.worker("--stop-when-empty", "--queue", queue_name, "--driver", driver,
                                      "--concurrency", str(lanes), *extra, mark=True)
        rate = jobs / (wall - loops[0]) if loops else jobs / wall
        bench.add("worker", f"{driver}: {label} (CLI)", rate, ideal,
                  note=f"floor: the ideal, lanes / job seconds; from the first loop (wall incl. start-up {jobs / wall:,.0f}/s)")


# Async #######################################################################################
def bench_async(bench):
    import concurrent.futures as cf
    say(f"async: N={bench.n}")
    d = queue.driver("async")
    workers = d.workers
    n = bench.n

    def ours(pusher, join_timed):
        def run():
            start = time.perf_counter()
            pusher(bench, "async")
            pushed = time.perf_counter()
            if not d.join(300):
                raise RuntimeError("async jobs did not finish")
            return (time.perf_counter() if join_timed else pushed) - start
        return run

    def floor(join_timed):
        def run():
            with cf.ThreadPoolExecutor(workers) as pool:
                start = time.perf_counter()
                futures = [pool.submit(noop) for _ in range(n)]
                pushed = time.perf_counter()
                cf.wait(futures)
                return (time.perf_counter() if join_timed else pushed) - start
        return run

    single, floor_submit = bench.pair("async push single", ours(push_single, False), floor(False))
    bench.add("async", "push single", single, floor_submit, note=f"floor: ThreadPoolExecutor({workers}).submit")
    batch = bench.rate("async push batch", ours(push_batch, False), profile=True)
    bench.add("async", f"push batch ({BATCH}), per job", batch, floor_submit,
              note=f"floor: submit per job (no batch API); batch/single: ours x{batch / single:.1f}")
    drain, floor_drain = bench.pair("async push+run", ours(push_single, True), floor(True))
    bench.add("async", "drain (push N single + join)", drain, floor_drain, note="floor: submit N + wait")


# MySQL #######################################################################################
def bench_mysql(bench):
    import pymysql
    say(f"mysql: N={bench.n}")
    d = queue.driver("database", "mysql")
    ours_tables = (d.table, d.failed_table, d.state_table)
    side = pymysql.connect(autocommit=True, charset="utf8mb4", **MYSQL)
    bench.cleanups.append(("a pymysql connection", lambda: close_quietly(side)))

    bench.cleanups.append((f"MySQL tables test.{', '.join(ours_tables)}", lambda: drop_tables(*ours_tables)))
    d.create_tables()

    def clear():
        with side.cursor() as cur:
            cur.execute(f"DELETE FROM {d.table}")

    def count():
        with side.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {d.table}")
            return cur.fetchone()[0]

    raw = RawMySQL(bench, d)
    database_rows(bench, "mysql", "mysql", raw, count, clear)
    floor_drain = bench.rows[-1]["floor"]
    for workers in (1, 4):
        say(f"mysql: {workers} worker process(es)")
        clear()
        push_batch(bench, "database", "mysql")
        wall, _, loops = bench.worker("--stop-when-empty", "--connection", "mysql", "--queue", QUEUE,
                                      count=workers, mark=True)
        if count():
            raise RuntimeError(f"{count()} jobs left after {workers} workers")
        note = f"wall incl. start-up; from first loop: {bench.n / (wall - min(loops)):,.0f}/s" if loops else ""
        bench.add("mysql", f"drain, {workers} worker process{'es' if workers > 1 else ''} (CLI)",
                  bench.n / wall, floor_drain, note=note + "; floor: 1-conn raw drain")
    clear()


# PostgreSQL ##################################################################################
def drop_pg_tables(*names):
    """Drop PostgreSQL tables on a connection of its own (their sequences and indexes go with them)."""
    common.drop_tables("postgres", *names)


class RawPostgres(RawMySQL):
    """The psycopg 3 floor: same schema (our DDL), one autocommit connection. Its drain is the
    minimal correct claim: per job one statement (so one round trip and one commit) that deletes
    the previous finished job and reserves the next, the shape of queue.py's _Postgres.claim."""

    single_note = "floor: autocommit INSERT per job"
    batch_note = "floor: 1 multi-row INSERT per batch"
    drain_note = "floor: 1 autocommit stmt/job: WITH DELETE prev, UPDATE..SKIP LOCKED RETURNING"

    def __init__(self, bench, d):
        self.bench, self.n = bench, bench.n
        self.table = f"bench_floor_{bench.uid}"
        self.conn = pg_connect()
        bench.cleanups.append(("a psycopg connection", lambda: close_quietly(self.conn)))
        bench.cleanups.append((f"PostgreSQL table test.{self.table}", lambda: drop_pg_tables(self.table)))
        with self.conn.cursor() as cur:
            for statement in queue.DatabaseDriver(dict(d.options, table=self.table, failed_table=None), d.config).ddl():
                cur.execute(statement)
        self.payload = queue.pack(Noop())
        t = self.table
        self.head = f"INSERT INTO {t} (name, queue, payload, attempts, available_at, created_at) VALUES "
        self.insert = self.head + "(%s, %s, %s, %s, %s, %s)"
        self.inserts = {}  # batch size -> its multi-row INSERT
        reserve = (f"UPDATE {t} SET reserved_at = %s, ran_at = %s, available_at = %s, attempts = attempts + 1 "
                   f"WHERE id = (SELECT id FROM {t} WHERE queue = %s AND available_at <= %s ORDER BY available_at, id "
                   f"LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, name, payload, attempts")
        self.first = reserve  # nothing finished yet
        self.claim = f"WITH done AS (DELETE FROM {t} WHERE id = ANY(%s)) " + reserve

    def _batch(self, cur, size):
        sql = self.inserts.get(size)
        if sql is None:
            sql = self.inserts[size] = self.head + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * size)
        now = stamp()
        cur.execute(sql, ("Noop", QUEUE, self.payload, 0, now, now) * size)  # one multi-row INSERT

    def drain(self):
        """Per job, one autocommit statement: delete the previous job, reserve the next; run it.
        The last statement (which finds nothing) deletes the last job."""
        self.clear()
        cur = self.conn.cursor()
        for size in batches(self.n):
            self._batch(cur, size)
        jobs, done = 0, None
        start = time.perf_counter()
        while True:
            now = stamp()
            if done is None:
                cur.execute(self.first, (now, now, stamp(90), QUEUE, now))
            else:
                cur.execute(self.claim, (done, now, now, stamp(90), QUEUE, now))
            row = cur.fetchone()
            if row is None:
                break
            noop()
            done = [row[0]]
            jobs += 1
        seconds = time.perf_counter() - start
        cur.close()
        assert jobs == self.n and self.count() == 0
        return seconds, jobs


def bench_postgres(bench):
    say(f"postgres: N={bench.n}")
    d = queue.driver("database", "pg")
    ours_tables = (d.table, d.failed_table, d.state_table)
    side = pg_connect()
    bench.cleanups.append(("a psycopg connection", lambda: close_quietly(side)))
    bench.cleanups.append((f"PostgreSQL tables test.{', '.join(ours_tables)}", lambda: drop_pg_tables(*ours_tables)))
    d.create_tables()

    def clear():
        side.execute(f"DELETE FROM {d.table}")

    def count():
        return side.execute(f"SELECT COUNT(*) FROM {d.table}").fetchone()[0]

    raw = RawPostgres(bench, d)
    database_rows(bench, "postgres", "pg", raw, count, clear)
    floor_drain = bench.rows[-1]["floor"]
    for workers in (1, 4):
        say(f"postgres: {workers} worker process(es)")
        clear()
        push_batch(bench, "database", "pg")
        # --poll 0: at the default poll the last, empty claim of each worker waits that long for a NOTIFY
        wall, _, loops = bench.worker("--stop-when-empty", "--poll", "0", "--connection", "pg", "--queue", QUEUE,
                                      count=workers, mark=True)
        if count():
            raise RuntimeError(f"{count()} jobs left after {workers} workers")
        note = f"wall incl. start-up; from first loop: {bench.n / (wall - min(loops)):,.0f}/s" if loops else ""
        bench.add("postgres", f"drain, {workers} worker process{'es' if workers > 1 else ''} (CLI)",
                  bench.n / wall, floor_drain, note=note + "; --poll 0; floor: 1-conn raw drain")
    clear()
    say("postgres: idle push-to-start latency")
    count_latency = 50
    p50, p90 = push_to_start_latency(bench, "database", QUEUE, count=count_latency, connection="pg", each=True)
    clear()
    floor50, floor90 = raw_pg_latency(bench, raw, count=count_latency)
    bench.add("postgres", "idle push-to-start p50", round(p50, 2), round(floor50, 2), unit="ms",
              note=f"p90 {p90:.2f} ms (floor {floor90:.2f}); push() call to handle() start in an idle `work` "
                   f"process (poll 1 s, LISTEN), {count_latency} pushes, each after the last started; "
                   "floor: INSERT+pg_notify in 1 stmt to a bare LISTEN + claim-stmt process")


RAW_PG_LISTENER = """
import datetime as dt, json, sys, time, psycopg
kwargs, table, channel, queue_name, path = json.loads(sys.argv[1]), *sys.argv[2:6]
conn = psycopg.connect(autocommit=True, **kwargs)
conn.execute(f'LISTEN "{channel}"')
reserve = (f"UPDATE {table} SET reserved_at = %s, ran_at = %s, available_at = %s, attempts = attempts + 1 "
           f"WHERE id = (SELECT id FROM {table} WHERE queue = %s AND available_at <= %s ORDER BY available_at, id "
           f"LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, payload")
claim = f"WITH done AS (DELETE FROM {table} WHERE id = ANY(%s)) " + reserve
def stamp(plus=0.0):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=plus)
    return when.replace(tzinfo=None).isoformat(" ", "microseconds")
out = open(path, "a")
open(path + ".ready", "w").close()
done = None
while True:
    now = stamp()
    row = conn.execute(*((reserve, (now, now, stamp(90), queue_name, now)) if done is None else
                         (claim, (done, now, now, stamp(90), queue_name, now)))).fetchone()
    if row is None:
        done = None
        for _ in conn.notifies(timeout=1.0, stop_after=1):
            pass
        continue
    started = time.time()
    out.write(f"{(started - float(bytes(row[1]))) * 1000:.4f}\\n"); out.flush()
    done = [row[0]]
"""


def raw_pg_latency(bench, raw, count=50):
    """(p50, p90) ms from a one-statement INSERT + pg_notify (autocommit) to the moment a bare psycopg
    process, LISTENing and claiming with the one-statement claim, has the row."""
    path = os.path.join(bench.folder, "raw-pg-stamps")
    channel = f"{raw.table}_pushed"
    log = open(os.path.join(bench.folder, "raw-pg-listener.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-c", RAW_PG_LISTENER, json.dumps(pg_kwargs()), raw.table, channel, QUEUE,
                             path], env=bench.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    push = (f"WITH job AS ({raw.insert} RETURNING id) SELECT pg_notify(%s, %s) FROM job")

    def lines():
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return sum(1 for _ in f)
    try:
        raw.clear()
        deadline = time.monotonic() + 30
        while not os.path.exists(path + ".ready"):
            if time.monotonic() > deadline or proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the raw listener did not start: {log.read()[-300:]}")
            time.sleep(0.05)
        time.sleep(0.2)  # let it reach its first wait
        with raw.conn.cursor() as cur:
            for number in range(count):
                time.sleep(0.05)
                now = stamp()
                cur.execute(push, ("Noop", QUEUE, repr(time.time()).encode(), 0, now, now, channel, QUEUE))
                cur.fetchall()
                deadline = time.monotonic() + 30
                while lines() < number + 1:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"the raw listener did not get job {number}")
                    time.sleep(0.002)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    latencies = sorted(float(line) for line in open(path))
    return statistics.median(latencies), latencies[int(len(latencies) * 0.9)]


# AMQP ########################################################################################
class RawPika:
    """The pika floor on one BlockingConnection: persistent messages to a durable queue."""

    def __init__(self, bench, pika, params, name):
        self.bench, self.pika, self.n, self.name = bench, pika, bench.n, name
        self.props = pika.BasicProperties(delivery_mode=2)
        self.payload = queue.pack(Noop())
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        # the same queue type as the driver's (quorum by default), so the floor is comparable
        self.ch.queue_declare(name, durable=True, arguments={"x-queue-type": bench.args.amqp_queue_type})
        self.ch.confirm_delivery()  # BlockingChannel: basic_publish waits for each confirm
        # batch: publish on the underlying channel and wait once for the confirms of the batch
        # (pika's BlockingChannel has no such call; queue.py's _Publisher does the same)
        self.batch_ch = self.conn.channel()
        self.sent = self.confirmed = 0
        self.nacked, opened = [], []
        self.batch_ch._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=opened.append)
        while not opened:
            self.conn.process_data_events(time_limit=0.05)

    def _on_confirm(self, frame):
        if type(frame.method).__name__ == "Nack":
            self.nacked.append(frame.method.delivery_tag)
        self.confirmed = max(self.confirmed, frame.method.delivery_tag)
        if self.confirmed >= self.sent:
            self.conn.call_later(0, lambda: None)  # wake process_data_events at once

    def count(self):
        return self.ch.queue_declare(self.name, passive=True).method.message_count

    def purge(self):
        self.ch.queue_purge(self.name)

    def push_single(self):
        self.purge()
        start = time.perf_counter()
        for _ in range(self.n):
            self.ch.basic_publish("", self.name, self.payload, self.props)
        seconds = time.perf_counter() - start
        assert self.count() == self.n
        return seconds

    def fill(self):
        for size in batches(self.n):
            for _ in range(size):
                self.batch_ch._impl.basic_publish("", self.name, self.payload, self.props)
                self.sent += 1
            while self.confirmed < self.sent:
                self.conn.process_data_events(time_limit=0.05)
        if self.nacked:
            raise RuntimeError(f"RabbitMQ nacked {len(self.nacked)} messages")

    def push_batch(self):
        self.purge()
        start = time.perf_counter()
        self.fill()
        seconds = time.perf_counter() - start
        assert self.count() == self.n
        return seconds

    def drain(self, prefetch):
        """basic_consume at `prefetch`; run the job, then ack it."""
        def run():
            self.purge()
            self.fill()
            consumer = self.conn.channel()
            consumer.basic_qos(prefetch_count=prefetch)
            done = [0]

            def on_message(channel, method, properties, body):
                noop()
                channel.basic_ack(method.delivery_tag)
                done[0] += 1
                if done[0] == self.n:
                    channel.stop_consuming()
            consumer.basic_consume(self.name, on_message)
            start = time.perf_counter()
            consumer.start_consuming()
            seconds = time.perf_counter() - start
            consumer.close()
            assert self.count() == 0
            return seconds, done[0]
        return run

def bench_amqp(bench):
    import pika
    say(f"amqp: N={bench.n}")
    params = pika.ConnectionParameters(AMQP["host"], AMQP["port"], heartbeat=60,
                                       credentials=pika.PlainCredentials(AMQP["username"], AMQP["password"]))
    name = bench.amqp_queue
    names = [f"bench_floor_{bench.uid}", name]

    def delete():
        c = pika.BlockingConnection(params)
        channel = c.channel()
        for q in names:
            channel.queue_delete(q)
        c.close()
    bench.cleanups.append((f"RabbitMQ queues {', '.join(names)}", delete))
    prefetch = queue.AMQPDriver.defaults["prefetch"]
    raw = RawPika(bench, pika, params, names[0])
    bench.cleanups.append(("a pika connection", lambda: close_quietly(raw.conn)))
    status = amqp_ours_status(bench)
    single_note = "floor: persistent publish, confirm per job"
    batch_note = "floor: persistent publishes, 1 confirm wait per batch"
    drain_note = "floor: basic_consume, ack after the job"
    if status != "ok":
        bench.add("amqp", "push single", status, bench.rate("amqp floor push single", raw.push_single), note=single_note)
        bench.add("amqp", f"push batch ({BATCH}), per job", status,
                  bench.rate("amqp floor push batch", raw.push_batch), note=batch_note)
        for p in (1, prefetch):
            bench.add("amqp", f"drain vs floor prefetch {p}", status,
                      bench.rate(f"amqp floor drain {p}", raw.drain(p)), note=drain_note)
        return

    d = queue.driver("amqp")

    def ours_push(fn):
        def run():
            raw.ch.queue_purge(name)
            seconds = fn(bench, "amqp", None, name)
            count = raw.ch.queue_declare(name, passive=True).method.message_count
            if count != bench.n:
                raise RuntimeError(f"{count} messages on {name}, not {bench.n}")
            return seconds
        return run

    def ours_drain():
        raw.ch.queue_purge(name)
        push_batch(bench, "amqp", None, name)
        seconds, jobs = worker_drain(bench, d, poll=0.5, last_job_time=True)  # timed to the last job's ack
        count = raw.ch.queue_declare(name, passive=True).method.message_count
        if count:
            raise RuntimeError(f"{count} messages left on {name}")
        return seconds, jobs

    single, floor_single = bench.pair("amqp push single", ours_push(push_single), raw.push_single)
    bench.add("amqp", "push single", single, floor_single, note=single_note)
    batch, floor_batch = bench.pair("amqp push batch", ours_push(push_batch), raw.push_batch)
    bench.add("amqp", f"push batch ({BATCH}), per job", batch, floor_batch,
              note=f"{batch_note}; batch/single: ours x{batch / single:.1f}, floor x{floor_batch / floor_single:.1f}")
    drain, floor_1 = bench.pair("amqp drain", ours_drain, raw.drain(1))
    floor_p = bench.rate(f"amqp floor drain {prefetch}", raw.drain(prefetch))
    bench.add("amqp", "drain vs floor prefetch 1", drain, floor_1, note=f"{drain_note}; ours at prefetch {d.prefetch}")
    bench.add("amqp", f"drain vs floor prefetch {prefetch}", drain, floor_p,
              note=f"{drain_note}; ours at prefetch {d.prefetch}")
    raw.purge()
    bench_concurrency(bench, "amqp", name, ("--poll", "0.5"))
    p50, p90 = push_to_start_latency(bench, "amqp", name)
    floor50, floor90 = raw_pika_latency(bench, params, names[0])
    bench.add("amqp", "idle push-to-start p50", round(p50, 2), round(floor50, 2), unit="ms",
              note=f"p90 {p90:.2f} ms (floor {floor90:.2f}); push() call to handle() start in an idle `work` process, "
                   f"200 pushes 20 ms apart; floor: confirmed basic_publish to a bare pika consumer process")


RAW_CONSUMER = """
import sys, time, pika
queue_name, path = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
channel = connection.channel()
channel.basic_qos(prefetch_count=20)
out = open(path, "a")
def on_message(ch, method, properties, body):
    out.write(f"{(time.time() - float(body)) * 1000:.4f}\\n"); out.flush()
    ch.basic_ack(method.delivery_tag)
channel.basic_consume(queue_name, on_message)
open(path + ".ready", "w").close()
channel.start_consuming()
"""


def raw_pika_latency(bench, params, queue_name, count=200):
    """(p50, p90) ms from a confirmed basic_publish to the callback of a bare pika consumer process."""
    import pika
    path = os.path.join(bench.folder, "raw-stamps")
    proc = subprocess.Popen([sys.executable, "-c", RAW_CONSUMER, queue_name, path], env=bench.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        deadline = time.monotonic() + 30
        while not os.path.exists(path + ".ready"):
            if time.monotonic() > deadline:
                raise RuntimeError("the raw consumer did not start")
            time.sleep(0.05)
        for _ in range(count):
            time.sleep(0.02)
            channel.basic_publish("", queue_name, repr(time.time()).encode(), pika.BasicProperties(delivery_mode=2))
        deadline = time.monotonic() + 30
        while sum(1 for _ in open(path)) < count if os.path.exists(path) else True:
            if time.monotonic() > deadline:
                raise RuntimeError("the raw consumer did not get every message")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        connection.close()
    latencies = sorted(float(line) for line in open(path))
    return statistics.median(latencies), latencies[int(len(latencies) * 0.9)]


def push_to_start_latency(bench, driver, queue_name, count=200, connection=None, each=False, qs=(0.5, 0.9)):
    """The qs quantiles (default (p50, p90)) of the milliseconds from the start of push() to the
    start of handle() in an idle worker (`work` at its default poll). The job carries its push time
    and records its own latency, so this process only idles. each=True: push the next job only once
    the last one has started (and 50 ms more, so that the worker is idle again); else 20 ms apart."""
    import benchjobs
    path = os.path.join(bench.folder, f"stamps-{driver}-{connection}")
    log = open(os.path.join(bench.folder, f"latency-worker-{driver}-{connection}.log"), "w+")
    argv = ["--driver", driver] + (["--connection", connection] if connection else []) + ["--queue", queue_name]
    proc = subprocess.Popen([sys.executable, "queue.py", "work", *argv],
                            cwd=bench.folder, env=bench.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def recorded():
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return {int(n): float(s) * 1000 for n, s in (line.split() for line in f)}

    def push(number):
        job = benchjobs.Stamp(path, number)
        job.pushed = time.time()
        queue.push(job, driver=driver, connection=connection, queue=queue_name)

    try:
        push(-1)  # the worker is up and idle once this one has run
        deadline = time.monotonic() + 30
        while -1 not in recorded():
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the latency worker did not start: {log.read()[-300:]}")
            time.sleep(0.05)
        for number in range(count):
            time.sleep(0.05 if each else 0.02)  # idle between pushes (each job takes well under 20 ms)
            push(number)
            if each:
                deadline = time.monotonic() + 30
                while number not in recorded():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"latency job {number} did not start within 30 s")
                    time.sleep(0.002)
        deadline = time.monotonic() + 30
        while len(recorded()) < count + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("not every latency job ran")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    return quantiles([v for n, v in recorded().items() if n >= 0], *qs)


def amqp_ours_status(bench):
    """'ok' when queue.driver('amqp') has a working pop(), else what to print in our column."""
    try:
        d = queue.driver("amqp")
        message = d.pop([bench.amqp_queue], 0)
    except NotImplementedError:
        return "not implemented"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc)[:60]}"
    finally:
        try:
            queue.driver("amqp").close()  # stop the probe's consumer: it would hold `prefetch` messages
        except Exception:
            pass
    if message is not None:
        return "error: pop() on an empty queue returned a message"
    return "ok"


# Servers of this run's own (beanstalkd, moto_server) ##########################################
BEANSTALKD = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"


def start_server(bench, what, argv, port, timeout=30):
    """Start a server of this run's own (argv, listening on 127.0.0.1:port), wait until it accepts
    connections, and have bench.close() kill it (after our clients are closed). Return the Popen."""
    log = open(os.path.join(bench.folder, f"{what}.log"), "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def stop():
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()
    bench.cleanups.append((f"{what} (pid {proc.pid})", stop))
    try:
        common.wait_for(lambda: common.server_up("127.0.0.1", port, 0.2), timeout, f"{what} on port {port}",
                        every=0.1, proc=proc)
    except RuntimeError as exc:
        log.seek(0)
        raise RuntimeError(f"{exc}: {log.read()[-300:]}") from None
    return proc


# The queue servers: shared parts #############################################################
def backend_rows(bench, label, d, raw, count, clear, left):
    """Our push single / push batch / drain on driver d (queue QUEUE, in this process), each beside
    raw's floor, run alternately (bench.pair). count(): the ready jobs of our queue; clear(): empty
    it; left(): what a drain left behind on the server (falsy: nothing). Return the two drain rates."""
    n = bench.n

    def ours_push(fn):
        def run():
            clear()
            seconds = fn(bench, d.name)
            got = count()
            if got != n:
                raise RuntimeError(f"{label}: {got} jobs on the queue after the pushes, not {n}")
            return seconds
        return run

    def ours_drain():
        clear()
        push_batch(bench, d.name)
        seconds, jobs = worker_drain(bench, d)
        rest = left()
        if rest:
            raise RuntimeError(f"{label}: the drain left {rest}")
        return seconds, jobs

    single, floor_single = bench.pair(f"{label} push single", ours_push(push_single), raw.push_single)
    bench.add(label, "push single", single, floor_single, note=raw.single_note + raw.n_note)
    batch, floor_batch = bench.pair(f"{label} push batch", ours_push(push_batch), raw.push_batch)
    bench.add(label, f"push batch ({BATCH}), per job", batch, floor_batch,
              note=f"{raw.batch_note}; batch/single: ours x{batch / single:.1f}, floor x{floor_batch / floor_single:.1f}")
    drain, floor_drain = bench.pair(f"{label} drain", ours_drain, raw.drain)
    bench.add(label, "drain (Worker.run, 1 thread)", drain, floor_drain, note=raw.drain_note)
    clear()
    return drain, floor_drain


def cli_drain_row(bench, label, driver, floor_drain, clear, left):
    """N pushed jobs drained by one `python queue.py work --stop-when-empty --driver DRIVER`."""
    say(f"{label}: 1 worker process")
    clear()
    push_batch(bench, driver)
    wall, _, loops = bench.worker("--stop-when-empty", "--driver", driver, "--queue", QUEUE, mark=True)
    rest = left()
    if rest:
        raise RuntimeError(f"{label}: the worker process left {rest}")
    note = f"wall incl. start-up; from first loop: {bench.n / (wall - min(loops)):,.0f}/s; " if loops else "wall; "
    bench.add(label, "drain, 1 worker process (CLI)", bench.n / wall, floor_drain,
              note=note + "floor: the raw drain above")


def latency_rows(bench, label, ours, floor, what):
    """The p50 and p99 rows of an idle push-to-start (ours, floor: (p50, p90, p99) ms)."""
    (p50, p90, p99), (f50, f90, f99) = ours, floor
    bench.add(label, "idle push-to-start p50", round(p50, 2), round(f50, 2), unit="ms",
              note=f"p90 {p90:.2f} ms (floor {f90:.2f}); {what}")
    bench.add(label, "idle push-to-start p99", round(p99, 2), round(f99, 2), unit="ms", note="the same pushes")


def raw_latency(bench, label, script, argv, push, count=200, each=False):
    """(p50, p90, p99) ms from a raw push to a bare consumer process: `python -c script *argv PATH`
    appends one latency in ms per message to PATH once it has written PATH.ready; push(stamp)
    sends one message whose body is `stamp` (time.time() as text, read just before the send).
    Pushes are 20 ms apart, or (each=True) each 50 ms after the last one was consumed."""
    path = os.path.join(bench.folder, f"raw-{label}-stamps")
    log = open(os.path.join(bench.folder, f"raw-{label}-consumer.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-c", script, *argv, path], env=bench.env(), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)

    def lines():
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return sum(1 for _ in f)
    try:
        common.wait_for(lambda: os.path.exists(path + ".ready"), 30, f"the raw {label} consumer", proc=proc)
        time.sleep(0.2)  # let it reach its first wait
        for number in range(count):
            time.sleep(0.05 if each else 0.02)
            push(repr(time.time()))
            if each:
                common.wait_for(lambda: lines() > number, 30, f"raw {label} message {number}", every=0.002, proc=proc)
        common.wait_for(lambda: lines() >= count, 30, f"every raw {label} message", proc=proc)
    except RuntimeError as exc:
        log.seek(0)
        raise RuntimeError(f"{exc}: {log.read()[-300:]}") from None
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    with open(path) as f:
        return quantiles([float(line) for line in f], 0.5, 0.9, 0.99)


# Redis #######################################################################################
REDIS_EMPTY_WAIT = 0.01  # seconds the floor's last BLMOVE (on the empty list) waits


class RawServerFloor:
    """What the raw floors of the redis, beanstalkd and sqs drivers share: N jobs put into their
    emptied queue, timed (fill: the batch push; a loop of single puts; beanstalkd has no batch)."""

    def timed_fill(self, fill=None):
        self.clear()
        start = time.perf_counter()
        (fill or self.fill)()
        seconds = time.perf_counter() - start
        assert self.count() == self.n
        return seconds

    def push_batch(self):
        return self.timed_fill()


class RawRedis(RawServerFloor):
    """The redis-py floor on one client of the same server, on keys of this run's prefix: LPUSH
    per job, a pipeline of LPUSHes per batch, and the reliable-queue drain: BLMOVE the next job to
    a processing list, run it, then LREM it from there in one pipeline with the next BLMOVE."""

    single_note = "floor: LPUSH per job"
    batch_note = f"floor: a pipeline of {BATCH} LPUSHes"
    drain_note = (f"floor: BLMOVE to a processing list, run, LREM pipelined with the next BLMOVE "
                  f"(the last, empty one waits {REDIS_EMPTY_WAIT * 1000:g} ms)")
    n_note = ""

    def __init__(self, bench, redis):
        self.n = bench.n
        self.client = redis.Redis(**REDIS, socket_timeout=30)
        self.ready = f"{bench.redis_prefix}floor"
        self.processing = self.ready + ":processing"
        self.body = b"Noop\0" + queue.pack(Noop())  # what our driver stores of a job

    def clear(self):
        self.client.delete(self.ready, self.processing)

    def count(self):
        return self.client.llen(self.ready)

    def fill(self):
        for size in batches(self.n):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(size):
                pipe.lpush(self.ready, self.body)
            pipe.execute()

    def push_single(self):
        lpush, key, body, n = self.client.lpush, self.ready, self.body, self.n
        return self.timed_fill(lambda: [lpush(key, body) for _ in range(n)])

    def drain(self):
        self.clear()
        self.fill()
        pipe = self.client.pipeline(transaction=False)
        jobs, done = 0, None
        start = time.perf_counter()
        while True:
            if done is not None:
                pipe.lrem(self.processing, 1, done)
            pipe.blmove(self.ready, self.processing, REDIS_EMPTY_WAIT, "RIGHT", "LEFT")
            body = pipe.execute()[-1]
            if body is None:
                break
            noop()
            done = body
            jobs += 1
        seconds = time.perf_counter() - start
        assert jobs == self.n and self.count() == 0 and self.client.llen(self.processing) == 0
        return seconds, jobs


RAW_REDIS_CONSUMER = """
import json, sys, time, redis
server, ready, processing, path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
client = redis.Redis(**server, socket_timeout=30)
pipe = client.pipeline(transaction=False)
out = open(path, "a")
open(path + ".ready", "w").close()
done = None
while True:
    if done is not None:
        pipe.lrem(processing, 1, done)
    pipe.blmove(ready, processing, 1, "RIGHT", "LEFT")
    done = pipe.execute()[-1]
    if done is not None:
        out.write(f"{(time.time() - float(done)) * 1000:.4f}\\n"); out.flush()
"""


def delete_redis_keys(prefix):
    """Delete every key of the shared Redis that starts with `prefix` (this run's), on a client of
    its own; never FLUSHDB."""
    import redis
    client = redis.Redis(**REDIS, socket_timeout=30)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        left = sum(1 for _ in client.scan_iter(match=prefix + "*", count=1000))
        if left:
            raise RuntimeError(f"{left} key(s) {prefix}* still there")
    finally:
        client.close()


def bench_redis(bench):
    import redis
    say(f"redis: N={bench.n}, keys {bench.redis_prefix}* on {REDIS['host']}:{REDIS['port']}")
    bench.cleanups.append((f"Redis keys {bench.redis_prefix}*", lambda: delete_redis_keys(bench.redis_prefix)))
    d = queue.driver("redis")
    keys = d.keys(QUEUE) + [d.keys(QUEUE)[0] + ":pushed"]
    side = redis.Redis(**REDIS, socket_timeout=30)
    bench.cleanups.append(("a redis-py client", lambda: close_quietly(side)))
    raw = RawRedis(bench, redis)
    bench.cleanups.append(("a redis-py client", lambda: close_quietly(raw.client)))

    def clear():
        side.delete(*keys)

    def count():
        return side.llen(keys[0])

    def left():
        """What a drain left: ready, delayed, reserved ids, stored jobs, attempt counts."""
        pipe = side.pipeline(transaction=False)
        pipe.llen(keys[0]).zcard(keys[1]).zcard(keys[2]).hlen(keys[3]).hlen(keys[4])
        return {k: v for k, v in zip(("ready", "delayed", "reserved", "jobs", "tries"), pipe.execute()) if v}

    drain, floor_drain = backend_rows(bench, "redis", d, raw, count, clear, left)
    cli_drain_row(bench, "redis", "redis", floor_drain, clear, left)
    clear()
    say("redis: idle push-to-start latency")
    ours = push_to_start_latency(bench, "redis", QUEUE, qs=(0.5, 0.9, 0.99))
    clear()
    raw.clear()
    floor = raw_latency(bench, "redis", RAW_REDIS_CONSUMER, [json.dumps(REDIS), raw.ready, raw.processing],
                        lambda stamp: raw.client.lpush(raw.ready, stamp))
    raw.clear()
    latency_rows(bench, "redis", ours, floor,
                 f"push() call to handle() start in an idle `work` process at its defaults (poll {d.options['poll']} s, "
                 f"block_for {d.options['block_for']}), 200 pushes 20 ms apart; floor: LPUSH to a bare BLMOVE+LREM process")


# beanstalkd ##################################################################################
def tube_counts(client, tube):
    """{ready, reserved, delayed, buried} of a tube (nothing if the server has no such tube)."""
    import greenstalk
    try:
        s = client.stats_tube(tube)
    except greenstalk.NotFoundError:
        return {}
    return {k: int(s[f"current-jobs-{k}"]) for k in ("ready", "reserved", "delayed", "buried") if int(s[f"current-jobs-{k}"])}


def empty_tube(client):
    """Reserve and delete (on `client`, watching one tube) until that tube has no ready job."""
    import greenstalk
    while True:
        try:
            job = client.reserve(timeout=0)
        except greenstalk.TimedOutError:
            return
        client.delete(job)


class RawBeanstalkd(RawServerFloor):
    """The greenstalk floor on one connection to the same server, a tube of its own, the same body
    as our driver's, its priority and TTR: put per job; reserve (timeout 0) + delete per job."""

    single_note = "floor: greenstalk put per job"
    batch_note = "floor: put per job (beanstalkd has no batch command)"
    drain_note = "floor: greenstalk reserve + delete per job"
    n_note = ""

    def __init__(self, bench, greenstalk, address, ttr):
        self.greenstalk, self.n, self.ttr = greenstalk, bench.n, ttr
        self.tube = f"floor_{bench.uid}"
        self.client = greenstalk.Client(address, encoding=None, use=self.tube, watch=self.tube)
        self.body = b"\0".join([b"Noop", b"0", QUEUE.encode(), queue.pack(Noop())])

    def clear(self):
        empty_tube(self.client)

    def count(self):
        return tube_counts(self.client, self.tube).get("ready", 0)

    def fill(self):
        put, body, ttr = self.client.put, self.body, self.ttr
        for _ in range(self.n):
            put(body, priority=1024, ttr=ttr)

    def push_single(self):  # no batch command: push_batch is the same loop, measured on its own
        return self.timed_fill()

    def drain(self):
        self.clear()
        self.fill()
        reserve, delete, timed_out = self.client.reserve, self.client.delete, self.greenstalk.TimedOutError
        jobs = 0
        start = time.perf_counter()
        while True:
            try:
                job = reserve(timeout=0)
            except timed_out:
                break
            noop()
            delete(job)
            jobs += 1
        seconds = time.perf_counter() - start
        assert jobs == self.n and not tube_counts(self.client, self.tube)
        return seconds, jobs


RAW_BEANSTALKD_CONSUMER = """
import sys, time, greenstalk
port, tube, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
client = greenstalk.Client(("127.0.0.1", port), encoding=None, watch=tube)
out = open(path, "a")
open(path + ".ready", "w").close()
while True:
    try:
        job = client.reserve(timeout=1)
    except greenstalk.TimedOutError:
        continue
    out.write(f"{(time.time() - float(job.body)) * 1000:.4f}\\n"); out.flush()
    client.delete(job)
"""


def bench_beanstalkd(bench):
    import greenstalk
    port = bench.beanstalkd_port
    binlog = tempfile.mkdtemp(prefix="beanstalkd-binlog-", dir=bench.folder)
    start_server(bench, "beanstalkd", [BEANSTALKD, "-l", "127.0.0.1", "-p", str(port), "-b", binlog], port)
    say(f"beanstalkd: N={bench.n}, its own server on port {port} (binlog in {binlog})")
    address = ("127.0.0.1", port)
    d = queue.driver("beanstalkd")
    side = greenstalk.Client(address, encoding=None, use=QUEUE, watch=QUEUE)
    bench.cleanups.append(("a greenstalk client", lambda: close_quietly(side)))
    raw = RawBeanstalkd(bench, greenstalk, address, d.retry_after)
    bench.cleanups.append(("a greenstalk client", lambda: close_quietly(raw.client)))

    def clear():
        empty_tube(side)

    def count():
        return tube_counts(side, QUEUE).get("ready", 0)

    def left():
        return tube_counts(side, QUEUE)

    drain, floor_drain = backend_rows(bench, "beanstalkd", d, raw, count, clear, left)
    cli_drain_row(bench, "beanstalkd", "beanstalkd", floor_drain, clear, left)
    clear()
    say("beanstalkd: idle push-to-start latency")
    ours = push_to_start_latency(bench, "beanstalkd", QUEUE, qs=(0.5, 0.9, 0.99))
    clear()
    floor = raw_latency(bench, "beanstalkd", RAW_BEANSTALKD_CONSUMER, [str(port), raw.tube],
                        lambda stamp: raw.client.put(stamp.encode(), priority=1024, ttr=raw.ttr))
    latency_rows(bench, "beanstalkd", ours, floor,
                 f"push() call to handle() start in an idle `work` process at its defaults (poll {d.options['poll']} s: "
                 "reserve-with-timeout 1), 200 pushes 20 ms apart; floor: put to a bare reserve+delete process")


# SQS (moto_server) ###########################################################################
class RawSQS(RawServerFloor):
    """The boto3 floor on a client of its own (the same botocore settings as our driver's) to the
    same server, a queue of its own with our driver's attributes, the same base64 body (without
    our four message attributes): send_message per job, send_message_batch of 10, receive_message
    (1 message, no wait) + delete_message per job."""

    single_note = "floor: boto3 send_message per job"
    batch_note = "floor: send_message_batch of 10"
    drain_note = "floor: receive_message (1 message) + delete_message per job"

    def __init__(self, bench, d):
        import base64
        self.n = bench.n
        self.n_note = f"; N={self.n} (--sqs-jobs)"
        self.kwargs = sqs_client_kwargs(d)
        self.client = new_sqs_client(self.kwargs)
        self.url = self.client.create_queue(
            QueueName=f"{d.options['prefix']}floor",
            Attributes={"VisibilityTimeout": str(d.retry_after), "MessageRetentionPeriod": "1209600"})["QueueUrl"]
        self.body = base64.b64encode(queue.pack(Noop())).decode()

    def clear(self):
        clear_sqs_queue(self.client, self.url)

    def count(self):
        return sqs_counts(self.client, self.url).get("ready", 0)

    def push_single(self):
        send, url, body, n = self.client.send_message, self.url, self.body, self.n
        return self.timed_fill(lambda: [send(QueueUrl=url, MessageBody=body) for _ in range(n)])

    def fill(self):
        for i in range(0, self.n, 10):
            entries = [{"Id": str(j), "MessageBody": self.body} for j in range(min(10, self.n - i))]
            failed = self.client.send_message_batch(QueueUrl=self.url, Entries=entries).get("Failed")
            if failed:
                raise RuntimeError(f"SQS refused a message: {failed[0]}")

    def drain(self):
        self.clear()
        self.fill()
        receive, delete, url = self.client.receive_message, self.client.delete_message, self.url
        jobs = 0
        start = time.perf_counter()
        while True:
            got = receive(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=0).get("Messages")
            if not got:
                break
            noop()
            delete(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
            jobs += 1
        seconds = time.perf_counter() - start
        assert jobs == self.n and not sqs_counts(self.client, self.url)
        return seconds, jobs


def sqs_client_kwargs(d):
    """boto3.client('sqs', **these) as our driver makes its client (JSON-able, for a subprocess)."""
    o = d.options
    return {"endpoint_url": o["endpoint"], "region_name": o["region"], "aws_access_key_id": o["key"],
            "aws_secret_access_key": o["secret"]}


def new_sqs_client(kwargs):
    import boto3
    from botocore.config import Config
    return boto3.client("sqs", config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30), **kwargs)


def sqs_counts(client, url):
    """{ready, delayed, reserved} of an SQS queue (only those not 0)."""
    names = {"ready": "ApproximateNumberOfMessages", "delayed": "ApproximateNumberOfMessagesDelayed",
             "reserved": "ApproximateNumberOfMessagesNotVisible"}
    a = client.get_queue_attributes(QueueUrl=url, AttributeNames=list(names.values()))["Attributes"]
    return {k: int(a[v]) for k, v in names.items() if int(a[v])}


def clear_sqs_queue(client, url):
    """PurgeQueue, then wait until it shows (AWS takes up to 60 s; moto at once)."""
    client.purge_queue(QueueUrl=url)
    common.wait_for(lambda: not sqs_counts(client, url), 90, f"the purge of {url}", every=0.2)


RAW_SQS_CONSUMER = """
import json, sys, time, boto3
kwargs, url, path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
client = boto3.client("sqs", **kwargs)
out = open(path, "a")
open(path + ".ready", "w").close()
while True:
    got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages")
    if not got:
        continue
    out.write(f"{(time.time() - float(got[0]['Body'])) * 1000:.4f}\\n"); out.flush()
    client.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
"""


def bench_sqs(bench):
    saved, bench.n = bench.n, bench.args.sqs_jobs
    try:
        _bench_sqs(bench)
    finally:
        bench.n = saved


def _bench_sqs(bench):
    port = bench.sqs_port
    start_server(bench, "moto_server", [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], port)
    say(f"sqs: N={bench.n} (--sqs-jobs), its own moto_server on port {port}, queues {bench.sqs_prefix}*")
    d = queue.driver("sqs")
    url = d.url(QUEUE)
    side = new_sqs_client(sqs_client_kwargs(d))
    raw = RawSQS(bench, d)

    def clear():
        clear_sqs_queue(side, url)

    def count():
        return sqs_counts(side, url).get("ready", 0)

    def left():
        return sqs_counts(side, url)

    drain, floor_drain = backend_rows(bench, "sqs", d, raw, count, clear, left)
    cli_drain_row(bench, "sqs", "sqs", floor_drain, clear, left)
    clear()
    say("sqs: idle push-to-start latency")
    count_latency = 50
    ours = push_to_start_latency(bench, "sqs", QUEUE, count=count_latency, each=True, qs=(0.5, 0.9, 0.99))
    clear()
    floor = raw_latency(bench, "sqs", RAW_SQS_CONSUMER, [json.dumps(raw.kwargs), raw.url],
                        lambda stamp: raw.client.send_message(QueueUrl=raw.url, MessageBody=stamp),
                        count=count_latency, each=True)
    latency_rows(bench, "sqs", ours, floor,
                 f"push() call to handle() start in an idle `work` process at its defaults (poll {d.options['poll']} s: "
                 f"long polls of 1 s), {count_latency} pushes, each 50 ms after the last started (p99: the max); "
                 "floor: send_message to a bare receive (WaitTimeSeconds 1) + delete process")


MOTO_SERVER = shutil.which("moto_server") or "moto_server"


# Output ######################################################################################
def fmt(value, unit):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def table(rows, meta):
    header = ("driver", "measure", "ours", "floor", "ours/floor", "unit", "note")
    lines = [[r["driver"], r["measure"], fmt(r["ours"], r["unit"]), fmt(r["floor"], r["unit"]),
              f"{r['ratio']:.2f}" if "ratio" in r else "-", r["unit"], r["note"]] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    right = {2, 3, 4}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    sqs = f" (sqs: {meta['sqs_jobs']})" if "sqs" in meta["drivers"] and meta["sqs_jobs"] != meta["jobs"] else ""
    out = [f"queue.py {meta['queue_py']} benchmark: N={meta['jobs']}{sqs} jobs/measurement, batch {BATCH}, "
           f"repeat {meta['repeat']} (median), Python {meta['python']}, SQLite {meta['sqlite']}, {meta['cpus']} CPUs"]
    if meta.get("profile"):
        out.append("(--profile was on: our figures include cProfile overhead)")
    out += [line(header), line(["-" * w for w in widths])] + [line(cells) for cells in lines]
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="queue.py jobs/s beside the raw floor of the same backend")
    parser.add_argument("--driver", action="append",
                        help=f"run this driver: {', '.join(DRIVERS)} (repeatable, or a comma list; "
                             "default: every available one)")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per measurement (default 5000)")
    parser.add_argument("--sqs-jobs", type=int, default=None,
                        help="jobs per measurement of the sqs driver (default: --jobs, at most 1000: "
                             "moto_server answers about a hundred requests a second)")
    default_sync = queue._SQLite.defaults["synchronous"]
    parser.add_argument("--synchronous", default=default_sync,
                        help="SQLite synchronous setting(s) of the driver, and of its floor: normal, full, "
                             f"or a comma list such as normal,full (default: the driver's, {default_sync})")
    parser.add_argument("--rss", action="store_true", help="also drain 100,000 jobs in a worker for its peak RSS")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each in-process measurement; report the median")
    parser.add_argument("--worker-log", choices=("warning", "info"), default="warning",
                        help="log level of subprocess workers (info: the CLI default, one line per job)")
    parser.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="TOP",
                        help="cProfile our in-process measurements; print the top entries to stderr")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    parser.add_argument("--amqp-queue-type", choices=["quorum", "classic"],
                        default=queue.AMQPDriver.defaults["queue_type"],
                        help="RabbitMQ queue type of our driver and of its floor (default: the driver's)")
    args = parser.parse_args(argv)
    if args.driver:
        args.driver = [d.strip() for value in args.driver for d in value.split(",") if d.strip()]
        for d in args.driver:
            if d not in DRIVERS:
                parser.error(f"--driver: {d!r} is not one of {', '.join(DRIVERS)}")
    if args.sqs_jobs is None:
        args.sqs_jobs = min(args.jobs, 1000)
    args.synchronous = [s.strip() for s in args.synchronous.split(",") if s.strip()]
    for s in args.synchronous:
        if s not in ("off", "normal", "full", "extra"):
            parser.error(f"--synchronous: {s!r} is not off, normal, full or extra")
    if args.jobs < 1 or args.repeat < 1 or args.sqs_jobs < 1:
        parser.error("--jobs, --sqs-jobs and --repeat must be at least 1")
    return args


def available(name):
    """(True, '') or (False, why) for a driver's server (or, for beanstalkd and sqs, the program
    this run starts as its own server) and client package."""
    if name in ("beanstalkd", "sqs"):
        package, program = {"beanstalkd": ("greenstalk", BEANSTALKD), "sqs": ("boto3", MOTO_SERVER)}[name]
        try:
            __import__(package)
        except ImportError:
            return False, f"{package} not installed"
        if not (os.path.exists(program) or shutil.which(program)):
            return False, f"{program} not installed"
        return True, ""
    return common.available(name)


def main(argv=None):
    args = parse_args(argv)
    chosen = args.driver or list(DRIVERS)
    bench = Bench(args)
    meta = {"queue_py": common.queue_py_id(queue), "jobs": args.jobs, "sqs_jobs": args.sqs_jobs, "batch": BATCH,
            "repeat": args.repeat, "synchronous": args.synchronous,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
            "worker_log": args.worker_log, "profile": bool(args.profile), "drivers": []}
    runners = {"sqlite": bench_sqlite, "async": bench_async, "mysql": bench_mysql, "postgres": bench_postgres,
               "amqp": bench_amqp, "redis": bench_redis, "beanstalkd": bench_beanstalkd, "sqs": bench_sqs}
    started = time.perf_counter()
    try:
        for name in DRIVERS:
            if name not in chosen:
                continue
            ok, why = available(name)
            if not ok:
                if args.driver:
                    bench.add(name, "(skipped)", None, None, note=why)
                say(f"{name}: skipped ({why})")
                continue
            meta["drivers"].append(name)
            try:
                runners[name](bench)
            except Exception as exc:
                bench.add(name, "(failed)", None, None, note=f"{type(exc).__name__}: {str(exc)[:100]}")
                say(f"{name}: failed: {type(exc).__name__}: {exc}")
    finally:
        bench.close()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"meta": meta, "rows": bench.rows}, indent=2))
    else:
        print(table(bench.rows, meta))
        print(f"({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
