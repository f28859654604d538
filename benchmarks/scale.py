#!/usr/bin/env python3
"""The operating commands at a large backlog: `status`, `retry all`, `flush`, the dashboard's
/api/state and /metrics, and a worker's per-job cost, with N ready jobs and N failed jobs.

    python benchmarks/scale.py                                    # N = 10k, 100k, 1M on sqlite, mysql, postgres (long)
    python benchmarks/scale.py --sizes 10000                      # a short check
    python benchmarks/scale.py --sizes 10000,100000 --backends sqlite,postgres --json

For each backend and size N, a temporary project (queue.py copied in, config.py naming the backend
and this run's tables `scale_<id>`, `_failed`, `_state`, dropped at the end; jobs are
benchjobs.Noop, found through PYTHONPATH as bench.py's) and, in order:

1. the backlog: N jobs pushed with queue.push(), 1000 a call; N failed rows written with bulk
   INSERTs (one transaction or multi-row statement per 1000), each with the payload push() makes
   (queue.pack) and a traceback of --traceback-bytes (default 500) as its exception;
2. `python queue.py status`: wall time of the command (its start-up included: the header gives
   `python queue.py --version` for comparison) and its peak RSS;
3. `python queue.py dashboard`: GET /api/state and GET /metrics, --requests times each (default 3;
   the median), then the dashboard's peak RSS (VmHWM, read before it is stopped: exact);
4. drain: `python queue.py work --stop-when-empty --max-jobs K` over K = min(N, --drain-jobs)
   (default 5000) of the backlog, per-job cost in microseconds from the worker's first loop
   (a looping() hook marks it) to its exit; logging at WARNING, as bench.py;
5. `python queue.py retry all` (N failed rows back onto the queue; its output, a line per job, goes
   to /dev/null): wall time and peak RSS (VmHWM polled every 10 ms until it exits, see common.PeakRSS);
6. N failed rows written again, then `python queue.py flush`: wall time and peak RSS.

Counts are checked after each step (jobs and failed rows, through a connection of this script's);
a wrong count is reported in the row's note and makes the exit status 1. Exit status 2 if a
backend could not be measured.
"""
import argparse
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

import common
from common import BENCHMARKS

queue = common.import_queue(BENCHMARKS)  # ROOT first: `import queue` must find our queue.py, not the stdlib's
from benchjobs import Noop  # noqa: E402

BACKENDS = ("sqlite", "mysql", "postgres")
SIZES = (10_000, 100_000, 1_000_000)
BATCH = 1000
QUEUE = "default"  # the database driver's default queue


def say(*parts):
    """Progress on stderr (stdout is the table)."""
    print(f"[scale {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def traceback_text(size):
    """A plausible exception column of about `size` characters."""
    head = "Traceback (most recent call last):\n"
    frame = '  File "/srv/app/jobs/Noop.py", line 12, in handle\n    raise RuntimeError("upstream said no")\n'
    body = head + frame * max(1, (size - len(head)) // len(frame))
    return (body + "RuntimeError: upstream said no\n")[:max(size, 40)]


class Side:
    """This script's own connection to the backend: bulk inserts of failed rows, and counts."""

    def __init__(self, backend, folder):
        self.backend = backend
        if backend == "sqlite":
            self.conn = sqlite3.connect(os.path.join(folder, "queue.sqlite3"), isolation_level=None, timeout=60)
            self.mark = "?"
        elif backend == "mysql":
            self.conn = common.mysql_connect(charset="utf8mb4")
            self.mark = "%s"
        else:
            self.conn = common.pg_connect()
            self.mark = "%s"

    def execute(self, sql, params=()):
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
        finally:
            cur.close()

    def count(self, table):
        return self.execute(f"SELECT COUNT(*) FROM {table}")[0][0]

    def insert_failed(self, table, n, payload, exception, connection):
        """n failed rows as add_failed writes them: driver, connection, queue, name, payload,
        exception, failed_at, created_at; 1000 a transaction (SQLite) or a statement."""
        columns = "(driver, connection, queue, name, payload, exception, failed_at, created_at)"
        one = "(" + ", ".join([self.mark] * 8) + ")"
        cur = self.conn.cursor()
        try:
            for start in range(0, n, BATCH):
                size = min(BATCH, n - start)
                now = common.stamp()
                row = ("database", connection, QUEUE, "Noop", payload, exception, now, now)
                if self.backend == "sqlite":
                    cur.execute("BEGIN")
                    cur.executemany(f"INSERT INTO {table} {columns} VALUES {one}", [row] * size)
                    cur.execute("COMMIT")
                else:
                    cur.execute(f"INSERT INTO {table} {columns} VALUES " + ", ".join([one] * size), row * size)
        finally:
            cur.close()

    def close(self):
        common.close_quietly(self.conn)


class Run:
    """One backend at one size: the project, the measurements, the clean-up."""

    def __init__(self, backend, n, args):
        self.backend, self.n, self.args = backend, n, args
        self.table = f"scale_{uuid.uuid4().hex[:10]}"
        self.tables = (self.table, self.table + "_failed", self.table + "_state")
        drivers = {"default": "database",
                   "database": {"connection": backend, "table": self.table, "failed_table": self.table + "_failed",
                                "state_table": self.table + "_state"}}
        self.folder = common.make_project(drivers, {backend: common.database(backend)},
                                          prefix=f"queue-scale-{backend}-", jobs_init=common.JOBS_INIT)
        self.env = common.project_env(BENCHMARKS)  # benchjobs.py
        self.side = None
        self.row = {"backend": backend, "n": n, "problems": []}

    # helpers
    def cli(self, *argv, timeout=None):
        """Run `python queue.py ARGV` in the project; return (wall seconds, peak RSS MiB); self.ended
        is the time.time() at which it had exited."""
        log = open(os.path.join(self.folder, f"{argv[0]}.log"), "w")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "queue.py", *argv], cwd=self.folder, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        peak = common.PeakRSS(proc.pid, every=0.01).start()
        try:
            proc.wait(timeout or self.args.timeout)
            self.ended = time.time()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"`queue.py {' '.join(argv)}` ran over {timeout or self.args.timeout:g} s")
        finally:
            log.close()
        seconds = time.perf_counter() - start
        peak.stop()
        if proc.returncode != 0:
            with open(log.name) as f:
                raise RuntimeError(f"`queue.py {' '.join(argv)}` exited {proc.returncode}: {f.read()[-400:]}")
        return seconds, peak.mib

    def expect(self, step, jobs=None, failed=None):
        """Check the counts after a step; a difference goes into the row's problems."""
        got_jobs, got_failed = self.side.count(self.tables[0]), self.side.count(self.tables[1])
        if jobs is not None and got_jobs != jobs:
            self.row["problems"].append(f"after {step}: {got_jobs} jobs, not {jobs}")
        if failed is not None and got_failed != failed:
            self.row["problems"].append(f"after {step}: {got_failed} failed, not {failed}")

    # the steps
    def measure(self):
        n, args, row = self.n, self.args, self.row
        queue.configure(os.path.join(self.folder, "config.py"))
        queue.driver().create_tables()
        self.side = Side(self.backend, self.folder)
        say(f"{self.backend} N={n:,}: pushing {n:,} jobs, writing {n:,} failed rows")
        start = time.perf_counter()
        for left in range(n, 0, -BATCH):
            queue.push(*[Noop() for _ in range(min(BATCH, left))])
        row["push_s"] = time.perf_counter() - start
        payload = queue.pack(Noop(), queue=QUEUE, ready=time.time())  # as push() makes it
        exception = traceback_text(args.traceback_bytes)
        start = time.perf_counter()
        self.side.insert_failed(self.tables[1], n, payload, exception, self.backend)
        row["insert_failed_s"] = time.perf_counter() - start
        queue._close_drivers()  # this process holds no connection while the commands run
        self.expect("the fill", jobs=n, failed=n)

        say(f"{self.backend} N={n:,}: status")
        row["status_s"], row["status_mib"] = self.cli("status")

        say(f"{self.backend} N={n:,}: dashboard")
        self.dashboard()

        k = min(n, args.drain_jobs)
        say(f"{self.backend} N={n:,}: drain {k:,} of the backlog")
        mark = os.path.join(self.folder, ".loop-mark")
        self.env["BENCH_LOOP_FILE"] = mark
        try:
            wall, row["drain_mib"] = self.cli("work", "--stop-when-empty", "--max-jobs", str(k), "--poll", "0")
        finally:
            del self.env["BENCH_LOOP_FILE"]
        with open(mark) as f:
            first_loop = float(f.read())
        row["drain_k"], row["drain_us"] = k, (self.ended - first_loop) / k * 1e6
        row["drain_wall_s"] = wall
        self.expect("the drain", jobs=n - k)

        say(f"{self.backend} N={n:,}: retry all")
        row["retry_s"], row["retry_mib"] = self.cli("retry", "all")
        self.expect("retry all", jobs=2 * n - k, failed=0)

        say(f"{self.backend} N={n:,}: {n:,} failed rows again, flush")
        self.side.insert_failed(self.tables[1], n, payload, exception, self.backend)
        row["flush_s"], row["flush_mib"] = self.cli("flush")
        self.expect("flush", failed=0)
        return row

    def check_counts(self, counts):
        """/api/state's counts of the queue: exact ones must be N; one the server estimated
        (marked in `estimated`: past the dialect's count cap) is reported with its error."""
        for kind in ("ready", "failed"):
            got = counts.get(kind)
            if kind in counts.get("estimated", ()) and isinstance(got, int) and got > 10_000:
                self.row.setdefault("estimates", []).append(f"{kind} ~{got:,} ({(got - self.n) / self.n:+.0%})")
            elif got != self.n:
                self.row["problems"].append(f"/api/state shows {kind} {got!r}, not {self.n:,}: {counts}")

    def dashboard(self):
        """Start `queue.py dashboard`, time GET /api/state and /metrics, read its VmHWM, stop it."""
        with socket.socket() as s:  # a free port (released at once: a small race, no more)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(os.path.join(self.folder, "dashboard.log"), "w")
        proc = subprocess.Popen([sys.executable, "queue.py", "dashboard", "--port", str(port)], cwd=self.folder,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if "token:" not in line:
                raise RuntimeError(f"the dashboard did not start (its first line: {line!r})")
            token = line.rsplit("token:", 1)[1].strip()
            for path, key in (("/api/state", "state"), ("/metrics", "metrics")):
                times = []
                for _ in range(self.args.requests):
                    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Queue-Token": token})
                    start = time.perf_counter()
                    with urllib.request.urlopen(request, timeout=self.args.timeout) as answer:
                        body = answer.read()
                    times.append(time.perf_counter() - start)
                    if answer.status != 200:
                        raise RuntimeError(f"GET {path}: HTTP {answer.status}")
                if key == "state":
                    self.check_counts({q["queue"]: q for q in json.loads(body)["queues"]}.get(QUEUE, {}))
                self.row[f"{key}_s"] = statistics.median(times)
                self.row[f"{key}_first_s"] = times[0]
            self.row["dashboard_mib"] = (common.vmhwm_kib(proc.pid) or 0) / 1024  # exact: it only grows
        finally:
            proc.send_signal(signal.SIGINT)  # serve_forever() ends on KeyboardInterrupt
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            log.close()

    def close(self):
        if self.side is not None:
            self.side.close()
        queue._close_drivers()
        try:
            common.drop_tables(self.backend, *self.tables)
        except Exception as exc:
            say(f"warning: could not drop the tables {self.table}*: {type(exc).__name__}: {exc}")
        if self.args.keep:
            say(f"project kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def startup_ms(env):
    """Median wall ms of `python queue.py --version` (start-up and import of queue.py) in a project."""
    folder = common.make_project({"default": "database"}, {}, prefix="queue-scale-startup-")
    try:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "queue.py", "--version"], cwd=folder, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(rows, meta):
    header = ("backend", "N (jobs, failed)", "push N s", "drain us/job", "status s", "/api/state s", "/metrics s",
              "dashboard MiB", "retry all s", "retry MiB", "flush s", "note")
    lines = []

    def f(value, digits=2):
        return "-" if value is None else f"{value:,.{digits}f}"
    for r in rows:
        if "error" in r:
            lines.append([r["backend"], f"{r['n']:,}" if r.get("n") else "-"] + ["-"] * 9 + [r["error"]])
            continue
        note = "; ".join(r["problems"]) or f"drain over {r['drain_k']:,} jobs"
        note += f"; estimated: {', '.join(r['estimates'])}" if r.get("estimates") else ""
        lines.append([r["backend"], f"{r['n']:,}", f(r.get("push_s"), 1), f(r.get("drain_us"), 0), f(r.get("status_s")),
                      f(r.get("state_s")), f(r.get("metrics_s")), f(r.get("dashboard_mib"), 1), f(r.get("retry_s")),
                      f(r.get("retry_mib"), 1), f(r.get("flush_s")), note])
    return common.table(f"queue.py {meta['queue_py']} at scale: N ready jobs + N failed rows; command times are "
                        f"wall times of `python queue.py ...` (start-up included: `python queue.py --version` takes "
                        f"{meta['startup_ms']:.0f} ms); RSS is the process's own VmHWM; {meta['cpus']} CPUs",
                        header, [r["backend"] for r in rows], lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="queue.py's operating commands at 10k, 100k and 1M jobs")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma list of N (default 10000,100000,1000000)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of sqlite, mysql, postgres (default: all)")
    parser.add_argument("--drain-jobs", type=int, default=5000, help="jobs the drain runs, at most N (default 5000)")
    parser.add_argument("--requests", type=int, default=3, help="GETs of each dashboard page; the median (default 3)")
    parser.add_argument("--traceback-bytes", type=int, default=500, help="size of each failed row's exception (default 500)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one command or request may take (default 3600)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (command logs; the tables are dropped)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: a comma list of whole numbers, e.g. 10000,100000")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes: each N must be at least 1")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in args.backends:
        if name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(BACKENDS)}")
    if args.drain_jobs < 1 or args.requests < 1 or args.traceback_bytes < 0 or args.timeout <= 0:
        parser.error("--drain-jobs, --requests and --timeout must be positive, --traceback-bytes not negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    meta = {"queue_py": common.queue_py_id(queue), "cpus": os.cpu_count(), "startup_ms": startup_ms(common.project_env()),
            "sizes": args.sizes, "traceback_bytes": args.traceback_bytes}
    rows, status = [], 0
    for backend in args.backends:
        ok, why = common.available(backend)
        if not ok:
            say(f"{backend}: skipped ({why})")
            rows.append({"backend": backend, "error": f"skipped: {why}"})
            status = 2
            continue
        for n in args.sizes:
            run = None
            try:
                run = Run(backend, n, args)
                row = run.measure()
                rows.append(row)
                if row["problems"]:
                    status = max(status, 1)
            except Exception as exc:
                say(f"{backend} N={n:,}: failed: {type(exc).__name__}: {exc}")
                rows.append({"backend": backend, "n": n, "error": f"failed: {type(exc).__name__}: {str(exc)[:120]}"})
                status = 2
            finally:
                if run is not None:
                    run.close()
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    else:
        print(table(rows, meta))
    return status


if __name__ == "__main__":
    sys.exit(main())
