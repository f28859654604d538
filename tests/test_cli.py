"""The command line, as a user runs it: `python queue.py COMMAND ...` in a project folder.

Every command runs as a subprocess in a temporary project (conftest's sqlite_project; its
.cli() runs `python queue.py ...` there, its .spawn() starts a long-running worker). The job
classes come from tests/testjobs.py (re-exported by the project's jobs/ modules, which is where
`push` looks for them) plus a few written into jobs/ below.
"""
import os
import re
import signal
import subprocess
import sqlite3
import sys
import time

import pytest

import queue
import testjobs
from conftest import MYSQL
from helpers import ok, one_line_error
from testjobs import lines, runs, values, wait_for

# Jobs the project's jobs/ folder holds: the test jobs, and two written here.
JOB_FILES = {
    "Record.py": "from testjobs import Record\n",
    "Fail.py": "from testjobs import Fail, FailOnce\n",
    "FailTimes.py": "from testjobs import FailTimes\n",
    "Sleep.py": "from testjobs import Sleep\n",
    "Literal.py": '''
from queue import Queueable


class Literal(Queueable):
    """Appends repr((args, kwargs)) to path: shows how the command line parsed its arguments."""

    def __init__(self, path, *args, **kwargs):
        self.path, self.args, self.kwargs = path, args, kwargs

    def handle(self):
        with open(self.path, "a") as f:
            f.write(repr((self.args, self.kwargs)) + "\\n")
''',
    "Block.py": '''
import os
import time
from queue import Queueable


class Block(Queueable):
    """Records "start VALUE PID TIME", waits until the file `gate` exists, records "end ..."."""

    def __init__(self, path, value, gate):
        self.path, self.value, self.gate = path, value, gate

    def record(self, what):
        with open(self.path, "a") as f:
            f.write(f"{what} {self.value} {os.getpid()} {time.time():.6f}\\n")

    def handle(self):
        self.record("start")
        deadline = time.monotonic() + 60
        while not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {self.gate} never opened")
            time.sleep(0.01)
        self.record("end")


class BlockOnce(Block):
    """A Block that may be tried once."""

    tries = 1
''',
}


def add_jobs(folder):
    os.makedirs(os.path.join(folder, "jobs"), exist_ok=True)
    for name, text in JOB_FILES.items():
        with open(os.path.join(folder, "jobs", name), "w") as f:
            f.write(text)


@pytest.fixture
def project(sqlite_project):
    add_jobs(sqlite_project.folder)
    return sqlite_project


def status(project, *args, **env):
    """`status` as {queue: {"ready", "delayed", "reserved", "failed"}}."""
    out = ok(project.cli("status", *args, **env)).splitlines()
    assert out[0].split() == ["queue", "ready", "delayed", "reserved", "failed"], out
    table = {}
    for line in out[1:]:
        if not line.strip():
            break  # the workers follow
        if line.startswith("delayed in the broker's delay ladder"):  # amqp: a footer, not a queue
            continue
        name, *numbers = line.split()
        table[name] = dict(zip(("ready", "delayed", "reserved", "failed"),
                               (None if n == "-" else int(n) for n in numbers)))
    return table


def work(project, *args, timeout=60, **env):
    return ok(project.cli("work", *args, timeout=timeout, **env))


# job ##########################################################################################
def test_job_writes_a_skeleton_that_runs_and_refuses_to_overwrite(project, tmp_path):
    out = ok(project.cli("job", "SendInvoice"))
    path = os.path.join(project.folder, "jobs", "SendInvoice.py")
    assert path in out
    with open(path) as f:
        text = f.read()
    assert "class SendInvoice(Queueable)" in text and "from queue import Queueable" in text
    # the skeleton is a working job: push it and run it
    ok(project.cli("push", "SendInvoice", "7", "'x'"))
    assert "SendInvoice ran with (7, 'x') {}" in work(project, "--stop-when-empty")
    # a second `job SendInvoice` leaves the user's edits alone
    with open(path, "w") as f:
        f.write("# edited by the user\n")
    one_line_error(project.cli("job", "SendInvoice"), "SendInvoice.py")
    with open(path) as f:
        assert f.read() == "# edited by the user\n"


def test_job_creates_the_jobs_package(sqlite_project):
    os.remove(os.path.join(sqlite_project.folder, "jobs", "__init__.py"))
    os.rmdir(os.path.join(sqlite_project.folder, "jobs"))
    ok(sqlite_project.cli("job", "Hello"))
    assert os.path.isfile(os.path.join(sqlite_project.folder, "jobs", "__init__.py"))
    ok(sqlite_project.cli("push", "Hello"))
    assert "Hello ran with () {}" in work(sqlite_project, "--stop-when-empty")


def test_job_rejects_a_name_that_is_not_a_class_name(project):
    one_line_error(project.cli("job", "not-a-class"), "not-a-class")
    assert not os.path.exists(os.path.join(project.folder, "jobs", "not-a-class.py"))


# push and work ###############################################################################
def test_push_then_work_runs_the_job_with_python_literal_arguments(project, tmp_path):
    out = str(tmp_path / "out.txt")
    for args in (["42"], ["'42'"], ["[1, 2]"], ["{'a': (1, None)}"], ["True", "2.5"], ["word"], ["n=3", "s='x y'"]):
        assert "pushed Literal" in ok(project.cli("push", "Literal", out, *args))
    assert status(project)["default"]["ready"] == 7
    work(project, "--stop-when-empty")
    assert lines(out) == [
        "((42,), {})", "(('42',), {})", "(([1, 2],), {})", "(({'a': (1, None)},), {})",
        "((True, 2.5), {})", "(('word',), {})", "((), {'n': 3, 's': 'x y'})"]
    assert status(project).get("default", {}).get("ready", 0) == 0


@pytest.mark.parametrize("runner", [["-m", "cProfile", "-o", "profile.out"], ["-m", "trace", "--count", "-C", "cover"]])
def test_work_under_a_runner_that_gives_the_script_a_dict_of_its_own(project, tmp_path, runner):
    """`python -m cProfile queue.py work` runs the file in a dict that no module holds: the jobs'
    `from queue import Queueable` must still find these names (every job failed to load)."""
    out = str(tmp_path / "out.txt")
    ok(project.cli("push", "Literal", out, "1"))
    result = subprocess.run([sys.executable, *runner, "queue.py", "work", "--stop-when-empty"], cwd=project.folder,
                            env=project.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert lines(out) == ["((1,), {})"], result.stderr
    assert "failed" not in result.stderr


def test_push_with_delay_waits_that_long(project, tmp_path):
    out = str(tmp_path / "out.txt")
    ok(project.cli("push", "Record", out, "later", "--delay", "30"))
    ok(project.cli("push", "Record", out, "much-later", "--delay", "10 minutes"))
    assert status(project)["default"] == {"ready": 0, "delayed": 2, "reserved": 0, "failed": 0}
    work(project, "--stop-when-empty")
    assert lines(out) == []
    pushed = time.time()
    ok(project.cli("push", "Record", out, "soon", "--delay", "1"))
    work(project, "--max-jobs", "1", "--max-time", "30")
    (run,) = runs(out)
    assert run.value == "soon"
    assert run.at - pushed >= 0.95, f"a job delayed by 1 s ran after {run.at - pushed:.3f} s"
    assert status(project)["default"]["delayed"] == 2


def test_push_rejects_a_bad_delay(project, tmp_path):
    one_line_error(project.cli("push", "Record", str(tmp_path / "out"), "--delay", "soonish"), "soonish")
    assert status(project).get("default", {}).get("delayed", 0) == 0


def test_queue_option_is_a_priority_order(project, tmp_path):
    out = str(tmp_path / "out.txt")
    for value, name in (("low1", "low"), ("high1", "high"), ("low2", "low"), ("other", "default"),
                        ("high2", "high"), ("low3", "low")):
        ok(project.cli("push", "Record", out, value, "--queue", name))
    work(project, "--queue", "high,low", "--stop-when-empty")
    assert values(out) == ["high1", "high2", "low1", "low2", "low3"]
    assert status(project)["default"]["ready"] == 1  # not one of the queues named


def test_once_and_max_jobs(project, tmp_path):
    out = str(tmp_path / "out.txt")
    queue.push(*(testjobs.Record(out, f"v{i}") for i in range(5)))
    work(project, "--once")
    assert values(out) == ["v0"]
    work(project, "--max-jobs", "2")
    assert values(out) == ["v0", "v1", "v2"]
    work(project, "--stop-when-empty")
    assert values(out) == ["v0", "v1", "v2", "v3", "v4"]
    started = time.monotonic()
    work(project, "--once", timeout=20)  # nothing to do: exits at once
    assert time.monotonic() - started < 15


def test_max_time_exits_after_the_current_job(project, tmp_path):
    out = str(tmp_path / "out.txt")
    queue.push(testjobs.Sleep(out, 1.0, "sleep"), testjobs.Record(out, "next"))
    started = time.monotonic()
    work(project, "--max-time", "0.3")
    assert values(out) == ["sleep", "sleep-done"]  # the running job finished; the next one waits
    assert status(project)["default"]["ready"] == 1
    assert time.monotonic() - started < 20


def test_max_time_ends_an_idle_worker(project):
    started = time.monotonic()
    work(project, "--max-time", "0.5", timeout=20)
    assert 0.5 <= time.monotonic() - started < 15


# table ########################################################################################
def tables_of(path):
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns_of(db, table):
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


JOBS_COLUMNS = {"id", "name", "queue", "payload", "attempts", "ran_at", "available_at", "reserved_at", "created_at"}
FAILED_COLUMNS = {"id", "queue", "connection", "name", "driver", "payload", "exception", "failed_at", "created_at"}


def test_table_creates_the_tables_and_is_idempotent(project):
    ok(project.cli("table"))
    ok(project.cli("table"))
    db = os.path.join(project.folder, "queue.sqlite3")
    assert {"jobs", "failed_jobs"} <= tables_of(db)
    with sqlite3.connect(db) as conn:
        assert columns_of(conn, "jobs") == JOBS_COLUMNS
        assert columns_of(conn, "failed_jobs") == FAILED_COLUMNS


def test_table_sql_prints_the_ddl_of_the_configured_tables(project):
    project.drivers["database"].update(table="my_jobs", failed_table="my_failed")
    project.write_config()
    ddl = ok(project.cli("table", "--sql"))
    assert 'CREATE TABLE IF NOT EXISTS "my_jobs"' in ddl and 'CREATE TABLE IF NOT EXISTS "my_failed"' in ddl
    db = os.path.join(project.folder, "queue.sqlite3")
    assert not os.path.exists(db) or not tables_of(db), "--sql must print the DDL instead of running it"
    conn = sqlite3.connect(":memory:")  # the printed DDL is valid SQL that makes the tables
    conn.executescript(ddl)
    conn.executescript(ddl)
    assert columns_of(conn, "my_jobs") == JOBS_COLUMNS
    assert columns_of(conn, "my_failed") == FAILED_COLUMNS


def test_table_on_mysql(mysql_project):
    table = mysql_project.drivers["database"]["table"]
    ok(mysql_project.cli("table"))
    ok(mysql_project.cli("table"))  # idempotent (the fixture created them already)
    ddl = ok(mysql_project.cli("table", "--sql"))
    assert f"CREATE TABLE IF NOT EXISTS `{table}` " in ddl and f"CREATE TABLE IF NOT EXISTS `{table}_failed` " in ddl
    import pymysql
    conn = pymysql.connect(**{k: v for k, v in MYSQL.items() if k != "driver"})
    try:
        with conn.cursor() as cur:
            cur.execute(f"SHOW COLUMNS FROM {table}")
            assert {row[0] for row in cur.fetchall()} == JOBS_COLUMNS
            cur.execute(f"SHOW COLUMNS FROM {table}_failed")
            assert {row[0] for row in cur.fetchall()} == FAILED_COLUMNS
    finally:
        conn.close()


# failed, retry, forget, flush #################################################################
FAILED_ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S*)\s+(.*?)\s*$")


def failed_listing(project, *args):
    """`failed` as [(id, driver/connection, queue, job, failed at, error)]."""
    out = ok(project.cli("failed", *args))
    if out.strip() == "no failed jobs":
        return []
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["id", "driver/connection"], header
    parsed = []
    for row in rows:
        match = FAILED_ROW.match(row)
        assert match, f"cannot read the row {row!r} of:\n{out}"
        parsed.append((int(match[1]),) + match.groups()[1:])
    return parsed


def fail_jobs(project, tmp_path, names, queue_name="default"):
    """Push one FailTimes(n=1, tries=1) per name and let a worker fail them: each succeeds when retried.
    Returns {name: failed job id}."""
    for name in names:
        queue.push(testjobs.FailTimes(tmp_path / name, 1, name, tries=1), queue=queue_name)
    work(project, "--queue", queue_name, "--stop-when-empty")
    rows = failed_listing(project)
    assert sorted(r[5] for r in rows) == sorted(f"ValueError: attempt 1 of {n} fails" for n in names)
    return {r[5].split()[-2]: r[0] for r in rows}


def test_failed_lists_id_driver_queue_job_time_and_first_error_line(project, tmp_path):
    assert ok(project.cli("failed")).strip() == "no failed jobs"
    ok(project.cli("push", "FailOnce", str(tmp_path / "out"), "x", "--queue", "mail"))
    work(project, "--queue", "mail", "--stop-when-empty")
    out = ok(project.cli("failed"))
    assert "Traceback" not in out
    ((job_id, where, queue_name, job, failed_at, error),) = failed_listing(project)
    assert (where, queue_name, job, error) == ("database/sqlite", "mail", "FailOnce", "ValueError: boom x")
    assert job_id == queue.driver().failed_store().failed_jobs()[0]["id"]
    assert testjobs.failures(str(tmp_path / "out")) == ["ValueError: boom x"]  # failed(exc) ran once


MULTI = '''
from queue import Queueable


class Multi(Queueable):
    tries = 1

    def handle(self):
        raise ValueError("boom first\\nsecond line")


class Noted(Queueable):
    tries = 1

    def handle(self):
        exc = KeyError("missing")
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note("a hint from the library")
        raise exc
'''


def test_failed_shows_the_first_line_of_the_error_of_a_multi_line_message(project):
    with open(os.path.join(project.folder, "jobs", "Multi.py"), "w") as f:
        f.write(MULTI)
    ok(project.cli("push", "Multi"))
    ok(project.cli("push", "Noted"))
    work(project, "--stop-when-empty")
    errors = {job: error for _, _, _, job, _, error in failed_listing(project)}
    assert errors == {"Multi": "ValueError: boom first", "Noted": "KeyError: 'missing'"}
    stored = {r["name"]: r["exception"] for r in queue.driver().failed_store().failed_jobs()}
    assert stored["Multi"].startswith("ValueError: boom first\n")
    assert "second line" in stored["Multi"]  # the whole message and traceback are kept


def test_retry_one_id(project, tmp_path):
    ids = fail_jobs(project, tmp_path, ["a", "b"])
    out = ok(project.cli("retry", ids["a"]))
    assert "FailTimes" in out
    assert [r[0] for r in failed_listing(project)] == [ids["b"]]
    assert status(project)["default"]["ready"] == 1
    work(project, "--stop-when-empty")
    assert values(tmp_path / "a") == ["a", "a"]  # failed once, then succeeded when retried
    assert values(tmp_path / "b") == ["b"]
    assert [r[0] for r in failed_listing(project)] == [ids["b"]]


@pytest.mark.parametrize("ids", [["all"], []], ids=["retry-all", "retry-no-id"])
def test_retry_all(project, tmp_path, ids):
    names = ["a", "b", "c"]
    fail_jobs(project, tmp_path, names, queue_name="mail")
    ok(project.cli("retry", *ids))
    assert failed_listing(project) == []
    assert status(project)["mail"] == {"ready": 3, "delayed": 0, "reserved": 0, "failed": 0}  # their own queue
    work(project, "--queue", "mail", "--stop-when-empty")
    for name in names:
        assert values(tmp_path / name) == [name, name]
    assert ok(project.cli("retry", *ids)).strip() == "no failed jobs"


def test_retry_onto_another_queue(project, tmp_path):
    ids = fail_jobs(project, tmp_path, ["a", "b"])
    ok(project.cli("retry", ids["b"], "--queue", "other"))
    assert status(project)["other"]["ready"] == 1
    work(project, "--stop-when-empty")  # the default queue: nothing there
    assert values(tmp_path / "b") == ["b"]
    work(project, "--queue", "other", "--stop-when-empty")
    assert values(tmp_path / "b") == ["b", "b"]
    assert [r[0] for r in failed_listing(project)] == [ids["a"]]


def test_retry_unknown_id(project, tmp_path):
    ids = fail_jobs(project, tmp_path, ["a"])
    one_line_error(project.cli("retry", "424242"), "424242")
    one_line_error(project.cli("retry", "abc"))
    assert [r[0] for r in failed_listing(project)] == [ids["a"]]  # nothing retried, nothing lost


def test_forget_and_flush(project, tmp_path):
    ids = fail_jobs(project, tmp_path, ["a", "b", "c"])
    ok(project.cli("forget", ids["b"]))
    assert sorted(r[0] for r in failed_listing(project)) == sorted([ids["a"], ids["c"]])
    one_line_error(project.cli("forget", ids["b"]), str(ids["b"]))  # gone already
    one_line_error(project.cli("forget", "424242"), "424242")
    one_line_error(project.cli("forget", "abc"))
    assert len(failed_listing(project)) == 2
    assert "2" in ok(project.cli("flush"))
    assert failed_listing(project) == []
    assert status(project).get("default", {}).get("ready", 0) == 0  # forgotten, not retried


# status #######################################################################################
def test_status_counts_ready_delayed_reserved_and_failed(project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.FailOnce(out, "f"))
    work(project, "--stop-when-empty")
    queue.push(testjobs.Record(out, "a"), testjobs.Record(out, "b"))
    queue.push(testjobs.Record(out, "c"), delay=600)
    queue.push(testjobs.Record(out, "d"), queue="other")
    message = queue.driver().pop(["default"])  # reserved by this process, never acked
    assert message is not None
    assert status(project) == {
        "default": {"ready": 1, "delayed": 1, "reserved": 1, "failed": 1},
        "other": {"ready": 1, "delayed": 0, "reserved": 0, "failed": 0},
    }
    assert status(project, "--queue", "other") == {"other": {"ready": 1, "delayed": 0, "reserved": 0, "failed": 0}}


# restart and signals ##########################################################################
def started(path, count=1):
    return lambda: len([line for line in lines(path) if line.startswith("start ")]) >= count


def test_restart_makes_a_running_worker_exit_after_its_current_job(project, tmp_path, spawn):
    out, gate, after = str(tmp_path / "out"), str(tmp_path / "gate"), str(tmp_path / "after")
    ok(project.cli("push", "Block", out, "b1", gate))
    ok(project.cli("push", "Record", after, "next"))
    worker = spawn(project, "work")
    wait_for(started(out), 20, message="the job did not start")
    ok(project.cli("restart"))
    open(gate, "w").close()
    assert worker.wait(20) == 0, worker.output
    assert [line.split()[0] for line in lines(out)] == ["start", "end"]
    assert values(after) == []  # the worker exited before its next job
    # a worker started after `restart` works normally
    work(project, "--stop-when-empty")
    assert values(after) == ["next"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_current_job_finish_and_loses_nothing(project, tmp_path, spawn, signum):
    out, gate, after = str(tmp_path / "out"), str(tmp_path / "gate"), str(tmp_path / "after")
    ok(project.cli("push", "Block", out, "b1", gate))
    ok(project.cli("push", "Record", after, "next"))
    worker = spawn(project, "work")
    wait_for(started(out), 20, message="the job did not start")
    worker.proc.send_signal(signum)
    wait_for(lambda: signum.name in worker.output, 10, message="the worker did not log the signal")
    assert worker.proc.poll() is None, "the worker exited in the middle of its job"
    open(gate, "w").close()
    assert worker.wait(20) == 0, worker.output
    assert "Traceback" not in worker.output
    assert [line.split()[0] for line in lines(out)] == ["start", "end"]
    assert values(after) == []
    assert status(project)["default"] == {"ready": 1, "delayed": 0, "reserved": 0, "failed": 0}
    work(project, "--stop-when-empty")
    assert values(after) == ["next"]
    assert [line.split()[0] for line in lines(out)] == ["start", "end"]  # finished once, never rerun


@pytest.mark.parametrize("job", ["Block", "BlockOnce"], ids=["tries-3", "tries-1"])
def test_a_second_sigterm_puts_the_job_back(project, tmp_path, spawn, job):
    """The interrupted attempt is given back: even a job with tries = 1 runs again."""
    out, gate = str(tmp_path / "out"), str(tmp_path / "gate")
    ok(project.cli("push", job, out, "b1", gate))
    worker = spawn(project, "work")
    wait_for(started(out), 20, message="the job did not start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM" in worker.output, 10, message="the worker did not log the first SIGTERM")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output
    assert [line.split()[0] for line in lines(out)] == ["start"]
    assert status(project)["default"] == {"ready": 1, "delayed": 0, "reserved": 0, "failed": 0}
    open(gate, "w").close()
    work(project, "--stop-when-empty")
    assert [line.split()[0] for line in lines(out)] == ["start", "start", "end"]
    assert failed_listing(project) == []


def worker_started(worker):
    """The worker logged its start line (it has installed its signal handlers by then)."""
    return lambda: f"worker {worker.proc.pid}:" in worker.output


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "restart"])
def test_an_idle_worker_exits_promptly(project, spawn, how):
    worker = spawn(project, "work")
    wait_for(worker_started(worker), 20, message="the worker did not start")
    if how == "restart":
        ok(project.cli("restart"))
    else:
        worker.proc.send_signal(getattr(signal, how))
    assert worker.wait(10) == 0, worker.output
    assert "Traceback" not in worker.output


def test_a_job_calling_sys_exit_does_not_end_the_worker(project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.Exit(out, "exit", tries=1), testjobs.Record(out, "next"))
    work(project, "--stop-when-empty")
    assert values(out) == ["exit", "next"]
    ((_, _, _, job, _, error),) = failed_listing(project)
    assert job == "Exit" and error.startswith("SystemExit"), error


def test_work_attempts_and_timeout_options(project, tmp_path):
    out = str(tmp_path / "out")
    queue.push(testjobs.Fail(out, "f"))  # sets no tries: the worker's --attempts (config says 3)
    work(project, "--attempts", "2", "--stop-when-empty")
    assert values(out) == ["f", "f"]
    slow = str(tmp_path / "slow")
    queue.push(testjobs.Sleep(slow, 30, "slow", tries=1), testjobs.Record(out, "after"))
    started = time.monotonic()
    work(project, "--timeout", "0.3", "--stop-when-empty")
    assert time.monotonic() - started < 15, "--timeout did not stop the job"
    assert values(slow) == ["slow"] and values(out)[-1] == "after"
    errors = [row[5] for row in failed_listing(project)]
    assert errors[1] == "ValueError: boom f" and "JobTimeout" in errors[0], errors  # newest first


def test_connection_option_selects_another_database(project, tmp_path):
    project.databases["archive"] = {"driver": "sqlite", "database": "archive.sqlite3"}
    project.write_config()
    out = str(tmp_path / "out")
    ok(project.cli("push", "Record", out, "archived", "--connection", "archive"))
    assert status(project) == {}
    assert status(project, "--connection", "archive")["default"]["ready"] == 1
    work(project, "--stop-when-empty")
    assert values(out) == []
    work(project, "--connection", "archive", "--stop-when-empty")
    assert values(out) == ["archived"]
    one_line_error(project.cli("status", "--connection", "nowhere"), "nowhere")


def test_without_a_failed_table(project, tmp_path):
    project.drivers["database"]["failed_table"] = None
    project.write_config()
    out = str(tmp_path / "out")
    ok(project.cli("push", "FailOnce", out, "x"))
    ok(project.cli("push", "Record", out, "next"))
    work(project, "--stop-when-empty")
    assert values(out) == ["x", "next"]
    assert testjobs.failures(out) == ["ValueError: boom x"]  # failed(exc) still runs
    one_line_error(project.cli("failed"), "failed_table")
    assert status(project) == {}


# errors #######################################################################################
@pytest.mark.parametrize("args", [
    [], ["nonsense"], ["work", "--bogus"], ["work", "--max-jobs", "-1"], ["work", "--poll", "abc"],
    ["work", "--max-time", "soon"], ["push"], ["job"], ["forget"], ["status", "extra"],
], ids=lambda a: " ".join(a) or "no-command")
def test_usage_errors_exit_2(project, args):
    result = project.cli(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["work"], ["push"], ["table"], ["failed"], ["retry"], ["forget"],
                                  ["flush"], ["restart"], ["status"], ["job"]], ids=lambda a: " ".join(a) or "main")
def test_help_everywhere(project, args):
    result = project.cli(*args, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def test_push_of_an_unknown_job_class(project):
    one_line_error(project.cli("push", "NoSuchJob", "1"), "NoSuchJob")
    assert status(project) == {}


def test_push_when_a_job_module_is_broken(project):
    with open(os.path.join(project.folder, "jobs", "Broken.py"), "w") as f:
        f.write("raise RuntimeError('half-written module')\n")
    one_line_error(project.cli("push", "Broken"), "Broken", "half-written module")


def test_push_with_wrong_arguments_for_the_job(project):
    one_line_error(project.cli("push", "Record"), "Record")  # path is required
    assert status(project) == {}


@pytest.mark.parametrize("change, key", [
    (lambda d, db: d["database"].update(attempts="three"), "attempts"),
    (lambda d, db: d.update(default="nosuch"), "default"),
    (lambda d, db: d["database"].update(connection="nowhere"), "connection"),
    (lambda d, db: db["sqlite"].update(driver="oracle"), "driver"),
    (lambda d, db: d["database"].update(poll=-1), "poll"),
    (lambda d, db: d["database"].update(retry_after="90"), "retry_after"),
    (lambda d, db: d["database"].update(table="jobs; DROP TABLE x"), "table"),
], ids=["attempts-three", "unknown-default-driver", "missing-connection", "unknown-db-driver",
        "negative-poll", "retry_after-string", "table-not-a-name"])
@pytest.mark.parametrize("command", [["status"], ["work", "--stop-when-empty"], ["push", "Record", "x"]],
                         ids=["status", "work", "push"])
def test_a_bad_config_value_is_one_line_naming_the_key(project, change, key, command):
    change(project.drivers, project.databases)
    project.write_config()
    one_line_error(project.cli(*command), repr(key))


def test_a_config_file_that_raises(project):
    project.write_config("raise ValueError('typo in config')\n")
    one_line_error(project.cli("status"), "config.py", "typo in config")


@pytest.mark.parametrize("command", [["status"], ["table"], ["failed"], ["flush"], ["push", "Record", "x"]],
                         ids=lambda c: c[0])
def test_unreachable_mysql_is_one_line(project, command):
    project.drivers["database"]["connection"] = "mysql"
    project.databases = {"mysql": dict(MYSQL, port=1)}
    project.write_config()
    started = time.monotonic()
    one_line_error(project.cli(*command, timeout=60), "127.0.0.1:1")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("text, key", [
    ('DRIVERS = "database"\n', "DRIVERS"),
    ('DATABASES = ["sqlite"]\n', "DATABASES"),
    ('DRIVERS = {"database": "sqlite"}\n', "database"),
    ('DRIVERS = {"database": {"attempts": True}}\n', "attempts"),
    ('DRIVERS = {"database": {"connection": "mysql"}}\n'
     'DATABASES = {"mysql": {"driver": "mysql", "host": "127.0.0.1", "port": "abc"}}\n', "port"),
    ('KEY = 12345\n', "KEY"),
], ids=["DRIVERS-a-string", "DATABASES-a-list", "driver-options-a-string", "attempts-True", "port-abc", "KEY-an-int"])
def test_a_config_of_the_wrong_shape_is_one_line_naming_the_key(project, tmp_path, text, key):
    with open(project.config_path, "w") as f:
        f.write(text)
    one_line_error(project.cli("push", "Record", str(tmp_path / "out"), "x"), key)


def test_unreachable_rabbitmq_is_one_line(project):
    pytest.importorskip("pika")
    project.drivers = {"default": "amqp", "amqp": {"host": "127.0.0.1", "port": 1},
                       "database": project.drivers["database"]}
    project.write_config()
    for command in (["status"], ["push", "Record", "x"]):
        started = time.monotonic()
        one_line_error(project.cli(*command, timeout=60), "127.0.0.1:1")
        assert time.monotonic() - started < 20


# --config and QUEUE_CONFIG ###################################################################
@pytest.fixture
def other_config(project, tmp_path):
    """A second project folder, elsewhere, with its own config (own table, own SQLite file)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    add_jobs(str(folder))
    (folder / "jobs" / "__init__.py").write_text("")
    drivers = {"default": "database", "database": dict(project.drivers["database"], table="other_jobs")}
    path = folder / "settings.py"
    path.write_text(f"DRIVERS = {drivers!r}\nDATABASES = {project.databases!r}\nKEY = {project.key!r}\n")
    return str(path)


@pytest.mark.parametrize("where", ["--config after", "--config before", "QUEUE_CONFIG"])
def test_config_option_and_environment_select_the_config_file(project, tmp_path, other_config, where):
    def cli(*args, **kw):
        if where == "--config after":
            return project.cli(*args, "--config", other_config, **kw)
        if where == "--config before":
            return project.cli("--config", other_config, *args, **kw)
        return project.cli(*args, QUEUE_CONFIG=other_config, **kw)

    out = str(tmp_path / "out")
    ok(cli("push", "Record", out, "elsewhere"))
    assert status(project) == {}, "the job went to the project's own config"
    assert ok(cli("status")).splitlines()[1].split()[-4:] == ["1", "0", "0", "0"]
    folder = os.path.dirname(other_config)
    assert "other_jobs" in tables_of(os.path.join(folder, "queue.sqlite3"))
    ok(project.cli("work", "--stop-when-empty"))
    assert values(out) == []
    ok(cli("work", "--stop-when-empty"))
    assert values(out) == ["elsewhere"]


def test_config_option_naming_a_missing_file(project):
    one_line_error(project.cli("status", "--config", "nope.py"), "nope.py")
    one_line_error(project.cli("status", QUEUE_CONFIG="nope.py"), "nope.py")


def test_the_command_lines_log_lines_read_as_logging_formats_them(monkeypatch):
    """The CLI's handler formats the date and time once a second; each line must still be the
    one logging.Formatter('%(asctime)s %(levelname)s %(message)s') writes, tracebacks included."""
    import logging
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    queue._log_lines()
    handler = root.handlers[0]
    reference = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    try:
        1 / 0
    except ZeroDivisionError:
        failure = sys.exc_info()
    records = [logging.LogRecord("queue", logging.INFO, __file__, 1, "%s #%s done in %.1f ms", ("Job", 7, 0.25), None),
               logging.LogRecord("queue", logging.WARNING, __file__, 1, {"not": "a string"}, None, None),
               logging.LogRecord("queue", logging.ERROR, __file__, 1, "failed: %s", ("x",), failure)]
    records[1].created, records[1].msecs = records[0].created + 1.5, 5.0  # the next second
    for record in records:
        expected = reference.format(record)
        record.exc_text = None  # as a fresh record: the reference cached the traceback's text
        assert handler.format(record) == expected
    monkeypatch.setattr(logging.Formatter, "converter", time.gmtime)  # the logging docs' way to UTC
    utc = logging.LogRecord("queue", logging.INFO, __file__, 1, "in UTC", (), None)
    utc.created += 10  # a second of its own
    assert handler.format(utc) == reference.format(utc)
