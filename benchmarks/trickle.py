#!/usr/bin/env python3
"""Push-to-start latency under steady traffic: one process pushes jobs at a steady rate into one,
then two, `python queue.py work` processes at their defaults; each job records how long after its
push it started.

    python benchmarks/trickle.py                                  # 200 jobs/s for 60 s, every backend
    python benchmarks/trickle.py --seconds 10 --backends sqlite   # a short check
    python benchmarks/trickle.py --rate 50 --workers 1 --backends postgres,mysql

For each backend (sqlite, postgres, mysql), a temporary project as a user has one: queue.py copied
in, a config.py whose database driver uses that backend with tables of this run's own name
(`trickle_<id>`, `_failed`, `_state`; dropped at the end) and nothing else set (poll, prefetch,
retry_after: the defaults), and jobs/Trickle.py, a job whose handle() only appends
"NUMBER LATENCY STARTED" to a file of its worker process (one O_APPEND write), LATENCY being
time.time() at the start of handle() minus the time.time() the pusher read just before its push()
call (so the push's own INSERT and commit are part of it).

For each worker count (--workers, default 1,2): the workers are started as users start them,
`python queue.py work` in the project folder, and once they are registered (queue.workers()), a
pusher process in the same folder (`import queue`, `from jobs.Trickle import Trickle`) pushes one
job at a time, the i-th due at start + i / rate (it never bunches up to catch up on a sleep that
overslept; it counts the pushes that began late). The first --warmup seconds (default 2) of
traffic are not counted. When every job has run (or after --drain-timeout), the workers get
SIGTERM. The table gives, per backend and worker count, the percentiles of push-to-start (ms),
the share over --slow ms (default 100), the pusher's achieved rate, its own push() time (part of
every latency) and the pushes that began over one interval late (behind a slow push), and how
the jobs split between the workers.

Exit status 0; 1 if a job ran twice or never ran; 2 if a backend could not be measured.
"""
import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import common

queue = common.import_queue()  # ROOT first: `import queue` must find our queue.py, not the stdlib's

BACKENDS = ("sqlite", "postgres", "mysql")

TRICKLE_JOB = '''"""A no-op job that records its push-to-start latency (written by benchmarks/trickle.py)."""
import os
import time

from queue import Queueable


class Trickle(Queueable):
    def __init__(self, number, record):
        self.number, self.record, self.pushed = number, record, None  # pushed: time.time() before push()

    def handle(self):
        started = time.time()
        fd = os.open(os.path.join(self.record, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{self.number} {started - self.pushed:.6f} {started:.6f}\\n".encode())
        finally:
            os.close(fd)
'''

# Run in the project folder (sys.path[0]): its queue.py and its jobs/, as an app pushes.
PUSHER = r'''
import json, sys, time
import queue
from jobs.Trickle import Trickle

rate, seconds, warmup, record = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
interval, first, count = 1.0 / rate, -int(round(warmup * rate)), int(round(seconds * rate))
calls, late = [], 0
start = time.monotonic() + 0.05
for i in range(first, count):
    wait = start + (i - first) * interval - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    elif -wait > interval and i >= 0:
        late += 1  # began over one interval late: this push waited for the previous ones
    if i == 0:
        measured = time.monotonic()
    job = Trickle(i, record)
    t = time.perf_counter()
    job.pushed = time.time()
    queue.push(job)
    if i >= 0:
        calls.append(time.perf_counter() - t)
elapsed = time.monotonic() - measured
calls.sort()
print(json.dumps({"pushed": count, "rate": count / elapsed if elapsed else 0.0, "late": late,
                  "push_p50_ms": calls[len(calls) // 2] * 1000,
                  "push_p99_ms": calls[max(0, -(-99 * len(calls) // 100) - 1)] * 1000, "push_max_ms": calls[-1] * 1000}))
'''


def say(*parts):
    """Progress on stderr (stdout is the table)."""
    print(f"[trickle {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def percentile(ordered, p):
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Project:
    """A temporary project on one backend: its folder, its tables, its workers."""

    def __init__(self, backend, args):
        self.backend, self.args = backend, args
        self.table = f"trickle_{uuid.uuid4().hex[:10]}"
        drivers = {"default": "database",
                   "database": {"connection": backend, "table": self.table, "failed_table": self.table + "_failed",
                                "state_table": self.table + "_state"}}
        self.folder = common.make_project(drivers, {backend: common.database(backend)}, prefix=f"queue-trickle-{backend}-",
                                          jobs={"Trickle": TRICKLE_JOB})
        self.env = common.project_env()
        queue.configure(os.path.join(self.folder, "config.py"))
        queue.driver().create_tables()

    def run(self, workers):
        """One measurement: `workers` worker processes, the pusher; return the row."""
        record = tempfile.mkdtemp(prefix=f"record-{workers}-", dir=self.folder)
        procs = []
        try:
            for i in range(workers):
                log = open(os.path.join(self.folder, f"worker-{workers}-{i}.log"), "w")
                procs.append((subprocess.Popen([sys.executable, "queue.py", "work"], cwd=self.folder, env=self.env,
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT), log))
            pids = {proc.pid for proc, _ in procs}
            common.wait_for(lambda: pids <= {w["pid"] for w in queue.workers()}, 60, "the workers did not register")
            time.sleep(0.5)  # idle, waiting for a job
            say(f"{self.backend}, {workers} worker(s): {self.args.rate:g} jobs/s for {self.args.seconds:g} s "
                f"(+{self.args.warmup:g} s warm-up)")
            pusher = subprocess.run([sys.executable, "-c", PUSHER, str(self.args.rate), str(self.args.seconds),
                                     str(self.args.warmup), record], cwd=self.folder, env=self.env,
                                    capture_output=True, text=True,
                                    timeout=self.args.seconds * 3 + self.args.warmup + 120)
            if pusher.returncode != 0:
                raise RuntimeError(f"the pusher failed: {pusher.stderr[-500:]}")
            pushed = json.loads(pusher.stdout.strip().splitlines()[-1])
            total = pushed["pushed"]
            try:
                common.wait_for(lambda: len(self.read(record, measured_only=True)) >= total,
                                self.args.drain_timeout, "every job has run", every=0.1)
            except RuntimeError as exc:
                say(f"  {exc}: counting what ran")
        finally:
            self.stop(procs)
        runs = self.read(record, measured_only=True)
        return self.row(workers, total, pushed, runs)

    def read(self, record, measured_only=False):
        """[(number, latency s, pid)] of every run recorded so far."""
        runs = []
        for name in os.listdir(record):
            pid = int(name.split(".")[0])
            with open(os.path.join(record, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and (not measured_only or int(parts[0]) >= 0):
                        runs.append((int(parts[0]), float(parts[1]), pid))
        return runs

    def row(self, workers, total, pushed, runs):
        numbers = [n for n, _, _ in runs]
        latencies = sorted(latency * 1000 for _, latency, _ in runs)
        per_worker = {}
        for _, _, pid in runs:
            per_worker[pid] = per_worker.get(pid, 0) + 1
        row = {"backend": self.backend, "workers": workers, "pushed": total, "ran": len(set(numbers)),
               "twice": len(numbers) - len(set(numbers)), "never": total - len(set(numbers)),
               "rate": pushed["rate"], "late_pushes": pushed["late"], "push_p50_ms": pushed["push_p50_ms"],
               "push_p99_ms": pushed["push_p99_ms"], "push_max_ms": pushed["push_max_ms"], "per_worker": sorted(per_worker.values(), reverse=True)}
        if latencies:
            row.update({f"p{p}": percentile(latencies, p) for p in (50, 90, 99)})
            row["max"] = latencies[-1]
            row["mean"] = statistics.fmean(latencies)
            row["over"] = sum(1 for v in latencies if v > self.args.slow) / len(latencies)
        return row

    def stop(self, procs):
        """SIGTERM every worker (it finishes its job and exits); SIGKILL one that does not."""
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log.close()
            if code != 0:
                say(f"  warning: a worker exited with {code} (logs in {self.folder}, kept with --keep)")

    def close(self):
        queue._close_drivers()  # this process's connections, before the DROP
        try:
            common.drop_tables(self.backend, self.table, self.table + "_failed", self.table + "_state")
        except Exception as exc:
            say(f"warning: could not drop the tables {self.table}*: {type(exc).__name__}: {exc}")
        if self.args.keep:
            say(f"project kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def table(rows, args):
    header = ("backend", "workers", "jobs", "pushed/s", "p50 ms", "p90 ms", "p99 ms", "max ms", f">{args.slow:g} ms",
              "never ran", "ran twice", "push() p50/p99/max ms", "late pushes", "jobs per worker")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["backend"], r.get("workers", "-"), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                          r["error"]])
            continue
        has = "p50" in r
        lines.append([r["backend"], r["workers"], r["pushed"], f"{r['rate']:.1f}",
                      *(f"{r[k]:.1f}" if has else "-" for k in ("p50", "p90", "p99", "max")),
                      f"{r['over'] * 100:.1f}%" if has else "-", r["never"], r["twice"],
                      f"{r['push_p50_ms']:.1f}/{r['push_p99_ms']:.1f}/{r['push_max_ms']:.0f}",
                      r["late_pushes"], "/".join(map(str, r["per_worker"]))])
    return common.table(f"queue.py {common.queue_py_id(queue)} trickle: {args.rate:g} jobs/s for {args.seconds:g} s "
                        f"(after {args.warmup:g} s of warm-up), one push() at a time, into `python queue.py work` at "
                        f"defaults; push-to-start = handle() start - time.time() before push(); {os.cpu_count()} CPUs",
                        header, [r["backend"] for r in rows], lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="push-to-start latency of `python queue.py work` under steady traffic")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs pushed per second (default 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of measured traffic (default 60)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of traffic before, not counted (default 2)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of sqlite, postgres, mysql (default: all)")
    parser.add_argument("--workers", default="1,2", help="worker counts, a comma list (default 1,2)")
    parser.add_argument("--slow", type=float, default=100.0, help="the 'slow' column's threshold, ms (default 100)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait, after the last push, for every job to run (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (records, worker logs)")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in args.backends:
        if name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(BACKENDS)}")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers: a comma list of whole numbers")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: each count must be at least 1")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0 or args.slow <= 0 or args.drain_timeout < 0:
        parser.error("--rate, --seconds and --slow must be positive; --warmup and --drain-timeout not negative")
    if args.rate * args.seconds < 1:
        parser.error("--rate x --seconds must be at least one job")
    return args


def main(argv=None):
    args = parse_args(argv)
    rows, status = [], 0
    for backend in args.backends:
        ok, why = common.available(backend)
        if not ok:
            say(f"{backend}: skipped ({why})")
            rows.append({"backend": backend, "error": f"skipped: {why}"})
            status = 2
            continue
        project = None
        try:
            project = Project(backend, args)
            for workers in args.workers:
                row = project.run(workers)
                rows.append(row)
                if row["never"] or row["twice"]:
                    status = max(status, 1)
        except Exception as exc:
            say(f"{backend}: failed: {type(exc).__name__}: {exc}")
            rows.append({"backend": backend, "error": f"failed: {type(exc).__name__}: {str(exc)[:100]}"})
            status = 2
        finally:
            if project is not None:
                project.close()
    if args.json:
        print(json.dumps({"rate": args.rate, "seconds": args.seconds, "warmup": args.warmup, "rows": rows}, indent=2))
    else:
        print(table(rows, args))
    return status


if __name__ == "__main__":
    sys.exit(main())
