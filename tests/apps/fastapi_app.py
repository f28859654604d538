"""A FastAPI app that pushes a job per request (copied to main.py); jobs are imported before queue."""
import os

from jobs.Record import Record
import queue

import _queue
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.txt")
app = FastAPI()


@app.get("/push", response_class=PlainTextResponse)
def push(n: int):  # a plain def: FastAPI runs it on its thread pool, as push() blocks
    queue.push(Record(RECORDS, n))
    return "ok"


@app.get("/check", response_class=PlainTextResponse)
def check():
    assert queue.Empty is _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue
    assert callable(queue.push) and Record.__mro__[1] is queue.Queueable
    mine = os.path.join(os.path.dirname(os.path.abspath(__file__)), "queue.py")
    return "direct" if os.path.abspath(queue.__file__) == mine else "adopted"
