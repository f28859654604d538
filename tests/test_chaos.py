"""Fault injection, short version: benchmarks/chaos/chaos.py run as a subprocess on every backend.

Each run pushes a few hundred numbered jobs, SIGKILLs a random worker every second (starting a
replacement), and once restarts the server (MariaDB, RabbitMQ) or, on SQLite, kills every worker
at once; the bad-input runs inject ~100 forged and broken payloads straight into the backend.
chaos.py counts from the jobs' own record (not through queue.py) and exits 1 on any loss,
unexplained double run, unpickled forgery or worker death without recovery; its table is parsed
here so that a failure says what went wrong. The full-size run is `python benchmarks/chaos/chaos.py`
(see its docstring).
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import restarts_a_server, AMQP, MYSQL, ROOT, require, test_vhost

CHAOS = os.path.join(ROOT, "benchmarks", "chaos", "chaos.py")
SEED = int(os.environ.get("CHAOS_SEED", "20240601"))


def chaos(*args, timeout=150):
    """Run chaos.py; return (exit status, {row label: count}, header, stdout + stderr)."""
    if "amqp" in args:
        args = args + ("--vhost", test_vhost())  # the run's own vhost, deleted at its end with all in it
    argv = [sys.executable, CHAOS, "--retry-after", "2", "--seed", str(SEED), "--timeout", "60", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    rows = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^(\S.*?|  \S.*?)\s{2,}(-?\d+)(?:\s|$)", line)
        if match and not line.startswith(("queue.py chaos", "what")):
            rows[match.group(1).strip()] = int(match.group(2))
    header = "\n".join(done.stdout.splitlines()[:2])
    return done.returncode, rows, header, f"{done.stdout}\n--- stderr (tail) ---\n{done.stderr[-6000:]}"


def check(status, rows, output):
    """The run passed, and the table shows that it did what it claims."""
    result = [line for line in output.splitlines() if line.startswith("RESULT:")]
    assert status == 0, f"{result[0] if result else 'no RESULT line'}\n{output}"
    assert rows["lost (neither done nor in the failed store)"] == 0
    assert rows["unexplained"] == 0
    assert rows["ran in two workers at once"] == 0
    assert rows["worker deaths not followed by recovery"] == 0
    assert rows["SIGKILLed by the chaos loop"] >= 2, output  # the kills happened


def check_bad(rows, output):
    assert rows["bad payloads injected"] >= 100, output
    assert rows["unpickled forgeries (marker files)"] == 0
    assert rows["control marker unpickled (must be 1)"] == 1, "the marker check would prove nothing\n" + output
    assert rows["missing from the failed store"] == 0
    assert rows["ended by os._exit() jobs"] >= 2, output  # os._exit() jobs killed workers, which came back


# The backends: chaos.py's options for each, the server it needs, and what its chaos run does
# besides the kills (SQLite has no server to restart, so every worker is SIGKILLed at once)
BACKENDS = {
    "sqlite": (["--driver", "database", "--connection", "sqlite"], None, "every worker killed at once"),
    "mysql": (["--driver", "database", "--connection", "mysql"], ("MariaDB", MYSQL), "MariaDB restarted"),
    "amqp": (["--driver", "amqp"], ("RabbitMQ", AMQP), "RabbitMQ restarted"),
}
# jittered backoffs (the default on amqp) are for the full runs: the short chaos run keeps its pace
UNJITTERED = {"amqp": ["--no-jitter"]}


def options(backend):
    """chaos.py's options for the backend, once its server (if it has one) is reachable."""
    argv, server, _ = BACKENDS[backend]
    if server is not None:
        name, settings = server
        require(name, settings["host"], settings["port"])
    return argv


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=restarts_a_server),
                                     pytest.param("amqp", marks=restarts_a_server)])
def test_chaos_kills_and_kill_all_or_server_restart(backend):
    status, rows, header, output = chaos(*options(backend), "--jobs", 300, *UNJITTERED.get(backend, []))
    assert BACKENDS[backend][2] in header, output
    check(status, rows, output)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    status, rows, header, output = chaos(*options(backend), "--jobs", 50, "--bad", 100, "--no-restart")
    check(status, rows, output)
    check_bad(rows, output)


@pytest.mark.parametrize("argv", [["--jobs", "-1"], ["--workers", "0"], ["--driver", "nope"]])
def test_chaos_rejects_bad_options(argv):
    done = subprocess.run([sys.executable, CHAOS, *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
