"""What is the sqs driver's own (SPEC section 8), against moto's standalone server (the only SQS
endpoint these machines reach; the README says so): a delay past SQS's 15 minutes is delayed again
on arrival, a payload over the queue's own MaximumMessageSize is refused at push, clear drops the
delayed messages too, and a wrong endpoint or missing credentials is one line."""
import os
import time

import pytest

import queue
import testjobs
from conftest import Project, unique
from helpers import free_port, one_line_error, wait_for
from testjobs import values


def test_a_message_that_arrives_before_it_is_due_is_delayed_again(sqs_project, tmp_path):
    path, driver = str(tmp_path / "record"), queue.driver()
    driver.clock.advance(4)  # pushed "4 s from now": due then, but SQS delivers it at once
    queue.push(testjobs.Record(path, "due"))
    driver.clock.advance(-4)
    name = driver.default_queue
    assert driver.pop([name], 0) is None, "not due: sent again with the delay left"
    started = time.monotonic()
    message = wait_for(lambda: driver.pop([name], 1), 20, message="the job did not come back when due")
    assert 2.5 < time.monotonic() - started < 10
    assert message.attempts == 1, "putting it off spent no attempt"
    driver.ack(message)


def test_a_payload_over_the_queues_maximum_message_size_is_refused_at_push(sqs_project, tmp_path):
    driver = queue.driver()
    url = driver.url(driver.default_queue)
    driver.client().set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    queue.push(testjobs.Record(str(tmp_path / "r"), "small"))
    with pytest.raises(queue.QueueError, match="MaximumMessageSize") as info:
        queue.push(testjobs.Record(str(tmp_path / "r"), "x" * 2000))
    assert "\n" not in str(info.value)


def test_clear_drops_the_delayed_messages_when_they_arrive(sqs_project, tmp_path):
    path, driver = str(tmp_path / "record"), queue.driver()
    queue.push(testjobs.Record(path, "ready"))
    queue.push(testjobs.Record(path, "delayed"), delay=2)
    assert queue.clear() == 2
    queue.push(testjobs.Record(path, "after"), delay=2.5)  # pushed after the clear: kept
    time.sleep(3.5)  # noqa: the delayed messages come due at SQS (its clock), not on ours
    assert queue.Worker(driver, poll=0, stop_when_empty=True).run() == 0
    assert values(path) == ["after"]


def test_queue_names_sqs_refuses_are_refused_at_push(sqs_project, tmp_path):
    for name in ("with space", "dot.ted", "x" * 81):
        with pytest.raises(queue.QueueError, match="SQS queue name"):
            queue.push(testjobs.Record(str(tmp_path / "r"), "x"), queue=name)


def test_a_wrong_endpoint_or_missing_credentials_is_one_line(tmp_path):
    drivers = {"default": "sqs", "sqs": {"endpoint": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s"},
               "database": {"connection": "sqlite"}}
    project = Project(tmp_path, drivers, {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"}})
    one_line_error(project.cli("status", timeout=30), "127.0.0.1")
    drivers["sqs"] = {"endpoint": f"http://127.0.0.1:{free_port()}", "region": "us-east-1"}
    project.write_config()
    result = project.cli("status", timeout=30, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="",
                         AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                         AWS_EC2_METADATA_DISABLED="true")
    one_line_error(result, "credentials")
