"""Regression tests for the issue "Faults an adversary found": one test (or a small parametrized
set) per finding, each asserting what a user relies on (README: Jobs, Workers, Failed jobs,
Operating it, Guarantees; SPEC section 4: a worker never dies of what a job does, two workers
never run one reserved job at once, SIGTERM stops a worker after its job, a job over its
`timeout` is a failed attempt, bad input is one line).

Workers and dashboards run as real `python queue.py ...` subprocesses in a temporary project
(conftest's sqlite_project / mysql_project / postgres_project, through the `spawn` fixture). The
jobs live in tests/adversaryjobs.py, importable by the workers through PYTHONPATH=tests. Tables
are read with SQL of the test's own (helpers.sql), not through the queue.py under test.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import adversaryjobs
import queue
import testjobs
from conftest import TESTS, backends
from helpers import (failed_count, failed_table, free_port, job_count, log_lines, one_line_error, sql, stop,
                     wait_worker)
from testjobs import failures, runs, values, wait_for

TOKEN = "adversary-t0ken"


# Helpers ######################################################################################
def short(worker, lines=40, width=300):
    """The last lines of a worker's output, each cut to `width` characters (a job may log 20 MB)."""
    return "\n".join(line.rstrip("\n")[:width] for line in worker.lines[-lines:])


def finish(worker, timeout):
    """Wait for a worker to exit; its exit status. One still running after timeout is killed and
    the test fails with the end of its output."""
    try:
        code = worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
        worker.proc.kill()
        worker.proc.wait()
    worker.reader.join(5)
    if code is None:
        raise AssertionError(f"the worker did not exit within {timeout} s; the end of its output:\n{short(worker)}")
    return code


def failed_table_rows(project):
    """[(name, exception)] of the failed table, oldest first (raw SQL)."""
    return sql(project, f"SELECT name, exception FROM {failed_table(project)} ORDER BY id")


def failed_names(project):
    return [name for name, _ in failed_table_rows(project)]


def with_retry_after(project, seconds):
    project.drivers["database"]["retry_after"] = seconds
    project.write_config()
    project.configure()


def alive_queue_process(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"queue.py" in f.read()
    except OSError:
        return False


def kill_leftovers(pids):
    """SIGKILL the worker processes of this test (by pid) that are still running."""
    for pid in set(pids):
        if alive_queue_process(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# The dashboard ################################################################################
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxies


def start_dashboard(project, spawn, *args):
    """`python queue.py dashboard --port P ARGS` with QUEUE_DASHBOARD_TOKEN; (spawned, port) once
    it answers on 127.0.0.1:P."""
    for _ in range(3):  # another program may take the free port first: then try another one
        port = free_port()
        spawned = spawn(project, "dashboard", "--port", str(port), *args, QUEUE_DASHBOARD_TOKEN=TOKEN)
        deadline = time.monotonic() + 20
        while spawned.proc.poll() is None:
            answer = raw_http(port, b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", 2)
            if answer and status_of(answer) is not None:
                return spawned, port
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer on port {port} within 20 s:\n{spawned.output}")
            time.sleep(0.05)
        spawned.wait(5)
        if "cannot serve" not in spawned.output:
            break
    pytest.fail(f"the dashboard exited with {spawned.proc.returncode}:\n{spawned.output}")


def raw_http(port, data, timeout):
    """Send raw bytes to 127.0.0.1:port; return what came back before the server closed the
    connection or `timeout` seconds passed (b"" if nothing), or None if it could not connect."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    chunks, deadline = [], time.monotonic() + timeout
    with sock:
        try:
            sock.sendall(data)
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionError):
            pass
    return b"".join(chunks)


def status_of(answer):
    """The status code of a raw HTTP answer, or None."""
    match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", answer or b"")
    return int(match.group(1)) if match else None


# 1. A job's exception text is stored bounded and clean ########################################
@backends("sqlite", "mysql")
def test_a_20_mb_exception_is_stored_bounded_and_the_worker_goes_on(project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(adversaryjobs.HugeError(out, 20_000_000), testjobs.Record(after, "next"))
    worker = spawn(project, "work", "--stop-when-empty")
    assert finish(worker, 60) == 0, short(worker)
    assert values(out) == ["huge"], "the job ran once (tries = 1)"
    assert failures(out) == ["ValueError: 20000000 characters"], "failed() ran once, with the exception"
    assert values(after) == ["next"], f"the worker did not go on with the next job:\n{short(worker)}"
    rows = failed_table_rows(project)
    assert [name for name, _ in rows] == ["HugeError"], [name for name, _ in rows]
    text = rows[0][1]  # (booleans below: pytest would diff 40 MB of text)
    size = len(text.encode("utf-8"))
    assert size <= 100 * 1024, f"the failed store keeps {size:,} bytes of one exception (at most ~100 KB)"
    says_cut = "cut" in text
    assert says_cut, f"the stored exception does not say how much was cut:\n{text[:300]}...{text[-300:]}"
    has_head = "Traceback" in text and "in handle" in text
    assert has_head, f"the head of the traceback (Traceback, the job's frame) is gone:\n{text[:600]}"
    has_type_line = bool(re.search(r"^ValueError: ", text[text.index("Traceback"):], re.M))
    assert has_type_line, f"the traceback's exception type line is gone:\n{text[:300]}...{text[-300:]}"
    assert job_count(project) == 0


def test_a_nul_byte_in_an_exception_does_not_kill_a_postgres_worker(postgres_project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(adversaryjobs.NulError(out), testjobs.Record(after, "next"))
    worker = spawn(postgres_project, "work", "--stop-when-empty")
    assert finish(worker, 30) == 0, short(worker)
    assert values(out) == ["nul"]
    assert failures(out) == [r"ValueError: 'a\x00b'"], "failed() ran once"
    rows = failed_table_rows(postgres_project)
    assert [name for name, _ in rows] == ["NulError"], f"the job is not in the failed store:\n{short(worker)}"
    assert "ValueError" in rows[0][1], rows[0][1]
    assert values(after) == ["next"], f"the worker did not go on with the next job:\n{short(worker)}"
    assert job_count(postgres_project) == 0


def test_the_dashboard_state_shows_a_bounded_preview_of_huge_failed_jobs(sqlite_project, spawn):
    queue.driver("database").create_tables()
    stamp = "2024-05-01 12:00:00.000000"
    rows = []
    for i in range(20):
        exception = (f"ValueError: big {i}\n\nTraceback (most recent call last):\n"
                     f"  File \"jobs/Big.py\", line 9, in handle\n    raise ValueError(big)\n"
                     f"ValueError: big {i} " + "z" * 1_000_000 + "\n")
        rows.append(("database", "sqlite", "default", "Big", b"", exception, stamp, stamp))
    sql(sqlite_project, f"INSERT INTO {failed_table(sqlite_project)} (driver, connection, queue, name, payload, "
        "exception, failed_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", many=rows)
    assert failed_count(sqlite_project) == 20
    _, port = start_dashboard(sqlite_project, spawn)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/state", headers={"X-Queue-Token": TOKEN})
    started = time.monotonic()
    with _opener.open(request, timeout=30) as response:
        body = response.read()
        assert response.status == 200
    took = time.monotonic() - started
    assert len(body) < 1024 * 1024, f"GET /api/state answered {len(body):,} bytes for 20 failed jobs (under 1 MB)"
    assert took < 3, f"GET /api/state took {took:.1f} s"
    failed = json.loads(body)["failed"]
    assert len(failed) == 20, len(failed)
    assert all(f["error"].startswith("ValueError: big") for f in failed), [f["error"][:80] for f in failed]


# 2. A slow `after` hook does not run a job twice ##############################################
def test_a_slow_after_hook_does_not_run_the_job_twice(sqlite_project, tmp_path, spawn):
    with_retry_after(sqlite_project, 2)
    out = str(tmp_path / "out")
    queue.push(adversaryjobs.SlowAfter(out, "once"))  # its after hook sleeps 4 s, twice retry_after
    first, second = spawn(sqlite_project, "work"), spawn(sqlite_project, "work")
    wait_worker([first, second], lambda: "after-done" in " ".join(testjobs.lines(out + ".after")), 20,
                "the after hook did not finish")
    wait_worker([first, second], lambda: job_count(sqlite_project) == 0, 15, "the job did not leave the table")
    stop(first, second)
    assert len(runs(out)) == 1, \
        f"the job ran {len(runs(out))} times (its reservation lapsed during the after hook): {runs(out)}"
    assert values(out) == ["once"]
    assert failed_count(sqlite_project) == 0


# 3. A job that cancels the worker's alarm still gets its timeout ##############################
@pytest.mark.parametrize("mode", ["alarm", "setitimer", "decorator"])
def test_a_job_that_cancels_the_alarm_still_times_out(sqlite_project, tmp_path, spawn, mode):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(adversaryjobs.CancelAlarm(out, mode), testjobs.Record(after, "next"))
    worker = spawn(sqlite_project, "work", "--stop-when-empty")
    wait_worker(worker, lambda: runs(out), 20, "the job did not start")
    began = runs(out)[0].at
    wait_worker(worker, lambda: failed_count(sqlite_project) == 1, max(0.5, began + 5 - time.time()),
                f"the job (timeout = 2) that cancelled the worker's alarm ({mode}) was not failed within 5 s")
    rows = failed_table_rows(sqlite_project)
    assert [name for name, _ in rows] == ["CancelAlarm"], rows
    assert rows[0][1].startswith("JobTimeout"), rows[0][1][:300]
    assert finish(worker, 20) == 0, short(worker)
    assert values(out) == [mode], "the job ran to its end"
    assert values(after) == ["next"]


# 4. A job that leaves a thread that never ends ###############################################
def test_a_job_that_leaves_a_thread_does_not_keep_a_worker_from_exiting(sqlite_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(adversaryjobs.LeaveThread(out, "thread"))
    worker = spawn(sqlite_project, "work", "--max-jobs", "1")
    try:
        wait_worker(worker, lambda: runs(out), 20, "the job did not run")
        assert finish(worker, 10) == 0, short(worker)
    finally:
        kill_leftovers([worker.proc.pid])
    assert values(out) == ["thread"]
    assert job_count(sqlite_project) == 0


def test_the_supervisor_replaces_workers_whose_jobs_left_threads(sqlite_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(*(adversaryjobs.LeaveThread(out, f"t{i}") for i in range(4)))
    supervisor = spawn(sqlite_project, "work", "--processes", "2", "--max-jobs", "1")

    def started():
        return [int(m.group(1)) for line in supervisor.lines for m in [re.search(r"started worker (\d+)", line)] if m]
    try:
        try:
            wait_for(lambda: len(runs(out)) == 4, 20)
        except AssertionError:
            pass
        assert len(runs(out)) == 4, (f"{len(runs(out))} of 4 jobs ran within 20 s: the workers that ran one "
                                     f"(--max-jobs 1) were not replaced; the supervisor's output:\n{short(supervisor)}")
        pids = {r.pid for r in runs(out)}
        assert len(pids) == 4, f"4 jobs ran in {len(pids)} worker processes (--max-jobs 1): {runs(out)}"
        assert len(set(started())) >= 4, f"the supervisor started workers {started()}"
        stop(supervisor)
    finally:
        if supervisor.proc.poll() is None:  # first the supervisor, so that it starts no replacement
            supervisor.proc.kill()
            supervisor.proc.wait()
        kill_leftovers(started() + [r.pid for r in runs(out)])
    assert job_count(sqlite_project) == 0


# 5. An async job that blocks the event loop ##################################################
def test_an_async_job_that_blocks_the_loop_does_not_time_out_the_others(sqlite_project, tmp_path, spawn):
    blocker, polite = str(tmp_path / "blocker"), str(tmp_path / "polite")
    queue.push(adversaryjobs.BlockingAsync(blocker, 8))
    queue.push(*(adversaryjobs.PoliteAsync(polite, blocker, f"p{i}") for i in range(8)))
    worker = spawn(sqlite_project, "work", "--concurrency", "4", "--stop-when-empty")
    assert finish(worker, 40) == 0, short(worker)
    assert values(blocker) == ["blocker", "blocker-done"]
    rows = failed_table_rows(sqlite_project)
    assert rows == [], f"well-behaved async jobs were failed: {[(n, e.splitlines()[0]) for n, e in rows]}"
    done = sorted(v for v in values(polite) if v.endswith("-done"))
    assert done == sorted(f"p{i}-done" for i in range(8)), done
    assert job_count(sqlite_project) == 0


# 6. A forward step of the wall clock #########################################################
STEPPED_SITE = '''
"""Loaded by a worker through PYTHONPATH: time.time() plus the seconds written in the file that
$ADVERSARY_CLOCK_FILE names (read at most every 20 ms), as after a step of the host's clock."""
import os as _os
import time as _time

_FILE = _os.environ.get("ADVERSARY_CLOCK_FILE")
if _FILE:
    _real_time, _real_time_ns, _monotonic = _time.time, _time.time_ns, _time.monotonic
    _state = [None, 0.0]  # monotonic time of the last read, offset

    def _offset():
        now = _monotonic()
        if _state[0] is None or now - _state[0] >= 0.02:
            _state[0] = now
            try:
                with open(_FILE) as f:
                    _state[1] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state[1]

    _time.time = lambda: _real_time() + _offset()
    _time.time_ns = lambda: _real_time_ns() + int(_offset() * 1e9)
'''


def set_offset(path, seconds):
    with open(path + ".tmp", "w") as f:
        f.write(f"{seconds}\n")
    os.replace(path + ".tmp", path)


def test_a_forward_step_of_the_clock_does_not_run_a_running_job_twice(sqlite_project, tmp_path, spawn):
    with_retry_after(sqlite_project, 3)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STEPPED_SITE)
    stepped = f"{site}{os.pathsep}{TESTS}"
    control = str(tmp_path / "control-offset")
    set_offset(control, 60)
    check = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True,
                           env=sqlite_project.env(PYTHONPATH=stepped, ADVERSARY_CLOCK_FILE=control), timeout=30)
    assert check.returncode == 0, check.stderr
    assert abs(float(check.stdout) - time.time() - 60) < 10, "the control: that process's clock is not 60 s ahead"

    offset, out = str(tmp_path / "offset"), str(tmp_path / "out")
    set_offset(offset, 0)
    env = {"PYTHONPATH": stepped, "ADVERSARY_CLOCK_FILE": offset}
    workers = [spawn(sqlite_project, "work", **env), spawn(sqlite_project, "work", **env)]
    queue.push(testjobs.Sleep(out, 5, "long"))
    wait_worker(workers, lambda: runs(out), 20, "the job did not start")
    set_offset(offset, 60)  # both workers' wall clocks jump a minute ahead, mid-job
    wait_worker(workers, lambda: "long-done" in values(out) and job_count(sqlite_project) == 0, 20,
                "the job did not finish")
    stop(*workers)
    assert values(out).count("long") == 1, f"the job ran twice after the clock stepped: {runs(out)}"
    assert values(out) == ["long", "long-done"]
    assert failed_count(sqlite_project) == 0


# 7. A job that closes sys.stdout and sys.stderr ##############################################
def test_a_job_that_closes_the_standard_streams_does_not_kill_its_worker(sqlite_project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(adversaryjobs.CloseStreams(out, "close"), testjobs.Record(after, "next"))
    worker = spawn(sqlite_project, "work")
    wait_worker(worker, lambda: values(after) == ["next"] or worker.proc.poll() is not None, 20,
                "the next job did not run")
    assert worker.proc.poll() is None, f"the worker died (exit {worker.proc.returncode}):\n{short(worker)}"
    assert values(after) == ["next"]
    wait_worker(worker, lambda: job_count(sqlite_project) == 0, 10, "the jobs did not leave the table")
    stop(worker)
    assert values(out) == ["close"]
    assert any("Record #" in line and "done" in line for line in worker.lines), \
        f"the worker's log went silent after the job closed its streams:\n{short(worker)}"


# 8. A job that ignores SIGTERM while it runs ################################################
def test_a_sigterm_during_a_job_that_ignores_it_still_stops_the_worker(sqlite_project, tmp_path, spawn):
    out, after = str(tmp_path / "out"), str(tmp_path / "after")
    queue.push(adversaryjobs.IgnoreTermWhileRunning(out, 2))
    queue.push(testjobs.Record(after, "second"))
    worker = spawn(sqlite_project, "work")
    wait_worker(worker, lambda: runs(out), 20, "the job did not start")  # SIGTERM is SIG_IGN from here
    worker.proc.send_signal(signal.SIGTERM)
    assert finish(worker, 10) == 0, short(worker)
    assert values(out) == ["ign", "ign-done"], "the job ran once, to its end"
    assert values(after) == [], "the worker started another job after the SIGTERM"
    assert job_count(sqlite_project) == 1, "the second job is no longer queued"
    assert failed_count(sqlite_project) == 0


# 9. Low: ids, ports, names and escape sequences #############################################
@pytest.mark.parametrize("command", ["retry", "forget"])
def test_a_failed_job_id_too_large_is_one_line(sqlite_project, command):
    queue.driver("database").create_tables()
    one_line_error(sqlite_project.cli(command, "99999999999999999999999"))


def test_a_dashboard_port_out_of_range_is_refused_without_a_traceback(sqlite_project):
    result = sqlite_project.cli("dashboard", "--port", "99999", timeout=20)
    assert result.returncode in (1, 2), f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stderr.strip(), "no word on what was wrong"


def test_a_job_class_name_of_250_characters_is_refused_at_push(sqlite_project, tmp_path):
    with pytest.raises(queue.QueueError) as raised:
        queue.push(adversaryjobs.LongNamed(tmp_path / "out", "long"))
    text = str(raised.value).strip()
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    assert job_count(sqlite_project) == 0


def test_terminal_escapes_in_an_exception_reach_no_terminal(sqlite_project, tmp_path, spawn):
    out = str(tmp_path / "out")
    queue.push(adversaryjobs.EscapeError(out))
    worker = spawn(sqlite_project, "work", "--stop-when-empty")
    assert finish(worker, 30) == 0, short(worker)
    assert failed_names(sqlite_project) == ["EscapeError"]
    assert log_lines(worker, "EscapeError"), f"the worker did not log the failure: {ascii(worker.output)}"
    raw_esc = "\x1b" in worker.output  # (booleans: a failing assert must not print the escapes either)
    assert not raw_esc, f"the worker's log holds a raw ESC: {ascii(worker.output)}"
    listing = sqlite_project.cli("failed")
    assert listing.returncode == 0, ascii(listing.stderr)
    assert "EscapeError" in listing.stdout, ascii(listing.stdout)
    raw_esc = "\x1b" in listing.stdout + listing.stderr
    assert not raw_esc, f"`failed` prints a raw ESC: {ascii(listing.stdout)}"


# 10. The dashboard's requests ################################################################
def test_a_dashboard_on_every_interface_needs_the_token_for_a_foreign_host(sqlite_project, spawn):
    _, port = start_dashboard(sqlite_project, spawn, "--host", "0.0.0.0")
    foreign = f"GET /api/state HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n".encode()
    answer = raw_http(port, foreign + b"\r\n", 10)
    assert status_of(answer) in (401, 403), \
        f"a read whose Host is evil.example, without the token, was answered: {answer[:200]!r}"
    answer = raw_http(port, foreign + f"X-Queue-Token: {TOKEN}\r\n\r\n".encode(), 10)
    assert status_of(answer) == 200, f"the same read with the token: {answer[:200]!r}"


def test_a_negative_content_length_is_answered_at_once(sqlite_project, spawn):
    _, port = start_dashboard(sqlite_project, spawn)
    request = (f"POST /api/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Queue-Token: {TOKEN}\r\n"
               "Content-Type: application/json\r\nContent-Length: -1\r\n\r\n").encode()
    answer = raw_http(port, request, 5)
    assert status_of(answer) == 400, f"a POST with Content-Length: -1 got {answer[:200]!r} within 5 s"


def test_a_connection_that_sends_nothing_is_closed(sqlite_project, spawn):
    _, port = start_dashboard(sqlite_project, spawn)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=35) as sock:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            data = None
        except ConnectionError:
            data = b""
    took = time.monotonic() - started
    assert data is not None and took <= 31, \
        f"a connection that sent nothing was still open after {took:.0f} s"
