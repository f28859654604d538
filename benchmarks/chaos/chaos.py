#!/usr/bin/env python3
"""Fault injection for queue.py: SIGKILLed workers, a server restart and hostile payloads, counted
from a record that the jobs keep themselves (not through queue.py).

    python benchmarks/chaos/chaos.py --driver database --connection sqlite --jobs 10000
    python benchmarks/chaos/chaos.py --driver database --connection mysql --jobs 10000
    python benchmarks/chaos/chaos.py --driver amqp --jobs 10000
    python benchmarks/chaos/chaos.py --driver redis --jobs 10000
    python benchmarks/chaos/chaos.py --driver beanstalkd --jobs 5000
    python benchmarks/chaos/chaos.py --driver sqs --jobs 2000
    python benchmarks/chaos/chaos.py --driver database --connection mysql --jobs 0 --bad 1000
    python benchmarks/chaos/chaos.py --driver database --connection sqlite --jobs 300 --poison 60

What one run does, in a temporary project (queue.py copied in, config.py with a short
retry_after and a fixed KEY, its own MySQL tables or RabbitMQ queues, removed afterwards; on
redis, beanstalkd and sqs, a server of its own, see below):
1. pushes N uniquely numbered jobs (benchmarks/chaos/chaosjobs.py): mostly short sleeps, plus jobs that
   raise once, always raise, run past their timeout once or always, and a few that run longer than
   retry_after (the database reservation, or amqp heartbeats, must not lapse while they live);
2. with --bad B, injects B forged, wrongly signed, truncated, bit-flipped, extended and random
   payloads straight into the backend (INSERT into the jobs table, a raw publish with pika,
   HSET + RPUSH into the redis driver's keys, a raw put into the beanstalkd tube, or a raw
   send_message_batch into the SQS queue),
   plus correctly signed jobs whose class is missing, whose unpickling or __init__ raises, that
   call sys.exit() or os._exit(); every forged pickle would create a marker file if unpickled,
   and one correctly signed marker (the control) proves that the markers work;
   with --poison P (default 2% of --jobs), P more numbered jobs, spread among the others, that do
   what a job can do to the process that runs it (chaosjobs.POISON): failed() calling sys.exit(),
   __setstate__ raising SystemExit or sleeping past the job's timeout, exceptions with a lone
   surrogate or a __str__ that raises, KeyboardInterrupt / SystemExit(0) / GeneratorExit, a fork
   whose child returns from handle() or calls sys.exit(0), SIGTERM ignored or blocked, an alarm or
   interval timer left behind, a __repr__ that raises; and those of the issue "Faults an adversary
   found": a 10 MB exception message and one with a NUL byte (their failed record must be at most
   70 KB and hold no NUL), a job that cancels the worker's alarm (alarm(0) or setitimer(0)) and
   runs 8 s past its 1 s timeout (every attempt must end within 3 s of the timeout, failed as
   JobTimeout), a non-daemon thread left running (600 s), an `async def handle()` that blocks its
   loop with time.sleep(1), sys.stdout and sys.stderr closed, and SIGTERM set to SIG_IGN for a
   1 s job: chaos.py SIGTERMs that job's worker as it runs (sigignrun), and the worker must
   finish the job and exit 0 within 10 s, its job settled (a rerun is not explained by that stop);
   each kind must be done exactly once or in the failed store exactly once (failed() called at
   most once), none may end its worker or leave it idle while the others take jobs, and no
   worker may hang on a SIGTERM;
3. runs --workers worker processes (`python queue.py work`, with --concurrency N lanes each: then
   a job that sets a signal handler fails in a lane, which Python allows only in the main thread,
   and a death explains a rerun of any job its process completed) and one more for the long jobs; every
   --kill-every seconds SIGKILLs a random worker and starts a replacement, and starts a new
   worker for any worker that exits, as a supervisor would;
4. once, when 40% of the jobs are done, restarts the server (MariaDB, PostgreSQL or RabbitMQ;
   Redis and beanstalkd are SIGKILLed and started again on the same port and dir) or, on SQLite,
   SIGKILLs every worker at once (--no-restart: neither; sqs: never);
5. waits (bounded) until every job is done or in the failed store, stops the workers with
   SIGTERM, and counts.

--jitter (the default on amqp; --no-jitter turns it off) gives every job that raises once, always
raises or times out a backoff of its own (chaosjobs.jitter: 3 random seconds between 0.3 and 4),
and pushes 5% of the short jobs one by one with a random delay of 0.1 to 3 s: hundreds of distinct
delays. No job may begin before its delay, and no retry before its backoff (unless a worker death
or the broker restart explains it). On amqp the broker's queues (vhost /) are counted before the
push, every 2 s during the run (`rabbitmqctl -q list_queues name`, else the management API) and
at the end: delays wait in queue.py's fixed delay ladder, so the run may add at most 40 queues
(its own two, the ladder's 31 if it is not there yet) and no per-delay queue "<queue>.delay.<ms>"
of queue.py 1.0.

The record: each attempt appends `start`/`end` lines to runs.log and each completed run appends
"NUMBER PID ATTEMPT TIME" to done.log, with single O_APPEND writes. A job run more than once is
explained when an earlier completed run's worker died (SIGKILL, os._exit) after completing it and
before its next claim (database) or within a second (amqp, whose acks travel on an I/O thread),
or, on amqp, when a worker died after an attempt that raised and before it began anything else
(a release publishes the delayed copy, then acks: killed in between, copy and original both run),
or when the earlier run overlapped the broker restart (a dropped connection takes its
unacked deliveries with it), or an attempt that raised ended within a second of the restart (its
release, a confirmed publish and an ack, overlapped it). The table is printed on stdout; the exit status is 1 if any
"must be" limit is exceeded (loss, unexplained double run, concurrent runs, an unpickled forgery,
a worker death without recovery, ...), else 0.

On redis (--driver redis) the run starts a redis-server of its own, never the shared one on 6379:
on a free port below the ephemeral range, with a temporary --dir in the project folder and
`--appendonly yes --appendfsync always --save ""`. DRIVERS names only redis (its failed jobs and
state in Redis, no DATABASES); the server is killed at the end and its dir goes with the project
folder (kept with --keep). The restart is a SIGKILL of that server and a start on the same port and
dir (recovery from the AOF); the workers must reconnect on their own: no worker is SIGKILLed from
the crash until 3 s after the server answers again (QUIET_AFTER_RESTART), since a replacement would
load the driver's Lua scripts into the new server (they do not survive a restart) before the old
workers use theirs, and hide a worker that cannot reload its own. On every driver, a main worker
that lived through the restart must begin jobs again while the others do (a row of the table). With
appendfsync always no acknowledged write is lost, so the restart explains no double run: a finished
job's delete travels with its worker's next pop (as on the database driver), so a job whose worker
was killed after it and before that pop runs again after its lease, which a worker death explains.

On beanstalkd (--driver beanstalkd) the run starts `beanstalkd -l 127.0.0.1 -p PORT -b DIR -z
20000000` of its own (a free port as for redis, a binlog dir in the project folder, a max job
size of 20 MB rather than its default 64 KB; no poison kind has a large payload, HugeError's
10 MB is its exception's message, kept in the failed store, so none is skipped). DRIVERS: the
beanstalkd driver (retry_after = its TTR, poll 1: a reserve-with-timeout of 1 s) and, for its
failed jobs and state, the database driver on the project's SQLite. The restart is a SIGKILL of
that server and a start on the same port and binlog dir; the workers must reconnect on their
own, and kills pause around it as on redis (QUIET_AFTER_RESTART). beanstalkd writes every put and
delete to its binlog before it answers, so the crash loses no answered write, but it drops every
connection and with them the reservations: the binlog gives every reserved job back ready at
once, and the delete of a worker that ran it across the crash is refused. So the restart
explains a double run (and two runs at once) of a job whose earlier run began before the server
answered again and ended no earlier than a second before the crash. A SIGKILLed worker's
reserved job is back at once too (its connection closes), not after the TTR.

On sqs (--driver sqs) the run starts moto's standalone server `moto_server -H 127.0.0.1 -p PORT`
of its own (killed at the end), with DRIVERS["sqs"] = endpoint, region us-east-1, key and secret
"test", a prefix of the run's own, retry_after (= the visibility timeout), poll 1 (long polls of
1 s); failed jobs and state in the project's SQLite. There is no server restart: moto keeps
everything in memory, so a restart would lose every queue and message (it tests loss, not
recovery). A standard SQS queue is at-least-once by design: a double run with no worker death to
explain it is counted in a row of its own (not a violation, not hidden), and so is a second run
that began while the first ran within the visibility timeout of the first receive (a second
delivery); one that began later is a reservation that lapsed while its job ran (the driver
renews it every retry_after / 3 s): "ran in two workers at once", a violation. (moto 5.2's own
DeleteMessage is not thread-safe: two at once can put back the message the other deleted, which
is then delivered again: such double runs come from moto, not SQS.) A receive is an attempt
(SQS's ApproximateReceiveCount): a worker killed while its receive_message is under way, or after
it and before the job began, spends an attempt that leaves no `start` line. A job failed with
MaxAttemptsExceeded that was taken more often than it began counts as failed after its workers
died, as long as such receives are no more than the main workers SIGKILLed outside a job (a row
that must be 0). moto answers in a time that grows with the queue's length (each receive and send
reads every message's state a few times): on a loaded 2-core machine 2000 jobs take about 4
minutes, 5000 an estimated hour (1.4 jobs a second at a 5000-job backlog), so the default
--timeout on sqs allows 0.5 s a job.

Why each worker ended: SIGKILLed by the harness (it knows which), os._exit() by the jobs that do
so on purpose (exit status 77), exit 1 at start while the server was down, exit 1 after it had
reached the server, lost it and given up ("queue.py: error: lost the connection ..." after "...;
trying again" lines: redis, beanstalkd, sqs; must be 0: a worker must reconnect), or else on its own: a
worker death caused by a job when the job record names one (the job running in that pid last:
a `start` without its `end`, a poison job's __setstate__ under way, a failed() call, a poison or
failed job that had just ended; for a death by SIGALRM, the last alarm/itimer job of that pid),
an "other exit" when it names none. Both must be 0. A worker that exits 0 after chaos.py's own
SIGTERM during a sigignrun job is a stop, not a death. Signal state a job finds as it begins
(inherited.log) is left behind, and blamed on the last job of a kind that leaves it, only if that
job had ended; under --concurrency, one still running in another lane changed the process's
state while it ran, which a job may do (counted apart). A thread left running or closed standard
streams are no fault while the worker goes on and stops when told.
"""
import argparse
import bisect
import collections
import datetime as _dt
import hashlib
import hmac
import io
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))  # benchmarks/chaos: this file and chaosjobs.py
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/, for common.py
import common  # noqa: E402
from common import AMQP, KEY, MYSQL, POSTGRES  # noqa: E402

queue = common.import_queue(HERE)  # ROOT first: `import queue` must find our queue.py, not the stdlib's
import chaosjobs  # noqa: E402

SERVER_NAMES = {"sqlite": "SQLite", "mysql": "MariaDB", "postgres": "PostgreSQL"}
REDIS_PREFIX = "queues:"  # the redis driver's key prefix (its default), written into config.py
WRONG_KEY = b"not-the-chaos-key-0123456789abcdef"
BATCH = 500
POISON_COLUMNS = ("pushed", "done", "failed", "lost", "wrong", "cut", "failed in a lane", "done twice", "failed twice",
                  "failed() > 1",
                  "worker deaths", "state left behind", "hung at the stop", "stray children", "overran",
                  "bad record", "worker stalled", "as expected")
MUST_BE_ZERO = ("lost", "wrong", "failed twice", "failed() > 1", "worker deaths", "state left behind",
                "hung at the stop", "stray children", "overran", "bad record", "worker stalled")
OVERRUN = 3.0      # seconds past its timeout within which an attempt of a poison kind with a timeout must end
TERM_LIMIT = 10.0  # seconds within which a worker SIGTERMed during a sigignrun job must exit
STALL_STARTS = 50  # a worker that began nothing after a poison job while the others began this many: stalled
QUIET_AFTER_RESTART = 3.0  # redis, beanstalkd: no SIGKILL from the crash until this long after the server answers again
BEANSTALKD_MAX_JOB = 20_000_000  # beanstalkd -z: bytes of its largest job (its default is 65,535)
OWN_SERVER = ("redis", "beanstalkd", "sqs")  # drivers whose runs start a server of their own


def say(*parts):
    """Progress on stderr (stdout is the table)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def port_open(port, host="127.0.0.1"):
    return common.server_up(host, port, timeout=1)


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on, below the ephemeral range (ip_local_port_range): a
    restarted server must get its port back, which a client's outgoing connection could hold
    for a while were it an ephemeral one."""
    import socket
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, min(low, 32768)))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        if not port_open(port, host):
            return port
    raise RuntimeError("no free TCP port found for the run's own server")


def stamp():
    """Now, as the database driver stores timestamps (UTC, 'YYYY-MM-DD HH:MM:SS.ffffff')."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")


def sign(body, key=KEY.encode()):
    """A queue.py payload, built here (not by queue.py): b'Q1' + HMAC-SHA256(key, body) + body."""
    return b"Q1" + hmac.new(key, body, hashlib.sha256).digest() + body


def envelope(job):
    return pickle.dumps({"v": 1, "job": job, "chain": [], "until": None}, 4)


# The project ##################################################################################
class Project:
    """A temporary project folder: queue.py, config.py, jobs/, the record and the worker logs."""

    def __init__(self, args):
        self.args = args
        self.folder = tempfile.mkdtemp(prefix="queue-chaos-")
        self.record = os.path.join(self.folder, "record")
        self.markers = os.path.join(self.record, "markers")
        self.logs = os.path.join(self.folder, "logs")
        for path in (self.markers, self.logs):
            os.makedirs(path)
        tag = uuid.uuid4().hex[:8]
        self.table = f"chaos_{tag}"
        if args.driver == "amqp":
            self.queue, self.long_queue = f"chaos_{tag}", f"chaos_{tag}_long"
        else:
            self.queue, self.long_queue = "chaos", "chaos-long"
        r = args.retry_after
        if args.driver in ("redis", "beanstalkd", "sqs"):  # a server of the run's own (an _OwnServerBackend)
            self.server_port = free_port()
            self.server_dir = os.path.join(self.folder, args.driver)  # its log (redis: its AOF; beanstalkd: its binlog)
            os.makedirs(self.server_dir)
        if args.driver == "redis":  # failed jobs and state in it
            drivers = {"default": "redis",
                       "redis": {"host": "127.0.0.1", "port": self.server_port, "retry_after": r, "attempts": 5,
                                 "prefix": REDIS_PREFIX, "failed": "redis"}}
            databases = {}
        elif args.driver in ("beanstalkd", "sqs"):  # failed jobs and state in SQLite
            drivers = {"default": args.driver,
                       "database": {"connection": "sqlite", "table": self.table, "failed_table": self.table + "_failed",
                                    "state_table": self.table + "_state", "attempts": 5, "poll": 0.1, "retry_after": r}}
            if args.driver == "beanstalkd":
                drivers["beanstalkd"] = {"host": "127.0.0.1", "port": self.server_port, "retry_after": r, "attempts": 5,
                                         "poll": 1}
            else:
                self.sqs_prefix = f"chaos_{tag}_"
                drivers["sqs"] = {"endpoint": f"http://127.0.0.1:{self.server_port}", "region": "us-east-1",
                                  "key": "test", "secret": "test", "prefix": self.sqs_prefix, "retry_after": r,
                                  "attempts": 5, "poll": 1}
            databases = {"sqlite": common.database("sqlite")}
        else:
            drivers = {"default": args.driver,
                       "database": {"connection": args.connection, "table": self.table,
                                    "failed_table": self.table + "_failed", "state_table": self.table + "_state",
                                    "attempts": 5, "poll": 0.1, "retry_after": r},
                       "amqp": dict(AMQP, queue=self.queue, prefetch=10, poll=0.1, attempts=5,
                                    heartbeat=max(2, int(r)))}
            databases = {name: common.database(name) for name in ("sqlite", "mysql", "postgres")}
        common.make_project(drivers, databases, folder=self.folder)  # queue.py, config.py, an empty jobs/
        self.config_path = os.path.join(self.folder, "config.py")

    def path(self, name):
        return os.path.join(self.record, name)

    def env(self):
        return common.project_env(HERE, PYTHONUNBUFFERED="1")  # HERE: chaosjobs

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


# Jobs and bad payloads ########################################################################
Item = collections.namedtuple("Item", "number kind expect queue")  # expect: "done" or "failed"


def make_jobs(n, rng, project, longs=None):
    """N numbered jobs (0..N-1): mostly short Work, some Flaky, Fail, Slow, Hang and Long (`longs`
    of them, default 1 to 3)."""
    r = project.args.retry_after
    longs = (0 if n == 0 else max(1, min(3, n // 3000))) if longs is None else longs
    special = {"flaky": max(1, n // 50), "fail": max(1, n // 100), "slow": max(1, n // 500),
               "hang": max(1, n // 1000)} if n >= 50 else {}
    kinds = ["long"] * longs + [k for k, c in special.items() for _ in range(c)]
    kinds += ["work"] * (n - len(kinds))
    head, rest = kinds[:longs], kinds[longs:]
    rng.shuffle(rest)
    kinds = head + rest
    classes = {"work": chaosjobs.Work, "long": chaosjobs.Long, "flaky": chaosjobs.Flaky,
               "fail": chaosjobs.Fail, "slow": chaosjobs.Slow, "hang": chaosjobs.Hang}
    items, jobs = [], []
    for number, kind in enumerate(kinds):
        seconds = 2.2 * r if kind == "long" else rng.uniform(0, 0.01)
        queue_name = project.long_queue if kind == "long" else project.queue
        expect = "failed" if kind in ("fail", "hang") else "done"
        items.append(Item(number, kind, expect, queue_name))
        jobs.append(classes[kind](number, project.record, seconds))
    return items, jobs


def make_poison(count, first_number, rng, project, kinds=None):
    """`count` poison jobs numbered from first_number, cycling through `kinds` (default
    chaosjobs.POISON) less the kinds in --skip, from a random first kind, in a random order."""
    classes = [cls for cls in (kinds or chaosjobs.POISON) if cls.kind not in project.args.skip]
    if not count or not classes:
        return [], []
    offset = rng.randrange(len(classes))
    picked = [classes[(offset + i) % len(classes)] for i in range(count)]
    rng.shuffle(picked)
    items, jobs = [], []
    for i, cls in enumerate(picked):
        number = first_number + i
        items.append(Item(number, cls.kind, cls.expect, project.queue))
        jobs.append(cls(number, project.record))
    return items, jobs


def spread(items, jobs, more_items, more_jobs, rng):
    """The (item, job) pairs of more_* inserted at random places among the others (after the
    long jobs, which go first)."""
    pairs = list(zip(items, jobs))
    first = sum(1 for item in items if item.kind == "long")
    for pair in zip(more_items, more_jobs):
        pairs.insert(rng.randint(first, len(pairs)), pair)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def make_jitter(items, jobs, args):
    """With --jitter: a backoff of its own for each job of the kinds chaosjobs.JITTERED (set on the
    job) and a random delay (DELAY_LOW..DELAY_HIGH s) for DELAYED_SHARE of the short jobs; from a
    random generator of its own, so that the rest of a run is the same with or without jitter.
    Returns (backoffs: number -> [seconds], delays: number -> seconds)."""
    if not args.jitter:
        return {}, {}
    rng = random.Random(f"{args.seed}:jitter")
    backoffs = {item.number: chaosjobs.jitter(job, rng) for item, job in zip(items, jobs)
                if item.kind in chaosjobs.JITTERED}
    work = [item.number for item in items if item.kind == "work"]
    picked = rng.sample(work, min(len(work), max(1, round(DELAYED_SHARE * len(work))))) if work else []
    return backoffs, {number: rng.uniform(DELAY_LOW, DELAY_HIGH) for number in sorted(picked)}


DELAYED_SHARE, DELAY_LOW, DELAY_HIGH = 0.05, 0.1, 3.0
EARLY = 0.1  # seconds of slack for "began before its delay / backoff" (the record's clock is the host's)


Bad = collections.namedtuple("Bad", "index category name payload number properties")
FORGERIES = ("forged", "wrongkey", "truncated", "flipped", "extended", "random", "empty")


def make_bad(count, first_number, rng, project, backend):
    """`count` hostile payloads (cycling through FORGERIES, plus the backend's own kinds of
    garbage), then correctly signed jobs that cannot run, and one control marker."""
    result = []

    def add(category, payload, number=None, properties="normal"):
        index = len(result)
        result.append(Bad(index, category, f"bad-{index}-{category}", payload, number, properties))

    def marker():
        return envelope(chaosjobs.Marker(os.path.join(project.markers, f"forgery-{len(result)}")))

    extra = [g for g in backend.garbage if g not in project.args.skip]
    forgeries = [f for f in FORGERIES if f not in project.args.skip]
    for i in range(count):
        if extra and i % 25 == 12:
            category = extra[(i // 25) % len(extra)]
        else:
            category = forgeries[i % len(forgeries)]
        body = marker()
        if category == "forged":
            add(category, b"Q1" + rng.randbytes(32) + body)
        elif category == "wrongkey":
            add(category, sign(body, WRONG_KEY))
        elif category == "truncated":  # cut after the marker's REDUCE, so unpickling would touch it
            payload = sign(body)
            add(category, payload[:rng.randint(len(payload) * 2 // 3, len(payload) - 1)])
        elif category == "flipped":
            payload = bytearray(sign(body))
            spot = rng.randrange(2, len(payload))
            payload[spot] ^= 1 << rng.randrange(8)
            add(category, bytes(payload))
        elif category == "extended":
            add(category, sign(body) + rng.randbytes(rng.randint(1, 16)))
        elif category == "random":
            junk = rng.randbytes(rng.randint(0, 200))
            add(category, (b"Q1" + junk) if rng.random() < 0.5 else junk)
        elif category == "empty":
            add(category, b"")
        elif category == "bare":  # amqp: a raw message with no properties at all
            add(category, b"Q1" + rng.randbytes(32) + body, properties="none")
        elif category == "badheader":  # amqp: x-attempts that is not a number
            add(category, b"Q1" + rng.randbytes(32) + body, properties="badheader")
        elif category in ("nofields", "badattempts", "notbase64", "noattributes"):
            # beanstalkd: a body without the driver's fields, or attempts that are not a number;
            # sqs: a body that is not base64, no message attributes, attempts that are not a number
            add(category, b"Q1" + rng.randbytes(32) + body, properties=category)
        elif category == "text":  # sqlite: the payload column holds TEXT, not a BLOB
            add(category, "Q1 this payload is text", properties="text")
        elif category == "integer":  # sqlite: the payload column holds a small INTEGER
            add(category, 7, properties="integer")
    number = first_number
    signed = max(1, count // 25)
    for kind, cls in (("missing", None), ("unloadable", chaosjobs.Unloadable),
                      ("initraises", chaosjobs.InitRaises), ("exit", chaosjobs.Exit)):
        for _ in range(0 if kind in project.args.skip else signed):
            if cls is None:  # a class the workers do not have: pickled while it briefly exists here
                cls_missing = type("Vanished", (chaosjobs.Work,), {"__module__": "chaosjobs", "kind": "missing"})
                chaosjobs.Vanished = cls_missing
                try:
                    body = envelope(cls_missing(number, project.record))
                finally:
                    del chaosjobs.Vanished
            else:
                body = envelope(cls(number, project.record))
            add(kind, sign(body), number)
            number += 1
    for _ in range(0 if "die" in project.args.skip else max(1, count // 50)):
        add("die", sign(envelope(chaosjobs.Die(number, project.record))), number)
        number += 1
    add("control", sign(envelope(chaosjobs.Marker(os.path.join(project.markers, "control")))))
    rng.shuffle(result)
    return result


# Backends #####################################################################################
class Backend:
    """What differs per backend: injecting raw messages, the restart, counting and cleaning up."""

    garbage = ()

    def __init__(self, project):
        self.project = project

    def inject(self, bads):
        raise NotImplementedError

    def restart(self):
        """Restart the server; return (went down at, answers again at)."""
        raise NotImplementedError

    def remaining(self):
        """Jobs still queued (ready, delayed or reserved) on the project's queues."""
        stats = queue.driver().stats([self.project.queue, self.project.long_queue])
        return sum(sum(v for k, v in s.items() if k in ("ready", "delayed", "reserved")) for s in stats.values())

    def held(self):
        """Messages the backend still holds for later delivery outside the run's queues (0: none)."""
        return 0

    def ensure_up(self):
        """Make sure the server runs (called at the end, whatever happened)."""

    def wait_until_it_answers(self, name, seconds=120):
        """Poll self.connect() until the server answers, or raise after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.connect().close()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not come back within {seconds} s")

    def cleanup(self):
        pass


class SQLiteBackend(Backend):
    garbage = ("text", "integer")

    def connect(self):
        import sqlite3
        return sqlite3.connect(os.path.join(self.project.folder, "queue.sqlite3"), timeout=60,
                               isolation_level=None)

    def inject(self, bads):
        conn = self.connect()
        try:
            self._insert(conn, "?", bads)
        finally:
            conn.close()

    def _insert(self, conn, p, bads):
        now = stamp()
        rows = [(b.name, self.project.queue, b.payload, 0, now, now) for b in bads]
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {self.project.table} (name, queue, payload, attempts, available_at, "
                        f"created_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p})", rows)
        cur.close()

    def restart(self):
        raise AssertionError("SQLite has no server: the supervisor kills every worker instead")


class MySQLBackend(SQLiteBackend):
    garbage = ()

    def connect(self):
        return common.mysql_connect()

    def inject(self, bads):
        conn = self.connect()
        try:
            self._insert(conn, "%s", bads)
        finally:
            conn.close()

    def restart(self):
        down = time.time()
        subprocess.run(["mariadb-admin", "-uroot", "shutdown"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while port_open(MYSQL["port"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # down for a moment: workers must notice
        self.ensure_up()
        return down, time.time()

    def ensure_up(self):
        if not port_open(MYSQL["port"]):
            subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec",
                            "/usr/sbin/mariadbd"], capture_output=True, timeout=60)
        self.wait_until_it_answers("MariaDB")

    def cleanup(self):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {self.project.table}, {self.project.table}_failed, "
                            f"{self.project.table}_state")
        finally:
            conn.close()


class PostgresBackend(MySQLBackend):
    """PostgreSQL (psycopg 3); a restart is an immediate stop (`pg_ctlcluster ... stop -m immediate`,
    a crash: the workers' asynchronous commits not yet on disk are lost) and a start (recovery)."""

    def connect(self):
        return common.pg_connect()

    def restart(self):
        down = time.time()
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "immediate"],
                       capture_output=True, timeout=120)
        time.sleep(1.0)  # down for a moment: workers must notice
        self.ensure_up()
        return down, time.time()

    def ensure_up(self):
        if not port_open(POSTGRES["port"]):
            version = sorted(os.listdir("/etc/postgresql"))[0]
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                           capture_output=True, timeout=120)
        self.wait_until_it_answers("PostgreSQL")

    def cleanup(self):
        with self.connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.project.table}, {self.project.table}_failed, "
                         f"{self.project.table}_state")


class AMQPBackend(Backend):
    garbage = ("bare", "badheader")

    def connect(self):
        import pika
        return pika.BlockingConnection(pika.URLParameters(
            f"amqp://{AMQP['username']}:{AMQP['password']}@{AMQP['host']}:{AMQP['port']}/"
            f"{urllib.parse.quote(AMQP.get('vhost') or '/', safe='')}?heartbeat=30"))

    def inject(self, bads):
        import pika
        conn = self.connect()
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.queue_declare(self.project.queue, durable=True,  # as the driver declares it
                                  arguments={"x-queue-type": queue.AMQPDriver.defaults["queue_type"]})
            for b in bads:
                if b.properties == "none":
                    properties = None
                else:
                    attempts = "not-a-number" if b.properties == "badheader" else 0
                    properties = pika.BasicProperties(delivery_mode=2, message_id=uuid.uuid4().hex, type=b.name,
                                                      headers={"x-attempts": attempts})
                channel.basic_publish("", self.project.queue, b.payload, properties)
        finally:
            conn.close()

    def remaining(self):
        import pika
        conn = self.connect()
        total = 0
        try:
            for name in (self.project.queue, self.project.long_queue):
                channel = conn.channel()
                try:
                    total += channel.queue_declare(name, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    pass
        finally:
            conn.close()
        return total

    def held(self):
        """Messages in the vhost's delay ladder (management API). After a restart, RabbitMQ can hold
        a due message there for up to its dead_letter_worker_publisher_confirm_timeout (180 s):
        a quorum queue's dead-letter worker that started before the exchanges were recovered
        finds no exchange and tries again only after that timeout."""
        held = queue.driver("amqp").delayed_total()
        if held is None and shutil.which("rabbitmqctl"):  # no management plugin
            ladder = set(queue.driver("amqp").ladder_names()[0])
            done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages", "--no-table-headers"],
                                  capture_output=True, text=True, timeout=30)
            rows = [line.split() for line in done.stdout.splitlines()]
            held = sum(int(row[1]) for row in rows if len(row) == 2 and row[0] in ladder and row[1].isdigit())
        return held or 0

    def restart(self):
        down = time.time()
        subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, timeout=120)
        time.sleep(1.0)
        self.ensure_up()
        return down, time.time()

    def ensure_up(self):
        status = subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120)
        if status.returncode != 0 and not port_open(AMQP["port"]):
            subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60)
        self.wait_until_it_answers("RabbitMQ")

    def cleanup(self):
        """Delete the run's two queues, and per-delay queues of queue.py 1.0 of theirs should any
        exist. The delay ladder stays: it is the vhost's, shared with every other user."""
        ours = (self.project.queue, self.project.long_queue)
        _, names = broker_queue_names()
        old = sorted(n for n in names or () if BrokerQueues.old_delay_queue(n) in ours)
        conn = self.connect()
        try:
            for name in [*ours, *old]:
                channel = conn.channel()
                try:
                    channel.queue_delete(name)
                except Exception:
                    pass
        finally:
            conn.close()


class _OwnServerBackend(Backend):
    """A server program of the run's own (beanstalkd, moto_server): on the project's free port,
    its output in a log of the project folder, killed at the end. A restart is a crash: SIGKILL,
    a second down, a start on the same port (and dir)."""

    title = None  # the server's name in messages

    def __init__(self, project):
        super().__init__(project)
        self.port, self.dir = project.server_port, project.server_dir
        self.proc = None
        self.starts = 0

    def command(self):
        raise NotImplementedError

    def start(self):
        """Start the server and wait until it answers."""
        argv = self.command()
        self.starts += 1
        log = open(os.path.join(self.dir, f"server-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # a ^C to chaos.py reaches it only through close()
        log.close()
        self.wait_until_it_answers(self.title, seconds=60)

    def running(self):
        if self.proc is None or self.proc.poll() is not None:
            raise ConnectionError(f"our {self.title} is not running")

    def stop(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        down = time.time()
        self.stop(signal.SIGKILL)  # a crash
        time.sleep(1.0)  # down for a moment: workers must notice
        self.start()
        return down, time.time()

    def ensure_up(self):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        else:
            self.wait_until_it_answers(self.title, seconds=60)

    def cleanup(self):
        """Kill the server; its dir goes with the project folder (kept with --keep)."""
        self.stop(signal.SIGKILL)


class RedisBackend(_OwnServerBackend):
    """A redis-server of the run's own (never the shared one on 6379): the project's port, a
    temporary --dir in the project folder, every write fsynced to the AOF before it is answered.
    The restart is a crash: SIGKILL, a second down, a start on the same port and dir."""

    title = "Redis"

    def command(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "no", "--logfile", ""]

    def connect(self):
        import redis
        if self.proc is None or self.proc.poll() is not None:
            raise ConnectionError("our redis-server is not running")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=2)
        client.ping()  # raises while the server loads its AOF (BusyLoadingError)
        return client

    def keys(self, queue_name):
        """The redis driver's keys of a queue (README, "### Redis"; queue.py's RedisDriver.keys):
        <prefix>{queue} the ready list, :jobs the hash id -> class name NUL payload, :notify."""
        base = f"{REDIS_PREFIX}{{{queue_name}}}"
        return base, base + ":jobs", base + ":notify"

    def inject(self, bads):
        """Each bad payload as a ready job: HSET <jobs> id 'name NUL payload', RPUSH <ready> id."""
        ready, jobs, notify = self.keys(self.project.queue)
        client = self.connect()
        try:
            pipe = client.pipeline(transaction=True)
            for b in bads:
                job_id = uuid.uuid4().hex
                payload = b.payload if isinstance(b.payload, bytes) else str(b.payload).encode()
                pipe.hset(jobs, job_id, b.name.encode() + b"\0" + payload)
                pipe.rpush(ready, job_id)
            pipe.rpush(notify, "1")
            pipe.execute()
        finally:
            client.close()


class BeanstalkdBackend(_OwnServerBackend):
    """beanstalkd of the run's own: `beanstalkd -l 127.0.0.1 -p PORT -b DIR -z MAX_JOB` (a binlog in
    the project folder; max-job-size BEANSTALKD_MAX_JOB, not the default 64 KB). Killed by SIGKILL,
    it keeps every job whose put or delete it answered: it writes each to the binlog (a write() to
    the kernel, no buffer of its own) before it replies. The reservations go with the connections."""

    title = "beanstalkd"
    garbage = ("nofields", "badattempts")

    def command(self):
        binary = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
        if not os.path.exists(binary):
            raise RuntimeError("beanstalkd is not installed (apt-get install beanstalkd)")
        return [binary, "-l", "127.0.0.1", "-p", str(self.port), "-b", self.dir, "-z", str(BEANSTALKD_MAX_JOB)]

    def connect(self):
        import greenstalk
        self.running()
        client = greenstalk.Client(("127.0.0.1", self.port), encoding=None)
        try:
            client.stats()
        except BaseException:
            client.close()
            raise
        return client

    def inject(self, bads):
        """Each bad payload as a ready job in the tube, as the driver puts one (README, "### beanstalkd";
        queue.py's BeanstalkdDriver.put): the body 'class name NUL attempts NUL queue NUL payload';
        garbage: "nofields" a body of the payload alone, "badattempts" attempts that are not a number."""
        client = self.connect()
        try:
            client.use(self.project.queue)
            for b in bads:
                payload = b.payload if isinstance(b.payload, bytes) else str(b.payload).encode()
                if b.properties == "nofields":
                    body = payload
                else:
                    attempts = b"many" if b.properties == "badattempts" else b"0"
                    body = b"\0".join([b.name.encode(), attempts, self.project.queue.encode(), payload])
                client.put(body, priority=1024, delay=0, ttr=max(1, math.ceil(self.project.args.retry_after)))
        finally:
            client.close()


class SQSBackend(_OwnServerBackend):
    """moto's standalone server (`moto_server -H 127.0.0.1 -p PORT`), the only SQS endpoint this
    machine reaches. It keeps everything in memory, so it is never restarted (a restart would lose
    every queue and message: no test of recovery, only of loss)."""

    title = "moto_server"
    garbage = ("notbase64", "noattributes", "badattempts")

    def command(self):
        binary = shutil.which("moto_server")
        if binary is None:
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
        return [binary, "-H", "127.0.0.1", "-p", str(self.port)]

    def connect(self):
        import boto3
        from botocore.config import Config
        self.running()
        client = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30))
        client.list_queues()
        return client

    def inject(self, bads):
        """Each bad payload as a message of the queue, as the driver sends one (README, "### Amazon SQS";
        queue.py's SQSDriver.put): the payload in base64, attributes name, attempts, pushed, due;
        garbage: "notbase64" a body that is not base64 (what a foreign producer may send),
        "noattributes" none of the four attributes, "badattempts" attempts that are not a number."""
        import base64
        client = self.connect()
        try:
            url = client.get_queue_url(QueueName=self.project.sqs_prefix + self.project.queue)["QueueUrl"]
            entries, now = [], time.time()
            for b in bads:
                payload = b.payload if isinstance(b.payload, bytes) else str(b.payload).encode()
                body = base64.b64encode(payload).decode()
                if b.properties == "notbase64":  # b64decode leaves out the characters that are not
                    body = "not base64!"                # base64: nine left, which no base64 string has
                attributes = {"name": b.name, "attempts": "many" if b.properties == "badattempts" else "0",
                              "pushed": repr(now), "due": repr(now)}
                entry = {"Id": str(len(entries)), "MessageBody": body or "=", "MessageAttributes": {
                    k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}}
                if b.properties == "noattributes":
                    del entry["MessageAttributes"]
                entries.append(entry)
                if len(entries) == 10:
                    client.send_message_batch(QueueUrl=url, Entries=entries)
                    entries = []
            if entries:
                client.send_message_batch(QueueUrl=url, Entries=entries)
        finally:
            client.close()


def broker_queue_names(timeout=15):
    """(source, the names of the broker's queues in vhost /), or (None, None) if it does not
    answer: `rabbitmqctl -q list_queues name` (exact), else the management API (guest/guest)."""
    if shutil.which("rabbitmqctl"):
        try:
            done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", AMQP.get("vhost") or "/", "name",
                                   "--no-table-headers"],
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode == 0:
                return "rabbitmqctl", [line.strip() for line in done.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    import base64
    import urllib.request
    auth = base64.b64encode(f"{AMQP['username']}:{AMQP['password']}".encode()).decode()
    vhost = urllib.parse.quote(AMQP.get("vhost") or "/", safe="")
    request = urllib.request.Request(f"http://{AMQP['host']}:15672/api/queues/{vhost}?columns=name",
                                     headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return "management API", [q["name"] for q in json.load(response)]
    except Exception:
        return None, None


class BrokerQueues:
    """The broker's queues (vhost /): one sample before the push, one every `every` seconds in a
    thread during the run, one at the end. Each sample counts the queues by kind: the run's own
    two, queue.py's delay ladder, per-delay queues of queue.py 1.0 ("<queue>.delay.<ms>"), others."""

    OLD = re.compile(r"^(?P<queue>.+)\.delay\.(?P<ms>\d+)$")

    def __init__(self, project, every=2.0):
        self.project, self.every = project, every
        self.ours = {project.queue, project.long_queue}
        queues, delivery = queue.driver("amqp").ladder_names()
        self.ladder = set(queues) | {f"{delivery}.lost"}
        self.samples = []        # dicts: at, source, total and the count per kind
        self.failures = 0        # samples the broker did not answer (its restart)
        self.first_seen = {}     # name -> time of the first sample that listed it
        self.start = self.end = self.after_cleanup = self.most = None
        self.start_names, self.most_names = set(), set()
        self.stopping = threading.Event()
        self.thread = None

    @classmethod
    def old_delay_queue(cls, name):
        """The queue of a per-delay queue of queue.py 1.0, or None (the ladder's names, "queue.py.
        delay.<k>", look like one: they are not)."""
        match = cls.OLD.match(name)
        return match.group("queue") if match and not name.startswith("queue.py.") else None

    def kind(self, name):
        if name in self.ours:
            return "ours"
        if name in self.ladder or name.startswith("queue.py."):
            return "ladder"
        old = self.old_delay_queue(name)
        if old is not None:
            return "old ours" if old in self.ours else "old"
        return "other"

    def sample(self, tries=1):
        for attempt in range(tries):
            source, names = broker_queue_names()
            if names is not None:
                break
            if attempt + 1 < tries:
                time.sleep(1.0)
        else:
            self.failures += 1
            return None
        at = time.time()
        kinds = collections.Counter(self.kind(name) for name in names)
        sample = {"at": at, "source": source, "total": len(names), "old per-delay": kinds["old"] + kinds["old ours"],
                  "old per-delay of this run": kinds["old ours"], "ladder": kinds["ladder"], "ours": kinds["ours"],
                  "others": kinds["other"]}
        for name in names:
            self.first_seen.setdefault(name, at)
        self.samples.append(sample)
        if self.most is None or sample["total"] > self.most["total"]:
            self.most, self.most_names = sample, set(names)
        return sample, set(names)

    def begin(self):
        """The sample before the push, then the sampling thread."""
        taken = self.sample(tries=10)
        if taken is None:
            raise RuntimeError("cannot list RabbitMQ's queues (rabbitmqctl, management API)")
        self.start, self.start_names = taken
        self.most, self.most_names = self.start, set(self.start_names)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        deadline = time.monotonic()
        while not self.stopping.is_set():
            deadline += self.every
            self.sample()
            self.stopping.wait(max(0.0, deadline - time.monotonic()))

    def finish(self):
        """Stop the thread; the sample at the end of the run."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        taken = self.sample(tries=10)
        self.end = taken[0] if taken else None

    def ladder_gone(self):
        """Times of the samples, after the first with the whole ladder, that found it incomplete."""
        full = len(self.ladder)
        first = next((i for i, s in enumerate(self.samples) if s["ladder"] >= full), None)
        return [] if first is None else [s["at"] for s in self.samples[first:] if s["ladder"] < full]

    def figures(self):
        """What the table and the JSON show."""
        start_at = self.start["at"]
        created = sorted(name for name, at in self.first_seen.items() if name not in self.start_names)
        created_old = [name for name in created if self.old_delay_queue(name) is not None]
        full = len(self.ladder)
        incomplete = len(self.ladder_gone())
        new_at_most = collections.Counter(self.kind(n) for n in self.most_names - self.start_names)
        return {"start": self.start["total"], "start old per-delay": self.start["old per-delay"],
                "most": self.most["total"], "most old per-delay": self.most["old per-delay"],
                "most at (s after the start)": round(self.most["at"] - start_at, 1),
                "end": None if self.end is None else self.end["total"],
                "end old per-delay": None if self.end is None else self.end["old per-delay"],
                "after the cleanup": None if self.after_cleanup is None else self.after_cleanup["total"],
                "most minus start": self.most["total"] - self.start["total"],
                "new at the most": {"this run's": new_at_most["ours"], "ladder": new_at_most["ladder"],
                                    "old per-delay": new_at_most["old"] + new_at_most["old ours"],
                                    "others": new_at_most["other"]},
                "created during the run": created, "old per-delay created during the run": created_old,
                "old per-delay of this run": [n for n in created_old if self.old_delay_queue(n) in self.ours],
                "ladder queues": full, "ladder present at the start": sum(1 for n in self.start_names if n in self.ladder),
                "samples": len(self.samples), "samples that failed (broker down)": self.failures,
                "samples with the ladder incomplete (after it was complete)": incomplete,
                "sources": sorted({s["source"] for s in self.samples}),
                "series": [dict(s, at=round(s["at"] - start_at, 1)) for s in self.samples]}


# The supervisor ###############################################################################
class Worker:
    """One `python queue.py work` process: its role ("main" or "long"), log, and how it ended."""

    def __init__(self, proc, role, log):
        self.proc, self.role, self.log = proc, role, log
        self.pid = proc.pid
        self.started = time.time()
        self.ended = None
        self.status = None   # exit status once reaped
        self.cause = None    # "killed", "termed", "os._exit", "server down", "gave up", "unexpected", "stopped", "hung"


class Supervisor:
    """Starts `python queue.py work` processes, kills them, and replaces every one that ends."""

    def __init__(self, project, rng, concurrency=1):
        self.project, self.rng, self.concurrency = project, rng, concurrency
        self.workers = []          # every worker ever started
        self.killed = {}           # pid -> time of our SIGKILL
        self.termed = {}           # pid -> time of our SIGTERM during a sigignrun job (it must stop after it)
        self.term_hung = []        # pids that did not exit within TERM_LIMIT of that SIGTERM (then SIGKILLed)
        self.deaths = []           # (pid, time, cause) of workers that ended before the end
        self.pending = []          # (not before, role): replacements waiting out a fast failure
        self.stopping = False

    def start(self, role):
        queue_name = self.project.long_queue if role == "long" else self.project.queue
        log = open(os.path.join(self.project.logs, f"worker-{len(self.workers):04d}-{role}.log"), "w")
        lanes = ["--concurrency", str(self.concurrency)] if self.concurrency > 1 else []
        proc = subprocess.Popen([sys.executable, "queue.py", "work", "--queue", queue_name, *lanes],
                                cwd=self.project.folder, env=self.project.env(),
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        worker = Worker(proc, role, os.path.join(self.project.logs, os.path.basename(log.name)))
        self.workers.append(worker)
        return worker

    def alive(self, role=None):
        return [w for w in self.workers if w.status is None and (role is None or w.role == role)]

    def kill(self, worker):
        self.killed[worker.pid] = time.time()
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_random(self):
        candidates = self.alive("main")
        if candidates:
            self.kill(self.rng.choice(candidates))

    def kill_all(self):
        for worker in self.alive():
            self.kill(worker)

    def term(self, pid):
        """SIGTERM the live worker `pid` (it runs a job that ignores SIGTERM: it must still stop
        after that job, exit 0, and leave its job settled); once per worker."""
        worker = next((w for w in self.alive() if w.pid == pid), None)
        if worker is None or pid in self.termed or pid in self.killed or self.stopping:
            return False
        self.termed[pid] = time.time()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return True

    def check_termed(self):
        """A worker SIGTERMed during the run that is still alive TERM_LIMIT seconds later: hung
        (SIGKILLed now, so the run goes on)."""
        now = time.time()
        for worker in self.alive():
            at = self.termed.get(worker.pid)
            if at is not None and worker.pid not in self.killed and now - at > TERM_LIMIT:
                self.term_hung.append(worker.pid)
                self.kill(worker)

    def reap(self):
        """Notice workers that ended, classify why, and start their replacements."""
        now = time.time()
        for worker in self.alive():
            status = worker.proc.poll()
            if status is None:
                continue
            worker.status, worker.ended = status, now
            if worker.pid in self.killed:
                worker.cause, worker.ended = "killed", self.killed[worker.pid]
            elif worker.pid in self.termed and status == 0:
                worker.cause = "termed"
            elif status == chaosjobs.EXIT_CODE:
                worker.cause = "os._exit"
            elif status == 1 and self._server_was_down(worker):
                worker.cause = "server down"
            elif status == 1 and self._gave_up(worker):
                worker.cause = "gave up"
            else:
                worker.cause = "unexpected"
            self.deaths.append((worker.pid, worker.ended, worker.cause))
            fast = now - worker.started < 2.0 and worker.cause not in ("killed", "termed")
            self.pending.append((now + (1.0 if fast else 0.0), worker.role))  # like systemd's RestartSec
        for item in list(self.pending):
            if item[0] <= now and not self.stopping:
                self.pending.remove(item)
                self.start(item[1])

    def _server_was_down(self, worker):
        """A worker that exits 1 with one line 'queue.py: error: cannot connect ...': it started
        while the server was down (ours restarted, or someone else's restart on a shared host).
        Not one that had reached the server: the redis, beanstalkd and sqs drivers then log
        '...; trying again' before they give up (see _gave_up)."""
        lines = self._log_lines(worker)
        return self._connection_error(lines) and not any(line.endswith("; trying again") for line in lines)

    def _gave_up(self, worker):
        """A worker that had reached the server, lost it, tried again ('...; trying again') and
        exited 1 with 'queue.py: error: lost the connection ...': it did not reconnect."""
        lines = self._log_lines(worker)
        return self._connection_error(lines) and any(line.endswith("; trying again") for line in lines)

    @staticmethod
    def _log_lines(worker):
        with open(worker.log, errors="replace") as f:
            return [line for line in f.read().splitlines() if line.strip()]

    @staticmethod
    def _connection_error(lines):
        return bool(lines) and lines[-1].startswith("queue.py: error:") and (
            "connect" in lines[-1].lower() or "cannot reach" in lines[-1])

    def stop(self, timeout=15.0):
        """SIGTERM every live worker (they finish the current job and exit 0); SIGKILL laggards."""
        self.stopping = True
        self.pending = []
        for worker in self.alive():
            try:
                worker.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        hung = []
        for worker in self.alive():
            try:
                worker.status = worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(worker)
                worker.proc.kill()
                worker.status = worker.proc.wait()
            worker.ended = time.time()
            # -SIGTERM: it was still starting (no handler yet, so no job either)
            stopped = worker.status in (0, -signal.SIGTERM)
            worker.cause = "hung" if worker in hung else ("stopped" if stopped else "unexpected")
        return hung


# The record ###################################################################################
class Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode().splitlines()


def read_record(project):
    """(done: number -> [(pid, attempt, time)], runs: [(number, pid, attempt, start, end, outcome)])."""
    done = collections.defaultdict(list)
    for line in Tail(project.path("done.log")).read():
        number, pid, attempt, at = line.split()
        done[int(number)].append((int(pid), int(attempt), float(at)))
    starts, runs = {}, []
    for line in Tail(project.path("runs.log")).read():
        parts = line.split()
        key = (int(parts[1]), int(parts[2]), int(parts[3]))
        if parts[0] == "start":
            starts.setdefault(key, []).append(float(parts[4]))
        elif starts.get(key):
            runs.append((*key, starts[key].pop(0), float(parts[4]), parts[5]))
    for key, times in starts.items():  # attempts that never ended: their worker died
        for at in times:
            runs.append((*key, at, None, "died"))
    return done, runs


def read_extra(project):
    """The rest of the record: (failed() calls: number -> [(pid, time)],
    poison loads: [(number, pid, attempt, time)], fork lines: [(what, number, child, parent, time, rest)],
    signal state a job found left behind: [(number, pid, what, time)])."""
    calls = collections.defaultdict(list)
    for line in Tail(project.path("failed.log")).read():
        number, pid, at = line.split()
        calls[int(number)].append((int(pid), float(at)))
    loads = []
    for line in Tail(project.path("loads.log")).read():
        _, number, pid, attempt, at = line.split()
        loads.append((int(number), int(pid), int(attempt), float(at)))
    forks = []
    for line in Tail(project.path("forks.log")).read():
        what, number, child, parent, at, *rest = line.split()
        forks.append((what, int(number), int(child), int(parent), float(at), rest))
    inherited = []
    for line in Tail(project.path("inherited.log")).read():
        number, pid, what, at = line.split()
        inherited.append((int(number), int(pid), what, float(at)))
    return calls, loads, forks, inherited


def our_process(pid, folder):
    """True if pid is a live process whose working directory is the project folder (a fork
    child of one of our workers), not some other process that reuses the number."""
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == os.path.realpath(folder)
    except OSError:
        return False


def failed_rows(project):
    """The failed store, through queue.py (it is the store under test): [(name, payload, summary,
    record)], record being the whole exception text it keeps."""
    store = queue.driver().failed_store()
    return [(r["name"], bytes(r["payload"]) if isinstance(r["payload"], (bytes, bytearray, memoryview)) else r["payload"],
             str(r["exception"]).split("\n", 1)[0], str(r["exception"])) for r in store.failed_jobs()]


def bad_record(record):
    """What is wrong with a failed record: longer than chaosjobs.RECORD_LIMIT characters, or
    holding a NUL (queue.py writes it as \\x00); None if nothing."""
    if len(record) > chaosjobs.RECORD_LIMIT:
        return f"{len(record):,} characters"
    if "\x00" in record:
        return "a NUL character"
    return None


def job_number(payload):
    """The number of one of our own jobs in a failed payload (verified with KEY first), or None.
    Q1: b'Q1' + HMAC + pickle; Q2: b'Q2' + HMAC + 4-byte header size + JSON header + pickle."""
    if not isinstance(payload, bytes) or len(payload) < 34 or payload[:2] not in (b"Q1", b"Q2"):
        return None
    body = payload[34:]
    if not hmac.compare_digest(payload[2:34], hmac.new(KEY.encode(), body, hashlib.sha256).digest()):
        return None
    if payload[:2] == b"Q2":
        body = body[4 + int.from_bytes(body[:4], "big"):]
    try:
        return getattr(_SafeUnpickler(io.BytesIO(body)).load()["job"], "number", None)
    except Exception:
        return None


class _Shell:
    """What a poison job unpickles to in the harness: its state, none of its behaviour."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "chaosjobs":
            found = getattr(chaosjobs, name, None)
            if isinstance(found, type) and issubclass(found, chaosjobs.Poison):
                return _Shell
        return super().find_class(module, name)


# The run ######################################################################################
class Chaos:
    """One run: the project, the backend, the supervisor; run(), then report()."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.project = Project(args)
        backend = {"sqlite": SQLiteBackend, "mysql": MySQLBackend, "postgres": PostgresBackend}[args.connection]
        backend = {"amqp": AMQPBackend, "redis": RedisBackend, "beanstalkd": BeanstalkdBackend,
                   "sqs": SQSBackend}.get(args.driver, backend)
        self.backend = backend(self.project)
        self.restart_window = [None, None]
        self.supervisor = Supervisor(self.project, self.rng, args.concurrency)
        self.timings = {}
        self.held_since = None  # when the run went quiet while the backend still held delayed messages
        self.backoffs, self.delays, self.pushed_at = {}, {}, {}  # jitter: number -> ...
        self.queues = None  # BrokerQueues (amqp)

    def run(self):
        args, project = self.args, self.project
        queue.configure(project.config_path)
        if args.driver in OWN_SERVER:
            self.backend.start()
            say(f"{getattr(self.backend, 'title', 'redis-server')} {self.backend.proc.pid} on 127.0.0.1:"
                f"{self.backend.port}, dir {self.backend.dir}")
        if args.driver != "redis":  # redis keeps its failed jobs and state itself
            if args.connection in ("mysql", "postgres"):
                queue.driver("database").create_tables()
            else:
                queue.driver("database").stats()  # creates the SQLite tables
        if args.driver == "amqp":  # the broker's queues, before anything of this run exists
            self.queues = BrokerQueues(project)
            self.queues.begin()
            say(f"RabbitMQ has {self.queues.start['total']} queues ({self.queues.start['ladder']} of the delay "
                f"ladder, {self.queues.start['old per-delay']} old per-delay) before the push")
        started = time.time()
        items, jobs = make_jobs(args.jobs, self.rng, project)
        poison, poison_jobs = make_poison(args.poison, args.jobs, self.rng, project)
        bads = make_bad(args.bad, args.jobs + args.poison, self.rng, project, self.backend) if args.bad else []
        self.items, self.bads, self.poison = items, bads, poison
        self.backoffs, self.delays = make_jitter(items, jobs, args)
        # push the jobs in batches, the poison jobs among them, the bad payloads spread among them;
        # with jitter, the delayed jobs one by one (a delay is per push)
        pushed, pushed_jobs = spread(items, jobs, poison, poison_jobs, self.rng)
        size = max(1, min(BATCH, args.ahead // 2)) if args.ahead else BATCH
        batches = max(1, -(-len(pushed_jobs) // size))

        def push(i):
            """Push batch i of `size` jobs (and its share of the bad payloads); return how many."""
            part = list(zip(pushed[i * size:(i + 1) * size], pushed_jobs[i * size:(i + 1) * size]))
            for queue_name in (project.long_queue, project.queue):
                group = [job for item, job in part if item.queue == queue_name and item.number not in self.delays]
                if group:
                    queue.push(*group, queue=queue_name)
                for item, job in part:
                    if item.queue == queue_name and item.number in self.delays:
                        self.pushed_at[item.number] = time.time()
                        queue.push(job, queue=queue_name, delay=self.delays[item.number])
            share = bads[i * len(bads) // batches:(i + 1) * len(bads) // batches]
            if share:
                self.backend.inject(share)
            return len(part) + len(share)
        # every batch now (--ahead 0), or the first wave: the rest while the workers run (see the loop)
        waves = [0, 0]  # batches pushed, payloads pushed
        while waves[0] < batches and (not args.ahead or waves[1] < args.ahead):
            waves[1] += push(waves[0])
            waves[0] += 1
        self.timings["push"] = time.time() - started
        say(f"pushed {waves[1]} of {len(pushed_jobs) + len(bads)} jobs, poison jobs and bad payloads in "
            f"{self.timings['push']:.1f} s" + (f" (then {size} at a time, at most {args.ahead} unsettled)"
                                              if waves[0] < batches else "") +
            (f"; jitter: {len(self.backoffs)} jobs with a backoff of their own, {len(self.delays)} pushed with a delay"
             if args.jitter else ""))

        sup = self.supervisor
        for _ in range(args.workers):
            sup.start("main")
        if any(item.kind == "long" for item in items):
            sup.start("long")
        expected = {item.number: item for item in items + poison}
        for b in bads:
            if b.number is not None:
                expected[b.number] = Item(b.number, b.category, "failed", project.queue)
        done_tail, runs_tail = Tail(project.path("done.log")), Tail(project.path("runs.log"))
        signals_tail = Tail(project.path("signals.log"))  # sigignrun jobs under way: SIGTERM their worker
        done_numbers, failed_seen, activity = set(), 0, time.monotonic()
        to_complete = {item.number for item in items if item.expect == "done"}
        restarter, next_kill, began = None, time.monotonic() + args.kill_every, time.monotonic()
        deadline = began + args.timeout
        stall = max(10.0, 4 * args.retry_after)
        all_accounted_at, last_check = None, 0.0
        while True:
            time.sleep(0.05)
            sup.reap()
            now = time.monotonic()
            new = done_tail.read()
            if new or runs_tail.read():
                if self.held_since and "quiet" not in self.timings:
                    self.timings["quiet"] = now - activity  # how long the held messages kept the run quiet
                activity = now
            done_numbers.update(int(line.split()[0]) for line in new)
            for line in signals_tail.read():
                sup.term(int(line.split()[2]))
            sup.check_termed()
            # the kills; they stop once everything is accounted for (then only late reruns are awaited);
            # on redis and beanstalkd, none during its restart and QUIET_AFTER_RESTART s after it (see _kills_paused)
            if args.kill_every and now >= next_kill and all_accounted_at is None and not self._kills_paused(restarter):
                sup.kill_random()
                next_kill = now + args.kill_every
            # the restart (on SQLite: every worker killed at once), once, when 40% of the jobs are done
            if not args.no_restart and restarter is None:
                if (len(done_numbers & to_complete) >= 0.4 * len(to_complete)) if to_complete else now - began > 3:
                    restarter = self._restart()
            restarting = restarter is not None and restarter.is_alive()
            if now - last_check < 0.5 or restarting:  # the store is not asked while its server is down
                continue
            last_check = now
            try:
                rows = failed_rows(project)
            except queue.QueueError:
                continue
            if len(rows) != failed_seen:
                failed_seen, activity = len(rows), now
            while waves[0] < batches and waves[1] - len(done_numbers) - len(rows) < args.ahead - size:
                pushing = time.time()  # the next wave (--ahead): the unsettled jobs are few enough
                waves[1] += push(waves[0])
                waves[0] += 1
                self.timings["push"] += time.time() - pushing
                activity = now
            if self._accounted(expected, done_numbers, rows):
                if all_accounted_at is None:
                    all_accounted_at = now
                    say(f"every job is done or failed after {time.time() - started:.1f} s; waiting for late reruns")
                try:
                    left = self.backend.remaining()
                except Exception:
                    left = None
                if (left == 0 and now - all_accounted_at >= 1.0) or now - all_accounted_at > args.retry_after + 10:
                    break
            if now > deadline:
                say(f"gave up: the run exceeded --timeout {args.timeout:g} s")
                break
            if now - activity > stall:
                held = self.backend.held()
                if not held:
                    say(f"gave up: nothing happened for {stall:.0f} s")
                    break
                if not self.held_since:
                    self.held_since = now
                    say(f"nothing happened for {stall:.0f} s, but the backend still holds {held} delayed "
                        "message(s): waiting for them (up to --timeout)")
        if restarter is not None:
            restarter.join()
        self.timings["run"] = time.time() - started
        self.hung = sup.stop()
        self.ended = time.time()
        if self.queues is not None:
            self.queues.finish()
        return self.count()

    def _accounted(self, expected, done_numbers, rows):
        """True when every numbered job is done or failed and every bad payload is in the failed store."""
        names = {row[0] for row in rows}
        payloads = {row[1] for row in rows if isinstance(row[1], bytes)}
        settled = done_numbers | {job_number(row[1]) for row in rows}
        settled |= {b.number for b in self.bads if b.number is not None and b.name in names}
        if not set(expected) <= settled:
            return False
        return all(b.name in names or b.payload in payloads for b in self.bads
                   if b.number is None and b.category != "control")

    def _kills_paused(self, restarter):
        """redis, beanstalkd: True from the crash until QUIET_AFTER_RESTART s after the server
        answers again. The workers that live through the crash must reconnect on their own: a
        replacement started meanwhile would load the driver's Lua scripts into the new server (they
        do not survive a restart) before the old workers use theirs again, and hide a worker that
        cannot reload its own; on beanstalkd, replacements would take the jobs while a worker that
        cannot reconnect went unseen (and one started while the server is down exits at once)."""
        if self.args.driver not in ("redis", "beanstalkd") or restarter is None:
            return False
        up = self.restart_window[1]
        return restarter.is_alive() or up is None or time.time() < up + QUIET_AFTER_RESTART

    def _restart(self):
        args, sup = self.args, self.supervisor
        if args.driver == "database" and args.connection == "sqlite":
            say("killing every worker at once")
            now = time.time()
            self.restart_window[:] = [now, now]
            sup.kill_all()
            thread = threading.Thread(target=lambda: None)
            thread.start()
            return thread

        def restart():
            name = {"amqp": "RabbitMQ", "redis": "Redis", "beanstalkd": "beanstalkd"}.get(args.driver) or \
                SERVER_NAMES[args.connection]
            say(f"restarting {name}")
            self.restart_window[0] = time.time()
            try:
                down, up = self.backend.restart()
                self.restart_window[:] = [down, up]
                say(f"{name} answers again after {up - down:.1f} s")
            except Exception as exc:
                self.restart_window[1] = time.time()
                self.restart_error = f"{type(exc).__name__}: {exc}"
                say(f"restart failed: {self.restart_error}")
        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        return thread

    # counting ##################################################################################
    def count(self):
        """Compare the record with what was pushed; set self.rows, self.violations; return the status."""
        args, project, sup = self.args, self.project, self.supervisor
        done, runs = read_record(project)
        rows = failed_rows(project)
        try:
            still = self.backend.remaining()
        except Exception as exc:
            say(f"cannot count what is still queued: {exc}")
            still = -1
        ended = {w.pid: (w.ended or self.ended) for w in sup.workers}
        calls, loads, forks, inherited = read_extra(project)
        # fork children of the fork poison jobs: which were still running later (their job, or
        # their own watchdog, killed them), which took jobs, which still live (we end them here)
        children = {child: number for what, number, child, _, _, _ in forks if what == "child"}
        strays = {child: at for what, _, child, _, at, _ in forks if what == "stray"}
        for child, at in strays.items():
            ended[child] = at
        left_alive = [child for child in children if our_process(child, project.folder)]
        for child in left_alive:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # a worker death (of any cause, the strays' too) explains a rerun of the job it had completed
        deaths = {pid: at for pid, at, cause in sup.deaths if cause not in ("server down", "termed")}
        deaths.update(strays)
        killed = {pid: at for pid, at, cause in sup.deaths if cause == "killed"}
        window = self.restart_window if self.restart_window[0] is not None else None
        amqp = args.driver == "amqp"
        beanstalkd, sqs = args.driver == "beanstalkd", args.driver == "sqs"

        # the failed store: our numbered jobs (by their verified payload), bad payloads by name or payload
        failed_by_number = collections.defaultdict(list)
        failed_by_bad = collections.Counter()
        by_name = {b.name: b for b in self.bads}
        by_payload = {b.payload: b for b in self.bads if isinstance(b.payload, bytes)}
        bad_records = {}  # number (or bad payload name) -> what is wrong with its failed record
        for name, payload, summary, record in rows:
            wrong_record = bad_record(record)
            bad = by_name.get(name) or (by_payload.get(payload) if isinstance(payload, bytes) else None)
            if bad is not None:
                failed_by_bad[bad.index] += 1
                if bad.number is not None:
                    failed_by_number[bad.number].append(summary)
                if wrong_record:
                    bad_records[bad.number if bad.number is not None else bad.name] = wrong_record
                continue
            number = job_number(payload)
            if number is not None:
                failed_by_number[number].append(summary)
            if wrong_record:
                bad_records[number if number is not None else name] = wrong_record

        # attempts per number (start, end, pid, outcome); claims per pid
        spans_by_number = collections.defaultdict(list)
        starts_by_pid = collections.defaultdict(list)
        for number, pid, attempt, start, end, outcome in runs:
            spans_by_number[number].append((start, ended.get(pid, self.ended) if end is None else end, pid, outcome))
            starts_by_pid[pid].append(start)

        def died_before_its_ack(pid, at):
            """The worker that completed a run at `at` died before the ack could be stored."""
            death = deaths.get(pid)
            if death is None or death < at:
                return False
            if amqp:  # acks travel on the I/O thread a moment later
                return death - at <= 1.0
            if args.concurrency > 1:  # the next claim of the same lane deletes it: lanes are not told apart
                return True
            return not any(at < s < death for s in starts_by_pid[pid])  # the next claim deletes it

        crash = args.driver == "database" and args.connection == "postgres"  # an immediate stop

        def across_restart(start, end):
            """amqp: the run overlapped the broker restart (its connection, and deliveries, lost);
            PostgreSQL: it ended within a second before the crash, whose lost asynchronous commits
            (a worker's, by design: synchronous_commit off) took its ack, so it ran again.
            beanstalkd: it began before the server answered again and ended no earlier than a second
            before the crash: the crash dropped its worker's connection and with it the reservation (the
            binlog gives the job back ready), so a delete sent then, or after, is refused.
            Redis (appendfsync always): never; no answered write is lost in its crash, and a
            finished job's delete rides on its worker's next pop, so a rerun needs a worker death."""
            if window is None:
                return False
            if crash:
                return window[0] - 1.0 <= end <= window[1]
            if beanstalkd:
                return start <= window[1] and end >= window[0] - 1.0
            return amqp and start <= window[1] + 10 and end >= window[0] - 1

        def death_excuses(pid, at):
            """The worker `pid` died after `at` and before it began anything else."""
            death = deaths.get(pid)
            return death is not None and death >= at and not any(at < s < death for s in starts_by_pid[pid])

        def released_then_died(number, before):
            """amqp: an attempt of the job ended by raising (or timing out) before `before`, and its
            worker died before beginning anything else. A release publishes the delayed copy first
            and acks the delivery after (at least once): killed in between, the worker leaves both,
            the copy and the original, which the broker redelivers at once; both run."""
            return amqp and any(outcome not in ("done", "died", "os._exit") and end < before and death_excuses(pid, end)
                                for _, end, pid, outcome in spans_by_number.get(number, []))

        def released_across_restart(number, before):
            """amqp: an attempt of the job ended by raising (or timing out) before `before`, close
            enough to the broker restart that its release (publish the delayed copy, wait for the
            confirm, then ack) overlapped it: a confirm or an ack lost with the connection leaves
            two copies (at least once)."""
            return amqp and any(outcome not in ("done", "died", "os._exit") and end < before and across_restart(end, end)
                                for _, end, pid, outcome in spans_by_number.get(number, []))

        def span(number, pid, at):
            for s in spans_by_number[number]:
                if s[2] == pid and s[0] <= at <= s[1] + 0.01:
                    return s
            return (at, at, pid, "?")

        c = collections.Counter()
        problems = collections.defaultdict(list)

        # sqs: a receive is an attempt (SQS's ApproximateReceiveCount), and a worker SIGKILLed while
        # its receive_message is under way (moto answers slowly), or after it and before the job
        # began, takes an attempt that leaves no `start` line. The main workers killed outside a job
        # bound how many such receives there can be.
        spans_by_pid = collections.defaultdict(list)
        for number, pid, attempt, start, end, outcome in runs:
            spans_by_pid[pid].append((start, ended.get(pid, self.ended) if end is None else end))
        killed_outside_a_job = sum(1 for pid, at in killed.items()
                                   if not any(start <= at <= end + 0.01 for start, end in spans_by_pid.get(pid, ())))

        def receives_unbegun(failures, spans):
            """sqs: the receives of a job failed with MaxAttemptsExceeded ("... was taken N times")
            before the one that failed it, less its attempts that began; 0 elsewhere."""
            taken = [int(m.group(1)) for m in (re.search(r"was taken (\d+) times", f) for f in failures) if m]
            if not sqs or not taken or not all(f.startswith("MaxAttemptsExceeded") for f in failures):
                return 0
            return max(0, max(taken) - 1 - len(spans))
        expected = {item.number: item for item in self.items}
        for b in self.bads:
            if b.number is not None:
                expected[b.number] = Item(b.number, b.category, "failed", project.queue)
        poisoned = {item.number: item for item in self.poison}
        expected.update(poisoned)
        kind_of = {number: item.kind for number, item in expected.items()}

        # failed() calls (the job's own record): more than one is explained only by a SIGKILL of
        # the worker that called it, after the call and before that worker began anything else
        events = collections.defaultdict(list)  # pid -> [(time, what, number, outcome)]
        for number, pid, attempt, start, end, outcome in runs:
            events[pid].append((start, "start", number, None))
            if end is not None:
                events[pid].append((end, "end", number, outcome))
        for number, pid, attempt, at in loads:
            events[pid].append((at, "load", number, None))
        for number, made in calls.items():
            for pid, at in made:
                events[pid].append((at, "failed", number, None))
        for pid in events:
            events[pid].sort(key=lambda e: e[0])
        calls_twice = {}  # number -> "explained" or "unexplained"
        for number, made in calls.items():
            if len(made) > 1:
                made = sorted(made, key=lambda m: m[1])
                explained = all(pid in killed and killed[pid] >= at and
                                not any(at < e[0] < killed[pid] and e[1] != "failed" for e in events[pid])
                                for pid, at in made[:-1])
                calls_twice[number] = "explained" if explained else "unexplained"
                c["failed() twice " + calls_twice[number]] += 1
                if not explained:
                    problems["failed() run more than once"].append((number, kind_of.get(number), made))
        poison = {cls.kind: collections.Counter() for cls in chaosjobs.POISON if any(
            item.kind == cls.kind for item in self.poison)}
        cls_of = {cls.kind: cls for cls in chaosjobs.POISON}
        # the starts of the main workers' jobs, in time order: did a worker go on after a poison job?
        mains = {w.pid for w in sup.workers if w.role == "main"}
        main_starts = sorted((start, pid) for pid, times in starts_by_pid.items() if pid in mains for start in times)
        start_times = [start for start, _ in main_starts]

        def stalled(pid, at):
            """The worker `pid` began nothing after `at` while the other main workers began at
            least STALL_STARTS jobs between at + 2 s and its end."""
            if any(s > at for s in starts_by_pid.get(pid, ())):
                return False
            until = ended.get(pid, self.ended)
            first, last = bisect.bisect_right(start_times, at + 2.0), bisect.bisect_left(start_times, until)
            return sum(1 for _, other in main_starts[first:last] if other != pid) >= STALL_STARTS

        for number, item in expected.items():
            completions = sorted(done.get(number, []), key=lambda d: d[2])
            failures = failed_by_number.get(number, [])
            spans = sorted(spans_by_number.get(number, []))
            if number in poisoned:
                p = poison[item.kind]
                p["pushed"] += 1
                p["done"] += 1 if completions else 0
                p["failed"] += 1 if failures else 0
                p["done twice"] += 1 if len(completions) > 1 else 0
                p["failed() > 1"] += 1 if calls_twice.get(number) == "unexplained" else 0
                wrong = laned = False
                cls = cls_of[item.kind]
                if not completions and not failures:
                    p["lost"] += 1
                    problems["poison lost"].append((number, item.kind))
                elif item.expect == "failed" and completions:
                    wrong = True
                elif item.expect == "failed" and cls.failed_as and not all(
                        f.startswith(cls.failed_as) for f in failures):
                    wrong = True  # in the failed store, but not for the reason its kind must be
                elif item.expect == "done" and not completions:
                    cut = any(pid in killed and outcome == "died" for _, _, pid, outcome in spans)
                    unbegun = receives_unbegun(failures, spans)
                    c["receives that began nothing"] += unbegun
                    if (cut or unbegun) and all(f.startswith("MaxAttemptsExceeded") for f in failures):
                        p["cut"] += 1
                    elif args.concurrency > 1 and failures and cls.main_thread_only and any(
                            outcome == "ValueError" for _, _, _, outcome in spans):
                        p["failed in a lane"] += 1  # off the main thread, Python lets no job set a handler
                        # (ValueError: it is retried; the attempts it used may end it in the failed store)
                        laned = True
                    else:
                        wrong = True
                if wrong:
                    p["wrong"] += 1
                    problems["poison with the wrong outcome"].append(
                        (number, item.kind, f"must be {item.expect}", failures[:1], len(completions)))
                if len(failures) > 1:
                    p["failed twice"] += 1
                    problems["poison in the failed store more than once"].append((number, item.kind, failures))
                limit = getattr(cls, "timeout", None)
                over = [(round(end - start, 2), pid, outcome) for start, end, pid, outcome in spans
                        if outcome == "RanToTheEnd" or (limit and end - start > limit + OVERRUN)]
                if over:
                    p["overran"] += 1
                    problems["poison attempts that ran past their timeout + 3 s (seconds, pid, outcome)"].append(
                        (number, item.kind, over))
                if number in bad_records:
                    p["bad record"] += 1
                    problems["poison whose failed record is too long or holds a NUL"].append(
                        (number, item.kind, bad_records[number]))
                stuck = [(pid, round(end, 3)) for _, end, pid, outcome in spans
                         if outcome not in ("died", "os._exit") and stalled(pid, end)]
                if stuck:
                    p["worker stalled"] += 1
                    problems["workers that began nothing after a poison job while the others went on"].append(
                        (number, item.kind, stuck))
                settled = failures if laned else completions if item.expect == "done" else failures
                if len(settled) == 1 and not wrong and calls_twice.get(number) != "unexplained" and (
                        item.expect == "done" or not completions) and (item.expect == "failed" or laned or not failures) \
                        and not (over or stuck or number in bad_records):
                    p["as expected"] += 1
            else:
                c["expect " + item.expect] += 1
                if not completions and not failures:
                    c["lost"] += 1
                    problems["lost"].append((number, item.kind))
                elif item.expect == "failed":
                    c["failed as expected"] += 1 if failures else 0
                    if completions:
                        c["completed though they must fail"] += 1
                        problems["completed though they must fail"].append((number, item.kind))
                else:
                    c["completed"] += 1 if completions else 0
                    if failures and not completions:
                        cut = any(pid in deaths and outcome == "died" for _, _, pid, outcome in spans)
                        unbegun = receives_unbegun(failures, spans)
                        c["receives that began nothing"] += unbegun
                        if (cut or unbegun) and all(f.startswith("MaxAttemptsExceeded") for f in failures):
                            c["failed after their workers died"] += 1
                            c["failed after receives that began nothing"] += 1 if unbegun else 0
                        else:
                            c["failed unexpectedly"] += 1
                            problems["failed unexpectedly"].append((number, item.kind, failures[0]))
            if item.kind == "slow" and any(attempt == 1 for _, attempt, _ in completions):
                c["timeouts not enforced"] += 1
                problems["timeouts not enforced"].append(number)
            if len(completions) > 1:
                c["double runs"] += 1
                reasons = set()
                for k in range(1, len(completions)):
                    earlier = completions[:k]
                    if any(died_before_its_ack(pid, at) for pid, _, at in earlier) or released_then_died(
                            number, completions[k][2]):
                        reasons.add("kill")
                    elif any(across_restart(*span(number, pid, at)[:2]) for pid, _, at in earlier) or \
                            released_across_restart(number, completions[k][2]):
                        reasons.add("restart")
                    else:
                        reasons.add("none")
                if "none" in reasons and sqs:  # a standard queue is at-least-once: counted apart, not hidden
                    c["sqs: delivered again, no worker death"] += 1
                    problems["sqs: double runs with no worker death (at-least-once)"].append(
                        (number, item.kind, completions, spans))
                elif "none" in reasons:
                    c["unexplained double runs"] += 1
                    problems["unexplained double runs"].append((number, item.kind, completions, spans))
                else:
                    c["explained by a death" if "kill" in reasons else "explained by the broker restart"] += 1
            for x, y in zip(spans, spans[1:]):  # two workers running the same job at the same time
                if y[0] < x[1] - 1e-3 and x[2] != y[2]:
                    if across_restart(x[0], x[1]):
                        c["concurrent across the broker restart"] += 1
                    elif sqs and y[0] - x[0] < args.retry_after - 0.5:
                        # handed out again within the first receive's visibility timeout: a second
                        # delivery (at-least-once), not a reservation that lapsed (that one is below)
                        c["sqs: delivered twice at once"] += 1
                        problems["sqs: runs at once within the visibility timeout (at-least-once)"].append(
                            (number, item.kind, x, y))
                    else:
                        c["ran in two workers at once"] += 1
                        problems["ran in two workers at once"].append((number, item.kind, x, y))
            if item.kind == "long":
                c["long jobs"] += 1
                c["long jobs run exactly once"] += 1 if len(completions) == 1 and len(spans) == 1 else 0
        c["unknown numbers in the record"] = sum(1 for number in done if number not in expected)

        # jitter: no delayed job may begin before its delay, no retry before its backoff (a retry
        # that follows a death of the worker of the attempt before, or the broker restart, is a
        # redelivery: it needs no backoff)
        attempts_of = collections.defaultdict(list)  # number -> [(start, end, pid, attempt, outcome)]
        for number, pid, attempt, start, end, outcome in runs:
            attempts_of[number].append((start, ended.get(pid, self.ended) if end is None else end, pid, attempt, outcome))
        for number, delay in self.delays.items():
            first = min((a[0] for a in attempts_of.get(number, [])), default=None)
            if first is not None and first < self.pushed_at[number] + delay - EARLY:
                c["began before their delay"] += 1
                problems["delayed jobs that began before their delay"].append(
                    (number, round(delay, 3), round(first - self.pushed_at[number], 3)))

        distinct = set()
        for number, steps in self.backoffs.items():
            distinct.update(steps)
            tries = sorted(attempts_of.get(number, []))
            for run in tries:
                start, end, pid, attempt, outcome = run
                if outcome in ("done", "died", "os._exit") or attempt < 1:
                    continue
                wait = steps[min(attempt, len(steps)) - 1]
                after = [t for t in tries if t[3] == attempt + 1 and t[0] >= end - 1e-3]
                if not after:
                    continue
                gap = after[0][0] - end
                c["retries after a jittered backoff"] += 1
                if gap >= wait - EARLY:
                    continue
                if death_excuses(pid, end) or across_restart(start, after[0][0]):
                    c["retries before their backoff, explained"] += 1
                else:
                    c["retries before their backoff"] += 1
                    problems["retries that began before their backoff"].append(
                        (number, kind_of.get(number), attempt, outcome, round(wait, 3), round(gap, 3)))
        c["distinct backoffs"] = len(distinct)
        # lost jobs: what the record shows of them, and whether the delay ladder (shared by the vhost)
        # was seen gone or incomplete after their last attempt (a delayed copy then waited in it)
        gone = self.queues.ladder_gone() if self.queues is not None and self.queues.start is not None else []
        origin = self.queues.start["at"] if gone else 0.0
        self.lost_detail = []
        for number, kind in problems.get("lost", []):
            tries = sorted(attempts_of.get(number, []))
            since = tries[-1][1] if tries else self.pushed_at.get(number, 0.0)
            ladder = any(at >= since - 1 for at in gone)
            c["lost while the ladder was gone"] += 1 if ladder else 0
            self.lost_detail.append({
                "number": number, "kind": kind, "backoff": self.backoffs.get(number), "delay": self.delays.get(number),
                "attempts (start, end, pid, attempt, outcome; s after the first queue sample)":
                    [(round(a - origin, 3), round(b - origin, 3), pid, n, o) for a, b, pid, n, o in tries],
                "pid deaths": {pid: (round(deaths[pid] - origin, 3) if pid in deaths else None) for _, _, pid, _, _ in tries},
                "ladder gone after its last attempt": ladder})

        markers = [m for m in os.listdir(project.markers) if m != "control"]
        control = os.path.exists(os.path.join(project.markers, "control"))
        for b in self.bads:
            if b.category != "control" and not failed_by_bad.get(b.index):
                c["bad missing"] += 1
                problems["bad payloads missing from the failed store"].append((b.index, b.category))

        # workers: why each ended; whether a working replacement followed every death
        causes = collections.Counter(cause for _, _, cause in sup.deaths)
        unrecovered = 0
        for pid, at, cause in sup.deaths:
            role = next(w.role for w in sup.workers if w.pid == pid)
            later = [w for w in sup.workers if w.started >= at and w.role == role]
            if not any(w.pid in starts_by_pid or w.cause == "stopped" or (w.ended or self.ended) - w.started >= 3.0
                       for w in later):
                unrecovered += 1
                problems["worker deaths not followed by recovery"].append((pid, cause))
        # the main workers that lived through the server restart (started before it went down, still
        # alive QUIET_AFTER_RESTART s after it answered): each must take jobs again on its own
        through, silent = [], []
        if window is not None and window[1] is not None and window[1] > window[0]:
            for w in sup.workers:
                end = w.ended or self.ended
                if w.role != "main" or w.started >= window[0] or end < window[1] + QUIET_AFTER_RESTART:
                    continue
                through.append(w.pid)
                if any(s > window[1] for s in starts_by_pid.get(w.pid, ())):
                    continue
                first = bisect.bisect_right(start_times, window[1])
                last = bisect.bisect_left(start_times, end)
                others = sum(1 for _, other in main_starts[first:last] if other != w.pid)
                if others >= STALL_STARTS:
                    silent.append(w.pid)
                    problems["workers that began no job after the restart while the others went on"].append(
                        (w.pid, w.cause, round(end - window[1], 1), others, self._tail(w.log, 2)))
        # the workers that exited on their own while not asked to stop (not SIGKILLed by us, not
        # os._exit by the jobs that do it on purpose, not "server down"): caused by a job when the
        # record names one (see culprit()), else other exits; exits at the stop are other exits
        def culprit(pid, status):
            """(number, what it was doing) of the job that ended worker `pid`, or None."""
            history = events.get(pid, [])
            if not history:
                return None
            if status == -signal.SIGALRM:
                for at, what, number, outcome in reversed(history):
                    if kind_of.get(number) in chaosjobs.TIMER_KINDS:
                        return number, "its alarm or timer fired later"
            at, what, number, outcome = history[-1]
            if what == "start":
                return number, "while it ran"
            if what == "load":
                return number, "while it was unpickled"
            if what == "failed":
                return number, "in or after its failed()"
            if outcome != "done" or number in poisoned:
                return number, f"after it ended ({outcome})"
            return None

        during_run = {pid for pid, _, cause in sup.deaths if cause == "unexpected"}
        unexpected = [w for w in sup.workers if w.cause == "unexpected"]
        job_deaths, other_exits = [], []
        for w in unexpected:
            blamed = culprit(w.pid, w.status) if w.pid in during_run else None
            if blamed is not None:
                number, doing = blamed
                kind = kind_of.get(number, "?")
                job_deaths.append({"pid": w.pid, "status": w.status, "number": number, "kind": kind, "doing": doing})
                if kind in poison:
                    poison[kind]["worker deaths"] += 1
                problems["worker deaths caused by a job"].append((w.pid, w.status, number, kind, doing, self._tail(w.log, 2)))
            else:
                other_exits.append(w)
                last = events.get(w.pid, [])[-1:]
                problems["unexpected worker exits"].append((w.pid, w.status, "at the stop" if w.pid not in during_run
                                                            else "during the run", last, self._tail(w.log)))
        job_death_kinds = collections.Counter(d["kind"] for d in job_deaths)
        # workers that did not stop on SIGTERM: at the final stop (self.hung), or within TERM_LIMIT
        # of the SIGTERM sent during a sigignrun job; blamed on the last job of a kind that may
        # keep a worker from stopping (SIGTERM ignored or blocked, a thread left running)
        hung = [(w.pid, "at the end") for w in self.hung] + [(pid, "during the run") for pid in sup.term_hung]
        for pid, when in hung:
            suspects = [e for e in events.get(pid, []) if kind_of.get(e[2]) in chaosjobs.STOP_KINDS]
            if suspects:
                poison[kind_of[suspects[-1][2]]]["hung at the stop"] += 1
            problems["workers that did not stop on SIGTERM"].append(
                (pid, when, [(e[2], kind_of.get(e[2])) for e in suspects[-2:]]))
        # signal state that a job found left behind by an earlier one in its worker: blamed on the
        # last poison job of a kind that leaves it, run in that worker before. One still running
        # then (another lane of `work --concurrency`) did not leave it behind: it changed the
        # process's state while it ran, which it may (counted apart, not a fault)
        left_behind, while_running = collections.Counter(), collections.Counter()
        for number, pid, what, at in inherited:
            suspects = [e for e in events.get(pid, []) if e[0] < at and kind_of.get(e[2]) in chaosjobs.LEFT_BEHIND[what]]
            blamed = kind_of[suspects[-1][2]] if suspects else "?"
            if suspects and any(pid == p_ and start <= suspects[-1][0] and end > at
                                for start, end, p_, _ in spans_by_number.get(suspects[-1][2], [])):
                while_running[blamed] += 1
                problems["jobs that began while another lane's job had changed the signal state"].append(
                    (number, pid, what, suspects[-1][2], blamed))
                continue
            left_behind[blamed] += 1
            if blamed in poison:
                poison[blamed]["state left behind"] += 1
            problems["jobs that began with a signal state left behind"].append(
                (number, pid, what, suspects[-1][2] if suspects else None, blamed))
        # fork children: what they did after handle() returned in them
        worked = sorted({pid for pid in children if pid in events})
        for pid in worked:
            problems["fork children that took jobs"].append((pid, children[pid], [e[2] for e in events[pid]][:5]))
        for child, at in strays.items():
            problems["fork children still running after their fork job (killed)"].append((child, children.get(child)))
        for child in left_alive:
            problems["fork children alive at the end (killed by chaos.py)"].append((child, children.get(child)))
        for number in {children[child] for child in list(strays) + left_alive + worked if child in children}:
            if kind_of.get(number) in poison:
                poison[kind_of[number]]["stray children"] += 1
        self.job_deaths = job_deaths
        self.poison_table = [{"kind": kind, "expect": next(cls.expect for cls in chaosjobs.POISON if cls.kind == kind),
                              **{k: counts[k] for k in POISON_COLUMNS}} for kind, counts in poison.items()]

        tracebacks, noisy = [], 0  # (log, the traceback) of queue.py's own; logs with pika ERROR records
        for w in sup.workers:
            with open(w.log, errors="replace") as f:
                text = f.read()
            noisy += " ERROR " in text
            for block in text.split("Traceback (most recent call last):")[1:]:
                frames = [line for line in block.splitlines() if line.lstrip().startswith('File "')]
                if frames and "chaosjobs.py" in frames[-1]:
                    continue  # a job's own exception, logged by the worker as it should be
                block = block[:4000]
                if 'queue.py", line' in block or "Exception in thread" in text:
                    tracebacks.append((w.log, "Traceback (most recent call last):" + block))
                    break

        r = [("jobs pushed", len(self.items), None),
             ("expected to complete", c["expect done"], None),
             ("  completed", c["completed"], None),
             ("  failed after their workers died (MaxAttemptsExceeded)", c["failed after their workers died"], None),
             *([("    of them taken by receives that began nothing (sqs: a receive is an attempt)",
                 c["failed after receives that began nothing"], None),
                ("    such receives (failed jobs, poison included)", c["receives that began nothing"], None),
                ("    main workers SIGKILLed outside a job (in or after a receive, or starting)", killed_outside_a_job,
                 None),
                ("    such receives beyond those kills (unexplained)",
                 max(0, c["receives that began nothing"] - killed_outside_a_job), 0)] if sqs else []),
             ("  failed unexpectedly", c["failed unexpectedly"], 0),
             ("expected to fail (raise, time out, exit, cannot load)", c["expect failed"], None),
             ("  in the failed store", c["failed as expected"], None),
             ("  completed though they must fail", c["completed though they must fail"], 0),
             ("lost (neither done nor in the failed store)", c["lost"], 0),
             *([("  of them while the delay ladder was deleted by someone else", c["lost while the ladder was gone"], None)]
               if self.queues is not None else []),
             ("run to completion more than once", c["double runs"], None),
             ("  explained by a worker death before the ack", c["explained by a death"], None),
             ("  explained by the server restart (amqp; PostgreSQL's crash; beanstalkd's)",
              c["explained by the broker restart"], None),
             *([("  no worker death to explain it (sqs: at-least-once by design)",
                 c["sqs: delivered again, no worker death"], None)] if sqs else []),
             ("  unexplained", c["unexplained double runs"], 0),
             ("ran in two workers at once" + (" (the second after the visibility timeout)" if sqs else ""),
              c["ran in two workers at once"], 0),
             ("  across the server restart (amqp, beanstalkd)", c["concurrent across the broker restart"], None),
             *([("  sqs: within the visibility timeout (a second delivery: at-least-once)",
                 c["sqs: delivered twice at once"], None)] if sqs else []),
             ("long jobs (2.2 x retry_after)", c["long jobs"], None),
             ("  run exactly once", c["long jobs run exactly once"], None),
             ("timeouts not enforced (slow job done at attempt 1)", c["timeouts not enforced"], 0),
             ("workers started", len(sup.workers), None),
             ("  SIGKILLed by the chaos loop", causes["killed"], None),
             ("  ended by os._exit() jobs", causes["os._exit"], None),
             ("  exited 1 at start: server unreachable", causes["server down"], None),
             ("  exited 1 after it lost the server and did not reconnect", causes["gave up"], 0),
             ("  deaths caused by a job (not os._exit; kinds below)", len(job_deaths), 0),
             ("  other exits (crashes)", len(other_exits), 0),
             ("  ignored SIGTERM at the end", len(self.hung), 0),
             ("  SIGTERMed during a sigignrun job (SIGTERM set to SIG_IGN)", len(sup.termed), None),
             ("    stopped after it (exit 0)", causes["termed"], None),
             (f"    still running {TERM_LIMIT:g} s after the SIGTERM (then SIGKILLed)", len(sup.term_hung), 0),
             ("worker deaths not followed by recovery", unrecovered, 0),
             ("main workers that lived through the server restart", len(through), None),
             ("  began no job after it while the others went on", len(silent), 0),
             ("worker logs with a traceback through queue.py", len(tracebacks), 0),
             ("worker logs with ERROR records (pika's own)", noisy, None)]
        if self.bads:
            r += [("bad payloads injected", sum(1 for b in self.bads if b.category != "control"), None),
                  ("  unpickled forgeries (marker files)", len(markers), 0),
                  ("  missing from the failed store", c["bad missing"], 0),
                  ("  control marker unpickled (must be 1)", int(control), None)]
        r += [(f"failed records over {chaosjobs.RECORD_LIMIT // 1024} KB or holding a NUL", len(bad_records), 0)]
        r += [("failed() run more than once (the job's own record)", c["failed() twice explained"]
               + c["failed() twice unexplained"], None),
              ("  explained by a SIGKILL after failed()", c["failed() twice explained"], None),
              ("  not explained by a SIGKILL", c["failed() twice unexplained"], 0)]
        if self.poison:
            total = collections.Counter()
            for counts in poison.values():
                total.update(counts)
            r += [("poison jobs pushed (kinds below)", len(self.poison), None),
                  ("  poison done or failed as their kind must", total["as expected"], None),
                  ("  poison failed after their workers were SIGKILLed", total["cut"], None),
                  ("  poison lost (neither done nor failed)", total["lost"], 0),
                  ("  poison with the wrong outcome", total["wrong"], 0),
                  ("  poison in the failed store more than once", total["failed twice"], 0),
                  ("  poison whose failed() ran more than once", total["failed() > 1"], 0),
                  ("  poison that caused worker deaths (not os._exit)", sum(job_death_kinds[k] for k in poison), 0),
                  ("  poison signal state found by later jobs (SIGTERM ignored/blocked, timer)",
                   sum(left_behind.values()), 0),
                  ("  poison signal state seen by another lane's job while it ran", sum(while_running.values()), None),
                  (f"  poison attempts past their timeout + {OVERRUN:g} s (kinds with a timeout)", total["overran"], 0),
                  (f"  poison failed records over {chaosjobs.RECORD_LIMIT // 1024} KB or holding a NUL",
                   total["bad record"], 0),
                  ("  poison whose worker began nothing after it while the others went on", total["worker stalled"], 0),
                  ("  poison fork children left running (killed)", len(strays), 0),
                  ("  poison fork children that took jobs", len(worked), 0),
                  ("  poison fork children alive at the end", len(left_alive), 0)]
        if args.jitter:
            r += [(f"jitter: jobs with a backoff of their own ({chaosjobs.JITTER_STEPS} x "
                   f"{chaosjobs.JITTER_LOW:g}-{chaosjobs.JITTER_HIGH:g} s)", len(self.backoffs), None),
                  ("  distinct backoff delays", c["distinct backoffs"], None),
                  ("  retries that followed a raise or a timeout", c["retries after a jittered backoff"], None),
                  ("  retries begun before their backoff, after a death or the restart",
                   c["retries before their backoff, explained"], None),
                  ("  retries begun before their backoff, unexplained", c["retries before their backoff"], 0),
                  (f"jitter: jobs pushed with a delay ({DELAY_LOW:g}-{DELAY_HIGH:g} s)", len(self.delays), None),
                  ("  distinct push delays", len(set(self.delays.values())), None),
                  ("  begun before their delay", c["began before their delay"], 0)]
        if self.queues is not None and self.queues.start is not None:
            q = self.queues_figures = self.queues.figures()
            new = q["new at the most"]
            r += [("broker queues at the start (vhost /)", q["start"], None),
                  ("  old per-delay queues at the start (<queue>.delay.<ms>)", q["start old per-delay"], None),
                  ("  delay ladder queues at the start", q["ladder present at the start"], None),
                  ("broker queues, the most during the run", q["most"], None),
                  ("  old per-delay queues in that sample", q["most old per-delay"], None),
                  ("broker queues at the end of the run", -1 if q["end"] is None else q["end"], None),
                  ("  old per-delay queues at the end", -1 if q["end old per-delay"] is None else q["end old per-delay"],
                   None),
                  ("old per-delay queues created during the run", len(q["old per-delay created during the run"]), 0),
                  ("  of them this run's", len(q["old per-delay of this run"]), None),
                  ("max queues during the run minus queues at the start", q["most minus start"], 40),
                  ("  new in that sample: this run's own", new["this run's"], None),
                  ("  new in that sample: the delay ladder", new["ladder"], None),
                  ("  new in that sample: other users' queues", new["others"], None),
                  ("queue samples (every 2 s; failed while the broker was down)", q["samples"], None),
                  ("  failed samples", q["samples that failed (broker down)"], None),
                  ("  samples with the delay ladder incomplete", q["samples with the ladder incomplete (after it was complete)"],
                   None)]
        r += [("still queued at the end", still, 0),
              ("unknown numbers in the record", c["unknown numbers in the record"], 0)]
        violations = [(label.strip(), value) for label, value, limit in r if limit is not None and value > limit]
        if still < 0:
            violations.append(("still queued at the end: cannot count", 1))
        if self.bads and not control:
            violations.append(("control marker missing (the marker check would prove nothing)", 1))
        if getattr(self, "restart_error", None):
            violations.append((f"restart failed: {self.restart_error}", 1))
        self.rows, self.violations, self.problems, self.tracebacks = r, violations, problems, tracebacks
        return 1 if violations else 0

    @staticmethod
    def _tail(path, n=3):
        with open(path, errors="replace") as f:
            return [line.rstrip() for line in f.readlines()[-n:]]

    def report(self, out=sys.stdout):
        args = self.args
        target = (f"{args.driver}/{args.connection}" if args.driver == "database" else
                  "redis (failed store and state in Redis, appendfsync always)" if args.driver == "redis" else
                  "beanstalkd (its own, with a binlog; failed store and state in SQLite)" if args.driver == "beanstalkd"
                  else "sqs (moto_server; failed store and state in SQLite)" if args.driver == "sqs" else
                  f"amqp (failed store: {args.connection})")
        restart = ("none (moto_server keeps everything in memory: a restart loses every queue and message)"
                   if args.driver == "sqs" else "none" if args.no_restart else
                   "every worker killed at once" if args.driver == "database" and args.connection == "sqlite" else
                   f"{SERVER_NAMES[args.connection]} restarted" if args.driver == "database" else
                   "Redis SIGKILLed and restarted" if args.driver == "redis" else
                   "beanstalkd SIGKILLed and restarted" if args.driver == "beanstalkd" else "RabbitMQ restarted")
        if self.restart_window[0] is not None and self.restart_window[1] is not None and restart.endswith("restarted"):
            restart += f" ({self.restart_window[1] - self.restart_window[0]:.1f} s down)"
        print(f"queue.py chaos: {target}, {args.jobs} jobs, {args.bad} bad payloads, {args.poison} poison jobs, "
              f"{args.workers} workers" + (f" of {args.concurrency} lanes" if args.concurrency > 1 else "") + ", "
              f"kill every {args.kill_every:g} s, retry_after {args.retry_after:g} s, seed {args.seed}, "
              f"jitter {'on' if args.jitter else 'off'}", file=out)
        print(f"restart: {restart}; push {self.timings.get('push', 0):.1f} s, run {self.timings.get('run', 0):.1f} s", file=out)
        if self.held_since:
            quiet = self.timings.get("quiet")
            print("the run went quiet while the backend held delayed messages; they came after "
                  + (f"{quiet:.0f} s" if quiet is not None else "the end of the run (not at all)"), file=out)
        width = max(len(label) for label, _, _ in self.rows) + 2
        print(f"{'what':<{width}}{'count':>8}  must be", file=out)
        for label, value, limit in self.rows:
            mark = "" if limit is None else f"  {'<=' if limit else '='} {limit}" + ("   <-- VIOLATION" if value > limit else "")
            print(f"{label:<{width}}{value:>8}{mark}", file=out)
        if getattr(self, "poison_table", None):
            heads = ["poison kind", "must be"] + [name.replace(" ", "_") for name in POISON_COLUMNS]
            cells = [[row["kind"], row["expect"]] + [str(row[k]) for k in POISON_COLUMNS] for row in self.poison_table]
            widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
            print("poison per kind (" + ", ".join(k.replace(" ", "_") for k in MUST_BE_ZERO) + ": must be 0)",
                  file=out)
            for line in [heads] + cells:
                print("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))),
                      file=out)
        q = getattr(self, "queues_figures", None)
        if q and q["samples with the ladder incomplete (after it was complete)"]:
            print(f"NOTE: the delay ladder (shared by the vhost) was gone or incomplete in "
                  f"{q['samples with the ladder incomplete (after it was complete)']} of {q['samples']} samples during "
                  "the run: someone else deleted it (queue.py never does on its own; the test suite does at the end of "
                  "each session). The delayed messages it held were dropped with it: losses may come from that.",
                  file=out)
        if self.violations:
            print("RESULT: FAIL: " + "; ".join(f"{label} {value}" for label, value in self.violations), file=out)
        else:
            print("RESULT: OK", file=out)
        for kind, cases in self.problems.items():
            say(f"{kind}: {len(cases)}; first ones: {cases[:5]!r}")
        for path, text in self.tracebacks[:2]:
            say(f"traceback in {os.path.basename(path)}:\n{text}")

    def summary(self):
        return {"violations": self.violations, "rows": {label.strip(): value for label, value, _ in self.rows},
                "poison": getattr(self, "poison_table", []), "worker_deaths_caused_by_jobs": getattr(self, "job_deaths", []),
                "timings": self.timings, "restart_window": self.restart_window,
                "jitter": {"on": self.args.jitter, "backoffs": {str(k): v for k, v in self.backoffs.items()},
                           "delays": {str(k): v for k, v in self.delays.items()}},
                "broker_queues": getattr(self, "queues_figures", None),
                "lost_jobs": getattr(self, "lost_detail", []),
                "problems": {k: [repr(x) for x in v[:20]] for k, v in self.problems.items()}}

    def close(self):
        try:
            self.supervisor.stop(timeout=5)
        except Exception:
            pass
        if self.queues is not None:
            self.queues.stopping.set()
        try:
            self.backend.ensure_up()
        except Exception as exc:
            say(f"could not make sure the server runs: {exc}")
        try:
            queue._close_drivers()
        except Exception:
            pass
        try:
            self.backend.cleanup()
        except Exception as exc:
            say(f"cleanup failed: {exc!r}")
        if self.queues is not None and self.queues.start is not None and getattr(self, "rows", None) is not None:
            taken = self.queues.sample(tries=5)
            if taken is not None:
                self.queues.after_cleanup = taken[0]
                self.queues_figures = self.queues.figures()
                at = next((i for i, row in enumerate(self.rows) if row[0].startswith("queue samples")), len(self.rows))
                self.rows.insert(at, ("broker queues after the cleanup (the ladder stays)", taken[0]["total"], None))
        if self.args.keep:
            say(f"kept {self.project.folder}")
        else:
            self.project.remove()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--driver", choices=("database", "amqp", "redis", "beanstalkd", "sqs"), default="database",
                   help="database (--connection), amqp (RabbitMQ), redis (a redis-server of the run's own), "
                   "beanstalkd (a beanstalkd of the run's own) or sqs (a moto_server of the run's own; never "
                   "restarted)")
    p.add_argument("--vhost", default="", help="amqp: the RabbitMQ vhost to run in (default /)")
    p.add_argument("--connection", choices=("sqlite", "mysql", "postgres"), default="sqlite",
                   help="database connection (for amqp: where the failed store lives; redis: not used; "
                   "beanstalkd, sqs: always sqlite)")
    p.add_argument("--jobs", type=int, default=10000, help="numbered jobs to push (default 10000)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3; one more runs the long jobs)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once in each worker (`work --concurrency`)")
    p.add_argument("--kill-every", type=float, default=1.0, help="seconds between SIGKILLs (0: none; default 1)")
    p.add_argument("--no-restart", action="store_true",
                   help="no server restart (SQLite: no kill-all; Redis, beanstalkd: no SIGKILL of its server; "
                   "sqs: always, moto_server keeps everything in memory)")
    p.add_argument("--ahead", type=int, default=None,
                   help="push the jobs in waves while the workers run, keeping at most this many unsettled "
                        "(0: push every job before the workers start; the default, except on sqs: 400, as "
                        "moto_server scans its whole queue on every request)")
    p.add_argument("--bad", type=int, default=0, help="hostile payloads to inject (the bad-input run; default 0)")
    p.add_argument("--poison", type=int, default=None,
                   help="poison jobs to push among the others (default: 2%% of --jobs; 0: none); kinds: "
                   + ", ".join(cls.kind for cls in chaosjobs.POISON))
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--retry-after", type=float, default=5.0, help="retry_after (and amqp heartbeat) in seconds")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds (default: 90 s + 0.05 s a job, on sqs 0.5 s, a bad "
                   "payload 5 jobs, + 0.5 s a poison job)")
    p.add_argument("--skip", default="", help="bad-payload categories to leave out, comma separated "
                   "(forged, wrongkey, truncated, flipped, extended, random, empty, missing, unloadable, "
                   "initraises, exit, die; sqlite: text, integer; amqp: bare, badheader; beanstalkd: nofields, "
                   "badattempts; sqs: notbase64, noattributes, badattempts), or poison kinds")
    p.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="jobs that raise or time out get random backoffs of their own, and 5%% of the short "
                   "jobs are pushed with a random delay (default: on for amqp, off otherwise)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary project folder (with redis: the server's dir, its AOF and logs; "
                   "beanstalkd: its binlog and log; sqs: moto_server's log)")
    args = p.parse_args(argv)
    if args.poison is None:
        args.poison = max(0, round(0.02 * args.jobs))
    if args.ahead is None:
        args.ahead = 400 if args.driver == "sqs" else 0
    if args.jobs < 0 or args.bad < 0 or args.poison < 0 or args.workers < 1:
        p.error("--jobs, --bad and --poison must not be negative; --workers must be at least 1")
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    if args.driver in ("beanstalkd", "sqs"):
        if args.connection != "sqlite":
            p.error(f"--driver {args.driver} keeps its failed jobs and state in SQLite: --connection sqlite only")
        args.no_restart = args.no_restart or args.driver == "sqs"  # moto_server would lose everything
    if args.jitter is None:
        args.jitter = args.driver == "amqp"
    if args.timeout is None:  # sqs: moto_server takes about 0.1 to 0.5 s a job (it scans the queue per request)
        per_job = 0.5 if args.driver == "sqs" else 0.05
        args.timeout = 90 + per_job * (args.jobs + 5 * args.bad) + 0.5 * args.poison
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.vhost:
        AMQP["vhost"] = args.vhost  # the workers' config and the harness's own connections
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    chaos = Chaos(args)
    try:
        status = chaos.run()
    except BaseException:
        chaos.close()
        raise
    chaos.close()
    chaos.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(chaos.summary(), f, indent=1, default=str)
    return status


if __name__ == "__main__":
    sys.exit(main())
