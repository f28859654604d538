"""Job classes for tests/test_adversary.py: what an adversary's job does to the worker that runs it
(the issue "Faults an adversary found").

Importable as ``adversaryjobs`` in the test process and in worker subprocesses (conftest gives
workers PYTHONPATH=tests). Like testjobs, every job records its attempts by appending
``"<value> <pid> <time>"`` lines to its file (``testjobs.runs``/``values`` read them back), and
``failed(exc)`` appends to ``path + ".failed"``.

Importing this module registers one `after` hook (as a user's job module would, with
queue.after); it acts only on SlowAfter jobs.
"""
import asyncio
import os
import signal
import sys
import threading
import time

import queue
from testjobs import Job, Record, append


class HugeError(Job):
    """Fails for good at its first attempt with a ValueError whose message is `size` characters
    ("x" * size). Its failed() records the type and the length only (not 20 MB of text)."""

    tries = 1

    def __init__(self, path, size, value="huge", **attributes):
        super().__init__(path, value, **attributes)
        self.size = size

    def handle(self):
        self.record()
        raise ValueError("x" * self.size)

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {len(str(exc))} characters")


class RaiseText(Job):
    """Fails for good at its first attempt with ValueError(text): a NUL byte, terminal escape
    sequences, ... Its failed() records ascii() of the message."""

    tries = 1

    def __init__(self, path, text, value="text", **attributes):
        super().__init__(path, value, **attributes)
        self.text = text

    def handle(self):
        self.record()
        raise ValueError(self.text)

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {ascii(str(exc))}")


class NulError(RaiseText):
    """ValueError("a\\x00b"): a message PostgreSQL cannot keep in a text column as it is."""

    def __init__(self, path, value="nul", **attributes):
        super().__init__(path, "a\x00b", value, **attributes)


class EscapeError(RaiseText):
    """A message with terminal escape sequences: set the window title, clear the screen."""

    def __init__(self, path, value="escape", **attributes):
        super().__init__(path, "\x1b]0;pwned\x07\x1b[2J", value, **attributes)


# 2. A slow `after` hook ###################################################################
class SlowAfter(Job):
    """Records its run and succeeds; the `after` hook below then sleeps `after_seconds`,
    recording "after-start" and "after-done" in path + ".after"."""

    after_seconds = 4

    def handle(self):
        self.record()


@queue.after
def _slow_after(job):
    if isinstance(job, SlowAfter):
        append(job.path + ".after", f"after-start {os.getpid()} {time.time():.6f}")
        time.sleep(job.after_seconds)
        append(job.path + ".after", f"after-done {os.getpid()} {time.time():.6f}")


# 3. A job that cancels the worker's alarm ##################################################
class CancelAlarm(Job):
    """timeout = 2, tries = 1. Records its start, then takes the process's alarm for itself:
    - "alarm": signal.alarm(0);
    - "setitimer": signal.setitimer(ITIMER_REAL, 0);
    - "decorator": what the timeout-decorator package does for a limit of 60 s: its own SIGALRM
      handler (raising TimeoutError) and signal.setitimer(ITIMER_REAL, 60), undone at the end;
    then runs 20 s in time.sleep(0.1) steps and records "<value>-done"."""

    tries = 1
    timeout = 2

    def __init__(self, path, mode, **attributes):
        super().__init__(path, mode, **attributes)
        self.mode = mode

    def handle(self):
        previous = None
        if self.mode == "alarm":
            signal.alarm(0)
        elif self.mode == "setitimer":
            signal.setitimer(signal.ITIMER_REAL, 0)
        else:
            def handler(signum, frame):
                raise TimeoutError("timed out after 60 seconds (the job's own decorator)")
            previous = signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, 60)
        self.record()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            if previous is not None:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
        self.record(self.value + "-done")


# 4. A thread that never ends ###############################################################
class LeaveThread(Job):
    """Records its run, starts a non-daemon thread that never ends, and returns."""

    def handle(self):
        self.record()
        threading.Thread(target=_forever, name="never-ends", daemon=False).start()


def _forever():
    while True:
        time.sleep(0.1)


# 5. async jobs, one of which blocks the event loop ##########################################
class BlockingAsync(Job):
    """An `async def handle()` that calls time.sleep(seconds): it blocks its event loop. It
    records its start (and touches path + ".started"), then "<value>-done"."""

    tries = 1

    def __init__(self, path, seconds=8, value="blocker", **attributes):
        super().__init__(path, value, **attributes)
        self.seconds = seconds

    async def handle(self):
        self.record()
        open(self.path + ".started", "w").close()
        time.sleep(self.seconds)
        self.record(self.value + "-done")


class PoliteAsync(Job):
    """A well-behaved `async def handle()` (timeout = 3, tries = 1): waits (awaiting, up to 2 s)
    until `blocker` + ".started" exists, so that it runs beside the blocking job, then awaits
    asyncio.sleep(0.1) and records "<value>-done"."""

    tries = 1
    timeout = 3

    def __init__(self, path, blocker, value="polite", **attributes):
        super().__init__(path, value, **attributes)
        self.blocker = str(blocker)

    async def handle(self):
        self.record()
        deadline = time.monotonic() + 2
        while not os.path.exists(self.blocker + ".started") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        self.record(self.value + "-done")


# 7. A job that closes the standard streams ##################################################
class CloseStreams(Job):
    """Records its run, then closes sys.stdout and sys.stderr."""

    def handle(self):
        self.record()
        sys.stdout.close()
        sys.stderr.close()


# 8. A job that ignores SIGTERM while it runs ################################################
class IgnoreTermWhileRunning(Job):
    """Sets SIGTERM to SIG_IGN, records its start, runs `seconds` (2), records "<value>-done"."""

    def __init__(self, path, seconds=2, value="ign", **attributes):
        super().__init__(path, value, **attributes)
        self.seconds = seconds

    def handle(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.record()
        time.sleep(self.seconds)
        self.record(self.value + "-done")


# 9. A job class whose name is 250 characters long ##########################################
LONG_NAME = "Long" + "N" * 246
LongNamed = type(LONG_NAME, (Record,), {"__module__": __name__, "__doc__": "A Record with a 250-character name."})
globals()[LONG_NAME] = LongNamed  # importable by its name, as pickle looks it up
assert len(LONG_NAME) == 250
