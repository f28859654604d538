"""Job classes of tests/test_promises.py, importable as ``promisejobs`` in the test process, in
the async driver's process-pool children and in `python queue.py work` subprocesses (conftest
gives them PYTHONPATH=tests). They record what they did the way tests/testjobs.py's jobs do:
one line "<value> <pid> <time>" per event, read back with testjobs.runs() and values()."""
import os

import queue
from testjobs import Job, Sleep, append, lines


class Numbered(Job):
    """Records "<attempts>:<job_id>" at each attempt; the first `fails` attempts raise."""

    def __init__(self, path, fails=1, **attributes):
        super().__init__(path, "numbered", **attributes)
        self.fails = fails

    def handle(self):
        self.record(f"{self.attempts}:{self.job_id}")
        if len(lines(self.path)) <= self.fails:
            raise ValueError("this attempt fails")


class ReleaseOnce(Job):
    """Its first run records "first" and calls self.release(delay); a later run records "again"."""

    def __init__(self, path, delay, **attributes):
        super().__init__(path, "release", **attributes)
        self.delay = delay

    def handle(self):
        if not lines(self.path):
            self.record("first")
            return self.release(self.delay)
        self.record("again")


class FailsItself(Job):
    """Records its run, then calls self.fail(ValueError("declined")) and returns normally.
    failed(exc) records "<ExcType>: <message> <pid>", so a test sees which process ran it."""

    def handle(self):
        self.record()
        self.fail(ValueError("declined"))

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {exc} {os.getpid()}")


class DeletesThenRaises(Job):
    """Records its run, calls self.delete(), then raises RuntimeError anyway."""

    def handle(self):
        self.record()
        self.delete()
        raise RuntimeError("raised after delete()")


class Limited(Job):
    """RateLimited(key, allow=1, every) middleware around a body that records its start."""

    def __init__(self, path, value, key, every=1, **attributes):
        super().__init__(path, value, **attributes)
        self.key, self.every = key, every

    def middleware(self):
        return [queue.RateLimited(self.key, allow=1, every=self.every)]

    def handle(self):
        self.record()


class Exclusive(Sleep):
    """WithoutOverlapping(key) middleware (its defaults) around a body that records "<value>",
    sleeps `seconds`, then records "<value>-done"."""

    def __init__(self, path, seconds, value, key, **attributes):
        super().__init__(path, seconds, value, **attributes)
        self.key = key

    def middleware(self):
        return [queue.WithoutOverlapping(self.key)]


class UniqueRecord(Job):
    """A unique job (unique_for = 60 s, one per class): records its run."""

    unique_for = 60

    def handle(self):
        self.record()
