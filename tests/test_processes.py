"""`work --processes N`: one command keeps N worker processes running, replaces one that dies,
and passes SIGTERM (warm, then cold) to all of them. `work --concurrency N`: one worker runs N
jobs at once on threads, each with its own claim, reservation, attempt count and timeout."""
import os
import signal
import sys
import time

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


# --concurrency ################################################################################
def test_concurrency_runs_n_jobs_at_once_in_one_worker(project, tmp_path, spawn):
    held, gate, after = str(tmp_path / "held"), str(tmp_path / "gate"), str(tmp_path / "after")
    queue.push(*(testjobs.Gate(held, gate) for _ in range(4)), testjobs.Record(after))
    worker = spawn(project, "work", "--concurrency", "4")
    wait_for(lambda: values(held).count("gate") == 4, 30, message=f"4 jobs did not start at once:\n{worker.output}")
    assert started_pids(held) == {worker.proc.pid}
    assert values(after) == [], "a fifth job started while four ran"
    open(gate, "w").close()
    wait_for(lambda: values(held).count("gate-done") == 4 and values(after) == ["run"], 30,
             message="the jobs did not finish")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output
    assert ready(project) == 0 and "Traceback" not in worker.output


def test_every_lane_renews_its_reservation_and_enforces_its_timeout(project, tmp_path, spawn):
    """retry_after is 2 s: jobs held 5 s in both lanes still run once. Busy jobs past their
    timeout of 1 s are interrupted in either lane (by the keeper)."""
    held, gate, busy = str(tmp_path / "held"), str(tmp_path / "gate"), str(tmp_path / "busy")
    queue.push(testjobs.Gate(held, gate), testjobs.Gate(held, gate))
    worker = spawn(project, "work", "--concurrency", "2")
    wait_for(lambda: values(held).count("gate") == 2, 30, message="the two jobs did not start at once")
    time.sleep(5)  # the point: 2.5 x retry_after passes while both jobs run
    open(gate, "w").close()
    wait_for(lambda: values(held).count("gate-done") == 2, 30, message="the jobs did not finish")
    assert values(held).count("gate") == 2, "a reservation lapsed: a job ran twice"

    queue.push(testjobs.Busy(busy, 30, "b1", timeout=1, tries=1), testjobs.Busy(busy, 30, "b2", timeout=1, tries=1))
    wait_for(lambda: len(queue.driver("database").failed_store().failed_jobs()) == 2, 20,
             message=f"the busy jobs were not stopped at their timeout:\n{worker.output}")
    assert sorted(values(busy)) == ["b1", "b2"]
    assert all(row["exception"].startswith("JobTimeout") for row in queue.driver("database").failed_store().failed_jobs())
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output


@pytest.mark.parametrize("signals", [1, 2], ids=["warm", "cold"])
def test_sigterm_reaches_every_lane(project, tmp_path, spawn, signals):
    held, gate = str(tmp_path / "held"), str(tmp_path / "gate")
    queue.push(*(testjobs.Gate(held, gate) for _ in range(3)))
    worker = spawn(project, "work", "--concurrency", "3")
    wait_for(lambda: values(held).count("gate") == 3, 30, message="three jobs did not start at once")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: finishing the current job" in worker.output, 10, message="the worker was not told")
    if signals == 2:
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.output
        assert values(held) == ["gate"] * 3 and ready(project) == 3, "the interrupted jobs are not back"
    else:
        assert worker.proc.poll() is None
        open(gate, "w").close()
        assert worker.wait(20) == 0, worker.output
        assert values(held).count("gate-done") == 3 and ready(project) == 0
    assert "Traceback" not in worker.output


def test_no_lane_can_change_the_workers_signal_handlers(project, tmp_path, spawn):
    """Lanes run on threads of their own, the main thread only waits: a job that sets SIGTERM to
    SIG_IGN fails in every lane (Python allows signal.signal() in the main thread only), so it
    can never leave the jobs of the other lanes without their warm shutdown."""
    ignore, held, gate = str(tmp_path / "ignore"), str(tmp_path / "held"), str(tmp_path / "gate")
    sys.path.insert(0, os.path.dirname(__file__))
    import poisonjobs
    queue.push(*(poisonjobs.IgnoreTerm(ignore, f"i{n}", tries=1) for n in range(4)))
    worker = spawn(project, "work", "--concurrency", "2")
    wait_for(lambda: len(testjobs.failures(ignore)) == 4, 30, message=f"the jobs did not fail:\n{worker.output}")
    assert all("signal only works in main thread" in line for line in testjobs.failures(ignore))
    queue.push(testjobs.Gate(held, gate))
    wait_for(lambda: values(held) == ["gate"], 30, message="the gate job did not start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: finishing the current job" in worker.output, 10, message="SIGTERM was ignored")
    open(gate, "w").close()
    assert worker.wait(20) == 0, worker.output
    assert values(held) == ["gate", "gate-done"]


def test_concurrency_on_amqp(amqp_project, tmp_path, spawn):
    held, gate = str(tmp_path / "held"), str(tmp_path / "gate")
    queue.push(*(testjobs.Gate(held, gate) for _ in range(4)))
    worker = spawn(amqp_project, "work", "--concurrency", "4")
    wait_for(lambda: values(held).count("gate") == 4, 30, message=f"4 jobs did not start at once:\n{worker.output}")
    open(gate, "w").close()
    wait_for(lambda: values(held).count("gate-done") == 4, 30, message="the jobs did not finish")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output
    assert "Traceback" not in worker.output


# async def jobs ###############################################################################
def test_async_jobs_run_at_once_on_the_event_loop(project, tmp_path):
    path = str(tmp_path / "out")
    queue.push(*(testjobs.AsyncSleep(path, 0.5, f"a{i}") for i in range(10)))
    done = project.cli("work", "--concurrency", "10", "--stop-when-empty", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    order = values(path)
    assert sorted(v for v in order if v.endswith("-done")) == sorted(f"a{i}-done" for i in range(10))
    first_end = min(i for i, v in enumerate(order) if v.endswith("-done"))
    assert first_end == 10, f"the ten awaited at once: every one began before the first ended ({order})"


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_an_async_job_past_its_timeout_is_cancelled(project, tmp_path, lanes):
    path = str(tmp_path / "out")
    queue.push(testjobs.AsyncSleep(path, 60, "a1", timeout=0.5, tries=1),
               testjobs.AsyncSleep(path, 60, "a2", timeout=0.5, tries=1))
    done = project.cli("work", "--concurrency", lanes, "--stop-when-empty", timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = queue.driver("database").failed_store().failed_jobs()
    assert len(rows) == 2 and all(row["exception"].startswith("JobTimeout") for row in rows), rows
    assert sorted(values(path)) == ["a1", "a2"], "a cancelled job went on"


def test_run_now_awaits_an_async_job(project, tmp_path):
    path = str(tmp_path / "out")
    queue.run_now(testjobs.AsyncSleep(path, 0.01, "now"))
    assert values(path) == ["now", "now-done"]


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_an_alarm_a_job_sets_goes_off_harmlessly(project, tmp_path, lanes):
    """SIGALRM is the worker's while it runs: a job's own timer is ignored, not fatal (and, with
    lanes, it reaches no other lane's job)."""
    import poisonjobs
    out, other = str(tmp_path / "out"), str(tmp_path / "other")
    queue.push(poisonjobs.LingeringAlarm(out, "alarm"), *(testjobs.Sleep(other, 0.3, f"s{i}") for i in range(4)))
    done = project.cli("work", "--concurrency", lanes, "--stop-when-empty", timeout=60)
    assert done.returncode == 0, f"the worker died of the job's alarm:\n{done.stdout}{done.stderr}"
    assert values(out) == ["alarm", "alarm-done"]
    assert sorted(v for v in values(other) if v.endswith("-done")) == [f"s{i}-done" for i in range(4)]
    assert queue.driver("database").failed_store().failed_jobs() == []
