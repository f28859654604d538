"""Poison jobs for tests/test_poison.py: jobs that try to hurt the worker that runs them.

Importable as ``poisonjobs`` in the test process and in worker subprocesses (conftest gives
workers PYTHONPATH=tests). Like testjobs, every job records what it did by appending lines to
its file (``testjobs.runs``/``values`` read them back; ``failed(exc)`` appends to
``path + ".failed"``); jobs that act while being unpickled append to ``path + ".loading"``.
"""
import os
import signal
import sys
import time

from testjobs import Job, Record, append


class ExitInFailed(Job):
    """Fails for good at its first attempt; its failed() records the call, then calls sys.exit(3)."""

    tries = 1

    def handle(self):
        self.record()
        raise ValueError(f"boom {self.value}")

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {exc}")
        sys.exit(3)


class ExitOnLoad(Record):
    """Pickles fine; unpickling it raises SystemExit (its __setstate__ calls sys.exit)."""

    def __setstate__(self, state):
        append(state["path"] + ".loading", f"loading {os.getpid()}")
        sys.exit("exit while unpickling")


class StringTries(Record):
    """A job class whose `tries` is a string, not a number."""

    tries = "3"


class SurrogateFail(Job):
    """Always raises ValueError with a lone surrogate in its message (text that cannot be encoded
    as UTF-8); tried twice. failed() records ascii() of the message, so the recording itself works."""

    tries = 2

    def handle(self):
        self.record()
        raise ValueError("bad \udcff byte")

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {ascii(str(exc))}")


class SlowLoad(Record):
    """Unpickling it records "loading <pid>" in path + ".loading", then sleeps `load_seconds`
    (60 by default) inside __setstate__: a job whose unpickle blocks. No timeout of its own."""

    load_seconds = 60

    def __setstate__(self, state):
        append(state["path"] + ".loading", f"loading {os.getpid()}")
        time.sleep(state.get("load_seconds", self.load_seconds))
        self.__dict__.update(state)


class SlowLoadTimeout(SlowLoad):
    """A SlowLoad whose class sets timeout = 1 and tries = 1."""

    timeout = 1
    tries = 1


class Forker(Job):
    """Records the attempt, then os.fork()s. The child records "child" and then either returns
    from handle() (mode "return") or calls sys.exit(0) (mode "exit"); the parent waits for the
    child with os.waitpid and records "parent-done"."""

    def __init__(self, path, mode, value="fork", **attributes):
        super().__init__(path, value, **attributes)
        self.mode = mode

    def handle(self):
        self.record()
        pid = os.fork()
        if pid == 0:  # the child
            self.record("child")
            if self.mode == "exit":
                sys.exit(0)
            return
        os.waitpid(pid, 0)
        self.record("parent-done")


class IgnoreTerm(Job):
    """Records the attempt, sets SIGTERM to SIG_IGN and returns."""

    def handle(self):
        self.record()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Alarm(Job):
    """Records the attempt, calls signal.alarm(1) and returns (SIGALRM arrives a second later)."""

    def handle(self):
        self.record()
        signal.alarm(1)


class LingeringAlarm(Job):
    """Records the attempt, sets a 0.2 s interval timer and keeps running for a second: SIGALRM
    arrives while it runs (in whichever thread runs it)."""

    def handle(self):
        self.record()
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        time.sleep(1.0)
        self.record(self.value + "-done")
