"""Jobs of benchmarks/chaos.py, importable by the chaos process and by its subprocess workers
(chaos.py puts this folder on their PYTHONPATH).

Every job keeps its own record, outside queue.py, in the folder `record` it carries:
- ``runs.log``: ``start NUMBER PID ATTEMPT TIME`` when an attempt begins and
  ``end NUMBER PID ATTEMPT TIME OUTCOME`` when it stops (returned, raised, timed out, exiting);
- ``done.log``: ``NUMBER PID ATTEMPT TIME``, once per completed run (the last thing handle() does).
Each line is one os.write() on a file opened with O_APPEND, so lines of concurrent workers never mix.
The attempt number is read from the worker's frame (the Message it is processing); 0 if unknown.
"""
import os
import sys
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


class Job(Queueable):
    """Base: a number, the record folder, and a handle() that records start, work() and end."""

    tries = 5
    kind = "work"

    def __init__(self, number, record, seconds=0.0):
        self.number, self.record, self.seconds = number, record, seconds

    def log(self, text):
        append(os.path.join(self.record, "runs.log"), text)

    def handle(self):
        attempt = current_attempt()
        pid = os.getpid()
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


class Work(Job):
    """Sleeps a little and succeeds."""


class Long(Job):
    """Sleeps longer than retry_after (its worker must keep its reservation alive)."""

    kind = "long"


class Flaky(Job):
    """Raises at its first attempt, succeeds later (after a short backoff)."""

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
    tries = 2

    def work(self, attempt):
        sys.exit(3)


EXIT_CODE = 77


class Die(Job):
    """Calls os._exit(77): the worker dies at every attempt; the job must end in the failed store
    (attempted more often than its tries) and the supervisor must start a new worker."""

    kind = "die"
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
