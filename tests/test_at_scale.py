"""The operating commands at a million jobs (the issue "Operating commands that stay small"):
retry, forget and flush work in bounded batches and return counts; counts come from indexes, and
past a server database's count_cap they are the server's estimate, marked as such everywhere.
The sizes are benchmarks/scale.py's; these tests run the same paths with small batches and caps."""
import pytest

import queue
import testjobs
from conftest import backends
from helpers import failed_rows, ok

pytestmark = backends("sqlite", "mysql", "postgres")


def fail_some(count):
    driver = queue.driver("database")
    store = driver.failed_store()
    [message] = driver.messages([testjobs.Noop()])
    for i in range(count):
        message.id = None
        store.add_failed("database", driver.connection, message, f"boom {i}")
    return store


def test_flush_and_forget_work_in_batches_and_count(project):
    store = fail_some(10)
    ids = [row["id"] for row in failed_rows()]
    assert store.forget(ids[:4], batch=3) == 4
    assert store.forget(None, batch=3) == 6, "every batch of 3, then the rest"
    assert failed_rows() == []
    fail_some(7)
    assert store.forget(None, older_than=-60, batch=2) == 7


def test_retry_returns_a_count_and_hands_each_row_to_a_callback(project):
    fail_some(5)
    seen = []
    assert queue.retry(each=seen.append) == 5
    assert len(seen) == 5 and all("payload" in row for row in seen)
    assert queue.retry() == 0
    assert queue.status()["default"]["ready"] == 5


def test_counts_past_the_cap_are_marked_estimates(project):
    queue.push(*(testjobs.Noop() for _ in range(30)))
    fail_some(30)
    dialect = queue.driver("database").dialect
    if project.backend == "sqlite":
        assert dialect.count_cap is None  # SQLite counts a million index entries in 0.15 s: always exact
        dialect.count_cap = 10
    saved, dialect.count_cap = dialect.count_cap, 10
    try:
        counts = queue.status()["default"]
        assert isinstance(counts["ready"], queue._Estimate) and counts["ready"] > 10, counts
        assert isinstance(counts["failed"], queue._Estimate) and counts["failed"] > 10, counts
        assert 'queue_count_estimated{queue="default",count="ready"} 1' in queue.metrics()
        assert queue.dashboard_state()["queues"][0]["estimated"] == ["ready", "failed"]
    finally:
        dialect.count_cap = saved if project.backend != "sqlite" else None
    exact = queue.status()["default"]
    assert exact == {"ready": 30, "delayed": 0, "reserved": 0, "failed": 30}
    assert not isinstance(exact["ready"], queue._Estimate)
    assert "~" not in ok(project.cli("status"))
