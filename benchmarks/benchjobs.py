"""Trivial jobs for benchmarks/bench.py: importable by the benchmark process and by subprocess
workers (bench.py puts this folder on their PYTHONPATH)."""
from queue import Queueable  # our queue.py: bench.py and `python queue.py` make sure of it


class Noop(Queueable):
    """A job whose handle() does nothing: what is measured is the queue, not the job."""

    def handle(self):
        pass


def noop():
    """The job of the raw floors."""


class Stamp(Queueable):
    """Appends "number latency-seconds" to `path` the moment handle() starts; `pushed` is set to
    time.time() just before queue.push() (for push-to-start latency)."""

    def __init__(self, path, number):
        self.path, self.number, self.pushed = path, number, None

    def handle(self):
        started = __import__("time").time()
        with open(self.path, "a") as f:
            f.write(f"{self.number} {started - self.pushed:.6f}\n")


class Spin(Queueable):
    """A CPU-bound job: spins for `seconds` of CPU time (for `work --processes N`)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def handle(self):
        import time
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass


class Nap(Queueable):
    """A job that waits `seconds` (time.sleep): I/O-bound, for `work --concurrency N`."""

    def __init__(self, seconds):
        self.seconds = seconds

    def handle(self):
        __import__("time").sleep(self.seconds)


class AsyncNap(Queueable):
    """An `async def handle()` that awaits asyncio.sleep(seconds)."""

    def __init__(self, seconds):
        self.seconds = seconds

    async def handle(self):
        import asyncio
        await asyncio.sleep(self.seconds)
