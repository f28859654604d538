"""One view that pushes a job per request, and one that says which `queue` the app got."""
import os

import queue
from jobs.Record import Record

import _queue
from django.http import HttpResponse
from django.urls import path

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = os.path.join(PROJECT, "records.txt")


def push(request):
    queue.push(Record(RECORDS, int(request.GET["n"])))
    return HttpResponse("ok", content_type="text/plain")


def check(request):
    assert queue.Empty is _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue
    assert callable(queue.push) and Record.__mro__[1] is queue.Queueable
    direct = os.path.abspath(queue.__file__) == os.path.join(PROJECT, "queue.py")
    return HttpResponse("direct" if direct else "adopted", content_type="text/plain")


urlpatterns = [path("push", push), path("check", check)]
