"""`work --processes N`: one command keeps N worker processes running, replaces one that dies,
and passes SIGTERM (warm, then cold) to all of them."""
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import queue  # noqa: E402
import testjobs  # noqa: E402
from testjobs import runs, values, wait_for  # noqa: E402


@pytest.fixture
def project(sqlite_project):
    return sqlite_project


def ready(project):
    return queue.driver("database").stats(["default"]).get("default", {}).get("ready", 0)


def alive(pid):
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def started_pids(path):
    return {r.pid for r in runs(path) if r.value == "gate"}


def test_n_workers_run_at_once_and_one_that_is_killed_is_replaced(project, tmp_path, spawn):
    held, gate = str(tmp_path / "held"), str(tmp_path / "gate")
    queue.push(testjobs.Gate(held, gate), testjobs.Gate(held, gate))
    supervisor = spawn(project, "work", "--processes", "2")
    wait_for(lambda: len(started_pids(held)) == 2, 30, message="two workers did not each start a job")
    first, second = sorted(started_pids(held))
    assert supervisor.proc.pid not in (first, second)

    os.kill(first, signal.SIGKILL)  # its job comes back once its reservation lapses (retry_after 2 s)
    wait_for(lambda: len(started_pids(held)) == 3, 30,
             message=f"no new worker took the killed worker's job:\n{supervisor.output}")
    (third,) = started_pids(held) - {first, second}
    assert f"worker {first} was killed by SIGKILL; starting another" in supervisor.output

    open(gate, "w").close()
    wait_for(lambda: values(held).count("gate-done") == 2, 30, message="the jobs did not finish")
    supervisor.proc.send_signal(signal.SIGTERM)
    assert supervisor.wait(20) == 0, supervisor.output
    assert not alive(second) and not alive(third), "a worker outlived its supervisor"
    assert ready(project) == 0


def test_a_sigterm_lets_every_worker_finish_its_job(project, tmp_path, spawn):
    held, gate = str(tmp_path / "held"), str(tmp_path / "gate")
    queue.push(testjobs.Gate(held, gate), testjobs.Gate(held, gate), testjobs.Record(str(tmp_path / "after")))
    supervisor = spawn(project, "work", "--processes", "2")
    wait_for(lambda: len(started_pids(held)) == 2, 30, message="two workers did not each start a job")
    supervisor.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: supervisor.output.count("SIGTERM: finishing the current job") == 2, 10,
             message=f"the workers were not told:\n{supervisor.output}")
    assert supervisor.proc.poll() is None, "the supervisor left before its workers"
    open(gate, "w").close()
    assert supervisor.wait(20) == 0, supervisor.output
    assert values(held).count("gate-done") == 2
    assert ready(project) == 1, "a worker took a new job after SIGTERM"
    assert "Traceback" not in supervisor.output


def test_a_second_sigterm_puts_every_job_back(project, tmp_path, spawn):
    held, gate = str(tmp_path / "held"), str(tmp_path / "gate")
    queue.push(testjobs.Gate(held, gate), testjobs.Gate(held, gate))
    supervisor = spawn(project, "work", "--processes", "2")
    wait_for(lambda: len(started_pids(held)) == 2, 30, message="two workers did not each start a job")
    supervisor.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: supervisor.output.count("SIGTERM: finishing the current job") == 2, 10,
             message=f"the workers were not told:\n{supervisor.output}")
    supervisor.proc.send_signal(signal.SIGTERM)
    assert supervisor.wait(20) == 0, supervisor.output
    assert values(held) == ["gate", "gate"]
    assert ready(project) == 2, "the interrupted jobs are not back on their queue"


def test_stop_when_empty_ends_when_every_worker_found_the_queue_empty(project, tmp_path):
    path = str(tmp_path / "out")
    queue.push(*(testjobs.Sleep(path, 0.05, f"j{i}") for i in range(20)))
    done = project.cli("work", "--processes", "2", "--stop-when-empty", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    finished = [r for r in runs(path) if r.value.endswith("-done")]
    assert sorted(r.value for r in finished) == sorted(f"j{i}-done" for i in range(20)), "each job once"
    assert len({r.pid for r in finished}) == 2, "one worker ran every job"
