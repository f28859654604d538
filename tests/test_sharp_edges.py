"""The sharp edges users and an adversary found (the issue "Promises that users found broken"),
each tested where a user meets it: the command line, config.py, /metrics, tasks, pauses, clear,
retry_until, signing. Each test failed before its fix."""
import hmac
import os
import subprocess
import sys
import threading
import time
import types

import pytest

import queue
import testjobs
from conftest import unique
from helpers import failed_rows, log_lines, ok, one_line_error, stop, wait_worker
from testjobs import values, wait_for


# The command line #############################################################################
def test_laravel_and_masonite_spellings_and_a_positional_driver(sqlite_project):
    ok(sqlite_project.cli("make:job", "Invoice"))
    assert os.path.isfile(os.path.join(sqlite_project.folder, "jobs", "Invoice.py"))
    queue.push(testjobs.Record(os.path.join(sqlite_project.folder, "r.txt"), "x"))
    ok(sqlite_project.cli("queue:work", "database", "--stop-when-empty"))
    assert values(os.path.join(sqlite_project.folder, "r.txt")) == ["x"]
    for command in ("queue:failed", "queue:flush", "queue:restart", "queue:table", "queue:failed-table"):
        ok(sqlite_project.cli(command))
    one_line_error(sqlite_project.cli("work", "amqp", "--driver", "database", "--once"), "name the driver once")


@pytest.mark.parametrize("name", ["class", "None", "Queueable", "9lives", "my-job"])
def test_job_refuses_a_name_that_would_not_be_valid_python(sqlite_project, name):
    one_line_error(sqlite_project.cli("job", name))
    assert not os.path.exists(os.path.join(sqlite_project.folder, "jobs", f"{name}.py"))


def test_a_listing_cut_short_by_its_reader_ends_quietly(sqlite_project):
    for i in range(200):
        queue.push(testjobs.Noop(), queue=f"q{i}")
    result = subprocess.run(f"{sys.executable} queue.py status | head -1", shell=True, cwd=sqlite_project.folder,
                            env=sqlite_project.env(), capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("queue") and "Traceback" not in result.stderr, result.stderr


# config.py ####################################################################################
def test_a_misspelled_top_level_name_warns_in_one_line(sqlite_project):
    with open(sqlite_project.config_path, "w") as f:
        f.write(f"DRIVER = {{'default': 'database'}}\nKEY = {sqlite_project.key!r}\n")
    result = sqlite_project.cli("status")
    ok(result)
    warnings = [line for line in result.stderr.splitlines() if "DRIVERS" in line]
    assert len(warnings) == 1 and "DRIVER " in warnings[0], result.stderr


def test_masonite_orm_keys_of_a_databases_entry_are_accepted(tmp_path):
    entry = {"driver": "sqlite", "database": str(tmp_path / "q.sqlite3"), "prefix": "", "log_queries": False,
             "options": {"foreign_keys": True}, "grammar": "sqlite"}
    queue.configure(DRIVERS={"database": {"connection": "app"}}, DATABASES={"app": entry}, KEY="k" * 20)
    try:
        assert queue.push(testjobs.Noop())
    finally:
        queue._close_drivers()


def test_a_retry_after_below_a_second_is_refused():
    with pytest.raises(queue.ConfigError, match="retry_after"):
        queue.configure(DRIVERS={"database": {"retry_after": 0}}, KEY="k" * 20)


def test_a_lazy_name_imported_before_its_first_use_resolves_once(sqlite_project):
    result = subprocess.run([sys.executable, "-c", "from queue import log\nimport logging\n"
                             "for _ in range(1000): log.debug('x')\nprint(len(logging.getLogger('queue').handlers))"],
                            cwd=sqlite_project.folder, env=sqlite_project.env(), capture_output=True, text=True)
    assert ok(result).strip() == "1"


# Signing ######################################################################################
@pytest.mark.parametrize("size", [0, 300, 511, 512, 513, 4096, 65536])
def test_the_mac_is_hmac_sha256_at_every_size(sqlite_project, size):
    data = os.urandom(size)
    assert queue._mac(data) == hmac.digest(sqlite_project.key.encode(), data, "sha256")


# /metrics #####################################################################################
def test_every_metrics_family_is_distinct_for_prometheus_and_openmetrics(sqlite_project):
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry
    queue.push(testjobs.Noop(), testjobs.Fail(str(sqlite_project.folder) + "/f", "x", tries=1))
    ok(sqlite_project.cli("work", "--stop-when-empty"))
    families = list(text_string_to_metric_families(queue.metrics()))
    names = [f.name for f in families]
    assert "queue_failed_jobs" in names and "queue_jobs_failed" in names  # the gauge and the counter's family
    assert len(names) == len(set(names)), names

    class Collector:
        def collect(self):
            return families
    registry = CollectorRegistry()
    registry.register(Collector())  # refuses two collectors' worth of one family name
    assert b"queue_jobs_failed_total" in openmetrics(registry)


# Tasks ########################################################################################
def test_a_task_takes_every_job_setting_and_refuses_a_typo():
    with pytest.raises(queue.QueueError, match="did you mean 'tries'"):
        queue.task(tires=5)
    fn = queue.task(max_exceptions=2, unique_for=60, tries=4)(testjobs.append)
    job = fn.call("/dev/null", "x")
    assert (job.max_exceptions, job.unique_for, job.tries) == (2, 60, 4)


def test_a_push_option_given_to_a_task_is_refused_and_push_with_places_it(sqlite_project, tmp_path):
    fn = queue.task(testjobs.append)
    path = str(tmp_path / "t.txt")
    with pytest.raises(queue.QueueError, match="push_with"):
        fn.push(path, "x", connection="mysql")
    assert fn.push_with((path, "y"), queue="other")
    assert queue.status(queues=["other"])["other"]["ready"] == 1


# Pauses #######################################################################################
def test_paused_queues_show_in_status_and_a_worker_of_paused_queues_says_so(sqlite_project, spawn):
    name = unique("p")
    result = sqlite_project.cli("pause", name)
    ok(result)
    assert "holds no job" in result.stderr
    assert f"paused (workers take none of their jobs): {name}" in ok(sqlite_project.cli("status"))
    worker = spawn(sqlite_project, "work", "--queue", name)
    wait_worker(worker, lambda: log_lines(worker, "paused"), 10, "the worker did not say its queues are paused")
    stop(worker)


# clear ########################################################################################
@pytest.mark.parametrize("backend", ["sqlite_project", "memory_project"])
def test_clear_frees_the_unique_locks_of_the_jobs_it_deletes(request, backend, tmp_path):
    request.getfixturevalue(backend)
    import flowjobs
    path = str(tmp_path / "u")
    assert queue.push(flowjobs.Unique(path, "a"))
    assert not queue.push(flowjobs.Unique(path, "b"))
    assert queue.clear() == 1
    assert queue.push(flowjobs.Unique(path, "c")), "the lock stayed after its job was cleared"


def test_clear_refuses_an_empty_queue_name(sqlite_project):
    with pytest.raises(queue.QueueError):
        queue.clear("")


def test_clear_drops_the_delayed_jobs_of_a_rabbitmq_queue(amqp_project, tmp_path, spawn):
    path = str(tmp_path / "r")
    queue.push(testjobs.Record(path, "before"), delay=1)
    queue.clear(amqp_project.queue)
    queue.push(testjobs.Record(path, "after"), delay=1.5)  # due after the one pushed before the clear
    worker = spawn(amqp_project, "work")
    wait_worker(worker, lambda: values(path) == ["after"], 20, "the job pushed after the clear did not run")
    stop(worker)
    assert values(path) == ["after"], "a delayed job pushed before the clear ran"


# retry_until ##################################################################################
class Until(queue.Queueable):
    """A job with a retry_until deadline one second after its push."""

    def __init__(self, path):
        self.path = path

    def retry_until(self):
        return 1

    def handle(self):
        testjobs.append(self.path, "ran")


def test_a_job_taken_after_its_retry_until_deadline_is_failed_without_running(sqlite_project, tmp_path):
    path = str(tmp_path / "u")
    queue.push(Until(path))
    queue.driver().clock.advance(1.5)
    queue.Worker(queue.driver(), once=True).run()
    assert values(path) == [], "it ran after its deadline"
    [row] = failed_rows()
    assert "MaxAttemptsExceeded" in row["exception"]


# RabbitMQ: a deleted queue, the consumer timeout ###############################################
def _delete_queue(name):
    import pika
    from conftest import AMQP
    connection = pika.BlockingConnection(pika.URLParameters(
        f"amqp://{AMQP['username']}:{AMQP['password']}@{AMQP['host']}:{AMQP['port']}/{AMQP['vhost']}"))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


def test_a_worker_consumes_again_after_its_queue_is_deleted(amqp_project, tmp_path, spawn):
    path = str(tmp_path / "r")
    worker = spawn(amqp_project, "work")
    queue.push(testjobs.Record(path, "first"))
    wait_worker(worker, lambda: values(path) == ["first"], 20, "the first job did not run")
    _delete_queue(amqp_project.queue)
    queue._close_drivers()  # a pusher that starts afresh declares the queue again
    amqp_project.configure()
    queue.push(testjobs.Record(path, "after"), testjobs.Record(path, "after"))
    queue.push(testjobs.Record(path, "delayed"), delay=1)
    wait_worker(worker, lambda: sorted(values(path)) == ["after", "after", "delayed", "first"], 30,
                "the worker did not consume again after its queue was deleted")
    stop(worker)


def test_a_long_lived_pushers_delayed_jobs_reach_a_queue_deleted_meanwhile(amqp_project, tmp_path, spawn):
    path = str(tmp_path / "r")
    queue.push(testjobs.Record(path, "bound"), delay=0.2)  # binds the queue to the delay ladder
    worker = spawn(amqp_project, "work")
    wait_worker(worker, lambda: values(path) == ["bound"], 20, "the first delayed job did not run")
    stop(worker)
    _delete_queue(amqp_project.queue)
    for i in range(3):  # the same pusher, its connection and what it declared kept
        queue.push(testjobs.Record(path, f"d{i}"), delay=6 + i)
    worker = spawn(amqp_project, "work")
    wait_worker(worker, lambda: len(values(path)) == 4, 40, "a delayed job pushed after the deletion was lost")
    stop(worker)


def test_a_job_is_stopped_before_rabbitmqs_consumer_timeout(amqp_project, tmp_path, spawn):
    amqp_project.drivers["amqp"]["consumer_timeout"] = 3
    amqp_project.write_config()
    amqp_project.configure()
    path = str(tmp_path / "s")
    queue.push(testjobs.Sleep(path, 20, "long", tries=1))
    worker = spawn(amqp_project, "work")
    wait_worker(worker, lambda: failed_rows(), 15, "the job was not stopped before the consumer timeout")
    stop(worker)
    [row] = failed_rows()
    assert "JobTimeout" in row["exception"] and "consumer timeout" in row["exception"], row["exception"][:300]
    assert values(path) == ["long"], "it ran once, and was stopped"


# Drivers on threads ###########################################################################
def test_a_client_module_that_another_thread_is_importing_is_waited_for(tmp_path, monkeypatch):
    """`work --concurrency 4` on beanstalkd: four lanes asked for greenstalk at once, and three got
    the half-imported module from sys.modules ("partially initialized module 'greenstalk' has no
    attribute 'Client'"). A driver's client module is now whole before any thread uses it."""
    control = types.SimpleNamespace(started=threading.Event(), go=threading.Event())
    monkeypatch.setitem(sys.modules, "slow_client_control", control)
    (tmp_path / "slow_client.py").write_text(
        "import slow_client_control as c\nc.started.set()\nc.go.wait(10)\nClient = object\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_client", raising=False)
    got = []
    first = threading.Thread(target=lambda: queue._import_optional("slow_client", "slow"))
    second = threading.Thread(target=lambda: got.append(hasattr(queue._import_optional("slow_client", "slow"), "Client")))
    first.start()
    assert control.started.wait(10)
    second.start()
    second.join(0.3)  # it must still wait: the module is half made until `go`
    control.go.set()
    first.join(10)
    second.join(10)
    assert got == [True]
