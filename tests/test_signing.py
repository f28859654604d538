"""Signed payloads: b"Q2" + HMAC-SHA256(key, signed) + signed, where signed is a length, a JSON
header (the job's class, queue and settings) and a pickle; b"Q1" payloads of queue.py 1.0 (MAC +
pickle) are still read.

A payload whose signature fails is never unpickled: forged payloads below carry a
testjobs.Marker, whose unpickling appends to a marker file, so "never unpickled" is proven by
a marker file that does not exist afterwards (and by a pickle.loads that was never called).
What a worker could never import (classes of __main__, lambdas) is refused at push time.
Without KEY or QUEUE_KEY a random key is kept in .queue.key beside config.py.
"""
import hashlib
import hmac
import os
import pickle
import stat
import subprocess
import sys

import pytest

import queue
import testjobs
from helpers import ok
from testjobs import lines, values

KEY = b"test-key-0123456789abcdef"  # conftest's Project key


def mac(key, body):
    return hmac.digest(key, body, hashlib.sha256)


def envelope_body(job):
    return pickle.dumps({"v": 1, "job": job, "chain": [], "until": None}, 4)


# pack / unpack ################################################################################
def test_pack_unpack_round_trip(sqlite_project, tmp_path):
    job = testjobs.Record(tmp_path / "out", "first", tries=5, backoff=[1, 2], queue="mail")
    job.extra = {"order": 42, "items": [1.5, None, ("a", b"b")]}
    chain = [testjobs.Record(tmp_path / "out", "second"), testjobs.Fail(tmp_path / "out", "third")]
    payload = queue.pack(job, chain=chain, until=1234.5, queue="mail")
    assert isinstance(payload, bytes) and payload[:2] == b"Q2"
    assert payload[2:34] == mac(KEY, payload[34:])
    envelope = queue.unpack(payload)
    assert envelope["v"] == 2 and envelope["until"] == 1234.5
    assert envelope["header"] == {"name": "Record", "queue": "mail", "tries": 5, "timeout": None,
                                  "backoff": [1, 2], "until": 1234.5}
    loaded = envelope["job"]
    assert type(loaded) is testjobs.Record and vars(loaded) == vars(job)
    assert [type(j) for j in envelope["chain"]] == [testjobs.Record, testjobs.Fail]
    assert [j.value for j in envelope["chain"]] == ["second", "third"]
    assert queue.unpack(bytearray(payload))["job"].value == "first"
    assert queue.unpack(memoryview(payload))["job"].value == "first"


def test_a_correctly_signed_marker_is_unpickled(sqlite_project, tmp_path):
    """The control for the tests below: the marker works, so its absence there means something."""
    marker = tmp_path / "marker"
    body = envelope_body(testjobs.Marker(marker))
    queue.unpack(b"Q1" + mac(KEY, body) + body)
    assert lines(marker) == ["unpickled"]


def _forgeries(marker):
    body = envelope_body(testjobs.Marker(marker))
    signed = b"Q1" + mac(KEY, body) + body
    other = envelope_body(testjobs.Record("/nonexistent", "innocent"))
    flipped = bytearray(signed)
    flipped[34 + len(body) // 2] ^= 0x01
    bad_mac = bytearray(signed)
    bad_mac[10] ^= 0x80
    return {
        "body swapped under a valid MAC": b"Q1" + mac(KEY, other) + body,
        "one body bit flipped": bytes(flipped),
        "extra byte appended": signed + b".",
        "tampered MAC": bytes(bad_mac),
        "MAC missing": b"Q1" + body,
        "truncated by one byte": signed[:-1],
        "truncated in the MAC": signed[:20],
        "header only": b"Q1",
        "empty": b"",
        "wrong key": b"Q1" + mac(b"another-key-0123456789abcdef", body) + body,
        "random bytes": os.urandom(300),
        "Q1 then random bytes": b"Q1" + os.urandom(300),
        "plain pickle, no header": body,
        "Q2 header": b"Q2" + mac(KEY, body) + body,
        "lower-case q1 header": b"q1" + mac(KEY, body) + body,
    }


FORGERIES = list(_forgeries("/x"))


@pytest.mark.parametrize("kind", FORGERIES)
def test_a_bad_payload_is_rejected_and_never_unpickled(sqlite_project, tmp_path, monkeypatch, kind):
    marker = tmp_path / "marker"
    payload = _forgeries(marker)[kind]
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "loads", spy)
    monkeypatch.setattr(pickle, "load", spy)
    monkeypatch.setattr(pickle, "Unpickler", spy)
    with pytest.raises(queue.BadPayload) as raised:
        queue.unpack(payload)
    assert calls == [], "a payload with a bad signature reached pickle"
    assert not marker.exists(), "a payload with a bad signature was unpickled"
    assert len(str(raised.value).splitlines()) == 1


def test_not_bytes_is_a_bad_payload(sqlite_project):
    for payload in (None, "Q1" + "x" * 60, 12):
        with pytest.raises(queue.BadPayload):
            queue.unpack(payload)


@pytest.mark.parametrize("kind", ["wrong key", "body swapped under a valid MAC", "plain pickle, no header"])
def test_a_worker_fails_a_forged_payload_without_unpickling_it(sqlite_project, tmp_path, kind):
    marker, out = tmp_path / "marker", tmp_path / "out"
    queue.driver().put([queue.Message(None, "default", "Record", _forgeries(marker)[kind])])
    queue.push(testjobs.Record(out, "after"))
    ok(sqlite_project.cli("work", "--stop-when-empty"))
    assert not marker.exists(), "the worker unpickled a forged payload"
    assert values(out) == ["after"]  # the worker went on with the next job
    (failed,) = queue.driver().failed_store().failed_jobs()
    assert failed["name"] == "Record"
    first = failed["exception"].splitlines()[0]
    assert first.startswith("BadPayload: ") and ("signature" in first or "Q1" in first), first


# what a worker could never load is refused at push time ######################################
MAIN_SCRIPT = '''
import sys
import threading

import queue
import testjobs


class Local(queue.Queueable):
    def handle(self):
        pass


class Point:
    pass


def attempt(what, *jobs):
    try:
        queue.push(*jobs)
    except queue.QueueError as exc:
        print(f"{what}: refused: {exc}")
    else:
        print(f"{what}: PUSHED")


attempt("class", Local())
job = testjobs.Record(sys.argv[1], "with-point")
job.point = Point()
attempt("attribute", job)
attempt("mixed", testjobs.Record(sys.argv[1], "fine"), Local())
job = testjobs.Record(sys.argv[1], "with-lambda")
job.transform = lambda x: x
attempt("lambda", job)
print("stats", queue.driver().stats())
'''


def test_a_job_defined_in_main_is_refused_at_push_time(sqlite_project, tmp_path):
    script = os.path.join(sqlite_project.folder, "pusher.py")
    with open(script, "w") as f:
        f.write(MAIN_SCRIPT)
    result = subprocess.run([sys.executable, script, str(tmp_path / "out")], cwd=sqlite_project.folder,
                            env=sqlite_project.env(), capture_output=True, text=True, timeout=60)
    out = ok(result)
    said = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    for what, names in (("class", ["Local", "__main__"]), ("attribute", ["Point", "__main__"]),
                        ("mixed", ["Local", "__main__"]), ("lambda", ["Record"])):
        assert said[what].startswith("refused: "), out
        for name in names:
            assert name in said[what], (what, name, said[what])
    assert "stats {}" in out, "a refused push stored something"
    assert queue.driver().stats() == {}


@pytest.mark.parametrize("attribute", [lambda: 1, "lock", "generator"], ids=["lambda", "lock", "generator"])
def test_a_job_that_cannot_be_pickled_is_refused_at_push_time(sqlite_project, tmp_path, attribute):
    import threading
    job = testjobs.Record(tmp_path / "out", "x")
    job.extra = {"lock": threading.Lock(), "generator": (i for i in range(3))}.get(attribute, attribute)
    with pytest.raises(queue.QueueError) as raised:
        queue.push(testjobs.Record(tmp_path / "out", "fine"), job)
    message = str(raised.value)
    assert "Record" in message and "pickle" in message and len(message.splitlines()) == 1, message
    assert queue.driver().stats() == {}


# the signing key ##############################################################################
@pytest.fixture
def keyless(sqlite_project, monkeypatch):
    """The project without KEY in its config (and no QUEUE_KEY in this process)."""
    monkeypatch.delenv("QUEUE_KEY", raising=False)
    sqlite_project.key = None
    sqlite_project.write_config()
    os.makedirs(os.path.join(sqlite_project.folder, "jobs"), exist_ok=True)
    with open(os.path.join(sqlite_project.folder, "jobs", "Record.py"), "w") as f:
        f.write("from testjobs import Record\n")
    return sqlite_project


def test_without_a_key_one_is_made_in_queue_key_with_mode_0600_and_reused(keyless, tmp_path):
    path = os.path.join(keyless.folder, ".queue.key")
    assert not os.path.exists(path)
    out = tmp_path / "out"
    ok(keyless.cli("push", "Record", out, "a"))
    assert os.path.isfile(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        key = f.read().strip()
    assert len(key) >= 32
    ok(keyless.cli("push", "Record", out, "b"))
    ok(keyless.cli("work", "--stop-when-empty"))  # another process, the same key
    assert values(out) == ["a", "b"]
    with open(path, "rb") as f:
        assert f.read().strip() == key, "the key file was replaced"
    keyless.configure()  # this process uses it as well
    payload = queue.pack(testjobs.Record(out, "c"))
    assert payload[2:34] == mac(key, payload[34:])
    assert queue.driver().failed_store().failed_jobs() == []


def test_first_pushes_racing_agree_on_one_key(keyless, tmp_path):
    out = tmp_path / "out"
    pushers = [subprocess.Popen([sys.executable, "queue.py", "push", "Record", str(out), f"v{i}"],
                                cwd=keyless.folder, env=keyless.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(4)]
    for pusher in pushers:
        stdout, stderr = pusher.communicate(timeout=60)
        assert pusher.returncode == 0, stderr
    ok(keyless.cli("work", "--stop-when-empty"))
    assert sorted(values(out)) == ["v0", "v1", "v2", "v3"]
    assert queue.driver().failed_store().failed_jobs() == []


def test_the_key_file_lives_beside_the_config_file(keyless, tmp_path):
    conf = os.path.join(keyless.folder, "conf")
    os.makedirs(conf)
    os.rename(keyless.config_path, os.path.join(conf, "config.py"))
    os.rename(os.path.join(keyless.folder, "jobs"), os.path.join(conf, "jobs"))
    ok(keyless.cli("push", "Record", tmp_path / "out", "a", "--config", os.path.join(conf, "config.py")))
    assert os.path.isfile(os.path.join(conf, ".queue.key"))
    assert not os.path.exists(os.path.join(keyless.folder, ".queue.key"))


def test_queue_key_overrides_the_config_key(sqlite_project, tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_KEY", "environment-key-0123456789")
    sqlite_project.configure()  # the key is resolved once per configuration
    payload = queue.pack(testjobs.Record(tmp_path / "out", "x"))
    assert payload[2:34] == mac(b"environment-key-0123456789", payload[34:])
    assert payload[2:34] != mac(KEY, payload[34:])
    assert queue.unpack(payload)["job"].value == "x"
    monkeypatch.delenv("QUEUE_KEY")
    sqlite_project.configure()
    with pytest.raises(queue.BadPayload, match="signature"):
        queue.unpack(payload)


@pytest.mark.parametrize("length", [16, 63, 64, 65, 200])
def test_the_signature_is_hmac_sha256_for_a_key_of_any_length(sqlite_project, tmp_path, monkeypatch, length):
    """queue.py computes the HMAC itself (its pads hashed once per key): it must agree with the
    hmac module on both sides of the 64-byte block, where a longer key is hashed first."""
    key = "k" * length
    monkeypatch.setenv("QUEUE_KEY", key)
    sqlite_project.configure()
    payload = queue.pack(testjobs.Record(tmp_path / "out", "x"))
    assert payload[2:34] == mac(key.encode(), payload[34:])
    assert queue.unpack(payload)["job"].value == "x"
    forged = payload[:2] + mac(b"another " + key.encode(), payload[34:]) + payload[34:]
    with pytest.raises(queue.BadPayload, match="signature"):
        queue.unpack(forged)
    monkeypatch.delenv("QUEUE_KEY")
    sqlite_project.configure()


def test_queue_key_overrides_the_key_file(keyless, tmp_path):
    out = tmp_path / "out"
    ok(keyless.cli("push", "Record", out, "a", QUEUE_KEY="environment-key-0123456789"))
    assert not os.path.exists(os.path.join(keyless.folder, ".queue.key"))
    ok(keyless.cli("work", "--stop-when-empty", QUEUE_KEY="environment-key-0123456789"))
    assert values(out) == ["a"]


def test_a_worker_with_another_key_fails_the_job_with_signature_in_the_reason(sqlite_project, tmp_path):
    out = tmp_path / "out"
    queue.push(testjobs.Record(out, "signed"))
    ok(sqlite_project.cli("work", "--stop-when-empty", QUEUE_KEY="not-the-pushers-key-0123456789"))
    assert values(out) == []
    (failed,) = queue.driver().failed_store().failed_jobs()
    assert failed["name"] == "Record" and "signature" in failed["exception"].splitlines()[0]
    listed = ok(sqlite_project.cli("failed"))
    assert "signature" in listed and "Traceback" not in listed
    # nothing is lost: retried, a worker with the right key runs it
    ok(sqlite_project.cli("retry", "all"))
    ok(sqlite_project.cli("work", "--stop-when-empty"))
    assert values(out) == ["signed"]
    assert queue.driver().failed_store().failed_jobs() == []


def test_a_job_holding_the_text_main_is_not_refused(sqlite_project):
    """Only references to classes or functions of __main__ are refused, not data that says so."""
    job = testjobs.Record(os.path.join(sqlite_project.folder, "out"), "__main__")
    job.extra = ["__main__", "Foo", {"__main__": "Foo"}]
    envelope = queue.unpack(queue.pack(job))
    assert envelope["job"].extra == ["__main__", "Foo", {"__main__": "Foo"}]
