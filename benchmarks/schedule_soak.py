#!/usr/bin/env python3
"""Periodic jobs under a soak: every `python queue.py work` process keeps the schedule
(queue.schedule, README "Periodic jobs"), so N workers race for every slot of every entry; each
slot must run once, none twice, none missed. Then what keeping the schedule costs an idle worker.

    python benchmarks/schedule_soak.py                                  # 4 workers, 20 entries, 10 minutes, sqlite
    python benchmarks/schedule_soak.py --minutes 0.5 --workers 2 --entries 3 --cost-seconds 10   # a short check
    python benchmarks/schedule_soak.py --driver redis --minutes 2       # 127.0.0.1:6379, keys of its own
    python benchmarks/schedule_soak.py --driver mysql --cost-seconds 0  # MariaDB, tables of its own, no cost part

1. The soak. A temporary project (common.make_project: queue.py copied in, config.py) whose
   jobs/__init__.py registers --entries entries, `queue.schedule(every=1, job=Tick(i), name=f"e{i}")`,
   and jobs/Tick.py, a job whose handle() only appends "ENTRY TIME PID" (time.time() at its start)
   to a file of its entry (one O_APPEND write). --workers `python queue.py work` processes (at their
   defaults, logging included: they keep the schedule and run the ticks) run for --minutes from
   the moment they are all registered, then get SIGTERM and are waited for.
   Counted per entry from the files: a run's slot is int(its time) (every=1: the slots are the
   whole seconds); its lag is the time past that whole second (p50/p99/max: a run lagging by a
   second or more would be counted in the next slot); a duplicate is a second run in the same
   slot; a missed slot is a whole second between the entry's first and last run without a run.
   `python queue.py schedule` gives the pushes per entry (its `runs` column): pushed minus ran are
   the jobs still queued at the SIGTERM (a few at most). The CPU of the workers over the soak
   (utime + stime of /proc/PID/stat) is given too, as % of one core per worker.
2. The scheduler's cost (--cost-seconds, default 60; 0 skips it). Another temporary project with
   --cost-entries entries (default 20), every=1, each pushed to queue "parked", which no worker
   reads. One idle worker at a time, each measured over --cost-seconds after a 3 s warm-up:
   (a) `work --no-schedule` (the entries are registered but it keeps no schedule: the idle floor),
   (b) `work` (it keeps the schedule and pushes 20 jobs a second onto "parked", runs none).
   CPU % of one core of each, and (b) - (a): what keeping the schedule costs. (b)'s pushes are
   counted on "parked" (queue.status) against the entries x seconds expected.

Backends (--driver): sqlite (default; the database driver on a file in the project), mysql (the
database driver on MariaDB 127.0.0.1:3306 root/"" db test, tables `soak_<id>*` of this run's own,
dropped at the end), redis (the redis driver on 127.0.0.1:6379, a key prefix `soak_<id>:` of this
run's own, its keys deleted at the end).

Prints the tables and `RESULT: OK` or `RESULT: FAIL (...)`: FAIL on any duplicate, any missed slot,
an entry that never ran, a lag of a second or more (slots not telling), or a worker that exited
before its SIGTERM. Exit status 0 on OK, 1 on FAIL, 2 if the run could not be made.
"""
import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import common

queue = common.import_queue()  # ROOT first: `import queue` must find our queue.py, not the stdlib's

DRIVERS = ("sqlite", "mysql", "redis")
PARKED = "parked"   # the queue of the cost project's entries: no worker reads it
WARMUP = 3.0        # seconds between a cost worker's registration and its measurement
CLK_TCK = os.sysconf("SC_CLK_TCK")

TICK_JOB = '''"""A periodic job that records when it ran (written by benchmarks/schedule_soak.py)."""
import os
import time

from queue import Queueable

RECORD = {record!r}


class Tick(Queueable):
    def __init__(self, entry):
        self.entry = entry

    def handle(self):
        started = time.time()
        fd = os.open(os.path.join(RECORD, f"e{{self.entry}}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{{self.entry}} {{started:.6f}} {{os.getpid()}}\\n".encode())
        finally:
            os.close(fd)
'''

JOBS_INIT = '''"""The schedule of a soak project (written by benchmarks/schedule_soak.py)."""
import queue

from jobs.Tick import Tick

for i in range({entries}):
    queue.schedule(every=1, job=Tick(i), name=f"e{{i}}"{extra})
'''


def say(*parts):
    """Progress on stderr (stdout is the tables)."""
    print(f"[schedule_soak {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def percentile(ordered, p):
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_ticks(pid):
    """utime + stime of a live process, in clock ticks (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted after "pid (comm)"


class Project:
    """A temporary project on one backend: folder, config, tables or keys, worker processes."""

    def __init__(self, args, kind, entries, parked=False):
        self.args, self.kind = args, kind
        self.id = uuid.uuid4().hex[:10]
        self.table = f"soak_{self.id}"
        self.prefix = f"soak_{self.id}:"
        if args.driver == "redis":
            drivers = {"default": "redis", "redis": dict(common.REDIS, prefix=self.prefix)}
            databases = {}
        else:
            drivers = {"default": "database",
                       "database": {"connection": args.driver, "table": self.table,
                                    "failed_table": self.table + "_failed", "state_table": self.table + "_state"}}
            databases = {args.driver: common.database(args.driver)}
        self.folder = tempfile.mkdtemp(prefix=f"queue-soak-{kind}-{args.driver}-")
        self.record = os.path.join(self.folder, "record")
        os.makedirs(self.record)
        extra = f", queue={PARKED!r}" if parked else ""
        common.make_project(drivers, databases, folder=self.folder,
                            jobs_init=JOBS_INIT.format(entries=entries, extra=extra),
                            jobs={"Tick": TICK_JOB.format(record=self.record)})
        self.env = common.project_env()
        queue.configure(os.path.join(self.folder, "config.py"))
        if args.driver != "redis":
            queue.driver().create_tables()
        self.procs = []  # (Popen, log file, name)

    def start(self, *options, name="worker"):
        log = open(os.path.join(self.folder, f"{name}-{len(self.procs)}.log"), "w")
        proc = subprocess.Popen([sys.executable, "queue.py", "work", *options], cwd=self.folder, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, log, name))
        return proc

    def wait_registered(self, procs, timeout=60):
        pids = {p.pid for p in procs}
        common.wait_for(lambda: pids <= {w["pid"] for w in queue.workers()}, timeout,
                        f"{len(pids)} worker(s) did not register")

    def stop(self, procs):
        """SIGTERM (each finishes its job and exits), SIGKILL after 30 s; {pid: exit status}."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for proc in procs:
            try:
                codes[proc.pid] = proc.wait(30)
            except subprocess.TimeoutExpired:
                say(f"  worker {proc.pid} still running 30 s after SIGTERM: SIGKILL")
                proc.kill()
                codes[proc.pid] = proc.wait()
        for proc, log, _ in self.procs:
            if proc in procs:
                log.close()
        return codes

    def pushed(self):
        """{entry name: pushes} from `python queue.py schedule` (its last column, `runs`)."""
        out = subprocess.run([sys.executable, "queue.py", "schedule"], cwd=self.folder, env=self.env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"`queue.py schedule` failed: {out.stderr.strip()[-300:]}")
        rows = {}
        for line in out.stdout.splitlines():
            parts = line.split()
            if parts and re.fullmatch(r"e\d+", parts[0]) and parts[-1].isdigit():
                rows[parts[0]] = int(parts[-1])
        return rows

    def close(self):
        for proc, log, _ in self.procs:  # a run that broke off: nothing of ours left running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        queue._close_drivers()  # this process's connections, before the DROP
        try:
            if self.args.driver == "mysql":
                common.drop_tables("mysql", self.table, self.table + "_failed", self.table + "_state")
            elif self.args.driver == "redis":
                import redis
                client = redis.Redis(**common.REDIS, socket_timeout=10)
                keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
                for i in range(0, len(keys), 500):
                    client.delete(*keys[i:i + 500])
                left = sum(1 for _ in client.scan_iter(match=self.prefix + "*", count=1000))
                client.close()
                if left:
                    say(f"warning: {left} key(s) {self.prefix}* left in Redis")
        except Exception as exc:
            say(f"warning: could not clean up {self.table}* / {self.prefix}*: {type(exc).__name__}: {exc}")
        if self.args.keep:
            say(f"project kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


# 1. the soak ##################################################################################
def soak(args):
    """Run the soak; return (summary rows, per-entry rows, failures)."""
    project = Project(args, "soak", args.entries)
    try:
        procs = [project.start() for _ in range(args.workers)]
        project.wait_registered(procs)
        began = time.time()
        ticks0 = {p.pid: cpu_ticks(p.pid) for p in procs}
        mono0 = time.monotonic()
        seconds = args.minutes * 60
        say(f"{args.driver}: {args.workers} workers {', '.join(str(p.pid) for p in procs)} keep {args.entries} "
            f"entries (every=1) for {seconds:g} s; project {project.folder}")
        deaths = {}
        next_report = mono0 + 60
        while time.monotonic() - mono0 < seconds:
            time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - mono0))))
            for p in procs:
                if p.pid not in deaths and p.poll() is not None:
                    deaths[p.pid] = (p.returncode, time.time() - began)
                    say(f"  worker {p.pid} exited with {p.returncode} after {time.time() - began:.0f} s")
            if time.monotonic() >= next_report:
                next_report += 60
                say(f"  {time.monotonic() - mono0:.0f} s: {sum(len(r) for r in read(project.record).values())} runs")
        ticks1 = {p.pid: cpu_ticks(p.pid) for p in procs}
        wall = time.monotonic() - mono0
        ended = time.time()
        codes = project.stop(procs)
        time.sleep(0.2)
        pushed = project.pushed()
        left = queue.status(queues=[queue.driver().default_queue]).get(queue.driver().default_queue, {})
        runs = read(project.record)
    finally:
        project.close()
    cpu = {pid: (ticks1[pid] - ticks0[pid]) / CLK_TCK / wall * 100 for pid in ticks0
           if ticks0[pid] is not None and ticks1[pid] is not None}
    return analyse(args, runs, pushed, left, began, ended, cpu, codes, deaths)


def read(record):
    """{entry: [(time, pid)]} of every run recorded so far (complete lines only)."""
    runs = {}
    for name in os.listdir(record):
        with open(os.path.join(record, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and line.endswith("\n"):
                    runs.setdefault(int(parts[0]), []).append((float(parts[1]), int(parts[2])))
    return runs


def analyse(args, runs, pushed, left, began, ended, cpu, codes, deaths):
    failures, entries = [], []
    lags, per_pid = [], {}
    for i in range(args.entries):
        times = sorted(runs.get(i, []))
        if not times:
            failures.append(f"e{i} never ran")
            entries.append({"entry": f"e{i}", "runs": 0, "pushed": pushed.get(f"e{i}")})
            continue
        slots = {}
        for t, pid in times:
            slots[int(t)] = slots.get(int(t), 0) + 1
            per_pid[pid] = per_pid.get(pid, 0) + 1
        lag = sorted((t - int(t)) * 1000 for t, _ in times)
        lags.extend(lag)
        first, last = min(slots), max(slots)
        missed = sorted(s for s in range(first, last + 1) if s not in slots)
        dups = sum(n - 1 for n in slots.values() if n > 1)
        entries.append({"entry": f"e{i}", "runs": len(times), "slots": len(slots), "dups": dups, "missed": missed,
                        "first": first - began, "last": ended - last, "pushed": pushed.get(f"e{i}"),
                        "lag50": percentile(lag, 50), "lag99": percentile(lag, 99), "lagmax": lag[-1],
                        "pids": len({pid for _, pid in times})})
    ran = [e for e in entries if e["runs"]]
    dups = sum(e["dups"] for e in ran)
    missed = sum(len(e["missed"]) for e in ran)
    lags.sort()
    if dups:
        failures.append(f"{dups} duplicate run(s)")
    if missed:
        failures.append(f"{missed} missed slot(s)")
    if lags and lags[-1] >= 1000:
        failures.append("a run lagged its slot by a second or more")
    for pid, (code, at) in sorted(deaths.items()):
        failures.append(f"worker {pid} exited with {code} {at:.0f} s into the soak")
    bad_exit = {pid: code for pid, code in codes.items() if code != 0 and pid not in deaths}
    if bad_exit:
        failures.append(f"worker(s) exited with {bad_exit} after SIGTERM")
    total_runs = sum(e["runs"] for e in entries)
    total_pushed = sum(v for v in pushed.values()) if pushed else None
    counts = [e["runs"] for e in entries]
    wall = ended - began
    lag_text = f"{percentile(lags, 50):.1f} / {percentile(lags, 99):.1f} / {lags[-1]:.1f} ms" if lags else "-"
    split = "/".join(str(n) for n in sorted(per_pid.values(), reverse=True))
    cpu_text = " / ".join(f"{v:.1f}" for v in sorted(cpu.values(), reverse=True)) + " %"
    summary = [
        ("soak", "wall (from all workers registered to SIGTERM)", f"{wall:.1f} s",
         f"{args.workers} workers, {args.entries} entries every=1"),
        ("soak", "runs (all entries)", total_runs, f"{total_runs / max(1e-9, wall):.1f}/s; ideal about {args.entries}/s"),
        ("soak", "runs per entry min / max", f"{min(counts)} / {max(counts)}",
         "whole seconds between first and last run + 1 = runs when none missed"),
        ("soak", "duplicated slots", dups, "must be 0"),
        ("soak", "missed slots", missed, "must be 0 (between an entry's first and last run)"),
        ("soak", "first run after start, max over entries", f"{max(e['first'] for e in ran):.1f} s" if ran else "-",
         "slot second - registration time"),
        ("soak", "pushed (`queue.py schedule` runs) / ran", f"{total_pushed} / {total_runs}" if pushed else "-",
         f"{left.get('ready', '?')} ready, {left.get('reserved', '?')} reserved at the end (queued at the SIGTERM)"),
        ("soak", "lag past the whole second p50 / p99 / max", lag_text,
         "handle() start - int(time); scheduler wakes at +5 ms"),
        ("soak", "runs per worker", split, f"{len(per_pid)} worker(s) ran ticks"),
        ("soak", "worker CPU (utime+stime) per worker", cpu_text, "of one core, over the soak (schedule + ticks + logging)"),
    ]
    return summary, entries, failures


def entry_table(args, entries):
    header = ("entry", "runs", "pushed", "dups", "missed", "lag p50 ms", "p99 ms", "max ms", "workers", "missed seconds")
    lines = []
    for e in entries:
        if not e["runs"]:
            lines.append([e["entry"], 0, e["pushed"], "-", "-", "-", "-", "-", "-", "never ran"])
            continue
        lines.append([e["entry"], e["runs"], e["pushed"] if e["pushed"] is not None else "-", e["dups"], len(e["missed"]),
                      f"{e['lag50']:.1f}", f"{e['lag99']:.1f}", f"{e['lagmax']:.1f}", e["pids"],
                      ",".join(str(s) for s in e["missed"][:5]) + (" ..." if len(e["missed"]) > 5 else "")])
    return common.table(f"per entry ({args.driver}, {args.workers} workers)", header, [0] * len(lines), lines)


# 2. the scheduler's cost ######################################################################
def cost(args):
    """CPU % of one idle worker without and with the schedule; return summary rows."""
    project = Project(args, "cost", args.cost_entries, parked=True)
    rows = []
    try:
        measured = {}
        for label, options in (("a", ("--no-schedule",)), ("b", ())):
            before = queue.status(queues=[PARKED]).get(PARKED, {}).get("ready") or 0
            born = time.monotonic()
            proc = project.start(*options, name=f"cost-{label}")
            project.wait_registered([proc])
            time.sleep(WARMUP)
            t0, m0 = cpu_ticks(proc.pid), time.monotonic()
            say(f"cost ({label}): worker {proc.pid} `{' '.join(('work',) + options)}`, {args.cost_seconds:g} s")
            time.sleep(args.cost_seconds)
            t1, m1 = cpu_ticks(proc.pid), time.monotonic()
            alive = proc.poll() is None
            codes = project.stop([proc])
            life = time.monotonic() - born
            after = queue.status(queues=[PARKED]).get(PARKED, {}).get("ready") or 0
            if not alive or t0 is None or t1 is None:
                raise RuntimeError(f"cost worker ({label}) exited early with {codes.get(proc.pid)}")
            measured[label] = ((t1 - t0) / CLK_TCK / (m1 - m0) * 100, t1 - t0, m1 - m0, after - before, life)
    finally:
        project.close()
    (a, ta, wa, pa, _), (b, tb, wb, pb, life) = measured["a"], measured["b"]
    rows.append(("cost", "(a) idle worker, --no-schedule", f"{a:.2f} %",
                 f"{ta} ticks in {wa:.1f} s; pushed {pa} (0 expected)"))
    rows.append(("cost", f"(b) idle worker keeping {args.cost_entries} entries", f"{b:.2f} %",
                 f"{tb} ticks in {wb:.1f} s; pushed {pb} onto {PARKED!r} in its {life:.1f} s of life "
                 f"(start-up included; at most {args.cost_entries * math.ceil(life)})"))
    rows.append(("cost", "scheduler's cost (b) - (a)", f"{b - a:.2f} %",
                 f"of one core; {(b - a) / 100 * 1000 / max(1, args.cost_entries):.2f} ms CPU per entry-slot"))
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="periodic jobs under a soak: every slot once, none twice, none missed")
    parser.add_argument("--workers", type=int, default=4, help="`python queue.py work` processes (default 4)")
    parser.add_argument("--entries", type=int, default=20, help="schedule entries, every=1 each (default 20)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--driver", choices=DRIVERS, default="sqlite",
                        help="sqlite or mysql (the database driver's connection), or redis (default sqlite)")
    parser.add_argument("--cost-seconds", type=float, default=60.0,
                        help="seconds of each idle-worker CPU measurement (default 60; 0 skips the cost part)")
    parser.add_argument("--cost-entries", type=int, default=20, help="entries of the cost project (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (records, worker logs)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.entries < 1 or args.cost_entries < 1:
        parser.error("--workers, --entries and --cost-entries must be at least 1")
    if args.minutes <= 0 or args.cost_seconds < 0:
        parser.error("--minutes must be positive, --cost-seconds not negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    ok, why = common.available(args.driver)  # sqlite: always; mysql, redis: the client package and the server
    if not ok:
        say(f"{args.driver}: cannot run ({why})")
        return 2
    try:
        summary, entries, failures = soak(args)
        if args.cost_seconds > 0:
            summary += cost(args)
    except Exception as exc:
        say(f"failed: {type(exc).__name__}: {exc}")
        return 2
    print(common.table(f"queue.py {common.queue_py_id(queue)} schedule soak: {args.driver}, {args.workers} workers, "
                       f"{args.entries} entries every=1, {args.minutes:g} min; {os.cpu_count()} CPUs, "
                       f"load {os.getloadavg()[0]:.2f}", ("figure", "value", "note"),
                       [r[0] for r in summary], [r[1:] for r in summary]))
    print()
    print(entry_table(args, entries))
    print()
    print("RESULT: OK" if not failures else f"RESULT: FAIL ({'; '.join(failures)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
