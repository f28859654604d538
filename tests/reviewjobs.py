"""Job classes of tests/test_review.py (the independent review's findings)."""
import asyncio
import os
import signal
import time

import queue
import testjobs


class ChainsHandler(queue.Queueable):
    """Sets a SIGTERM handler that cleans up and then calls the handler it replaced; runs 2 s."""

    tries = 1

    def __init__(self, path):
        self.path = path

    def handle(self):
        previous = signal.signal(signal.SIGTERM, lambda s, f: (testjobs.append(self.path, "cleanup"), previous(s, f)))
        testjobs.append(self.path, "start")
        time.sleep(2)
        signal.signal(signal.SIGTERM, previous)
        testjobs.append(self.path, "end")


class Held(queue.Queueable):
    """WithoutOverlapping(key): records its run."""

    def __init__(self, path, key):
        self.path, self.key = path, key

    def middleware(self):
        return [queue.WithoutOverlapping(self.key)]

    def handle(self):
        testjobs.append(self.path, "ran")


LOOPS = []


class LoopBound(queue.Queueable):
    """async: records which event loop it ran on; raises if told to."""

    tries = 1

    def __init__(self, raise_it=False):
        self.raise_it = raise_it

    async def handle(self):
        await asyncio.sleep(0)
        LOOPS.append(id(asyncio.get_running_loop()))
        if self.raise_it:
            raise ValueError("an ordinary failure")


class AsyncNote(queue.Queueable):
    """async: appends "ran" to path."""

    def __init__(self, path):
        self.path = path

    async def handle(self):
        await asyncio.sleep(0)
        testjobs.append(self.path, "ran")


class DiesInChild(queue.Queueable):
    """os._exit in its process (a pool child)."""

    tries = 1

    def handle(self):
        os._exit(3)
