#!/usr/bin/env python3
"""Flow control under load: the figures of a throttle, a funnel and unique jobs, measured from an
independent record, with real worker processes on SQLite and on MariaDB.

    python benchmarks/flow.py                        # both backends (MariaDB if it answers)
    python benchmarks/flow.py --backend sqlite --jobs 200
    python benchmarks/flow.py --backend mysql --style block

For each backend, in a temporary project (queue.py copied in, config.py written; MariaDB tables
with unique names, dropped afterwards), with `--workers` (default 4) `python queue.py work`
processes:

1. throttle: `--jobs` (default 300) jobs pushed at once, each limited to 10 starts per second
   (RateLimited middleware, or with --style block `with queue.throttle(...)` and
   self.release(retry_after)); the most starts in any 1-second sliding window (limit: 10) and
   the average starts per second while saturated (limit: at least 9);
2. funnel: `--funnel-jobs` (default 60) jobs that each hold `with queue.funnel(key, limit=2)`
   for 50 ms (and release themselves for 50 ms when no slot is free); the most bodies running
   at once (limit: 2);
3. unique: one unique job pushed 100 times from 8 threads at once; rows stored (must be 1).

The record is independent of queue.py: every job body appends "start <time.time()>" and
"end <time.time()>" with one O_APPEND write each (tests/flowjobs.py). Starts/s while saturated:
the starts in [first start, first start + k) / k, k the whole seconds between the first and the
last start (every job was queued from the first start to the last, so the limiter was the only
brake).

Two more throttle figures say how close the starts came: the shortest time spanned by 11
consecutive starts (>= 1 s), and the most slot takes that surely fell within 1 s. A body starts a
little after its slot was taken (sub-millisecond, more when its process is descheduled), so the
start times may show 11 starts in a second while the takes kept to 10; each attempt also notes
when it entered its middleware, so its take lies in [entered, start], and a set of takes is
surely within 1 s only when its last start is less than 1 s after its first entry. --tolerance S
shortens the window of the first two figures by S seconds.

Exit status 1 if a limit is broken, 2 if a backend could not be measured.
"""
import argparse
import collections
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import common
from common import MYSQL, TESTS, server_up

queue = common.import_queue(TESTS)  # ROOT first: `import queue` must find our queue.py, not the stdlib's
import flowjobs  # noqa: E402
from flowjobs import events, most_in_window, most_running, most_surely_within  # noqa: E402

ALLOW, EVERY = 10, 1.0          # the throttle: 10 starts per second
FUNNEL, HOLD_MS = 2, 50         # the funnel: 2 holders, 50 ms bodies
PUSHES, THREADS = 100, 8        # unique: 100 pushes from 8 threads


def say(*parts):
    print(*parts, file=sys.stderr, flush=True)


class Backend:
    """A temporary project on one backend, its workers, and its clean-up."""

    def __init__(self, name, args):
        self.name, self.args = name, args
        self.folder = tempfile.mkdtemp(prefix=f"flow-{name}-")
        self.table = f"flow_{uuid.uuid4().hex[:10]}" if name == "mysql" else "jobs"
        drivers = {"default": "database",
                   "database": {"connection": name, "table": self.table, "failed_table": self.table + "_failed",
                                "state_table": self.table + "_state", "attempts": 3, "poll": args.poll,
                                "retry_after": 30}}
        common.make_project(drivers, {name: common.database(name)}, folder=self.folder)
        self.config = os.path.join(self.folder, "config.py")
        queue.configure(self.config)
        if name == "mysql":
            queue.driver().create_tables()
        self.workers = []

    # workers
    def start_workers(self, scenario):
        env = common.project_env(TESTS)  # TESTS: flowjobs.py
        for i in range(self.args.workers):
            log = open(os.path.join(self.folder, f"{scenario}-worker-{i}.log"), "w")
            proc = subprocess.Popen([sys.executable, "queue.py", "work"], cwd=self.folder, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            self.workers.append((proc, log))

    def stop_workers(self):
        """SIGTERM every worker (each finishes its job and exits 0); kill one that does not."""
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc, log in self.workers:
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            log.close()
        self.workers = []
        if any(codes):
            say(f"  warning: worker exit codes {codes} (logs in {self.folder})")

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s (worker logs in {self.folder})")
            dead = [proc.returncode for proc, _ in self.workers if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited with {dead[0]} (worker logs in {self.folder})")
            time.sleep(0.05)

    # the database, through a connection of our own
    def sql(self, statement):
        if self.name == "sqlite":
            conn = sqlite3.connect(os.path.join(self.folder, "queue.sqlite3"), timeout=30)
            try:
                return conn.execute(statement).fetchall()
            finally:
                conn.close()
        conn = common.mysql_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def close(self):
        self.stop_workers()
        queue._close_drivers()
        if self.name == "mysql":
            try:
                self.sql(f"DROP TABLE IF EXISTS {self.table}, {self.table}_failed, {self.table}_state")
            except Exception as exc:
                say(f"  warning: could not drop the tables {self.table}*: {exc}")
        if self.args.keep:
            say(f"  kept {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    # the scenarios
    def throttle(self):
        n, path, key = self.args.jobs, os.path.join(self.folder, "throttle.record"), f"bench-{uuid.uuid4().hex[:8]}"
        job = flowjobs.Limited if self.args.style == "middleware" else flowjobs.Throttled
        jobs = [job(path, f"t{i}", key, allow=ALLOW, every=EVERY) for i in range(n)]
        for start in range(0, n, 100):
            queue.push(*jobs[start:start + 100])
        say(f"  throttle: {n} jobs queued, {self.args.workers} workers at {ALLOW} starts per {EVERY:g} s ...")
        began = time.monotonic()
        self.start_workers("throttle")
        self.wait_for(lambda: flowjobs.count(path, "end") >= n, n / ALLOW * EVERY * 1.5 + 30,
                      f"the {n} throttled jobs did not all run")
        self.stop_workers()
        recorded = events(path, "start")
        starts = sorted(e.at for e in recorded)
        whole = int((starts[-1] - starts[0]) // 1) or 1
        saturated = sum(1 for t in starts if t < starts[0] + whole) / whole
        releases = sum(e.attempt - 1 for e in recorded)
        say(f"  throttle: done in {time.monotonic() - began:.1f} s, {releases} releases")
        spans = [b - a for a, b in zip(starts, starts[ALLOW:])]  # start k to start k + ALLOW
        window = EVERY - self.args.tolerance
        return [
            (f"throttle 10/s: most starts in any {window:g} s window", most_in_window(starts, window), "<=", ALLOW,
             "{:d}"),
            (f"throttle 10/s: shortest span of {ALLOW + 1} starts, s", min(spans) if spans else EVERY, ">=",
             window, "{:.4f}"),
            ("throttle 10/s: most slot takes surely within 1 s", most_surely_within(recorded, EVERY), "<=", ALLOW,
             "{:d}"),
            ("throttle 10/s: starts/s while saturated", saturated, ">=", 9, "{:.2f}"),
            ("throttle 10/s: jobs that ran exactly once", once(recorded), "==", n, "{:d}"),
        ], {"span_s": starts[-1] - starts[0], "releases": releases}

    def funnel(self):
        n, path, key = self.args.funnel_jobs, os.path.join(self.folder, "funnel.record"), f"bench-{uuid.uuid4().hex[:8]}"
        queue.push(*(flowjobs.Funneled(path, f"f{i}", key, limit=FUNNEL, seconds=HOLD_MS / 1000, release=0.05)
                     for i in range(n)))
        say(f"  funnel: {n} jobs of {HOLD_MS} ms queued, limit {FUNNEL} ...")
        self.start_workers("funnel")
        self.wait_for(lambda: flowjobs.count(path, "end") >= n, n * HOLD_MS / 1000 + 60,
                      f"the {n} funnel jobs did not all run")
        self.stop_workers()
        recorded = events(path)
        starts = [e for e in recorded if e.event == "start"]
        ends = [e for e in recorded if e.event == "end"]
        busy = sum(e.at for e in ends) - sum(e.at for e in starts)
        span = max(e.at for e in ends) - min(e.at for e in starts)
        return [
            ("funnel 2: most bodies running at once", most_running(recorded), "<=", FUNNEL, "{:d}"),
            ("funnel 2: jobs that ran exactly once", once(starts), "==", n, "{:d}"),
        ], {"mean_running": busy / span if span else 0.0}

    def unique(self):
        path = os.path.join(self.folder, "unique.record")
        before = self.sql(f"SELECT COUNT(*) FROM {self.table}")[0][0]
        barrier, results, errors = threading.Barrier(THREADS), [], []

        def pushes(i):
            try:
                barrier.wait(30)
                for n in range(i, PUSHES, THREADS):
                    results.append(queue.push(flowjobs.UniqueRun(path, f"u{n}")))
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=pushes, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        if errors:
            raise RuntimeError(f"a push raised: {errors[0]!r}")
        rows = self.sql(f"SELECT COUNT(*) FROM {self.table}")[0][0] - before
        return [
            (f"unique: rows stored by {PUSHES} pushes ({THREADS} threads)", rows, "==", 1, "{:d}"),
            ("unique: pushes that returned True", results.count(True), "==", 1, "{:d}"),
        ], {}


def once(starts):
    """How many jobs (tags) started exactly once."""
    counts = collections.Counter(e.tag for e in starts)
    return sum(1 for c in counts.values() if c == 1)


CHECKS = {"<=": lambda v, l: v <= l, ">=": lambda v, l: v >= l, "==": lambda v, l: v == l}


def run_backend(name, args):
    say(f"{name}: ...")
    backend = Backend(name, args)
    rows, notes = [], {}
    try:
        for scenario in (backend.throttle, backend.funnel, backend.unique):
            figures, extra = scenario()
            rows += figures
            notes.update(extra)
    finally:
        backend.close()
    return rows, notes


def print_table(name, args, rows, notes):
    print(f"\n{name}: {args.workers} worker processes, poll {args.poll:g} s, throttle via "
          f"{'RateLimited middleware' if args.style == 'middleware' else 'with queue.throttle + release(retry_after)'}")
    width = max(len(r[0]) for r in rows)
    print(f"  {'figure':<{width}}  {'measured':>9}  {'limit':>7}  ")
    broken = False
    for label, value, op, limit, fmt in rows:
        ok = CHECKS[op](value, limit)
        broken |= not ok
        print(f"  {label:<{width}}  {fmt.format(value):>9}  {op + ' ' + str(limit):>7}  {'ok' if ok else 'BROKEN'}")
    extra = []
    if "span_s" in notes:
        extra.append(f"throttled starts spread over {notes['span_s']:.1f} s, {notes['releases']} releases")
    if "mean_running" in notes:
        extra.append(f"funnel mean bodies running {notes['mean_running']:.2f}")
    if extra:
        print("  (" + "; ".join(extra) + ")")
    return broken


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=("sqlite", "mysql"),
                        help="repeatable; default: sqlite, and mysql if MariaDB answers on 127.0.0.1:3306")
    parser.add_argument("--jobs", type=int, default=300, help="throttled jobs (default 300: about 30 s)")
    parser.add_argument("--funnel-jobs", type=int, default=60, help="funnel jobs (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--poll", type=float, default=0.02, help="the workers' idle wait, s (default 0.02)")
    parser.add_argument("--style", choices=("middleware", "block"), default="middleware",
                        help="throttle through RateLimited middleware, or `with queue.throttle` in the job")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="seconds taken off the 1 s window of the first two throttle figures, for the "
                             "delay between a slot's take and the body's record (default 0: strict)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (records, worker logs)")
    args = parser.parse_args(argv)
    backends = args.backend or ["sqlite"] + (["mysql"] if server_up(MYSQL["host"], MYSQL["port"]) else [])
    broken, failed = False, False
    for name in backends:
        started = time.monotonic()
        try:
            rows, notes = run_backend(name, args)
        except Exception as exc:
            print(f"\n{name}: not measured: {exc}")
            failed = True
            continue
        broken |= print_table(name, args, rows, notes)
        print(f"  ({time.monotonic() - started:.1f} s)")
    sys.stdout.flush()
    return 1 if broken else 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
