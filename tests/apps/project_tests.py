"""A project's own test (copied to tests/test_app.py), run with the `pytest` console script."""
import os

import queue
from jobs.Record import Record

import _queue

RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "records.txt")


def test_push_twenty_jobs():
    assert queue.Empty is _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue
    for n in range(10):
        queue.push(Record(RECORDS, n))
    queue.push(*[Record(RECORDS, n) for n in range(10, 20)])
