"""queue.py under real launchers: apps started the way their frameworks' docs start them.

Console-script launchers (gunicorn, uvicorn, flask, pytest) run with sys.path[0] = the bin folder
and may import the standard library's `queue` before the app's folder is on sys.path; then the
app's `import queue` is the standard library's module, and the app's jobs/__init__.py executes
queue.py into it. Each test builds a temporary project (a copy of queue.py, config.py, the repo's
jobs/__init__.py, jobs/Record.py and an app from tests/apps/), starts `python queue.py work` and
the app (cwd = the project, no PYTHONPATH, console scripts from the bin folder of sys.executable),
sends 100 requests that each push Record(records.txt, n), and checks that the worker ran every
number exactly once. Servers and workers are stopped with SIGTERM to their process group, always.

Also: `import queue` from a project folder stays cheap (no third-party or heavy standard module).
Timing lives in benchmarks/import_cost.py, not here.
"""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import pytest

from helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "apps")
BIN = os.path.dirname(sys.executable)
REQUESTS, THREADS, LOAD_DEADLINE = 100, 4, 30.0
KEY = "launcher-test-key-0123456789abcdef"
CONFIG = f'''\
DRIVERS = {{
    "default": "database",
    "database": {{"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                 "attempts": 3, "poll": 0.05, "retry_after": 30}},
}}
DATABASES = {{"sqlite": {{"driver": "sqlite", "database": "queue.sqlite3"}}}}
KEY = {KEY!r}
'''
# urllib without any proxy from the environment: the servers are on 127.0.0.1
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def script(name):
    """A console script installed beside sys.executable (as `pip install` puts it)."""
    path = os.path.join(BIN, name)
    assert os.path.isfile(path), f"{name} is not installed beside {sys.executable} (pip install '.[test]')"
    return path


def clean_env():
    """The environment a user's shell would have: nothing points Python at the project."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "FLASK_", "UVICORN_", "GUNICORN_"))}
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "QUEUE_CONFIG", "QUEUE_KEY",
                 "DJANGO_SETTINGS_MODULE", "WEB_CONCURRENCY"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path, lines=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


class Started:
    """A process started in its own session (so its children are in its process group), its
    output in a log file; stop() sends SIGTERM to the group, SIGKILL to what is left after 15 s."""

    def __init__(self, argv, cwd, log):
        self.argv, self.log = argv, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.code = self.stopped = None

    @property
    def output(self):
        return tail(self.log)

    def _signal_group(self, signum):
        """Send signum to the process group; False if the group is gone."""
        try:
            os.killpg(self.pid, signum)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, timeout=15):
        """SIGTERM to the group; the exit code of the leader (None if it had to be killed)."""
        if self.stopped:
            return self.code
        self.stopped = True
        self._signal_group(signal.SIGTERM)  # the leader and its children (gunicorn/uvicorn workers, reloaders)
        try:
            self.code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.code = None
        end = time.monotonic() + 5
        while self._signal_group(0) and time.monotonic() < end:  # children still exiting
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)  # whatever is left of the group
        self.proc.wait()
        return self.code


@pytest.fixture
def started():
    """start(argv, cwd, name) -> Started; everything started is stopped at the end, whatever happened."""
    processes = []

    def start(argv, cwd, name):
        process = Started([str(a) for a in argv], cwd, os.path.join(cwd, f"{name}.log"))
        processes.append(process)
        return process

    yield start
    for process in reversed(processes):
        process.stop()


@pytest.fixture
def project(tmp_path):
    """A project folder as a user lays it out: queue.py, config.py, jobs/__init__.py, jobs/Record.py."""
    folder = tmp_path / "my_app"
    (folder / "jobs").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "queue.py"), folder)
    shutil.copy(os.path.join(ROOT, "jobs", "__init__.py"), folder / "jobs")
    shutil.copy(os.path.join(APPS, "Record.py"), folder / "jobs")
    (folder / "config.py").write_text(CONFIG)
    return str(folder)


def install_app(project, app, order):
    """Copy one of tests/apps into the project; order "jobs-first" or "queue-first" puts that
    import first (`import queue` / `from jobs.Record import Record`)."""
    if app == "flask":
        target = os.path.join(project, "app.py")
        shutil.copy(os.path.join(APPS, "flask_app.py"), target)
    elif app == "fastapi":
        target = os.path.join(project, "main.py")
        shutil.copy(os.path.join(APPS, "fastapi_app.py"), target)
    elif app == "django":
        shutil.copytree(os.path.join(APPS, "django_project"), project, dirs_exist_ok=True)
        target = os.path.join(project, "proj", "urls.py")
    else:  # pragma: no cover
        raise ValueError(app)
    with open(target) as f:
        lines = f.read().splitlines(keepends=True)
    a, b = lines.index("import queue\n"), lines.index("from jobs.Record import Record\n")
    queue_first = a < b
    if (order == "jobs-first") == queue_first:
        lines[a], lines[b] = lines[b], lines[a]
    with open(target, "w") as f:
        f.writelines(lines)


def get(url, timeout=10):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with HTTP.open(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_until_answering(server, base, deadline=30.0):
    """Poll GET /check until the server answers 200; its body says which `queue` the app got."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            pytest.fail(f"{server.argv} exited {server.proc.returncode} before answering:\n{server.output}")
        try:
            status, body = get(base + "/check", timeout=5)
        except (OSError, urllib.error.URLError) as e:  # not listening yet
            last = repr(e)
            time.sleep(0.1)
            continue
        assert status == 200 and body in ("direct", "adopted"), \
            f"GET /check answered {status}:\n{body[-3000:]}\n--- server log:\n{server.output}"
        return body
    pytest.fail(f"{server.argv} did not answer within {deadline} s (last: {last}):\n{server.output}")


def drive(base, count=REQUESTS, threads=THREADS, deadline=LOAD_DEADLINE):
    """GET /push?n=0..count-1 from `threads` threads within `deadline` s; the list of errors."""
    numbers = iter(range(count))
    lock = threading.Lock()
    errors = []
    end = time.monotonic() + deadline

    def run():
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            if time.monotonic() > end:
                errors.append(f"n={n}: not sent, the {deadline} s deadline passed")
                continue
            try:
                status, body = get(f"{base}/push?n={n}", timeout=max(1.0, end - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(f"n={n}: {e!r}")
                continue
            if (status, body) != (200, "ok"):
                errors.append(f"n={n}: {status} {body[-500:]!r}")

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(max(0.0, end - time.monotonic()) + 15)
    if any(thread.is_alive() for thread in pool):
        errors.append("a load thread was still waiting for an answer after the deadline")
    return errors


def read_records(path):
    try:
        with open(path) as f:
            return [line.split() for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def wait_for_records(path, count, worker, deadline=30.0):
    """Wait until records.txt holds every number of range(count); then a little longer, so that a
    duplicate run would show. Returns (Counter of numbers, set of pids)."""
    end = time.monotonic() + deadline
    expected = set(range(count))
    while time.monotonic() < end:
        if expected <= {int(n) for n, _ in read_records(path)}:
            time.sleep(0.5)  # ten polls of the worker
            break
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited {worker.proc.returncode}:\n{worker.output}")
        time.sleep(0.05)
    records = read_records(path)
    return collections.Counter(int(n) for n, _ in records), {int(pid) for _, pid in records}


def assert_ran_once(project, count, worker, server=None):
    numbers, pids = wait_for_records(os.path.join(project, "records.txt"), count, worker)
    logs = f"--- worker log:\n{worker.output}" + (f"\n--- server log:\n{server.output}" if server else "")
    missing = sorted(set(range(count)) - set(numbers))
    twice = sorted(n for n, k in numbers.items() if k > 1)
    assert not missing and not twice and set(numbers) == set(range(count)), \
        f"missing {missing}, more than once {twice}, unexpected {sorted(set(numbers) - set(range(count)))}\n{logs}"
    assert pids == {worker.pid}, f"jobs ran in {pids}, not in the worker {worker.pid}\n{logs}"


# Web apps under their launchers ##############################################################
GUNICORN_BIND = ["-b", "127.0.0.1:{port}"]
CASES = [
    # id, app, import order, argv ("{port}" is filled in)
    ("gunicorn", "flask", "queue-first", ["gunicorn", *GUNICORN_BIND, "app:app"]),
    ("gunicorn-jobs-first", "flask", "jobs-first", ["gunicorn", *GUNICORN_BIND, "app:app"]),
    ("gunicorn-gthread", "flask", "queue-first",
     ["gunicorn", "-k", "gthread", "--threads", "4", *GUNICORN_BIND, "app:app"]),
    ("gunicorn-preload", "flask", "queue-first", ["gunicorn", "--preload", *GUNICORN_BIND, "app:app"]),
    ("flask-run", "flask", "queue-first", ["flask", "--app", "app", "run", "--port", "{port}"]),
    ("uvicorn", "fastapi", "jobs-first", ["uvicorn", "main:app", "--port", "{port}"]),
    ("uvicorn-queue-first", "fastapi", "queue-first", ["uvicorn", "main:app", "--port", "{port}"]),
    ("uvicorn-workers-2", "fastapi", "jobs-first", ["uvicorn", "main:app", "--port", "{port}", "--workers", "2"]),
    ("uvicorn-reload", "fastapi", "jobs-first", ["uvicorn", "main:app", "--port", "{port}", "--reload"]),
    ("django-runserver", "django", "queue-first", ["python", "manage.py", "runserver", "127.0.0.1:{port}"]),
    ("gunicorn-django", "django", "queue-first", ["gunicorn", *GUNICORN_BIND, "proj.wsgi"]),
]


@pytest.mark.parametrize("app, order, argv", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_web_app_pushes_and_the_worker_runs_every_job_once(project, started, app, order, argv):
    install_app(project, app, order)
    port = free_port()
    command = [sys.executable if argv[0] == "python" else script(argv[0])]
    command += [arg.format(port=port) for arg in argv[1:]]
    worker = started([sys.executable, "queue.py", "work"], project, "worker")
    server = started(command, project, "server")
    base = f"http://127.0.0.1:{port}"

    mode = wait_until_answering(server, base)
    print(f"\n{' '.join(argv)}: the app's `import queue` is {mode}")  # shown with -s
    errors = drive(base)
    assert not errors, f"{len(errors)} request(s) failed, e.g. {errors[:5]}\n--- server log:\n{server.output}"
    assert_ran_once(project, REQUESTS, worker, server)
    assert "Traceback" not in tail(server.log, 10_000), f"the app ({mode}) logged a traceback:\n{server.output}"

    assert worker.stop() == 0, f"the worker did not exit 0 on SIGTERM:\n{worker.output}"
    assert "Traceback" not in tail(worker.log, 10_000), worker.output


# pytest ######################################################################################
PYTEST_CASES = [
    # `pytest` (bin/pytest) puts the test's folder (tests/) on sys.path, not the project: a
    # project's tests cannot import jobs/ without `pythonpath = .` (or a conftest.py at the root).
    pytest.param(["pytest", "-q"], "[pytest]\npythonpath = .\n", id="pytest-with-pythonpath-ini"),
    # `python -m pytest` has the working directory on sys.path: no configuration needed.
    pytest.param(["python", "-m", "pytest", "-q"], None, id="python-m-pytest"),
]


@pytest.mark.parametrize("argv, ini", PYTEST_CASES)
def test_a_project_test_suite_pushes_and_the_worker_runs_every_job_once(project, started, argv, ini):
    os.makedirs(os.path.join(project, "tests"))
    shutil.copy(os.path.join(APPS, "project_tests.py"), os.path.join(project, "tests", "test_app.py"))
    if ini is not None:
        with open(os.path.join(project, "pytest.ini"), "w") as f:
            f.write(ini)
    worker = started([sys.executable, "queue.py", "work"], project, "worker")
    command = [sys.executable if argv[0] == "python" else script(argv[0]), *argv[1:]]
    result = subprocess.run(command, cwd=project, env=clean_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "1 passed" in result.stdout, \
        f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert_ran_once(project, 20, worker)
    assert worker.stop() == 0, f"the worker did not exit 0 on SIGTERM:\n{worker.output}"


# import queue stays cheap ####################################################################
HEAVY = {"logging", "pickle", "hmac", "hashlib", "secrets", "json", "ast", "traceback", "datetime",
         "sqlite3", "socket", "ssl", "re", "subprocess", "sre", "sre_compile", "sre_parse", "sre_constants"}
IMPORT_CHECK = textwrap.dedent('''
    import sys
    before = set(sys.modules)
    import queue
    added = sorted(set(sys.modules) - before)

    import os, sysconfig, json
    here = os.path.dirname(os.path.abspath("queue.py"))
    assert os.path.samefile(queue.__file__, os.path.join(here, "queue.py")), queue.__file__
    assert hasattr(queue, "Queueable") and callable(queue.push)
    stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    outside = {}
    for name in added:
        path = getattr(sys.modules.get(name), "__file__", None)
        if name != "queue" and path and not any(os.path.realpath(path).startswith(p + os.sep) for p in stdlib):
            outside[name] = path

    # the standard library's API works on our module
    q = queue.Queue()
    q.put(1)
    assert q.get_nowait() == 1
    try:
        q.get_nowait()
    except queue.Empty:
        pass
    else:
        raise AssertionError("no queue.Empty")
    s = queue.SimpleQueue()
    s.put("x")
    assert s.get(timeout=1) == "x"
    try:
        s.get(timeout=0.01)
    except queue.Empty:
        pass
    else:
        raise AssertionError("no queue.Empty from SimpleQueue")
    print(json.dumps({"added": added, "outside": outside}))
''')


def test_import_queue_imports_no_third_party_and_no_heavy_module(tmp_path):
    shutil.copy(os.path.join(ROOT, "queue.py"), tmp_path)
    with open(tmp_path / "config.py", "w") as f:
        f.write(CONFIG)
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert not info["outside"], f"`import queue` imported modules from outside the standard library: {info['outside']}"
    heavy = sorted(name for name in info["added"] if name.split(".")[0].lstrip("_") in HEAVY)
    assert not heavy, f"`import queue` imported {heavy} (all it added: {info['added']})"
