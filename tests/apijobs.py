"""Job classes (and functions) for tests/test_job_api.py: jobs that steer themselves (release,
fail, delete), the class attributes `delay` and `max_exceptions`, pushing a class, plain objects,
queue.call / @queue.task, and Masonite 4's failed(payload, exc). Importable as ``apijobs`` in the
test process and in worker subprocesses (conftest gives them PYTHONPATH=tests).

What they did is appended to files, one JSON object a line (``note(path, ...)``; read them back
with ``notes(path)``), so that runs in other threads and processes can be read:
``{"value", "attempts", "job_id", "pid", "at"}`` for an attempt of a ``Steered`` job. As in
testjobs, ``failed(exc)`` appends ``"<ExcType>: <message>"`` to ``path + ".failed"``
(``testjobs.failures(path)`` reads them). The functions for queue.call and @queue.task append
plain text lines (``testjobs.lines(path)``).
"""
import json
import os
import time

import queue
from testjobs import append, lines


def note(path, **fields):
    """Append one JSON line to path."""
    append(path, json.dumps(fields, sort_keys=True))


def notes(path):
    """The JSON lines of path, oldest first ([] if it does not exist yet)."""
    return [json.loads(line) for line in lines(path)]


def seen(path):
    """The values of the attempts recorded in path, oldest first."""
    return [n["value"] for n in notes(path)]


# Jobs that steer themselves ###################################################################
class Steered(queue.Queueable):
    """Base: records each attempt (value, self.attempts, self.job_id, pid, time) into `path`;
    optional per-instance tries / backoff / queue."""

    def __init__(self, path, value="job", **attributes):
        self.path, self.value = str(path), str(value)
        for name, setting in attributes.items():
            if name not in ("tries", "backoff", "queue"):
                raise TypeError(f"unknown job attribute {name!r}")
            setattr(self, name, setting)

    def record(self):
        note(self.path, value=self.value, attempts=self.attempts, job_id=self.job_id, pid=os.getpid(),
             at=time.time())

    def handle(self):
        self.record()

    def failed(self, exc):
        append(self.path + ".failed", f"{type(exc).__name__}: {exc}")

    def __repr__(self):
        return f"<{type(self).__name__} {self.value!r}>"


class ReleaseAlways(Steered):
    """Releases itself on every attempt (after `delay`): it never succeeds."""

    tries = 3

    def __init__(self, path, value="again", delay=0, **attributes):
        super().__init__(path, value, **attributes)
        self.delay_again = delay

    def handle(self):
        self.record()
        self.release(self.delay_again)


class ReleaseOnce(Steered):
    """Releases itself (after `delay`) on its first attempt; succeeds on the second."""

    def __init__(self, path, value="once", delay=0, **attributes):
        super().__init__(path, value, **attributes)
        self.delay_again = delay

    def handle(self):
        self.record()
        if self.attempts == 1:
            self.release(self.delay_again)


class FailItself(Steered):
    """Fails itself for good on its first attempt: self.fail(ValueError(error)), or self.fail()
    when error is None. It has tries to spare."""

    tries = 3

    def __init__(self, path, value="fail", error=None, **attributes):
        super().__init__(path, value, **attributes)
        self.error = error

    def handle(self):
        self.record()
        self.fail(ValueError(self.error) if self.error is not None else None)


class DeleteItself(Steered):
    """Ends itself on its first attempt with self.delete(): neither run again nor failed."""

    tries = 3

    def handle(self):
        self.record()
        self.delete()


class Later(Steered):
    """Every push of this class is delayed by 1 s unless push(delay=...) says otherwise."""

    delay = 1


class ReleaseThenRaise(Steered):
    """Releases itself on odd attempts and raises ValueError on even ones; fails for good after
    2 attempts that raised (max_exceptions), although it has 10 tries."""

    tries = 10
    max_exceptions = 2

    def handle(self):
        self.record()
        if self.attempts % 2:
            self.release(0)
        else:
            raise ValueError(f"attempt {self.attempts} raises")


class OwnClassQueue(Steered):
    """A Steered job whose class names its queue."""

    queue = "apijobs-class-queue"


# Other things to push #########################################################################
NOARGS_PATH = None  # where NoArgs() records; a test sets it before it pushes the class


class NoArgs(queue.Queueable):
    """A job made without arguments: queue.push(NoArgs) pushes NoArgs()."""

    def __init__(self):
        self.path = NOARGS_PATH

    def handle(self):
        append(self.path, f"noargs {self.attempts}")


class NeedsArgs(queue.Queueable):
    """A job whose constructor needs an argument: pushing the class is refused."""

    def __init__(self, path):
        self.path = path

    def handle(self):
        append(self.path, "needsargs")


class NoHandle:
    """Not a job: no handle() method."""

    def run(self):
        pass


class Plain:
    """Not a Queueable, but has handle(): runs like a job."""

    def __init__(self, path, value="plain"):
        self.path, self.value = str(path), value

    def handle(self):
        append(self.path, self.value)


class MasoniteFour(queue.Queueable):
    """A job written for Masonite 4: failed(self, obj, e) gets the payload dict and the exception."""

    tries = 1

    def __init__(self, path, value="m4"):
        self.path, self.value = str(path), value

    def handle(self):
        raise ValueError(f"m4 {self.value} fails")

    def failed(self, obj, e):
        job = obj.get("obj") if isinstance(obj, dict) else None
        note(self.path + ".failed", payload_type=type(obj).__name__, keys=sorted(obj) if isinstance(obj, dict) else None,
             job_type=type(job).__name__, job_value=getattr(job, "value", None),
             exc_type=type(e).__name__, exc=str(e))


# Functions and methods for queue.call and @queue.task #########################################
def write_line(path, text, suffix=""):
    """Append text + suffix to path."""
    append(path, f"{text}{suffix}")


class Writer:
    """Its bound method write(text) is pushed with queue.call."""

    def __init__(self, path):
        self.path = str(path)

    def write(self, text):
        append(self.path, text)


@queue.task
def tasked(path, text):
    append(path, text)


@queue.task(tries=2)
def tasked_fail(path, text):
    append(path, text)
    raise ValueError(f"task {text} fails")
