"""Operating a running system: live workers in `status`, pause and resume, and /metrics read by
Prometheus' own parser during a 10,000-job drain. (The dashboard's page is tested in a browser in
test_dashboard.py.)
"""
import os
import signal
import time
import urllib.request

import pytest

import queue
import testjobs
from conftest import backends
from helpers import free_port, stop, wait_worker
from testjobs import values, wait_for

parser = pytest.importorskip("prometheus_client.parser")


@backends("sqlite", "mysql", "redis", "beanstalkd")
def test_status_lists_live_workers_and_a_dead_one_drops_out(project, tmp_path, spawn):
    gate, held = str(tmp_path / "gate"), str(tmp_path / "held")
    queue.push(testjobs.Gate(held, gate, "held"))
    worker = spawn(project, "work")
    wait_worker(worker, lambda: values(held), 30, "the worker did not start the job")
    live = wait_for(lambda: [w for w in queue.workers() if w["pid"] == worker.proc.pid and w["current"]], 15,
                    message="the worker did not report itself with its job")
    assert live[0]["current"] == "Gate" and live[0]["queues"] == [queue.driver().default_queue] and live[0]["since"] <= time.time()
    out = project.cli("status").stdout
    assert f":{worker.proc.pid}" in out and "Gate since" in out, out
    worker.proc.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert any(w["pid"] == worker.proc.pid for w in queue.workers()), "a beat lives 30 s"
    queue.driver().state_store().clock.advance(31)  # no beat for 31 s: it dropped out
    assert not any(w["pid"] == worker.proc.pid for w in queue.workers())


def test_a_stopped_worker_leaves_the_registry_at_once(sqlite_project, spawn):
    worker = spawn(sqlite_project, "work")
    wait_for(lambda: any(w["pid"] == worker.proc.pid for w in queue.workers()), 15, message="no beat")
    stop(worker)
    assert not any(w["pid"] == worker.proc.pid for w in queue.workers())


def test_a_paused_queue_gives_no_job_until_it_is_resumed(sqlite_project, tmp_path, spawn):
    path = str(tmp_path / "record")
    queue.pause("default")
    assert queue.paused() == ["default"]
    worker = spawn(sqlite_project, "work", "--queue", "default,other")
    queue.push(testjobs.Record(path, "held"))
    queue.push(testjobs.Record(path, "other"), queue="other")
    wait_worker(worker, lambda: values(path) == ["other"], 15, "the other queue was not worked")
    deadline = time.monotonic() + 1.5  # a worker sees a pause within a second: give it more
    while time.monotonic() < deadline:
        assert values(path) == ["other"], "a job was taken from a paused queue"
        time.sleep(0.1)
    resumed = time.monotonic()
    assert sqlite_project.cli("resume", "default").returncode == 0
    wait_worker(worker, lambda: values(path) == ["other", "held"], 5, "the job did not run after resume")
    assert time.monotonic() - resumed < 2.5, "a resume is seen within about a second"
    stop(worker)


def test_metrics_parse_during_a_10000_job_drain(sqlite_project, tmp_path, spawn):
    for start in range(0, 10000, 1000):
        queue.push(*(testjobs.Noop() for _ in range(1000)))
    port = free_port()
    dashboard = spawn(sqlite_project, "dashboard", "--port", port, QUEUE_DASHBOARD_TOKEN="t" * 20)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _get(url), 20, interval=0.1, message="the dashboard did not answer")
    worker = spawn(sqlite_project, "work", "--stop-when-empty")
    scrapes = []
    while worker.proc.poll() is None:
        scrapes.append(_families(_get(url)))
    assert worker.wait(60) == 0, worker.output
    scrapes.append(_families(_get(url)))
    assert len(scrapes) >= 3, "scraped during the drain"
    for families in scrapes:
        assert {"queue_ready_jobs", "queue_failed_jobs", "queue_oldest_ready_age_seconds",
                "queue_job_duration_seconds", "queue_workers"} <= set(families), sorted(families)
    done = [families.get("queue_jobs_done", {}).get(("job", "Noop"), 0) for families in scrapes]
    assert done == sorted(done), "a counter never goes back"
    assert done[-1] == 10000
    last = scrapes[-1]
    assert last["queue_job_duration_seconds"][("bucket", "+Inf")] == 10000
    assert last["queue_ready_jobs"].get(("queue", "default"), 0) == 0
    dashboard.proc.terminate()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return response.read().decode()
    except OSError:
        return None


def _families(text):
    """{family: {(label, value): sample value}} as prometheus_client's parser reads the text."""
    result = {}
    for family in parser.text_string_to_metric_families(text):
        samples = result.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                samples[("bucket", sample.labels["le"])] = sample.value
            elif not sample.name.endswith(("_sum", "_count", "_created")):
                key = next(iter(sample.labels.items()), ("", ""))
                samples[key] = sample.value
    return result
