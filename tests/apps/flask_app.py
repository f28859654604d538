"""A Flask app that pushes a job per request (copied to app.py)."""
import os

import queue
from jobs.Record import Record

import _queue
from flask import Flask, request

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.txt")
app = Flask(__name__)


@app.get("/push")
def push():
    queue.push(Record(RECORDS, int(request.args["n"])))
    return "ok"


@app.get("/check")
def check():
    assert queue.Empty is _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue
    assert callable(queue.push) and Record.__mro__[1] is queue.Queueable
    mine = os.path.join(os.path.dirname(os.path.abspath(__file__)), "queue.py")
    return "direct" if os.path.abspath(queue.__file__) == mine else "adopted"
