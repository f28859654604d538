"""Wake-ups that never miss (the issue "Wake-ups that never miss under steady traffic"): an idle
worker takes a push at once, idle or under a steady trickle, one worker or two, on every SQL
dialect. `poll` is 5 s here, so a missed wake-up (a worker that sleeps the rest of its poll
blind) shows as a job started seconds after its push; every job must start within 1.5 s, far
above a wake-up's milliseconds and far below a poll. (Speed figures are benchmarks/trickle.py's.)"""
import os
import time

import pytest

import queue
import testjobs
from conftest import backends
from helpers import stop, wait_worker

pytestmark = backends("sqlite", "mysql", "postgres")
POLL, LATE = 5, 1.5


class Stamped(queue.Queueable):
    """Appends how long after its push it started (seconds) to `path`."""

    def __init__(self, path):
        self.path, self.pushed = path, time.time()

    def handle(self):
        testjobs.append(self.path, repr(time.time() - self.pushed))


def waits(path):
    return [float(v) for v in testjobs.lines(path)]


def start(project, spawn, count):
    project.drivers["database"]["poll"] = POLL
    project.write_config()
    project.configure()
    workers = [spawn(project, "work") for _ in range(count)]
    wait_worker(workers, lambda: all(w.lines for w in workers), 20, "the workers did not start")
    return workers


def test_single_pushes_into_an_idle_worker_start_at_once(project, tmp_path, spawn):
    path = str(tmp_path / "waits")
    [worker] = start(project, spawn, 1)
    for i in range(30):  # each after the one before ran: the worker is idle, then woken
        queue.push(Stamped(path))
        wait_worker(worker, lambda: len(waits(path)) == i + 1, 20, f"push {i + 1} did not run")
    stop(worker)
    late = [round(w, 3) for w in waits(path) if w > LATE]
    assert not late, f"{len(late)} of 30 pushes waited past a wake-up (poll {POLL} s): {late}"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_steady_trickle_is_taken_at_once_by_one_or_two_workers(project, tmp_path, spawn, workers):
    path = str(tmp_path / "waits")
    running = start(project, spawn, workers)
    began = time.monotonic()
    for i in range(300):  # 100 a second for 3 s, from this process
        queue.push(Stamped(path))
        time.sleep(max(0.0, began + (i + 1) / 100 - time.monotonic()))
    wait_worker(running, lambda: len(waits(path)) == 300, 30, "the trickle did not all run")
    stop(*running)
    late = sorted(round(w, 3) for w in waits(path) if w > LATE)
    assert not late, f"{len(late)} of 300 jobs waited past a wake-up (poll {POLL} s): {late[-10:]}"
