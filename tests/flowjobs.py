"""Job classes for the flow-control tests (tests/test_flow.py) and benchmarks/flow.py, importable
as ``flowjobs`` in the test process and in worker subprocesses (PYTHONPATH=tests).

Every job carries the path of a record file. Its body appends one line per event with ONE
``os.write`` on a descriptor opened with O_APPEND, so lines of concurrent processes never mix:

    "<event> <time.time()> <tag> <pid> <attempt> <entered>"      event: start, end or run

``events(path)`` reads them back as ``Event(event, at, tag, pid, attempt, entered)``; `entered`
is the time.time() at which the attempt entered its middleware (``Stamp``, first in the list of
``Limited``; ``Throttled`` notes it just before its ``with queue.throttle``), else 0. The
figures are computed from this record alone, independently of queue.py's own bookkeeping:

- ``most_running(events)``: the most bodies running at once (start +1, end -1; an end and a start
  at the same instant count the end first);
- ``most_in_window(times, width)``: the most times in any half-open window [t, t + width);
- ``most_surely_within(events, width)``: the most slot takes that surely fell within less than
  `width` (each take happened in [entered, at]), which the record's own delays cannot inflate.

Releases count as attempts, so every job here has ``tries`` high enough never to be failed by
its limiter (``TRIES``).
"""
import bisect
import collections
import os
import time

import queue

TRIES = 1_000_000
Event = collections.namedtuple("Event", "event at tag pid attempt entered")


# The record ###################################################################################
def mark(path, event, tag="-", attempt=0, entered=0.0):
    """Append one line to path with a single O_APPEND write."""
    line = f"{event} {time.time():.6f} {tag} {os.getpid()} {attempt} {entered:.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def events(path, kind=None):
    """The events recorded in path, in file order ([] if there is none yet)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    result = []
    for line in text.splitlines():
        event, at, tag, pid, attempt, entered = line.split(" ")
        if kind is None or event == kind:
            result.append(Event(event, float(at), tag, int(pid), int(attempt), float(entered)))
    return result


def count(path, kind):
    return len(events(path, kind))


def most_running(recorded):
    """The most bodies running at once, from start/end events."""
    steps = sorted((e.at, 0 if e.event == "end" else 1) for e in recorded if e.event in ("start", "end"))
    running = most = 0
    for _, kind in steps:
        running += 1 if kind else -1
        most = max(most, running)
    return most


def most_in_window(times, width):
    """The most of `times` in any half-open window [t, t + width) (windows start at a time)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


def most_surely_within(recorded, width):
    """The most attempts whose moment of interest surely falls in one window shorter than `width`:
    each happened somewhere in [entered, at] (e.g. a throttle's take: after the attempt entered
    its middleware, before its body started), so a set of them lies surely within less than
    `width` when max(at) - min(entered) < width. The record's own delays cannot inflate it."""
    spans = sorted((e.entered, e.at) for e in recorded if e.entered)
    most = 0
    for i, (first, _) in enumerate(spans):
        most = max(most, sum(1 for entered, at in spans[i:] if at < first + width))
    return most


# Jobs #########################################################################################
class Recorded(queue.Queueable):
    """Base: a record path and a tag (which job this is)."""

    tries = TRIES

    def __init__(self, path, tag="-"):
        self.path, self.tag = str(path), str(tag)

    def mark(self, event):
        mark(self.path, event, self.tag, self.attempts, getattr(self, "_entered", 0.0))

    def __repr__(self):
        return f"<{type(self).__name__} {self.tag}>"


class Plain(Recorded):
    """No middleware, no unique_for: records "run"."""

    def handle(self):
        self.mark("run")


class Stamp:
    """Middleware that only notes when the attempt entered the middleware (job._entered)."""

    def enter(self, job):
        job._entered = time.time()

    def exit(self, job, exc):
        pass


class Limited(Recorded):
    """RateLimited(key, allow, every) middleware (after a Stamp); the body records start and end."""

    def __init__(self, path, tag, key, allow, every, seconds=0.0):
        super().__init__(path, tag)
        self.key, self.allow, self.every, self.seconds = key, allow, every, seconds

    def middleware(self):
        return [Stamp(), queue.RateLimited(self.key, allow=self.allow, every=self.every)]

    def handle(self):
        self.mark("start")
        if self.seconds:
            time.sleep(self.seconds)
        self.mark("end")


class Throttled(Recorded):
    """`with queue.throttle(...) as ok`, releasing itself for retry_after when not ok."""

    def __init__(self, path, tag, key, allow, every, seconds=0.0):
        super().__init__(path, tag)
        self.key, self.allow, self.every, self.seconds = key, allow, every, seconds

    def handle(self):
        limit = queue.throttle(self.key, allow=self.allow, every=self.every)
        self._entered = time.time()
        with limit as ok:
            if not ok:
                return self.release(max(limit.retry_after, 0.01))
            self.mark("start")
            if self.seconds:
                time.sleep(self.seconds)
            self.mark("end")


class Exclusive(Recorded):
    """WithoutOverlapping(key, release_after) middleware; the body records start, sleeps, records end."""

    def __init__(self, path, tag, key, seconds=0.1, release_after=None, expire_after=None):
        super().__init__(path, tag)
        self.key, self.seconds = key, seconds
        self.release_after, self.expire_after = release_after, expire_after

    def middleware(self):
        return [queue.WithoutOverlapping(self.key, release_after=self.release_after, expire_after=self.expire_after)]

    def handle(self):
        self.mark("start")
        time.sleep(self.seconds)
        self.mark("end")


class Funneled(Recorded):
    """`with queue.funnel(key, limit) as ok`: records start, sleeps, records end; releases
    itself for `release` seconds when no slot is free."""

    def __init__(self, path, tag, key, limit=2, seconds=0.05, release=0.05, hold=None):
        super().__init__(path, tag)
        self.key, self.limit, self.seconds, self.release_for, self.hold = key, limit, seconds, release, hold

    def handle(self):
        with queue.funnel(self.key, limit=self.limit, hold=self.hold) as ok:
            if not ok:
                return self.release(self.release_for)
            self.mark("start")
            time.sleep(self.seconds)
            self.mark("end")


class Erratic(Recorded):
    """ThrottlesExceptions(most, decay, key) middleware; the body records "run" and raises
    ValueError on attempts below `succeed_at` (never succeeds if it is None)."""

    def __init__(self, path, tag, most, decay, key=None, succeed_at=None):
        super().__init__(path, tag)
        self.most, self.decay, self.key, self.succeed_at = most, decay, key, succeed_at

    def middleware(self):
        return [queue.ThrottlesExceptions(self.most, self.decay, key=self.key)]

    def handle(self):
        self.mark("run")
        if self.succeed_at is None or self.attempts < self.succeed_at:
            raise ValueError(f"{self.tag} attempt {self.attempts} fails")


class Unique(Recorded):
    """unique_for = 60 s, unique by its `ident`; records "run"."""

    unique_for = 60

    def __init__(self, path, tag="-", ident="one"):
        super().__init__(path, tag)
        self.ident = ident

    def unique_id(self):
        return self.ident


class UniqueRun(Unique):
    def handle(self):
        self.mark("run")


class UniqueFails(Unique):
    """Unique; fails for good at its first attempt."""

    tries = 1

    def handle(self):
        self.mark("run")
        raise ValueError("unique job fails")


class UniqueDeletes(Unique):
    """Unique; deletes itself (ends without failing)."""

    def handle(self):
        self.mark("run")
        self.delete()


class UniqueByClass(Recorded):
    """unique_for without unique_id(): one per class."""

    unique_for = 60

    def handle(self):
        self.mark("run")


class UniqueGate(Unique):
    """Unique; records start, waits (up to 30 s) until the file `gate` exists, records end."""

    def __init__(self, path, tag="-", ident="one", gate=None):
        super().__init__(path, tag, ident)
        self.gate = str(gate)

    def handle(self):
        self.mark("start")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {self.gate} was not opened within 30 s")
            time.sleep(0.01)
        self.mark("end")
