"""Job classes for the tests, importable as ``testjobs`` in the test process and in worker
subprocesses (conftest gives them PYTHONPATH=tests).

Every job carries a file path and records what it did by appending one line to that file
(open "a", write, flush), so runs in other threads and processes can be counted:

- an attempt appends ``"<value> <pid> <time.time()>"``; read them back with ``runs(path)``,
  which returns a list of ``Run(value, pid, at)``;
- ``failed(exc)`` appends ``"<ExcType>: <message>"`` to ``path + ".failed"``; read them back
  with ``failures(path)``.

Tries, backoff, timeout and queue can be set per instance (keyword arguments of every job, as
instance attributes, which the worker reads like class attributes) or come from a subclass
(``Flaky``, ``Slow``, ``Patient``, ... below show the class-attribute style users write).

Helpers: ``wait_for(predicate, timeout)`` polls with a deadline; ``lines(path)`` reads a file.
"""
import collections
import os
import signal
import sys
import time

import queue

Run = collections.namedtuple("Run", "value pid at")


# Reading what jobs recorded ###################################################################
def lines(path):
    """The lines of a file ([] if it does not exist yet)."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def runs(path):
    """The attempts recorded in path, oldest first, as Run(value, pid, at)."""
    result = []
    for line in lines(path):
        value, pid, at = line.rsplit(" ", 2)
        result.append(Run(value, int(pid), float(at)))
    return result


def values(path):
    """The values of the attempts recorded in path, oldest first."""
    return [r.value for r in runs(path)]


def failures(path):
    """What failed(exc) recorded for the job(s) writing to path: ["ValueError: ...", ...]."""
    return lines(path + ".failed")


def gaps(path):
    """Seconds between consecutive attempts recorded in path."""
    at = [r.at for r in runs(path)]
    return [b - a for a, b in zip(at, at[1:])]


def wait_for(predicate, timeout=10.0, interval=0.02, message=None):
    """Poll predicate() until it returns something true; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def append(path, text):
    """Append one line to path, flushed at once (several processes may append)."""
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()


# Jobs #########################################################################################
class Job(queue.Queueable):
    """Base of the test jobs: a path to record into, a value, and optional per-instance
    tries / backoff / timeout / queue."""

    def __init__(self, path, value="run", **attributes):
        self.path = str(path)
        self.value = str(value).replace(" ", "_")
        for name, setting in attributes.items():
            if name not in ("tries", "backoff", "timeout", "queue"):
                raise TypeError(f"unknown job attribute {name!r}")
            setattr(self, name, setting)

    def record(self, value=None):
        append(self.path, f"{self.value if value is None else value} {os.getpid()} {time.time():.6f}")

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {exc}")

    def __repr__(self):
        return f"<{type(self).__name__} {self.value!r}>"


class Record(Job):
    """Records the attempt and succeeds."""

    def handle(self):
        self.record()


class Fail(Job):
    """Records the attempt, then raises ValueError("boom <value>")."""

    def handle(self):
        self.record()
        raise ValueError(f"boom {self.value}")


class FailTimes(Job):
    """Fails (ValueError) the first n attempts, then succeeds; every attempt is recorded, so
    the attempt number is the count of lines in its file."""

    def __init__(self, path, n, value="try", **attributes):
        super().__init__(path, value, **attributes)
        self.n = n

    def handle(self):
        attempt = len(lines(self.path)) + 1
        self.record()
        if attempt <= self.n:
            raise ValueError(f"attempt {attempt} of {self.value} fails")


class Sleep(Job):
    """Records its start, sleeps `seconds`, then records "<value>-done"."""

    def __init__(self, path, seconds, value="sleep", **attributes):
        super().__init__(path, value, **attributes)
        self.seconds = seconds

    def handle(self):
        self.record()
        time.sleep(self.seconds)
        self.record(self.value + "-done")


class Gate(Job):
    """Records its start, waits (up to `limit` seconds) until the file `gate` exists, then
    records "<value>-done". Tests open the gate with ``open(gate, "w").close()``: a job that is
    surely running, without sleeps (e.g. to signal a worker in the middle of a job)."""

    def __init__(self, path, gate, value="gate", limit=30, **attributes):
        super().__init__(path, value, **attributes)
        self.gate, self.limit = str(gate), limit

    def handle(self):
        self.record()
        deadline = time.monotonic() + self.limit
        while not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {self.gate} was not opened within {self.limit} s")
            time.sleep(0.01)
        self.record(self.value + "-done")


class Exit(Job):
    """Records the attempt, then calls sys.exit(3) (a job that tries to end its worker)."""

    def handle(self):
        self.record()
        sys.exit(3)


class KillWorker(Job):
    """Records the attempt ("<value>:<attempts>"), then SIGKILLs its own worker."""

    def handle(self):
        self.record(f"{self.value}:{self.attempts}")
        os.kill(os.getpid(), signal.SIGKILL)


class RecordAttempt(Job):
    """Records "<value>:<attempts>" and succeeds."""

    def handle(self):
        self.record(f"{self.value}:{self.attempts}")


def _explode(text):
    raise RuntimeError(f"cannot unpickle: {text}")


class Poison:
    """Pickles fine; unpickling it raises RuntimeError."""

    def __init__(self, text="poison"):
        self.text = text

    def __reduce__(self):
        return (_explode, (self.text,))


class Unloadable(Record):
    """A job that pushes fine but whose payload cannot be unpickled (its `poison` attribute)."""

    def __init__(self, path, value="unloadable", **attributes):
        super().__init__(path, value, **attributes)
        self.poison = Poison(value)


class Marker:
    """Unpickling it appends "unpickled" to `path`: put it in a forged payload to prove that a
    payload with a bad signature is never unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (append, (self.path, "unpickled"))


# Class-attribute variants, written the way users write them ##################################
class FailOnce(Fail):
    """Fails for good at its first attempt."""

    tries = 1


class Flaky(FailTimes):
    """Fails twice, with a backoff list, and has enough tries to succeed at attempt 3."""

    tries = 3
    backoff = [0.3, 1.2]


class Slow(Sleep):
    """Sleeps past its own timeout of 0.5 s; tried twice."""

    tries = 2
    timeout = 0.5


class Busy(Job):
    """Records its start, then runs Python code (no blocking call) for `seconds`, then records
    "<value>-done": a timeout raised in its thread interrupts it."""

    def __init__(self, path, seconds, value="busy", **attributes):
        super().__init__(path, value, **attributes)
        self.seconds = seconds

    def handle(self):
        self.record()
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            sum(range(100))
        self.record(self.value + "-done")


class AsyncSleep(Job):
    """An `async def handle()`: records its start, awaits asyncio.sleep(seconds), records
    "<value>-done"."""

    def __init__(self, path, seconds, value="async", **attributes):
        super().__init__(path, value, **attributes)
        self.seconds = seconds

    async def handle(self):
        import asyncio
        self.record()
        await asyncio.sleep(self.seconds)
        self.record(self.value + "-done")


class Patient(Fail):
    """Always fails; retried until 1.5 s after it was pushed (retry_until), whatever `tries`."""

    tries = 2
    backoff = 0.2
    retry_for = 1.5

    def retry_until(self):
        import datetime
        return datetime.timedelta(seconds=self.retry_for)


class OnQueue(Record):
    """A Record whose class sets its default queue."""

    queue = "class-queue"


class Noop(queue.Queueable):
    """Does nothing (for counts and speed)."""

    def handle(self):
        pass
