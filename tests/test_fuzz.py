"""Fuzzing the command line and the configuration with hypothesis.

- Random argument lists (real commands, options and values, plus junk) through `queue.main(argv)`
  in-process, and a sample as `python queue.py ...` subprocesses: never a traceback; exit 0, 1
  (one line on stderr: "queue.py: error: ...") or 2 (argparse's usage error), as SPEC section 3 says.
- Random values for every key of DRIVERS and DATABASES (and KEY): queue.Config / configure()
  either accept them or raise ConfigError, and an accepted configuration can be used offline
  (drivers built, timestamps computed, amqp connection parameters made, a job packed) with no
  exception but QueueError.

Everything runs in a temporary project whose MySQL and RabbitMQ point at a closed port, so no
server is touched and "unreachable server" is exercised on every driver. max_examples stays
modest so the suite stays fast; the known hard cases are listed as plain parametrized tests.
"""
import contextlib
import io
import math
import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import queue
from conftest import Project

CLOSED = 1  # a TCP port nobody listens on: connection refused at once
DRIVERS = {"default": "database",
           "database": {"connection": "sqlite", "table": "jobs", "failed_table": "failed_jobs",
                        "poll": 0.01, "retry_after": 2},
           "amqp": {"host": "127.0.0.1", "port": CLOSED, "queue": "fuzz", "poll": 0.01},
           "async": {"mode": "threading"}}
DATABASES = {"sqlite": {"driver": "sqlite", "database": "queue.sqlite3"},
             "mysql": {"driver": "mysql", "host": "127.0.0.1", "port": CLOSED, "user": "root",
                       "password": "", "database": "test", "connect_timeout": 2}}
ECHO = '''from queue import Queueable


class Echo(Queueable):
    """Takes any arguments and does nothing with them."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def handle(self):
        pass
'''

COMMANDS = ["work", "job", "push", "table", "failed", "retry", "forget", "flush", "restart", "status"]
OPTIONS = ["--driver", "--connection", "--queue", "--poll", "--attempts", "--timeout", "--once",
           "--stop-when-empty", "--max-jobs", "--max-time", "--sql", "--delay", "--config", "--help",
           "-h", "--version", "--"]
VALUES = ["database", "amqp", "async", "sqlite", "mysql", "nope", "default", "Echo", "Missing", "all",
          "0", "1", "-1", "2.5", "nan", "inf", "-inf", "1e300", "99999999999999999", "", " ", "10 minutes",
          "now", "3000000 days", "high,low", ",", "x" * 300, "é", "../x", "/", "jobs", "__init__",
          "config.py", "1; DROP TABLE jobs", "[1, 2]", "{'a': 1}", "key=value", "x=", "=y", "'", '"', "(",
          "None", "True", "-", "--queue=a", "--poll=-1", "\x00"]
TOKENS = st.one_of(st.sampled_from(COMMANDS + OPTIONS + VALUES), st.text(max_size=8))
ARGV = st.tuples(st.sampled_from(COMMANDS + ["", "nope", "--help"]), st.lists(TOKENS, max_size=6)).map(
    lambda t: [t[0], *t[1]])
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project for the CLI fuzz: SQLite by default; MySQL and RabbitMQ on a closed port."""
    project = Project(tmp_path_factory.mktemp("fuzz"), DRIVERS, DATABASES)
    with open(os.path.join(project.folder, "jobs", "Echo.py"), "w") as f:
        f.write(ECHO)
    return project


@pytest.fixture
def inside(project, monkeypatch):
    """Run main() in-process against the project (its config, its folder); restore afterwards."""
    saved = queue._config
    monkeypatch.setenv("QUEUE_CONFIG", project.config_path)
    monkeypatch.delenv("QUEUE_KEY", raising=False)
    monkeypatch.chdir(project.folder)
    yield project
    queue._close_drivers()
    queue._config = saved


def bounded(argv):
    """`work` must end: give it --max-time (argparse keeps the last one) if the command is work."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            command = queue._parser().parse_args(argv).command
    except SystemExit:
        return argv
    return [*argv, "--max-time", "0.05"] if command == "work" else argv


def run_main(argv):
    """queue.main(argv) in-process: (status, stdout, stderr); SystemExit is argparse's exit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = queue.main(argv)
        except SystemExit as exc:
            status = exc.code
        finally:
            queue._close_drivers()
    return status, out.getvalue(), err.getvalue()


def short(value, size=300):
    text = repr(value)
    return text if len(text) <= size else text[:size] + f"... ({len(text)} characters)"


def check_contract(argv, status, out, err):
    """SPEC section 3: exit 0, 1 (one line 'queue.py: error: ...', no traceback) or 2 (usage)."""
    where = f"argv={short(argv)}\nexit {status!r}\nstdout: {out[-1000:]}\nstderr: {err[-1500:]}"
    assert status in (0, 1, 2), where
    assert "Traceback" not in err and "Traceback" not in out, where
    said = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    if status == 1:
        assert len(said) == 1 and said[0].startswith("queue.py: error: "), where
    if status == 2:
        assert "usage:" in err and any(": error: " in line for line in said), where


# The command line, in-process ################################################################
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_random_argv_in_process(inside, argv):
    argv = bounded(argv)
    check_contract(argv, *run_main(argv))


HARD_CASES = [
    ["work", "--poll", "inf", "--max-time", "0.05"],                # Event.wait(inf): OverflowError
    ["work", "--poll", "1e300", "--max-time", "0.05"],
    ["push", "Echo", "--delay", "99999999999999999"],               # timedelta overflow
    ["push", "Echo", "--delay", "3000000 days"],                    # date value out of range
    ["push", "Echo", "x=" + "1" + "+1" * 30000],                    # literal_eval: RecursionError
    ["push", "Echo", "x=" + "-" * 20000 + "1"],                     # literal_eval: MemoryError
    ["job", "x" * 300],                                             # OSError: file name too long
    ["status", "--driver", "amqp"],                                 # unreachable broker
    ["work", "--driver", "amqp", "--max-time", "0.05"],
    ["table", "--connection", "mysql"],                             # unreachable MySQL
    ["push", "Echo", "--connection", "mysql"],
    ["retry", "all", "--driver", "amqp"],
    ["forget", "\x00"],
    ["--config", "\x00", "status"],
]


@pytest.mark.parametrize("argv", HARD_CASES, ids=lambda a: " ".join(a)[:40])
def test_hard_argv_in_process(inside, argv):
    check_contract(argv, *run_main(argv))


def test_nan_poll_is_refused_not_a_busy_loop(inside):
    """`--poll nan` is accepted by argparse today and makes an idle worker spin at 100% CPU
    (Event.wait(nan) returns at once); it must be a usage error like a negative poll."""
    status, out, err = run_main(["work", "--poll", "nan", "--max-time", "0.05"])
    assert status == 2, f"exit {status}: `--poll nan` was accepted\n{err[-2000:]}"


# The command line, as subprocesses ##########################################################
def run_cli(project, argv):
    done = subprocess.run([sys.executable, "queue.py", *argv], cwd=project.folder, env=project.env(),
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


@settings(max_examples=12, deadline=None)
@given(argv=ARGV.filter(lambda a: not any("\x00" in t for t in a)))
def test_random_argv_as_subprocess(project, argv):
    argv = bounded(argv)
    check_contract(argv, *run_cli(project, argv))


@pytest.mark.parametrize("argv", [
    ["status", "--driver", "amqp"],                                 # pika must not log its own errors
    ["work", "--driver", "amqp", "--max-time", "0.05"],
    ["table", "--connection", "mysql"],
    ["work", "--poll", "inf", "--max-time", "0.05"],
], ids=lambda a: " ".join(a)[:40])
def test_hard_argv_as_subprocess(project, argv):
    check_contract(argv, *run_cli(project, argv))


# The configuration ###########################################################################
NAMES = ["sqlite", "mysql", "database", "amqp", "async", "threading", "multiprocess", "UTC", "Europe/Paris",
         "Mars/Olympus", "normal", "full", "off", "extra", "handle", "default", "jobs", "failed_jobs",
         "1; DROP TABLE x", "5672", "abc", "", "queue.sqlite3", ":memory:", "127.0.0.1"]
VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=8),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                  st.sampled_from(NAMES))
DRIVER_OPTIONS = st.dictionaries(st.sampled_from(sorted({k for cls in queue.Driver.registry.values() for k in cls.kinds}) + ["unknown_key"]), VALUE, max_size=4)
DATABASE_OPTIONS = st.dictionaries(st.sampled_from(sorted({k for cls in queue._Dialect.registry.values() for k in cls.kinds}) + ["unknown_key"]), VALUE, max_size=4)
SETTINGS = st.fixed_dictionaries({}, optional={
    "DRIVERS": st.one_of(st.fixed_dictionaries({}, optional={
        "default": st.one_of(st.sampled_from(["database", "amqp", "async"]), VALUE),
        "database": DRIVER_OPTIONS, "amqp": DRIVER_OPTIONS, "async": DRIVER_OPTIONS}), VALUE),
    "DATABASES": st.one_of(st.dictionaries(st.sampled_from(["sqlite", "mysql", "other"]), DATABASE_OPTIONS,
                                           max_size=2), VALUE),
    # KEY: small integers only (bytes(n) of a large n allocates n bytes)
    "KEY": st.one_of(st.none(), st.text(max_size=40), st.binary(max_size=40), st.integers(-3, 40),
                     st.sampled_from(["short", "k" * 32])),
})
NUMBERS = ("poll", "retry_after", "heartbeat", "connect_timeout")


def use_offline(config_path, settings):
    """configure(**settings) and use the result without a server; return the Config."""
    config = queue.configure(config_path, **settings)
    for name in ("database", "amqp", "async"):
        target = queue.driver(name)
        if name == "database":
            target.clock.now(target.retry_after)
            target.ddl()
        if name == "amqp":
            target.parameters()
        if name != "async":
            queue.Worker(target)
    queue.pack(queue.Queueable())
    return config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(settings_=SETTINGS)
def test_random_config_values(tmp_path, monkeypatch, settings_):
    """Only ConfigError/QueueError may come out of a random configuration, at once or in use."""
    monkeypatch.delenv("QUEUE_KEY", raising=False)
    saved = queue._config
    try:
        try:
            queue.Config(settings_.get("DRIVERS"), settings_.get("DATABASES"), settings_.get("KEY"),
                         str(tmp_path / "config.py"))
        except queue.ConfigError as exc:
            assert "\n" not in str(exc), f"a config error is one line: {exc!r}"
            return
        try:
            config = use_offline(str(tmp_path / "config.py"), settings_)
        except queue.QueueError:
            return
        for section in list(config.drivers.values()) + list(config.databases.values()):
            for key in NUMBERS:
                value = section.get(key)
                if isinstance(value, float):
                    assert math.isfinite(value), f"{key}={value!r} was accepted\n{settings_!r}"
            if "port" in section:
                int(section["port"])  # every user of port does int(port)
    finally:
        queue._close_drivers()
        queue._config = saved


@pytest.mark.parametrize("settings_", [
    {"DRIVERS": [1, 2]},                                                   # not a dict: .items()
    {"DATABASES": "sqlite"},
    {"DRIVERS": {"database": {"retry_after": float("inf")}}},              # clock.now(inf): OverflowError
    {"DRIVERS": {"database": {"poll": float("nan")}}},                     # an idle worker spins
    {"DRIVERS": {"amqp": {"heartbeat": float("inf")}}},                    # int(inf) in parameters()
    {"DRIVERS": {"amqp": {"port": "abc"}}},                                # int('abc') in parameters()
    {"DATABASES": {"mysql": {"driver": "mysql", "port": "abc"}}},          # int('abc') in connect()
    {"KEY": 5},                                                            # bytes(5): a key of 5 zero bytes
    {"KEY": -1},                                                           # bytes(-1): ValueError
], ids=lambda s: repr(s)[:50])
def test_hard_config_values(tmp_path, monkeypatch, settings_):
    """Each of these is either refused with a ConfigError naming the key, or works."""
    monkeypatch.delenv("QUEUE_KEY", raising=False)
    saved = queue._config
    try:
        try:
            config = use_offline(str(tmp_path / "config.py"), settings_)
        except queue.ConfigError as exc:
            assert any(k in str(exc) for k in ("DRIVERS", "DATABASES", "KEY")), f"the error names no key: {exc}"
            return
        for section in list(config.drivers.values()) + list(config.databases.values()):
            for key in NUMBERS:
                if isinstance(section.get(key), float):
                    assert math.isfinite(section[key]), f"{key}={section[key]!r} was accepted"
            if "port" in section:
                int(section["port"])
        assert isinstance(config.key, (str, bytes, type(None))), \
            f"KEY={settings_.get('KEY')!r} was accepted as the signing key {queue._signing_key()!r}"
    finally:
        queue._close_drivers()
        queue._config = saved
