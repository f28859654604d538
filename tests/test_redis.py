"""What is specific to the redis driver (the generic contract, flow and operating tests run on it
through conftest's `redis_project`): an app with Redis and no SQL database at all, keys of other
applications in the same db left alone, block_for's wake-up, a push stored once by its token,
one-line errors for a server that cannot be used, the durability warning, jobs kept across a
Redis restart (appendonly), and Redis Cluster.

Tests that need a server of their own (a password, persistence settings, a restart, a cluster)
start `redis-server` on a free port with a temporary --dir (the `redis_server` fixture) and kill
it at teardown; the others use the shared server of conftest (REDIS), on a key prefix of their own.
"""
import collections
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid

import pytest

import queue
import testjobs
from conftest import CI, REDIS, Project, unique
from helpers import free_port, ok, one_line_error, stop, wait_worker
from testjobs import runs, values, wait_for

redis = pytest.importorskip("redis")

KEY = "test-key-0123456789abcdef"


# Servers of the tests' own ###################################################################
def _need(binary):
    if shutil.which(binary) is None:
        message = f"{binary} is not installed"
        if CI:
            pytest.fail(message + " (CI=true: a missing server is a failure)")
        pytest.skip(message)


class Server:
    """A redis-server of a test's own, on a free port, with its files in `folder`."""

    def __init__(self, folder, args, password=None, port=None):
        self.folder, self.args, self.password = folder, list(args), password
        self.port = port or free_port()
        self.proc = None

    def start(self, timeout=15.0):
        self.log = open(os.path.join(self.folder, "server.log"), "ab")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", self.folder, *self.args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.answers, timeout, interval=0.02,
                 message=f"redis-server on port {self.port} did not answer PING within {timeout} s")
        return self

    def answers(self):
        if self.proc.poll() is not None:
            with open(os.path.join(self.folder, "server.log")) as f:
                raise AssertionError(f"redis-server on port {self.port} exited {self.proc.returncode}:\n{f.read()}")
        client = self.client()
        try:
            return client.ping()
        except redis.exceptions.RedisError:  # not listening yet, or still loading its data
            return False
        finally:
            client.close()

    def client(self, **options):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10, **options)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None:
            self.log.close()
        self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    """redis_server(*args, password=None) -> a started Server; every one is killed (and its
    folder deleted) at teardown."""
    _need("redis-server")
    started = []

    def start(*args, password=None, port=None):
        folder = str(tmp_path / f"redis-{len(started)}")
        os.makedirs(folder)
        server = Server(folder, args, password, port)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()
        shutil.rmtree(server.folder, ignore_errors=True)


NO_DISK = ("--save", "", "--appendonly", "no")
ALWAYS = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


def write_redis_only(project, redis_settings):
    """config.py with DRIVERS only (no DATABASES at all), the redis driver the default."""
    project.drivers = {"default": "redis", "redis": redis_settings}
    with open(project.config_path, "w") as f:
        f.write(f"DRIVERS = {project.drivers!r}\nKEY = {project.key!r}\n")
    project.configure()
    return project


@pytest.fixture
def own_project(tmp_path, redis_server):
    """own_project(server, **redis options) -> a Project on the redis driver of that server (no
    DATABASES); the drivers of this process are closed at teardown (before the servers stop)."""
    made = []

    def make(server, **options):
        folder = tmp_path / f"app-{len(made)}"
        folder.mkdir()
        project = Project(folder, {}, {}, key=KEY, backend="redis")
        settings = dict({"host": "127.0.0.1", "port": server.port, "prefix": f"{unique('app')}:",
                         "attempts": 3, "poll": 0.05, "retry_after": 2}, **options)
        if server.password is not None:
            settings.setdefault("password", server.password)
        project.prefix = settings["prefix"]
        made.append(project)
        return write_redis_only(project, settings)

    yield make
    queue._close_drivers()


def sqlite_files(folder):
    return glob.glob(os.path.join(str(folder), "**", "*.sqlite3*"), recursive=True)


# 1. An app with Redis and nothing else ########################################################
def test_a_redis_only_app_runs_every_feature_without_a_sql_database(redis_project, tmp_path, spawn):
    project = write_redis_only(redis_project, dict(redis_project.drivers["redis"]))
    path = str(tmp_path / "record")
    flaky, f1, f2 = (str(tmp_path / name) for name in ("flaky", "f1", "f2"))
    assert queue.push(testjobs.Record(path, "a"), testjobs.Record(path, "b")) is True
    queue.push(testjobs.FailTimes(flaky, 1, "flaky", tries=1))  # fails for good at once; a retry succeeds
    queue.push(testjobs.Fail(f1, "f1", tries=1))
    queue.push(testjobs.Fail(f2, "f2", tries=1))

    ok(project.cli("work", "--stop-when-empty"))
    assert sorted(values(path)) == ["a", "b"]
    assert testjobs.failures(f1) == ["ValueError: boom f1"], "failed() ran once"
    rows = queue.failed_jobs()
    assert len(rows) == 3 and all(r["driver"] == "redis" and r["queue"] == "default" for r in rows), rows
    by_name = {r["exception"]: r["id"] for r in rows}
    flaky_id = next(i for text, i in by_name.items() if "attempt 1 of flaky fails" in text)
    f1_id = next(i for text, i in by_name.items() if "boom f1" in text)
    assert all("Traceback" in text for text in by_name), "the failed store keeps the traceback"
    listed = ok(project.cli("failed"))
    for job_id in by_name.values():
        assert f"\n{job_id:>6}  redis" in "\n" + listed, listed
    assert "boom f1" in listed and "boom f2" in listed and "attempt 1 of flaky fails" in listed, listed
    assert queue.status() == {"default": {"ready": 0, "delayed": 0, "reserved": 0, "failed": 3}}

    # retry one, then it runs and succeeds
    assert "retried 1 failed job(s)" in ok(project.cli("retry", flaky_id))
    assert queue.status()["default"] == {"ready": 1, "delayed": 0, "reserved": 0, "failed": 2}
    ok(project.cli("work", "--stop-when-empty"))
    assert values(flaky) == ["flaky", "flaky"]
    assert queue.status()["default"]["failed"] == 2

    # forget one, flush the other
    assert f"forgot failed job {f1_id}" in ok(project.cli("forget", f1_id))
    one_line_error(project.cli("forget", f1_id), f"no failed job with id {f1_id}")
    assert [r["name"] for r in queue.failed_jobs()] == ["Fail"]
    assert "deleted 1 failed job(s)" in ok(project.cli("flush"))
    assert "no failed jobs" in ok(project.cli("failed")) and queue.failed_jobs() == []

    # pause and resume: a paused queue gives nothing, the other one is worked
    ok(project.cli("pause", "default"))
    assert queue.paused() == ["default"]
    queue.push(testjobs.Record(path, "held"))
    queue.push(testjobs.Record(path, "other"), queue="other")
    ok(project.cli("work", "--stop-when-empty", "--queue", "default,other"))
    assert sorted(values(path)) == ["a", "b", "other"], "a job was taken from a paused queue"
    ok(project.cli("resume", "default"))
    assert queue.paused() == []
    ok(project.cli("work", "--stop-when-empty"))
    assert sorted(values(path)) == ["a", "b", "held", "other"]

    # status lists a live worker
    worker = spawn(project, "work")
    wait_worker(worker, lambda: any(w["pid"] == worker.proc.pid for w in queue.workers()), 15,
                "the worker did not report itself")
    shown = ok(project.cli("status"))
    assert f":{worker.proc.pid}  redis/" in shown and "queues default" in shown, shown
    state = queue.dashboard_state()
    assert worker.proc.pid in [w["pid"] for w in state["workers"]]
    stop(worker)

    # throttle: its slots live in Redis, shared with every process of the app
    key = unique("mailgun")
    with queue.throttle(key, allow=2, every=60) as first, queue.throttle(key, allow=2, every=60) as second:
        assert first and second
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import queue\nqueue.configure('config.py')\n"
         f"with queue.throttle({key!r}, allow=2, every=60) as ok:\n    print('free' if ok else 'full')"],
        cwd=project.folder, env=project.env(), capture_output=True, text=True, timeout=60)
    assert elsewhere.stdout.strip() == "full", elsewhere.stdout + elsewhere.stderr
    with queue.throttle(unique("other"), allow=1, every=60) as third:
        assert third

    # the dashboard's state and /metrics
    queue.push(testjobs.Fail(f2, "again", tries=1))
    ok(project.cli("work", "--stop-when-empty"))
    state = queue.dashboard_state()
    queues = {q["queue"]: q for q in state["queues"]}
    assert queues["default"]["failed"] == 1 and queues["default"]["ready"] == 0 and not queues["default"]["paused"]
    assert [f["error"] for f in state["failed"]] == ["ValueError: boom again"]
    assert sum(minute["done"] for minute in state["series"]) == 5  # a, b, flaky, other, held
    assert sum(minute["failed"] for minute in state["series"]) == 4
    text = queue.metrics()
    assert 'queue_failed_jobs{queue="default"} 1' in text, text
    assert 'queue_jobs_done_total{job="Record"} 4' in text, text
    assert 'queue_jobs_failed_total{job="Fail"} 3' in text, text

    assert not sqlite_files(project.folder), "a SQLite file was made in a Redis-only app"
    assert not sqlite_files(tmp_path)
    assert any(b"{failed}" in k for k in _shared_keys(project.prefix)), "the failed store is in Redis"


def _shared_keys(prefix):
    client = redis.Redis(host=REDIS["host"], port=REDIS["port"], db=REDIS["db"])
    try:
        return list(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


# 2. Keys of other applications ###############################################################
def test_keys_of_other_applications_in_the_same_db_are_never_touched(own_project, redis_server, tmp_path):
    server = redis_server(*NO_DISK)
    project = own_project(server, prefix="mine:")
    client = server.client()
    tag = uuid.uuid4().hex[:8]
    foreign = {
        f"other-app-{tag}": lambda k: client.set(k, "value", ex=3600),
        f"other-app-{tag}:list": lambda k: client.rpush(k, "x", "y"),
        "mine": lambda k: client.set(k, "a key named like the prefix, without its colon"),
        f"mine-{tag}:{{default}}": lambda k: client.rpush(k, "1"),
        # the same queue name under another prefix, and queue.py's default prefix: another app's queue.py
        f"other-{tag}:{{default}}": lambda k: client.rpush(k, "1-a", "1-b"),
        f"other-{tag}:{{default}}:jobs": lambda k: client.hset(k, mapping={"1-a": "Job\0x", "1-b": "Job\0y"}),
        f"other-{tag}:{{default}}:delayed": lambda k: client.zadd(k, {"1-c": 1.0}),
        f"other-{tag}:{{default}}:reserved": lambda k: client.zadd(k, {"1-d": 1.0}),
        f"other-{tag}:{{default}}:notify": lambda k: client.rpush(k, "1"),
        "queues:{default}": lambda k: client.rpush(k, "2-a"),
        "queues:{default}:jobs": lambda k: client.hset(k, "2-a", "Job\0z"),
        "queues:{state}:names": lambda k: client.zadd(k, {"throttle:x:0": 0}),
        "queues:{state}:expires": lambda k: client.zadd(k, {"throttle:x:0": 1.0}),  # long expired
        "queues:{state}:values": lambda k: client.hset(k, "throttle:x:0", "someone"),
        "queues:{failed}:ids": lambda k: client.zadd(k, {"1": 1.0}),
        "queues:{failed}:job:1": lambda k: client.hset(k, mapping={"queue": "default", "name": "Job"}),
        "queues:{failed}:counts": lambda k: client.hset(k, "default", 1),
        "queues:{failed}:next": lambda k: client.set(k, 1),
    }
    try:
        for name, make in foreign.items():
            make(name)
        before = {name: client.dump(name) for name in foreign}
        ttl = client.ttl(f"other-app-{tag}")

        path = str(tmp_path / "record")
        failing = str(tmp_path / "failing")
        queue.push(testjobs.Record(path, "a"), testjobs.Record(path, "b"))
        queue.push(testjobs.Record(path, "later"), delay=3600)
        queue.push(testjobs.Fail(failing, "f1", tries=1), testjobs.Fail(failing, "f2", tries=1))
        ok(project.cli("work", "--stop-when-empty"))
        assert sorted(values(path)) == ["a", "b"] and len(values(failing)) == 2
        ids = sorted(r["id"] for r in queue.failed_jobs())
        assert f"forgot failed job {ids[1]}" in ok(project.cli("forget", ids[1]))
        assert "deleted 1 job(s)" in ok(project.cli("clear", "--queue", "default", "--force"))  # the delayed one
        unique_job = testjobs.Record(path, "unique")
        unique_job.unique_for = 600
        assert queue.push(unique_job) is True
        assert queue.push(unique_job) is False, "a unique job is pushed once"
        assert queue.clear("default") == 1
        assert queue.push(unique_job) is True, "clear freed the unique lock of the job it deleted"
        assert "deleted 1 job(s)" in ok(project.cli("clear", "--queue", "default", "--force"))
        assert "retried 1 failed job(s)" in ok(project.cli("retry", ids[0]))
        ok(project.cli("work", "--stop-when-empty"))  # the retried job fails again
        assert len(values(failing)) == 3
        assert queue.flush() == 1
        with queue.throttle("x", allow=1, every=1) as taken:
            assert taken
        ok(project.cli("pause", "default"))
        ok(project.cli("resume", "default"))
        names = "mine:{state}:names"
        assert client.zrangebylex(names, "[throttle:", "(throttle;"), "the throttle's slot is in the state store"
        store = queue.driver().state_store()
        store.clock.advance(3 * 86400)  # every throttle slot, lock and worker beat has expired: prune deletes them
        store.prune()
        assert client.zrangebylex(names, "[throttle:", "(throttle;") == [], "prune deleted the expired slot"
        assert all(counts == {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0}
                   for counts in queue.status().values()), queue.status()

        after = {name: client.dump(name) for name in foreign}
        changed = [name for name in foreign if after[name] != before[name]]
        assert not changed, f"keys of another application were changed or deleted: {changed}"
        assert 3590 <= client.ttl(f"other-app-{tag}") <= ttl, "the expiry of a foreign key was changed"
        strays = [k.decode() for k in client.scan_iter(count=1000)
                  if k.decode() not in foreign and not k.decode().startswith("mine:")]
        assert not strays, f"keys written outside the prefix 'mine:': {strays}"
    finally:
        client.delete(*foreign)
        client.close()


# 3. block_for: an idle worker blocked on the server wakes for a push ##########################
def test_a_blocked_worker_starts_a_pushed_job_at_once_and_a_delayed_one_when_due(own_project, redis_server,
                                                                                 tmp_path, spawn):
    server = redis_server(*NO_DISK)
    project = own_project(server, block_for=5, poll=1)
    client = server.client()
    path = str(tmp_path / "record")
    worker = spawn(project, "work")
    wait_worker(worker, lambda: any(w["pid"] == worker.proc.pid for w in queue.workers()), 15,
                "the worker did not start")

    def blocked():  # the worker waits in BLPOP on its queue's notify list (the only client that blocks here)
        return client.info("clients")["blocked_clients"] >= 1

    latencies = []
    for i in range(10):
        wait_worker(worker, blocked, 10, "the idle worker does not block on the server")
        pushed = time.time()
        queue.push(testjobs.Record(path, f"j{i}"))
        wait_worker(worker, lambda: len(runs(path)) == i + 1, 5, f"job j{i} did not run")
        latencies.append(runs(path)[-1].at - pushed)
    assert values(path) == [f"j{i}" for i in range(10)]
    p50 = statistics.median(latencies)
    assert p50 < 0.05, f"push-to-start of a blocked worker: median {p50 * 1000:.0f} ms, " \
                       f"all {[round(x * 1000) for x in latencies]} ms (a push must wake it, not its poll)"

    wait_worker(worker, blocked, 10, "the idle worker does not block on the server")
    pushed = time.time()
    queue.push(testjobs.Record(path, "later"), delay=1.0)
    wait_worker(worker, lambda: len(runs(path)) == 11, 10, "the delayed job did not run")
    waited = runs(path)[-1].at - pushed
    assert 0.9 <= waited <= 1.9, f"a job delayed 1 s started {waited:.3f} s after its push"
    stop(worker)
    client.close()


# 4. A push is stored once ####################################################################
def _push_args(driver, q, job, token):
    """The keys and arguments of _REDIS_PUSH as RedisDriver.put lays them out (one ready job)."""
    [message] = driver.messages([job], queue=q)
    keys = driver.keys(q) + [driver.keys(q)[0] + ":pushed"]
    args = [repr(driver.clock.time()), token, queue._new_id(), "", "0", message.name.encode() + b"\0" + message.payload]
    return keys, args


def test_the_push_script_sent_twice_with_one_token_stores_the_job_once(redis_project, tmp_path):
    driver, q, path = queue.driver(), unique("q"), str(tmp_path / "record")
    keys, args = _push_args(driver, q, testjobs.Record(path, "once"), os.urandom(12).hex())
    first = driver.run(lambda c: driver.script(c, "_REDIS_PUSH", keys, args))
    again = driver.run(lambda c: driver.script(c, "_REDIS_PUSH", keys, args))
    assert (first, again) == (1, 0)
    assert driver.stats([q])[q] == {"ready": 1, "delayed": 0, "reserved": 0}
    ok(redis_project.cli("work", "--stop-when-empty", "--queue", q))
    assert values(path) == ["once"]
    assert driver.stats([q])[q] == {"ready": 0, "delayed": 0, "reserved": 0}


def test_a_push_whose_reply_was_lost_is_sent_again_and_stored_once(redis_project, tmp_path):
    """A push goes out on the thread's own connection; that connection dies after the server ran
    it and before its reply is read: the push is sent again with its token, and stored once."""
    driver, q, path = queue.driver(), unique("q"), str(tmp_path / "record")
    queue.push(testjobs.Record(path, "first"), queue=q)  # the queue is known: one script per push
    real, lost = driver._flushed, []

    def lose_the_reply(call, read=True):
        def flush(client, *args):
            if not lost:
                lost.append(True)
                real(None, read=False)(client)  # the push goes out, and runs
                wait_for(lambda: driver.stats([q])[q]["ready"] == 2, 10, message="the push did not run")
                driver._local.conn._sock.shutdown(socket.SHUT_RDWR)  # the connection dies before its reply
            return real(call, read)(client, *args)
        return flush
    driver._flushed = lose_the_reply
    try:
        queue.push(testjobs.Record(path, "second"), queue=q)
    finally:
        del driver._flushed
    assert lost and driver.stats([q])[q]["ready"] == 2, "sent again with its token: stored once"
    ok(redis_project.cli("work", "--stop-when-empty", "--queue", q))
    assert sorted(values(path)) == ["first", "second"]


def _sockets():
    """The sockets this process has open."""
    return sum(1 for fd in os.listdir("/proc/self/fd") if _link(f"/proc/self/fd/{fd}").startswith("socket:"))


def _link(path):
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_threads_that_push_once_and_end_give_their_connection_back(redis_project, tmp_path):
    """A thread keeps a connection of its own for its pushes (no pool round per push); when the
    thread ends, the connection goes back to the pool, so an app that starts a thread per request
    holds a few connections, not one per thread it ever ran."""
    import threading
    q, path = unique("q"), str(tmp_path / "record")
    queue.push(testjobs.Record(path, "warm"), queue=q)
    before = _sockets()
    for i in range(40):
        thread = threading.Thread(target=queue.push, args=(testjobs.Record(path, f"t{i}"),), kwargs={"queue": q})
        thread.start()
        thread.join()
    assert _sockets() - before <= 2, f"{_sockets() - before} more sockets after 40 threads each pushed once"
    assert queue.driver().stats([q])[q]["ready"] == 41


# 5. Servers that cannot be used, and names Redis cannot keep ##################################
def _status_within(project, seconds):
    started = time.monotonic()
    try:
        result = project.cli("status", timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(f"`status` did not end within {seconds} s; its stderr so far:\n{said}") from None
    return result, time.monotonic() - started


def test_a_port_where_nothing_listens_is_one_line(tmp_path):
    port = free_port()
    project = Project(tmp_path, {}, {}, key=KEY, backend="redis")
    write_redis_only(project, {"host": "127.0.0.1", "port": port, "prefix": "never:"})
    try:
        result, took = _status_within(project, 15)
        one_line_error(result, f"127.0.0.1:{port}")
        assert took < 15
    finally:
        queue._close_drivers()


def test_a_wrong_password_is_one_line(own_project, redis_server):
    server = redis_server(*NO_DISK, "--requirepass", "secret", password="secret")
    project = own_project(server, password="wrong")
    result, took = _status_within(project, 30)
    one_line_error(result, "password", f"127.0.0.1:{server.port}")
    assert "wrong" not in result.stderr, "the password is not printed"
    assert took < 20


def test_a_db_out_of_range_is_one_line_naming_the_setting(redis_project):
    write_redis_only(redis_project, dict(redis_project.drivers["redis"], db=999))
    result, took = _status_within(redis_project, 30)
    one_line_error(result, "999", "['db']")  # the key to change, as for any wrong value of config.py
    assert took < 20


@pytest.mark.parametrize("name", ["a{b}", "{tag}", "x}"])
def test_a_queue_name_with_braces_is_refused_at_push(redis_project, tmp_path, name):
    path = str(tmp_path / "record")
    with pytest.raises(queue.QueueError, match="braces"):
        queue.push(testjobs.Record(path, "x"), queue=name)
    with pytest.raises(queue.QueueError, match="braces"):  # a batch is all or none
        queue.push(testjobs.Record(path, "y"), testjobs.Record(path, "z", queue=name))
    assert queue.status() == {}, "nothing was stored"


# 6. The durability warning ###################################################################
@pytest.mark.parametrize("args, warning", [
    (NO_DISK, "keeps nothing on disk"),
    (("--save", "3600 1", "--appendonly", "no"), "keeps only snapshots"),
    (ALWAYS, None),
], ids=["no-persistence", "snapshots", "appendfsync-always"])
def test_status_and_work_say_when_the_server_keeps_jobs_only_in_memory(own_project, redis_server, args, warning):
    server = redis_server(*args)
    project = own_project(server)
    shown = ok(project.cli("status"))
    warnings = [line for line in shown.splitlines() if line.startswith("warning:")]
    worked = project.cli("work", "--stop-when-empty")
    ok(worked)
    if warning is None:
        assert warnings == [], shown
        assert "set appendonly yes" not in worked.stdout + worked.stderr
    else:
        assert len(warnings) == 1 and warning in warnings[0] and "appendonly yes" in warnings[0], shown
        assert f"127.0.0.1:{server.port}" in warnings[0]
        assert warning in worked.stdout + worked.stderr, worked.stderr


# 7. A restart of Redis keeps pushed jobs (appendonly yes, appendfsync always) ##################
def test_a_restarted_redis_with_appendfsync_always_keeps_every_pushed_job(own_project, redis_server,
                                                                           tmp_path, spawn):
    server = redis_server(*ALWAYS)
    project = own_project(server)
    path = str(tmp_path / "record")
    names = [f"j{i}" for i in range(50)]
    for name in names:
        queue.push(testjobs.Record(path, name))
    later = [f"later{i}" for i in range(5)]
    for name in later:
        queue.push(testjobs.Record(path, name), delay=1.0)
    assert queue.status()["default"] == {"ready": 50, "delayed": 5, "reserved": 0, "failed": 0}

    server.kill()  # SIGKILL: no shutdown save
    server.start()
    queue._close_drivers()  # (a process that ran across the restart: the tests below)

    worker = spawn(project, "work")
    wait_worker(worker, lambda: len(values(path)) >= 55, 30, "the jobs pushed before the restart did not all run")
    stop(worker)
    counts = collections.Counter(values(path))
    assert set(counts) == set(names + later), sorted(set(names + later) - set(counts))
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n > 1}
    assert queue.status()["default"] == {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0}


# 8. Redis Cluster ############################################################################
@pytest.fixture
def cluster(redis_server):
    """Three masters of a Redis Cluster on free ports (their bus on free ports too); the first
    one's Server. Stopped and their folders deleted by redis_server's teardown."""
    _need("redis-cli")
    nodes = [redis_server("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          "--cluster-port", str(free_port()), "--cluster-node-timeout", "5000", *NO_DISK)
             for _ in range(3)]
    made = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                           "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr

    def ready():
        for node in nodes:
            client = node.client()
            try:
                info = client.execute_command("CLUSTER", "INFO")
            finally:
                client.close()
            info = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                return False
        return True
    wait_for(ready, 20, interval=0.05, message="the cluster did not reach cluster_state:ok")
    return nodes


def test_redis_cluster_runs_queues_in_different_slots(cluster, own_project, tmp_path):
    project = own_project(cluster[0], cluster=True)
    client = cluster[0].client()
    slots = {q: client.execute_command("CLUSTER", "KEYSLOT", queue.driver().keys(q)[0]) for q in "abc"}
    client.close()
    assert len(set(slots.values())) == 3, slots

    path = str(tmp_path / "record")
    names = {q: [f"{q}{i}" for i in range(5)] for q in "abc"}
    queue.push(*(testjobs.Record(path, n, queue=q) for q in "abc" for n in names[q][:2]))  # one push, three slots
    for q in "abc":
        for n in names[q][2:]:
            queue.push(testjobs.Record(path, n), queue=q)
    flaky = str(tmp_path / "flaky")
    queue.push(testjobs.FailTimes(flaky, 1, "flaky", tries=1), queue="b")
    status = queue.status()
    assert {q: status[q]["ready"] for q in "abc"} == {"a": 5, "b": 6, "c": 5}, status

    ok(project.cli("work", "--stop-when-empty", "--queue", "a,b,c"))
    counts = collections.Counter(values(path))
    assert counts == collections.Counter(n for q in "abc" for n in names[q]), counts
    order = values(path)
    assert order.index("a4") < order.index("b0") < order.index("b4") < order.index("c0"), \
        f"--queue a,b,c is a priority order: {order}"

    [row] = queue.failed_jobs()
    assert row["queue"] == "b" and row["driver"] == "redis" and "attempt 1 of flaky fails" in row["exception"]
    assert "attempt 1 of flaky fails" in ok(project.cli("failed"))
    assert "retried 1 failed job(s)" in ok(project.cli("retry", "all"))
    assert queue.failed_jobs() == [] and queue.status()["b"]["ready"] == 1
    ok(project.cli("work", "--stop-when-empty", "--queue", "a,b,c"))
    assert values(flaky) == ["flaky", "flaky"]
    assert all(queue.status()[q] == {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0} for q in "abc")

    key = unique("api")
    taken = []
    for _ in range(3):
        with queue.throttle(key, allow=2, every=60) as free:
            taken.append(free)
    assert taken == [True, True, False]



def push_elsewhere(project, path, value):
    """Push Record(path, value) from a new process of the app (its own driver, scripts not loaded yet)."""
    code = ("import queue, testjobs\nqueue.configure('config.py')\n"
            f"queue.push(testjobs.Record({path!r}, {value!r}))\n")
    pushed = subprocess.run([sys.executable, "-c", code], cwd=project.folder, env=project.env(),
                            capture_output=True, text=True, timeout=60)
    assert pushed.returncode == 0, pushed.stderr


def test_a_worker_running_when_redis_restarts_goes_on(own_project, redis_server, tmp_path, spawn):
    server = redis_server(*ALWAYS)
    project = own_project(server, block_for=1, poll=0.2)
    path = str(tmp_path / "record")
    worker = spawn(project, "work")
    push_elsewhere(project, path, "before")
    wait_worker(worker, lambda: values(path) == ["before"], 15, "the job pushed before the restart did not run")

    server.kill()
    server.start()  # its script cache is empty: the worker's driver must load its scripts again
    push_elsewhere(project, path, "after")
    wait_worker(worker, lambda: values(path) == ["before", "after"] or worker.proc.poll() is not None, 30,
                "the worker that ran before the restart did not run a job pushed after it")
    assert worker.proc.poll() is None, f"the worker exited when Redis restarted:\n{worker.output}"
    assert values(path) == ["before", "after"]
    stop(worker)


def test_what_a_worker_sent_ahead_and_the_server_never_ran_is_sent_again(own_project, redis_server, tmp_path):
    """A job claimed ahead counts its attempt, and deletes the job finished before it, with a
    script the worker sends without waiting for its answer. Sent to a server that then dies
    before it runs it (SIGSTOP, the send, SIGKILL), it is sent again after the reconnect: the
    finished job is deleted, not run a second time after its lease."""
    server = redis_server(*ALWAYS)
    own_project(server, retry_after=30)
    d, name = queue.driver(), "default"
    queue.push(*(testjobs.Record(str(tmp_path / "r"), i) for i in range(4)))
    d.ack(d.pop([name]))                  # one job (nothing known of their length yet)
    first = d.pop([name])                 # takes the other three: one runs, two wait
    assert d.stats([name])[name]["reserved"] == 3
    d.ack(first)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        second = d.pop([name])            # sends its start, with the delete of `first`, unanswered
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.log.close()
    server.start()
    assert d.stats([name])[name] == {"ready": 0, "delayed": 0, "reserved": 3}, "the start never ran"
    d.ack(second)
    last = d.pop([name])                  # its start goes on the lost connection, then again on a new one
    assert last.attempts == 1
    d.ack(last)
    d.close()
    assert d.stats([name])[name] == {"ready": 0, "delayed": 0, "reserved": 0}, "every finished job deleted"
    tries = server.client().hgetall(d.keys(name)[4])
    assert tries == {}, tries


def test_a_worker_of_many_lanes_stops_cleanly_while_its_lanes_wait_on_the_server(own_project, redis_server,
                                                                                  tmp_path, spawn):
    """With --concurrency N, the first lane to end closed the process's client (its pool) while the
    others were blocked on the server: they crashed ("'NoneType' object has no attribute
    'readline'") or hung past the stop. The thread that started the lanes now closes it, last."""
    server = redis_server(*NO_DISK)
    project = own_project(server, block_for=1, poll=1)
    path = str(tmp_path / "record")
    for attempt in range(4):
        worker = spawn(project, "work", "--concurrency", "8")
        push_elsewhere(project, path, f"job{attempt}")
        wait_worker(worker, lambda: f"job{attempt}" in values(path), 15, "the worker did not run its job")
        stop(worker)  # exit 0 within 30 s
        assert "Traceback" not in worker.output, worker.output


def test_an_app_pushes_on_after_redis_restarts(own_project, redis_server, tmp_path):
    server = redis_server(*ALWAYS)
    project = own_project(server)
    path = str(tmp_path / "record")
    queue.push(testjobs.Record(path, "before"))  # this process's driver has loaded its push script
    queue.push(testjobs.Record(path, "again"))  # and packed a single push to this queue (its SHA in it)
    server.kill()
    server.start()
    import threading
    pushed = threading.Thread(target=queue.push, args=(testjobs.Record(path, "after"),), daemon=True)
    pushed.start()  # it reconnects, and loads the script again (it once sent the packed EVALSHA for ever)
    pushed.join(20)
    assert not pushed.is_alive(), "the push after the restart never returned"
    assert queue.status()["default"]["ready"] == 3
    ok(project.cli("work", "--stop-when-empty"))
    assert values(path) == ["before", "again", "after"]
