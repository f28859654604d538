#!/usr/bin/env python3
"""Fault injection for the async driver's multiprocess mode: one program pushes numbered jobs
into `DRIVERS["async"] = {"mode": "multiprocess", "workers": 2}` while a thread of it SIGKILLs a
random child of the process pool every second; counted from the jobs' own record, as chaos.py
counts (its helpers and benchmarks/chaos/chaosjobs.py's jobs are shared).

    python benchmarks/chaos/async_chaos.py --jobs 10000
    python benchmarks/chaos/async_chaos.py --jobs 500 --seed 7
    python benchmarks/chaos/async_chaos.py --jobs 500 --skip alarm,itimer,thread   # leave kinds out

The async driver runs each attempt in a child of a concurrent.futures process pool of the
pushing program and settles it in the program (queue.py: AsyncDriver._submit, _attempt_in_child,
_settle_child): a child that dies breaks the whole pool (every attempt in it fails with
BrokenProcessPool and counts as a failed attempt; the pool's other child is terminated with
SIGTERM), and the next attempt gets a new pool. A SIGKILL of the program itself loses its pending
jobs by design (README: the async driver), so the program is never killed.

What one run does, in a temporary project (queue.py copied in, config.py with the async driver as
default and a failed store on --connection, default sqlite; the program's working directory):
1. pushes N numbered jobs (chaos.make_jobs, without long ones: short sleeps, jobs that raise once,
   always raise, run past their timeout once or always) and --poison P (default 2% of N) poison
   jobs spread among them, cycling through the kinds that apply to a child process: chaosjobs.POISON
   (failed() calling sys.exit(), __setstate__ raising SystemExit or sleeping past the timeout,
   odd exceptions, a 10 MB one and one with a NUL, forks, SIGTERM ignored or blocked, alarms and
   timers left behind, the alarm cancelled, a thread left running, an async handle() blocking its
   loop, closed stdout/stderr, a __repr__ that raises) plus SIGALRM blocked past the timeout
   (blockalarm), sys.exit() (exit) and os._exit() in the child (die);
2. a thread SIGKILLs a random live child of the current pool every --kill-every seconds (1), and
   watches every child the pools start (when it ended; its exit status once its pool reaped it),
   until every job is done or in the failed store;
3. waits for the driver (queue.driver().join(), bounded), shuts the pool down (a shutdown that
   does not end within 30 s is a fault: a child kept alive), and counts;
4. unless --skip thread: the exit check (see AsyncChaos.exit_check): a small program pushes one job
   that leaves a non-daemon thread in its pool child, joins and exits; it must exit within 30 s.

How a child ended: SIGKILLed by this program; ended with its pool when the pool broke (SIGTERM
by the pool, or SIGKILL by queue.py, which ends a broken pool's children); os._exit (the die kind);
left to the end in a pool that never broke and was not the last (two threads of the program made a
pool at once and one was dropped: counted, not a limit); shut down with the last pool (status 0, or 1: a child forked by a
thread other than the main one, as queue.py's later pools are, fails threading._shutdown() with
"cannot join current thread" as it exits); outlived its broken pool: it exited (0 or 1) before
the end, or still ran then, although its pool broke: a job had left SIGTERM ignored or blocked in
it, so the pool's SIGTERM did not end it and it went on with what was in its pool's call queue
(attempts the program had already counted failed and started again elsewhere); died of a
signal of its own (SIGALRM of an alarm a job left, ...).

Must be 0 (exit status 1 otherwise, RESULT: FAIL): jobs lost (neither done nor in the failed
store); double runs not explained by the child that completed the run: it ended after the run and
before it began anything else (SIGKILLed by this program, or terminated with its broken pool), or
its pool broke then (a child that outlived it), or one of the runs ended after its pool had
broken (the pool fails every attempt under way as it breaks, and the program starts them again:
a run that still ended, in a child the pool's SIGTERM had not reached yet or that outlived its
pool, ran for nothing); failed() run more than once (it runs in the program, which nobody kills); a job in
the failed store twice; a job that must fail completed, or one that must complete failed for
another reason than the deaths of its children (BrokenProcessPool after every attempt died);
a `slow` job done at its first attempt or a poison attempt past its timeout + 3 s; a poison job
with the wrong outcome (chaosjobs: `expect`, `failed_as`; BrokenProcessPool counts as
MaxAttemptsExceeded does for a worker; queue.py records an exception raised after the timeout as
JobTimeout, so a job that ran to its end past the timeout shows as overran, not wrong); failed
records over 70 KB or holding a NUL; pool children that died of a job (not os._exit by `die`, not
our SIGKILL: a stray alarm's SIGALRM, say) or outlived their broken pool (blamed on the last job of
a kind that ignores or blocks SIGTERM it ran); signal state a job found left behind in its child
by an earlier one (inherited.log: SIGTERM ignored or blocked, SIGALRM blocked, a timer pending);
fork children left running; a pool shutdown that hung; a program that did not exit (the exit
check); a stall: no attempt began or ended for 60 s while jobs were left (the run gives up then,
and logs what the driver held: its counts, each unbroken pool's attempts under way and whether
their children live).
Counted, not limits: attempts cut because the other child of their pool died, runs of one job in
two processes at once (an attempt's retry begins in the new pool before the old child is gone).
"""
import argparse
import bisect
import collections
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chaos  # noqa: E402  (sets up sys.path: benchmarks/ for common, ROOT's queue.py, chaosjobs)
from chaos import bad_record, failed_rows, job_number, our_process, read_extra, read_record  # noqa: E402

common, queue, chaosjobs = chaos.common, chaos.queue, chaos.chaosjobs

KINDS = [*chaosjobs.POISON, chaosjobs.BlockAlarm, chaosjobs.Exit, chaosjobs.Die]
SHUTDOWN_LIMIT = 30.0  # seconds the pool's shutdown may take after join()
STALL = 60.0  # seconds without an attempt beginning or ending (jobs left) after which the run is a stall
TERM_KINDS = ("sigign", "sigmask", "sigignrun")  # kinds that leave a child deaf to its pool's SIGTERM
POISON_COLUMNS = ("pushed", "done", "failed", "lost", "wrong", "cut", "done twice", "failed twice", "failed() > 1",
                  "child deaths", "state left behind", "stray children", "overran", "bad record", "as expected")
MUST_BE_ZERO = ("lost", "wrong", "failed twice", "failed() > 1", "child deaths", "state left behind",
                "stray children", "overran", "bad record")
BROKEN = "BrokenProcessPool"


def say(*parts):
    print(f"[async-chaos {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


class Project:
    """A temporary project folder: queue.py, config.py (the async driver, multiprocess, 2 children;
    the failed store on --connection), the record. chaos.make_jobs/make_poison read `args`,
    `record`, `queue` and `long_queue` of it."""

    def __init__(self, args):
        self.args = args
        self.folder = tempfile.mkdtemp(prefix="queue-async-chaos-")
        self.record = os.path.join(self.folder, "record")
        os.makedirs(self.record)
        self.queue = self.long_queue = "default"
        tag = uuid.uuid4().hex[:8]
        self.table = f"async_chaos_{tag}"
        drivers = {"default": "async",
                   "async": {"mode": "multiprocess", "workers": args.children, "attempts": 5},
                   "database": {"connection": args.connection, "table": self.table,
                                "failed_table": self.table + "_failed", "state_table": self.table + "_state"}}
        databases = {name: common.database(name) for name in ("sqlite", "mysql", "postgres")}
        common.make_project(drivers, databases, folder=self.folder)
        self.config_path = os.path.join(self.folder, "config.py")

    def path(self, name):
        return os.path.join(self.record, name)


class Children:
    """The pools' children: each is registered as its pool starts it (ProcessPoolExecutor.
    _spawn_process, wrapped in this program: a pool that breaks within milliseconds is not missed),
    with its pool and its Process object (for its exit status once its pool has reaped it); a
    thread looks every 20 ms which have ended (/proc entry gone or a zombie). Every `every`
    seconds (0: never) it SIGKILLs a random live child of the current pool, until stop_killing()."""

    def __init__(self, driver, rng, every):
        self.driver, self.rng, self.every = driver, rng, every
        self.procs = {}    # pid -> multiprocessing Process
        self.seen = {}     # pid -> time first seen
        self.dead = {}     # pid -> time it was first seen dead
        self.killed = {}   # pid -> time of our SIGKILL
        self.pool_of = {}  # pid -> the number of the pool it belonged to (pools in the order seen)
        self.pools = []
        self.killing = every > 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="async-chaos-children", daemon=True)
        import concurrent.futures.process as cfp
        self._cfp, self._spawn = cfp, cfp.ProcessPoolExecutor._spawn_process
        watcher = self

        def spawn_process(pool):
            watcher._spawn(pool)
            watcher._register(pool, dict(pool._processes))
        cfp.ProcessPoolExecutor._spawn_process = spawn_process

    def _register(self, pool, processes):
        now = time.time()
        with self.lock:
            if all(p is not pool for p in self.pools):
                self.pools.append(pool)
            index = next(i for i, p in enumerate(self.pools) if p is pool)
            for pid, proc in processes.items():
                if pid not in self.procs:
                    self.procs[pid], self.seen[pid], self.pool_of[pid] = proc, now, index

    def start(self):
        self.thread.start()

    def stop_killing(self):
        self.killing = False

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self._look()
        self._cfp.ProcessPoolExecutor._spawn_process = self._spawn

    def current(self):
        """{pid: Process} of the driver's current pool (empty while it has none)."""
        pool = self.driver._pool
        if pool is None:
            return {}
        for _ in range(3):
            try:
                return dict(pool._processes or {})
            except RuntimeError:  # changed while copied
                continue
        return {}

    @staticmethod
    def ended(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")

    def _look(self):
        now = time.time()
        pool = self.driver._pool
        if pool is not None:
            self._register(pool, self.current())  # (all are registered at their start already)
        with self.lock:
            pids = list(self.procs)
        for pid in pids:
            if pid not in self.dead and self.ended(pid):
                self.dead[pid] = now

    def _run(self):
        next_kill = time.monotonic() + self.every
        while not self.stopping.wait(0.02):
            self._look()
            if self.killing and time.monotonic() >= next_kill:
                next_kill = time.monotonic() + self.every
                live = [pid for pid in self.current() if pid not in self.dead and not self.ended(pid)]
                if live:
                    pid = self.rng.choice(sorted(live))
                    self.killed[pid] = time.time()
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def exit_status(self, pid):
        """The child's exit status (negative: the signal), None while it is not reaped."""
        proc = self.procs.get(pid)
        try:
            return None if proc is None else proc.exitcode
        except Exception:
            return None

    def live(self):
        return [pid for pid in self.procs if not self.ended(pid)]


class AsyncChaos:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.project = Project(args)
        self.timings = {}
        self.shutdown_hung = False
        self.killed_at_the_end = []
        self.final_pool, self.shutdown_began = None, None
        self.joined, self.stalled = True, None

    def run(self):
        args, project = self.args, self.project
        os.chdir(project.folder)  # the children's too: chaos.our_process() knows fork children by it
        say(f"project {project.folder}")
        queue.configure(project.config_path)
        store = queue.driver("database")
        if args.connection in ("mysql", "postgres"):
            store.create_tables()
        else:
            store.stats()  # creates the SQLite tables
        driver = queue.driver()
        assert driver.name == "async" and driver.mode == "multiprocess", driver
        items, jobs = chaos.make_jobs(args.jobs, self.rng, project, longs=0)
        poison, poison_jobs = chaos.make_poison(args.poison, args.jobs, self.rng, project, kinds=KINDS)
        self.items, self.poison = items, poison
        pushed, pushed_jobs = chaos.spread(items, jobs, poison, poison_jobs, self.rng)
        self.children = children = Children(driver, random.Random(f"{args.seed}:kill"), args.kill_every)
        children.start()
        started = self.timings["start"] = time.time()
        for i in range(0, len(pushed_jobs), chaos.BATCH):
            queue.push(*pushed_jobs[i:i + chaos.BATCH])
        self.timings["push"] = time.time() - started
        say(f"pushed {len(jobs)} jobs and {len(poison)} poison jobs in {self.timings['push']:.1f} s")

        expected = {item.number for item in items + poison}
        done_tail, done_numbers = chaos.Tail(project.path("done.log")), set()
        runs_tail = chaos.Tail(project.path("runs.log"))
        deadline = time.monotonic() + args.timeout
        last_check, activity, settled_count = 0.0, time.monotonic(), 0
        self.stalled = None
        while True:
            time.sleep(0.1)
            done_numbers.update(int(line.split()[0]) for line in done_tail.read())
            if runs_tail.read():
                activity = time.monotonic()
            if time.monotonic() - last_check < 0.5:
                continue
            last_check = time.monotonic()
            settled = done_numbers | {job_number(row[1]) for row in failed_rows(project)}
            if len(settled) != settled_count:
                settled_count, activity = len(settled), time.monotonic()
            if expected <= settled:
                say(f"every job is done or failed after {time.time() - started:.1f} s")
                break
            if time.monotonic() > deadline:
                say(f"gave up: the run exceeded --timeout {args.timeout:g} s")
                break
            if time.monotonic() - activity > STALL:
                self.stalled = self._driver_state(driver)
                say(f"gave up: no attempt began or ended for {STALL:g} s while {len(expected - settled)} jobs were "
                    f"left; the driver: {self.stalled}")
                break
        children.stop_killing()
        joined = driver.join(timeout=10.0 if self.stalled else max(10.0, deadline - time.monotonic()))
        self.timings["run"] = time.time() - started
        self.joined = joined
        if not joined:
            say("the driver did not finish its jobs (join timed out)")
        self._shut_down(driver)
        children.stop()
        self.ended = time.time()
        self.exit_check()
        return self.count()

    def exit_check(self):
        """The thread kind's harm shows when the program exits: the pool's shutdown waits for its
        children, and a child waits for the non-daemon threads its jobs left (multiprocessing's
        bootstrap calls threading._shutdown()), unless it was forked by a thread other than the
        main one (then that call fails at once: how the children of this run's later pools,
        started from the pool's own threads, escape it). So a small program, pushing from its main
        thread as programs do, pushes one thread job and one short job, joins and exits; it must
        exit within SHUTDOWN_LIMIT seconds (else it is killed, with its children)."""
        self.exit_seconds = self.exit_hung = None
        if "thread" in self.args.skip:
            return
        record = os.path.join(self.project.folder, "exit-check")
        os.makedirs(record, exist_ok=True)
        code = (f"import sys; sys.path.append({HERE!r})\n"
                "import queue, chaosjobs\n"
                f"queue.push(chaosjobs.LeaveThread(0, {record!r}), chaosjobs.Work(1, {record!r}))\n"
                "queue.driver().join()\n")
        began = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=self.project.folder, start_new_session=True,
                                env=common.project_env(QUEUE_CONFIG=self.project.config_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(SHUTDOWN_LIMIT)
            self.exit_hung = 0
        except subprocess.TimeoutExpired:
            self.exit_hung = 1
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.exit_seconds = time.monotonic() - began
        done = os.path.exists(os.path.join(record, "done.log")) and len(open(os.path.join(record, "done.log")).readlines())
        self.exit_done = done or 0
        say(f"exit check: a program whose job left a thread in its pool child ran {self.exit_done} of 2 jobs and "
            + ("did not exit" if self.exit_hung else "exited") + f" after {self.exit_seconds:.1f} s")

    def _driver_state(self, driver):
        """What the driver holds when the run stalls: its counts, and each unbroken pool's attempts
        under way with its children (alive, or dead: a zombie, or gone)."""
        state = {"pending": driver._pending, "in children": driver._in_children, "waiting": len(driver._waiting),
                 "timers": len(driver._timers), "pools": []}
        for pool in self.children.pools:
            if getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False):
                continue
            kids = {pid: "dead" if Children.ended(pid) else "alive" for pid in list(pool._processes or {})}
            state["pools"].append({"current": pool is driver._pool, "attempts under way": len(pool._pending_work_items),
                                   "children": kids})
        return state

    def _shut_down(self, driver):
        """Shut the pool down (as the interpreter's exit would) in a thread; one that does not end
        within SHUTDOWN_LIMIT seconds is a fault: its children are SIGKILLed then."""
        pool = self.final_pool = driver._pool
        self.shutdown_began = time.time()
        if pool is None:
            return
        began = time.monotonic()
        thread = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, daemon=True)
        thread.start()
        thread.join(SHUTDOWN_LIMIT)
        self.timings["shutdown"] = time.monotonic() - began
        if thread.is_alive():
            self.shutdown_hung = True
            for pid in self.children.live():
                self.killed_at_the_end.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            thread.join(10)
        driver._pool = None

    # counting ##################################################################################
    def count(self):
        project, ch = self.project, self.children
        done, runs = read_record(project)
        rows = failed_rows(project)
        calls, loads, forks, inherited = read_extra(project)
        program = os.getpid()
        status_of = {pid: ch.exit_status(pid) for pid in ch.procs}
        dead = dict(ch.dead)

        # fork children of the fork kinds (as chaos.py counts them)
        kids = {child: number for what, number, child, _, _, _ in forks if what == "child"}
        strays = {child: at for what, _, child, _, at, _ in forks if what == "stray"}
        left_alive = [child for child in kids if our_process(child, project.folder)]
        for child in left_alive:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

        failed_by_number, bad_records = collections.defaultdict(list), {}
        for name, payload, summary, record in rows:
            number = job_number(payload)
            if number is not None:
                failed_by_number[number].append(summary)
            wrong = bad_record(record)
            if wrong:
                bad_records[number if number is not None else name] = wrong

        spans_by_number = collections.defaultdict(list)
        starts_by_pid = collections.defaultdict(list)
        events = collections.defaultdict(list)
        for number, pid, attempt, start, end, outcome in runs:
            spans_by_number[number].append((start, dead.get(pid, self.ended) if end is None else end, pid, outcome))
            starts_by_pid[pid].append(start)
            events[pid].append((start, "start", number, outcome))
        for pid in starts_by_pid:
            starts_by_pid[pid].sort()
            events[pid].sort()

        expected = {item.number: item for item in self.items + self.poison}
        poisoned = {item.number for item in self.poison}
        kind_of = {number: item.kind for number, item in expected.items()}
        cls_of = {cls.kind: cls for cls in KINDS}

        # how each child ended. A child whose pool broke is SIGTERMed by the pool (status -15);
        # one in which a job left SIGTERM ignored or blocked goes on: it runs what was already in
        # its pool's call queue (attempts the program has already counted as failed and started
        # again elsewhere), then exits (0, or 1: a child forked by a thread other than the main
        # one fails threading._shutdown(), "cannot join current thread", as it exits)
        final = next((i for i, pool in enumerate(ch.pools) if pool is self.final_pool), None)
        members = collections.defaultdict(list)
        for pid in ch.procs:
            members[ch.pool_of.get(pid)].append(pid)
        shutdown_at = self.shutdown_began - 0.5

        last_line = {}  # pid -> time of its last start or end line (a die job's end line: its os._exit)
        for number, pid, attempt, start, end, outcome in runs:
            last_line[pid] = max(last_line.get(pid, 0.0), start, end or 0.0)

        def broke_at(pool):
            """When the pool broke: the first death in it that was not the pool's own SIGTERM
            (our SIGKILL's time, a die job's os._exit line, else when the watcher saw it dead)."""
            times = [ch.killed[pid] if pid in ch.killed else last_line[pid] if status_of.get(pid) == chaosjobs.EXIT_CODE
                     and pid in last_line else dead[pid]
                     for pid in members[pool] if pid in dead and (pid in ch.killed or status_of.get(pid) not in (
                         0, 1, -signal.SIGTERM, -signal.SIGKILL))]  # SIGTERM, SIGKILL: the pool's (queue.py's) own
            return min(times) if times else None

        breaks = {pool: broke_at(pool) for pool in members}

        def how_it_ended(pid):
            status, pool = status_of.get(pid), ch.pool_of.get(pid)
            if pid in self.killed_at_the_end:
                return "hung at the shutdown"
            if pid in ch.killed and status in (None, -signal.SIGKILL):
                return "killed"
            if (status is None and pid not in dead) or status in (0, 1):
                if pool == final and (status is None or dead.get(pid, self.ended) >= shutdown_at):
                    return "hung at the shutdown" if self.shutdown_hung else "shut down"
                # a pool that never broke and was not the last: made at the same time as another
                # (two threads of the program saw no pool), dropped, its children left to the end
                return "outlived its broken pool" if breaks.get(pool) is not None else "orphaned pool"
            if status in (-signal.SIGTERM, -signal.SIGKILL):  # its pool broke: queue.py ends the others
                return "terminated"
            if status == chaosjobs.EXIT_CODE:
                return "os._exit"
            if status is None:
                return "unknown"
            return f"status {status}" if status > 0 else f"signal {signal.Signals(-status).name}"

        endings = {pid: how_it_ended(pid) for pid in ch.procs}

        def stale(pid, start, end):
            """A run (start, end) still under way when its pool broke (or begun after, in a child
            that outlived its pool): the pool failed its attempt then, and the program started it
            again; "outlived", "broke while it ran", or None. (20 ms of slack: a run's done line is
            written a moment before its result goes to the program.)"""
            broke = breaks.get(ch.pool_of.get(pid))
            if broke is None or end <= broke - 0.02:
                return None
            return "outlived" if endings.get(pid) == "outlived its broken pool" else "broke while it ran"

        def child_died_after(pid, at):
            """The child `pid` ended (or, for one that outlived it, its pool broke) after `at` and
            before it began anything else: the result of what it ran last was lost; how, or None."""
            death = dead.get(pid)
            if endings.get(pid) == "outlived its broken pool":
                death = breaks.get(ch.pool_of.get(pid))
            if death is None or death < at - 0.05 or endings.get(pid) == "shut down":
                return None
            i = bisect.bisect_right(starts_by_pid.get(pid, []), at)
            if i < len(starts_by_pid.get(pid, [])) and starts_by_pid[pid][i] < death:
                return None
            return endings.get(pid, "unknown")

        c = collections.Counter()
        problems = collections.defaultdict(list)
        poison = {cls.kind: collections.Counter() for cls in KINDS if any(item.kind == cls.kind for item in self.poison)}
        explained_by = collections.Counter()
        for number, item in expected.items():
            completions = sorted(done.get(number, []), key=lambda d: d[2])
            failures = failed_by_number.get(number, [])
            spans = sorted(spans_by_number.get(number, []))
            cut = bool(failures) and all(f.startswith(BROKEN) for f in failures) and all(
                outcome == "died" for _, _, _, outcome in spans)
            calls_made = len(calls.get(number, []))
            if calls_made > 1:
                c["failed() more than once"] += 1
                problems["failed() run more than once"].append((number, item.kind, calls[number]))
            if len(failures) > 1:
                c["failed twice"] += 1
                problems["in the failed store more than once"].append((number, item.kind, failures))
            if number in poisoned:
                p, cls = poison[item.kind], cls_of[item.kind]
                p["pushed"] += 1
                p["done"] += 1 if completions else 0
                p["failed"] += 1 if failures else 0
                p["done twice"] += 1 if len(completions) > 1 else 0
                p["failed twice"] += 1 if len(failures) > 1 else 0
                p["failed() > 1"] += 1 if calls_made > 1 else 0
                wrong = False
                failed_as = getattr(cls, "failed_as", None)
                if not completions and not failures:
                    p["lost"] += 1
                    problems["poison lost"].append((number, item.kind))
                elif item.expect == "failed" and completions:
                    wrong = True
                elif item.expect == "failed" and failed_as and not all(
                        f.startswith((*failed_as, BROKEN)) for f in failures):
                    wrong = True
                elif item.expect == "done" and not completions:
                    if cut:
                        p["cut"] += 1
                    else:
                        wrong = True
                if wrong:
                    p["wrong"] += 1
                    problems["poison with the wrong outcome"].append(
                        (number, item.kind, f"must be {item.expect}", failures[:1], len(completions),
                         [(round(e - s, 2), pid, o) for s, e, pid, o in spans]))
                limit = getattr(cls, "timeout", None)
                over = [(round(end - start, 2), pid, outcome) for start, end, pid, outcome in spans
                        if outcome == "RanToTheEnd" or (limit and end - start > limit + chaos.OVERRUN)]
                if over:
                    p["overran"] += 1
                    problems["poison attempts past their timeout + 3 s (seconds, pid, outcome)"].append(
                        (number, item.kind, over))
                if number in bad_records:
                    p["bad record"] += 1
                    problems["failed records too long or holding a NUL"].append((number, item.kind, bad_records[number]))
                settled = completions if item.expect == "done" else failures
                if len(settled) == 1 and not wrong and calls_made <= 1 and not over and number not in bad_records and (
                        item.expect == "done" or not completions) and (item.expect == "failed" or not failures):
                    p["as expected"] += 1
            else:
                c["expect " + item.expect] += 1
                if not completions and not failures:
                    c["lost"] += 1
                    problems["lost"].append((number, item.kind, [(round(s, 3), round(e, 3), pid, o) for s, e, pid, o in spans]))
                elif item.expect == "failed":
                    c["failed as expected"] += 1 if failures else 0
                    if completions:
                        c["completed though they must fail"] += 1
                        problems["completed though they must fail"].append((number, item.kind))
                else:
                    c["completed"] += 1 if completions else 0
                    if failures and not completions:
                        if cut:
                            c["failed after their children died"] += 1
                        else:
                            c["failed unexpectedly"] += 1
                            problems["failed unexpectedly"].append((number, item.kind, failures[0]))
            if item.kind == "slow" and any(attempt == 1 for _, attempt, _ in completions):
                c["timeouts not enforced"] += 1
                problems["timeouts not enforced"].append(number)
            if len(completions) > 1:
                c["double runs"] += 1
                reasons = []
                for k in range(1, len(completions)):
                    reasons += [child_died_after(pid, at) for pid, _, at in completions[:k]]
                reasons += [stale(pid, s_, e_) for s_, e_, pid, o in spans if o == "done"]
                how = next((r for r in reasons if r in ("killed", "terminated", "broke while it ran")), None) or next(
                    (r for r in reasons if r is not None), None)
                how = "outlived" if how == "outlived its broken pool" else how
                if how is None:
                    c["unexplained double runs"] += 1
                    problems["unexplained double runs"].append(
                        (number, item.kind, completions, [(round(s, 3), round(e, 3), pid, o) for s, e, pid, o in spans]))
                else:
                    explained_by[how] += 1
            for x, y in zip(spans, spans[1:]):  # two processes running the same job at the same time
                if y[0] < x[1] - 1e-3 and x[2] != y[2]:
                    c["ran in two processes at once"] += 1
                    problems["ran in two processes at once (start, end, pid, outcome; how the earlier child ended)"].append(
                        (number, item.kind, x, y, endings.get(x[2])))
                    if x[1] - y[0] > 0.5:
                        c["ran in two processes at once for over 0.5 s"] += 1
        c["unknown numbers in the record"] = sum(1 for number in done if number not in expected)

        # the children: how each ended; deaths caused by a job (blamed on the job it ran last, or
        # for SIGALRM on the last alarm/itimer job it ran); children that outlived their broken
        # pool (exited 0 before the shutdown: a job left SIGTERM ignored or blocked in them)
        causes = collections.Counter(endings.values())
        job_deaths = []
        for pid, how in endings.items():
            history = events.get(pid, [])
            if how == "outlived its broken pool":  # blamed on the last job that can keep off SIGTERM
                blamed = next((e for e in reversed(history) if kind_of.get(e[2]) in TERM_KINDS), None)
            elif how.startswith(("signal", "status")) or how == "unknown":
                blamed = None
                if how == "signal SIGALRM":
                    blamed = next((e for e in reversed(history) if kind_of.get(e[2]) in chaosjobs.TIMER_KINDS), None)
                blamed = blamed or (history[-1] if history else None)
            else:
                continue
            job_deaths.append((pid, how, blamed[2] if blamed else None, kind_of.get(blamed[2]) if blamed else None))
        stale_runs = sum(1 for number, pid, attempt, start, end, outcome in runs
                         if stale(pid, start, dead.get(pid, self.ended) if end is None else end) == "outlived")
        origin = self.timings.get("start", 0.0)
        for pid, how, number, kind in job_deaths:
            if kind in poison:
                poison[kind]["child deaths"] += 1
            problems["pool children that died of a job or outlived their pool (pid, how, job, kind, pool, "
                     "ended s after the start, siblings: pid how)"].append(
                (pid, how, number, kind, ch.pool_of.get(pid), round(dead.get(pid, self.ended) - origin, 2),
                 [(other, endings[other]) for other in ch.procs
                  if ch.pool_of.get(other) == ch.pool_of.get(pid) and other != pid]))
        # attempts that died with a child this program did not kill: its pool broke (another
        # child was SIGKILLed or died) and it was terminated with it
        collateral = sum(1 for number, pid, attempt, start, end, outcome in runs
                         if outcome == "died" and endings.get(pid) == "terminated")
        # signal state found by a job as it began, left behind in its child by an earlier job
        left_behind = collections.Counter()
        for number, pid, what, at in inherited:
            suspects = [e for e in events.get(pid, []) if e[0] < at and kind_of.get(e[2]) in chaosjobs.LEFT_BEHIND[what]]
            blamed = kind_of[suspects[-1][2]] if suspects else "?"
            left_behind[blamed] += 1
            if blamed in poison:
                poison[blamed]["state left behind"] += 1
            problems["jobs that began with a signal state left behind in their child"].append(
                (number, pid, what, suspects[-1][2] if suspects else None, blamed))
        for number in {kids[child] for child in list(strays) + left_alive if child in kids}:
            if kind_of.get(number) in poison:
                poison[kind_of[number]]["stray children"] += 1
        parent_loads = sum(1 for number, pid, attempt, at in loads if pid == program)

        self.poison_table = [{"kind": kind, "expect": cls_of[kind].expect, **{k: counts[k] for k in POISON_COLUMNS}}
                             for kind, counts in poison.items()]
        total = collections.Counter()
        for counts in poison.values():
            total.update(counts)
        r = [("jobs pushed", len(self.items), None),
             ("expected to complete", c["expect done"], None),
             ("  completed", c["completed"], None),
             (f"  failed after their children died ({BROKEN} at every attempt)", c["failed after their children died"], None),
             ("  failed unexpectedly", c["failed unexpectedly"], 0),
             ("expected to fail (raise, time out)", c["expect failed"], None),
             ("  in the failed store", c["failed as expected"], None),
             ("  completed though they must fail", c["completed though they must fail"], 0),
             ("lost (neither done nor in the failed store)", c["lost"], 0),
             ("run to completion more than once", c["double runs"], None),
             ("  explained: the child that ran it was SIGKILLed after", explained_by["killed"], None),
             ("  explained: the child was terminated with its broken pool after", explained_by["terminated"], None),
             ("  explained: its pool broke as it ran (the other child died): result dropped",
              explained_by["broke while it ran"], None),
             ("  explained: one run was in a child that outlived its broken pool", explained_by["outlived"], None),
             ("  explained: the child ended otherwise after (see the child rows)",
              sum(v for k, v in explained_by.items() if k not in ("killed", "terminated", "broke while it ran", "outlived")),
              None),
             ("  unexplained", c["unexplained double runs"], 0),
             ("in the failed store more than once", c["failed twice"], 0),
             ("failed() run more than once (the job's own record)", c["failed() more than once"], 0),
             ("timeouts not enforced (slow job done at attempt 1)", c["timeouts not enforced"], 0),
             ("ran in two processes at once", c["ran in two processes at once"], None),
             ("  of them for over 0.5 s", c["ran in two processes at once for over 0.5 s"], None),
             ("pool children started", len(ch.procs), None),
             ("  SIGKILLed by this program", causes["killed"], None),
             ("  ended with their broken pool (its SIGTERM, or queue.py's SIGKILL)", causes["terminated"], None),
             ("  ended by os._exit() jobs", causes["os._exit"], None),
             ("  shut down with the last pool", causes["shut down"], None),
             ("  of pools made at once by two threads and dropped (alive to the end)", causes["orphaned pool"], None),
             ("  died of a job, or outlived their broken pool (kinds below)", len(job_deaths), 0),
             ("    outlived their broken pool (SIGTERM ignored or blocked by a job)", causes["outlived its broken pool"], None),
             ("    runs in them that ended after their pool broke (counted failed)", stale_runs, None),
             ("attempts cut because the other child of their pool died", collateral, None),
             ("pool shutdown after join(), seconds", round(self.timings.get("shutdown", 0.0), 1), None),
             (f"  hung (over {SHUTDOWN_LIMIT:g} s; its live children SIGKILLed)", int(self.shutdown_hung), 0),
             ("join() returned (1: yes)", int(self.joined), None),
             (f"stalled: nothing began or ended for {STALL:g} s with jobs left (driver state in the log)",
              int(bool(self.stalled)), 0),
             *([("exit check: a program whose job left a thread in a pool child, seconds to exit",
                 round(self.exit_seconds, 1), None),
                (f"  did not exit within {SHUTDOWN_LIMIT:g} s (killed)", self.exit_hung, 0)]
               if self.exit_seconds is not None else []),
             ("unpickled in this program to settle a child's attempt (poison loads)", parent_loads, None),
             (f"failed records over {chaosjobs.RECORD_LIMIT // 1024} KB or holding a NUL", len(bad_records), 0)]
        if self.poison:
            r += [("poison jobs pushed (kinds below)", len(self.poison), None),
                  ("  poison done or failed as their kind must", total["as expected"], None),
                  ("  poison failed after their children died", total["cut"], None),
                  ("  poison lost (neither done nor failed)", total["lost"], 0),
                  ("  poison with the wrong outcome", total["wrong"], 0),
                  ("  poison that caused child deaths", total["child deaths"], None),
                  ("  poison signal state found by later jobs in their child", sum(left_behind.values()), 0),
                  (f"  poison attempts past their timeout + {chaos.OVERRUN:g} s", total["overran"], 0),
                  ("  poison fork children left running (killed)", len(strays), 0),
                  ("  poison fork children alive at the end", len(left_alive), 0)]
        r += [("unknown numbers in the record", c["unknown numbers in the record"], 0)]
        violations = [(label.strip(), value) for label, value, limit in r if limit is not None and value > limit]
        if self.stalled:
            problems["the driver when the run stalled"].append(self.stalled)
        self.rows, self.violations, self.problems = r, violations, problems
        self.job_deaths = job_deaths
        origin = self.timings.get("start", 0.0)
        self.child_table = [{"pid": pid, "pool": ch.pool_of.get(pid), "seen": round(ch.seen[pid] - origin, 3),
                             "ended": round(dead[pid] - origin, 3) if pid in dead else None,
                             "killed": round(ch.killed[pid] - origin, 3) if pid in ch.killed else None,
                             "status": status_of.get(pid), "how": endings[pid],
                             "jobs": [(e[2], kind_of.get(e[2])) for e in events.get(pid, [])][-3:]}
                            for pid in sorted(ch.procs, key=lambda pid: ch.seen[pid])]
        return 1 if violations else 0

    def report(self, out=sys.stdout):
        args = self.args
        print(f"queue.py async chaos: multiprocess, {args.children} children, {args.jobs} jobs, {args.poison} poison "
              f"jobs, kill a child every {args.kill_every:g} s, failed store {args.connection}, seed {args.seed}", file=out)
        print(f"push {self.timings.get('push', 0):.1f} s, run {self.timings.get('run', 0):.1f} s", file=out)
        width = max(len(label) for label, _, _ in self.rows) + 2
        print(f"{'what':<{width}}{'count':>8}  must be", file=out)
        for label, value, limit in self.rows:
            mark = "" if limit is None else f"  {'<=' if limit else '='} {limit}" + ("   <-- VIOLATION" if value > limit else "")
            print(f"{label:<{width}}{value:>8}{mark}", file=out)
        if self.poison_table:
            heads = ["poison kind", "must be"] + [name.replace(" ", "_") for name in POISON_COLUMNS]
            cells = [[row["kind"], row["expect"]] + [str(row[k]) for k in POISON_COLUMNS] for row in self.poison_table]
            widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
            print("poison per kind (" + ", ".join(k.replace(" ", "_") for k in MUST_BE_ZERO) + ": must be 0)", file=out)
            for line in [heads] + cells:
                print("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))),
                      file=out)
        if self.violations:
            print("RESULT: FAIL: " + "; ".join(f"{label} {value}" for label, value in self.violations), file=out)
        else:
            print("RESULT: OK", file=out)
        for kind, cases in self.problems.items():
            say(f"{kind}: {len(cases)}; first ones: {cases[:5]!r}")

    def summary(self):
        return {"violations": self.violations, "rows": {label.strip(): value for label, value, _ in self.rows},
                "poison": self.poison_table, "timings": self.timings,
                "child_deaths_caused_by_jobs": self.job_deaths, "children": getattr(self, "child_table", []),
                "problems": {k: [repr(x) for x in v[:20]] for k, v in self.problems.items()}}

    def close(self):
        children = getattr(self, "children", None)
        if children is not None:
            children.stop_killing()
            children._cfp.ProcessPoolExecutor._spawn_process = children._spawn
        if not self.joined:  # the driver's threads go on making pools: no more children from now on
            import concurrent.futures.process as cfp

            def refuse(pool):
                raise SystemExit("async_chaos: the run is over")  # ends the thread that asks, quietly
            cfp.ProcessPoolExecutor._spawn_process = refuse
        for pid in own_children():  # whatever is left of the pools (and of the exit check)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            queue.driver()._pool = None
            for key, instance in list(queue._drivers.items()):
                if instance.name == "database":
                    instance.close()
        except Exception:
            pass
        if self.args.connection in ("mysql", "postgres"):
            try:
                common.drop_tables(self.args.connection, self.project.table, self.project.table + "_failed",
                                   self.project.table + "_state")
            except Exception as exc:
                say(f"cleanup failed: {exc!r}")
        os.chdir(HERE)
        if self.args.keep:
            say(f"kept {self.project.folder}")
        else:
            shutil.rmtree(self.project.folder, ignore_errors=True)


def own_children():
    """The pids of this program's live child processes (from /proc)."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] not in ("Z", "X"):
                found.append(int(name))
    return found


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10000, help="numbered jobs to push (default 10000)")
    p.add_argument("--poison", type=int, default=None, help="poison jobs among them (default 2%% of --jobs); kinds: "
                   + ", ".join(cls.kind for cls in KINDS))
    p.add_argument("--children", type=int, default=2, help="DRIVERS['async']['workers'] (default 2)")
    p.add_argument("--kill-every", type=float, default=1.0, help="seconds between SIGKILLs of a child (0: none; default 1)")
    p.add_argument("--connection", choices=("sqlite", "mysql", "postgres"), default="sqlite",
                   help="where the failed store lives (default sqlite)")
    p.add_argument("--skip", default="", help="poison kinds to leave out, comma separated")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    args = p.parse_args(argv)
    if args.poison is None:
        args.poison = max(0, round(0.02 * args.jobs))
    if args.jobs < 0 or args.poison < 0 or args.children < 1:
        p.error("--jobs and --poison must not be negative; --children must be at least 1")
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    if args.timeout is None:
        args.timeout = 120 + 0.05 * args.jobs + 2.0 * args.poison
    args.retry_after = 5.0  # what chaos.make_jobs reads (no long jobs here)
    return args


def main(argv=None):
    args = parse_args(argv)
    run = AsyncChaos(args)
    # queue.py's log (a line per failed or released attempt) goes to the project's program.log
    handler = logging.FileHandler(os.path.join(run.project.folder, "program.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        status = run.run()
    except BaseException:
        run.close()
        raise
    run.report()
    run.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run.summary(), f, indent=1, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    if not run.joined:  # the driver still holds jobs: the interpreter's exit would wait for them (atexit)
        logging.shutdown()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
