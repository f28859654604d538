"""Jobs of benchmarks/chaos.py, importable by the chaos process and by its subprocess workers
(chaos.py puts this folder on their PYTHONPATH).

Every job keeps its own record, outside queue.py, in the folder `record` it carries:
- ``runs.log``: ``start NUMBER PID ATTEMPT TIME`` when an attempt begins and
  ``end NUMBER PID ATTEMPT TIME OUTCOME`` when it stops (returned, raised, timed out, exiting);
- ``done.log``: ``NUMBER PID ATTEMPT TIME``, once per completed run (the last thing handle() does);
- ``failed.log``: ``NUMBER PID TIME``, once per call of failed() (queue.py promises one call);
- ``loads.log``: ``load NUMBER PID ATTEMPT TIME`` when a poison job's __setstate__ begins (it runs
  while the worker unpickles the payload, before handle());
- ``forks.log``: what the fork jobs' children did (``child``, ``reaped``, ``stray`` lines, below);
- ``inherited.log``: ``NUMBER PID WHAT TIME`` when a job begins in a worker whose signal state an
  earlier job changed (WHAT: sigterm-ignored, sigterm-blocked, sigalrm-blocked, timer-pending);
  see inherited();
- ``signals.log``: ``ignoring NUMBER PID ATTEMPT TIME`` when a sigignrun job has set SIGTERM to
  SIG_IGN and begins its second of work (chaos.py then sends its worker a SIGTERM).
Each line is one os.write() on a file opened with O_APPEND, so lines of concurrent workers never mix.
The attempt number is read from the worker's frame (the Message it is processing); 0 if unknown.
"""
import asyncio
import os
import signal
import sys
import threading
import time

from queue import Queueable  # our queue.py (chaos.py and `python queue.py` make sure of it)


def append(path, line):
    """Append one line to path with a single write (O_APPEND: atomic against other appenders)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def current_attempt():
    """The attempt number of the message the worker is running (found in the caller frames)."""
    frame = sys._getframe(1)
    while frame is not None:
        message = frame.f_locals.get("message")
        if message is not None and hasattr(message, "attempts") and hasattr(message, "payload"):
            return int(message.attempts)
        frame = frame.f_back
    return 0


def inherited(job):
    """What an earlier job left in this worker's signal state, as the job begins: SIGTERM set to
    SIG_IGN, SIGTERM or SIGALRM blocked in this thread, or a real-time timer pending although this
    job has no timeout of its own (a worker arms that timer only for a job with a timeout)."""
    found = []
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        found.append("sigterm-ignored")
    if hasattr(signal, "pthread_sigmask"):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        found += [what for sig, what in ((signal.SIGTERM, "sigterm-blocked"), (signal.SIGALRM, "sigalrm-blocked"))
                  if sig in mask]
    if not getattr(job, "timeout", None) and hasattr(signal, "getitimer") and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        found.append("timer-pending")
    for what in found:
        append(os.path.join(job.record, "inherited.log"), f"{job.number} {os.getpid()} {what} {time.time():.6f}")


class Job(Queueable):
    """Base: a number, the record folder, and a handle() that records start, work() and end."""

    tries = 5
    kind = "work"

    def __init__(self, number, record, seconds=0.0):
        self.number, self.record, self.seconds = number, record, seconds

    def log(self, text):
        append(os.path.join(self.record, "runs.log"), text)

    def handle(self):
        self.recorded()

    def recorded(self):
        """One attempt with its record: start line, work(), done line, end line."""
        attempt = current_attempt()
        pid = os.getpid()
        inherited(self)
        self.log(f"start {self.number} {pid} {attempt} {time.time():.6f}")
        outcome = "raised"
        try:
            self.work(attempt)
            append(os.path.join(self.record, "done.log"), f"{self.number} {pid} {attempt} {time.time():.6f}")
            outcome = "done"
        except BaseException as exc:  # record how the attempt ended, then let the worker see it
            outcome = type(exc).__name__
            raise
        finally:
            self.log(f"end {self.number} {pid} {attempt} {time.time():.6f} {outcome}")

    def work(self, attempt):
        time.sleep(self.seconds)

    def failed(self, exc):
        append(os.path.join(self.record, "failed.log"), f"{self.number} {os.getpid()} {time.time():.6f}")


# Jitter (chaos.py --jitter): the kinds that raise once, always raise or time out get a backoff of
# their own, per job instance: JITTER_STEPS random seconds between JITTER_LOW and JITTER_HIGH (the
# last repeats), so that a run asks the driver for hundreds of distinct delays.
JITTERED = ("flaky", "fail", "slow", "hang")
JITTER_STEPS, JITTER_LOW, JITTER_HIGH = 3, 0.3, 4.0


def jitter(job, rng):
    """Give this job instance a backoff of its own (an instance attribute, read by queue.push and
    signed into the payload): a list of JITTER_STEPS random floats; return the list."""
    job.backoff = [rng.uniform(JITTER_LOW, JITTER_HIGH) for _ in range(JITTER_STEPS)]
    return job.backoff


class Work(Job):
    """Sleeps a little and succeeds."""


class Long(Job):
    """Sleeps longer than retry_after (its worker must keep its reservation alive)."""

    kind = "long"


class Flaky(Job):
    """Raises at its first attempt, succeeds later (after a short backoff: 0.5 s, or with
    jitter a random one of its own)."""

    kind = "flaky"
    backoff = 0.5

    def work(self, attempt):
        if attempt <= 1:
            raise ValueError(f"flaky job {self.number} fails its first attempt")
        time.sleep(self.seconds)


class Fail(Job):
    """Always raises: ends in the failed store after its tries."""

    kind = "fail"
    tries = 2

    def work(self, attempt):
        raise ValueError(f"job {self.number} always fails")


class Slow(Job):
    """Runs past its timeout at its first attempt (the worker must cut it), succeeds later."""

    kind = "slow"
    timeout = 1

    def work(self, attempt):
        deadline = time.monotonic() + (4.0 if attempt <= 1 else self.seconds)
        while time.monotonic() < deadline:
            time.sleep(0.02)


class Hang(Slow):
    """Runs past its timeout at every attempt: ends in the failed store (JobTimeout)."""

    kind = "hang"
    tries = 2

    def work(self, attempt):
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            time.sleep(0.02)


class Exit(Job):
    """Calls sys.exit(): a failed attempt, not a worker death; ends in the failed store."""

    kind = "exit"
    expect = "failed"
    tries = 2

    def work(self, attempt):
        sys.exit(3)


EXIT_CODE = 77


class Die(Job):
    """Calls os._exit(77): the worker dies at every attempt; the job must end in the failed store
    (attempted more often than its tries) and the supervisor must start a new worker."""

    kind = "die"
    expect = "failed"
    tries = 2

    def work(self, attempt):
        self.log(f"end {self.number} {os.getpid()} {attempt} {time.time():.6f} os._exit")
        os._exit(EXIT_CODE)


def _refuse(number):
    raise RuntimeError(f"job {number} refuses to be unpickled")


class Unloadable(Job):
    """Unpickling it raises (its __reduce__ calls a function that raises)."""

    kind = "unloadable"

    def __reduce__(self):
        return (_refuse, (self.number,))


class InitRaises(Job):
    """Unpickling it calls __init__, which raises."""

    kind = "initraises"

    def __init__(self, number, record, seconds=0.0, explode=False):
        if explode:
            raise RuntimeError(f"job {number}: __init__ raises")
        super().__init__(number, record, seconds)

    def __reduce__(self):
        return (InitRaises, (self.number, self.record, self.seconds, True))


def touch(path):
    """Create the marker file `path` and return a harmless job: a forged payload that holds a
    call to touch() proves, by the file appearing, that it was unpickled."""
    with open(path, "w") as f:
        f.write(f"unpickled by {os.getpid()}\n")
    return Marked(path)


class Marked(Queueable):
    """What a marker payload unpickles to."""

    tries = 1

    def __init__(self, path):
        self.path = path

    def handle(self):
        pass


class Marker:
    """Pickles to a call of touch(path)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (touch, (self.path,))



# Poison: jobs that do what a job can do to the process that runs it ############################
# Every poison kind has one expected outcome (`expect`): "done" (it must complete, its done.log
# line shows it) or "failed" (in the failed store exactly once, failed() called at most once).
# None of them may take its worker down. chaos.py --poison pushes them with queue.push.
class Poison(Job):
    """Base of the poison kinds (chaos.py maps them to a harmless stand-in when it reads a payload).
    What chaos.py reads of a kind besides `expect`: `failed_as`, the exception names its failed
    record may begin with (None: any); `main_thread_only`, a kind that sets a signal handler (in a
    lane of `work --concurrency`, where Python allows none, it fails: not counted as wrong)."""

    tries = 2
    expect = "failed"
    failed_as = None
    main_thread_only = False

    def log_load(self):
        append(os.path.join(self.record, "loads.log"),
               f"load {self.number} {os.getpid()} {current_attempt()} {time.time():.6f}")


class FailedExit(Poison):
    """handle() raises; failed() calls sys.exit(3). tries 1 or 2 (by the number's parity)."""

    kind = "failedexit"

    def __init__(self, number, record, seconds=0.0):
        super().__init__(number, record, seconds)
        self.tries = 1 + number % 2

    def work(self, attempt):
        raise ValueError(f"poison job {self.number} raises so that its failed() runs")

    def failed(self, exc):
        super().failed(exc)
        sys.exit(3)


class SetStateExit(Poison):
    """Unpickling it raises SystemExit (__setstate__ only runs on unpickle, not on push)."""

    kind = "setstateexit"

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log_load()
        raise SystemExit(4)


class Surrogate(Poison):
    """Raises an exception whose message holds a lone surrogate (not encodable as UTF-8)."""

    kind = "surrogate"

    def work(self, attempt):
        raise ValueError(f"poison job {self.number}: a lone surrogate \udcff in the message")


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("this exception's __str__ raises")


class BadStr(Poison):
    """Raises an exception whose __str__ raises."""

    kind = "badstr"

    def work(self, attempt):
        raise UnprintableError(self.number)


class RaiseKeyboardInterrupt(Poison):
    kind = "keyboardinterrupt"

    def work(self, attempt):
        raise KeyboardInterrupt()


class RaiseSystemExit0(Poison):
    kind = "systemexit0"

    def work(self, attempt):
        raise SystemExit(0)


class RaiseGeneratorExit(Poison):
    kind = "generatorexit"

    def work(self, attempt):
        raise GeneratorExit()


class ForkReturn(Poison):
    """os.fork()s in handle(); the child returns from handle() normally (into the worker's code),
    the parent waits for the child, then completes. The fork record, in forks.log:
    ``child NUMBER CHILD PARENT TIME VARIANT`` (written by the child),
    ``reaped NUMBER CHILD PARENT TIME STATUS SECONDS`` (the child ended; STATUS as os.waitstatus_to_exitcode),
    ``stray NUMBER CHILD PARENT TIME killed|watchdog``: the child was still running CHILD_LIMIT
    seconds after the fork and its parent SIGKILLed it, or (its parent gone) its own watchdog
    thread ended it WATCHDOG seconds after the fork. A correct worker ends the child at once."""

    kind = "forkreturn"
    expect = "done"
    tries = 3
    child_exits = False
    CHILD_LIMIT = 5.0
    WATCHDOG = 10.0

    def forks(self, line):
        append(os.path.join(self.record, "forks.log"), line)

    def handle(self):
        attempt, parent = current_attempt(), os.getpid()
        inherited(self)
        self.log(f"start {self.number} {parent} {attempt} {time.time():.6f}")
        try:
            child = os.fork()
        except BaseException as exc:
            self.log(f"end {self.number} {parent} {attempt} {time.time():.6f} {type(exc).__name__}")
            raise
        if child == 0:  # the child: no start/end/done lines of its own
            me = os.getpid()
            self.forks(f"child {self.number} {me} {parent} {time.time():.6f} "
                       f"{'exit0' if self.child_exits else 'return'}")
            threading.Thread(target=self._watchdog, args=(me, parent), daemon=True).start()
            if self.child_exits:
                sys.exit(0)
            return None
        outcome = "raised"
        try:
            self._wait(child, parent)
            append(os.path.join(self.record, "done.log"), f"{self.number} {parent} {attempt} {time.time():.6f}")
            outcome = "done"
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.log(f"end {self.number} {parent} {attempt} {time.time():.6f} {outcome}")

    def _wait(self, child, parent):
        began = time.monotonic()
        while time.monotonic() - began < self.CHILD_LIMIT:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                self.forks(f"reaped {self.number} {child} {parent} {time.time():.6f} "
                           f"{os.waitstatus_to_exitcode(status)} {time.monotonic() - began:.3f}")
                return
            time.sleep(0.02)
        self.forks(f"stray {self.number} {child} {parent} {time.time():.6f} killed")
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(child, 0)

    def _watchdog(self, me, parent):
        """In the child: if it is still alive after WATCHDOG seconds (its parent was killed before
        it could end it), record that and end it, so that no stray worker outlives the run."""
        time.sleep(self.WATCHDOG)
        self.forks(f"stray {self.number} {me} {parent} {time.time():.6f} watchdog")
        os._exit(0)


class ForkExit(ForkReturn):
    """As ForkReturn, but the child calls sys.exit(0) inside handle()."""

    kind = "forkexit"
    child_exits = True


class IgnoreSigterm(Poison):
    """Sets SIGTERM to SIG_IGN and returns normally."""

    kind = "sigign"
    expect = "done"
    tries = 3
    main_thread_only = True

    def work(self, attempt):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BlockSigterm(Poison):
    """Blocks SIGTERM with pthread_sigmask (in the thread running the job) and returns normally."""

    kind = "sigmask"
    expect = "done"
    tries = 3

    def work(self, attempt):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class LeaveAlarm(Poison):
    """Leaves signal.alarm(2) behind and returns normally (no timeout of its own)."""

    kind = "alarm"
    expect = "done"
    tries = 3

    def work(self, attempt):
        signal.alarm(2)


class LeaveTimer(Poison):
    """Leaves a repeating ITIMER_REAL (2 s, then every 2 s) behind and returns normally."""

    kind = "itimer"
    expect = "done"
    tries = 3

    def work(self, attempt):
        signal.setitimer(signal.ITIMER_REAL, 2.0, 2.0)


class SlowLoad(Poison):
    """Its __setstate__ sleeps 3 s, longer than its timeout (1 s); handle() itself is quick.
    Unpickling is the job's own code and its timeout (signed into the payload's header, so known
    before unpickling) covers it: the job must end in the failed store, once."""

    kind = "slowload"
    timeout = 1

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log_load()
        time.sleep(3.0)


class BadRepr(Poison):
    """Its __repr__ raises; it must complete."""

    kind = "badrepr"
    expect = "done"
    tries = 3

    def __repr__(self):
        raise RuntimeError(f"job {self.number}: __repr__ raises")


# The kinds of the issue "Faults an adversary found" ###########################################
HUGE = 10 * 1024 * 1024  # characters of HugeError's message
RECORD_LIMIT = 70 * 1024  # characters a failed record may hold (queue.py keeps 64 KiB of the text)


class HugeError(Poison):
    """Raises a ValueError whose message is 10 MB: it must end in the failed store with a record
    of at most RECORD_LIMIT characters, and its worker must not die of it."""

    kind = "huge"
    failed_as = ("ValueError", "MaxAttemptsExceeded")

    def work(self, attempt):
        raise ValueError(f"poison job {self.number}: " + "x" * HUGE)


class NulError(Poison):
    """Raises a ValueError whose message holds a NUL byte (a PostgreSQL text column cannot)."""

    kind = "nul"
    failed_as = ("ValueError", "MaxAttemptsExceeded")

    def work(self, attempt):
        raise ValueError(f"poison job {self.number}: a NUL \x00 byte in the message")


class CancelAlarm(Poison):
    """timeout 1 s. Cancels the worker's alarm (signal.alarm(0) for an even number,
    signal.setitimer(ITIMER_REAL, 0) for an odd one), then runs RUN seconds in time.sleep(0.1)
    steps: it must be stopped (JobTimeout) within a few seconds of its timeout at every attempt,
    and end in the failed store. Its end line says "ran-to-the-end" if nobody stopped it."""

    kind = "cancelalarm"
    timeout = 1
    failed_as = ("JobTimeout", "MaxAttemptsExceeded")
    RUN = 8.0

    def work(self, attempt):
        if self.number % 2:
            signal.setitimer(signal.ITIMER_REAL, 0)
        else:
            signal.alarm(0)
        deadline = time.monotonic() + self.RUN
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise RanToTheEnd(f"poison job {self.number} ran {self.RUN:g} s past its cancelled alarm: nobody stopped it")


class RanToTheEnd(Exception):
    """A job that should have been stopped was not (the name is its record's outcome)."""


THREAD_LIFE = 600.0  # seconds: a thread left by LeaveThread ends by itself, so a leaked process does


class LeaveThread(Poison):
    """Starts a non-daemon thread that lives THREAD_LIFE seconds and returns: it must be done, and
    its worker must still exit when it is stopped (the harness's final SIGTERM must not hang)."""

    kind = "thread"
    expect = "done"
    tries = 3

    def work(self, attempt):
        threading.Thread(target=time.sleep, args=(THREAD_LIFE,), name=f"chaos-left-{self.number}",
                         daemon=False).start()


class BlockLoop(Poison):
    """An `async def handle()` that blocks its event loop with time.sleep(1): it must be done, and
    (with --concurrency) the other jobs of its worker must not fail for it."""

    kind = "blockloop"
    expect = "done"
    tries = 3

    async def handle(self):
        await asyncio.sleep(0)
        self.recorded()

    def work(self, attempt):
        time.sleep(1.0)


class CloseStreams(Poison):
    """Closes sys.stdout and sys.stderr and returns: it must be done, and its worker must go on."""

    kind = "closestreams"
    expect = "done"
    tries = 3

    def work(self, attempt):
        sys.stdout.close()
        sys.stderr.close()


class IgnoreSigtermRunning(Poison):
    """Sets SIGTERM to SIG_IGN, says so in signals.log (chaos.py then SIGTERMs its worker) and
    runs 1 s: it must be done, and its worker must still stop on that SIGTERM, after it."""

    kind = "sigignrun"
    expect = "done"
    tries = 3
    main_thread_only = True
    SECONDS = 1.0

    def work(self, attempt):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        append(os.path.join(self.record, "signals.log"),
               f"ignoring {self.number} {os.getpid()} {attempt} {time.time():.6f}")
        time.sleep(self.SECONDS)


class BlockAlarm(Poison):
    """timeout 1 s. Blocks SIGALRM in its thread (pthread_sigmask), then runs CancelAlarm.RUN
    seconds: it must be stopped within a few seconds of its timeout. (A worker's process has
    other threads, its keeper's, and the kernel gives them the signal: Python then runs the
    handler in the main thread anyway. A process-pool child of the async driver has no other.)
    Not in POISON: async_chaos.py runs it."""

    kind = "blockalarm"
    timeout = 1
    failed_as = ("JobTimeout", "MaxAttemptsExceeded")

    def work(self, attempt):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        deadline = time.monotonic() + CancelAlarm.RUN
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise RanToTheEnd(f"poison job {self.number} ran {CancelAlarm.RUN:g} s with SIGALRM blocked: nobody stopped it")


POISON = [FailedExit, SetStateExit, Surrogate, BadStr, RaiseKeyboardInterrupt, RaiseSystemExit0,
          RaiseGeneratorExit, ForkReturn, ForkExit, IgnoreSigterm, BlockSigterm, LeaveAlarm, LeaveTimer,
          SlowLoad, BadRepr, HugeError, NulError, CancelAlarm, LeaveThread, BlockLoop, CloseStreams,
          IgnoreSigtermRunning]
TIMER_KINDS = ("alarm", "itimer")  # a worker killed by SIGALRM: blame the last of these it ran
LEFT_BEHIND = {"sigterm-ignored": ("sigign", "sigignrun"), "sigterm-blocked": ("sigmask",),
               "sigalrm-blocked": ("blockalarm",), "timer-pending": TIMER_KINDS}
STOP_KINDS = ("sigign", "sigmask", "sigignrun", "thread")  # a worker that hangs at a SIGTERM: blame the last
