"""PostgreSQL: the database driver's third dialect (psycopg 3). The shared contract runs in
test_contract.py, SIGKILL recovery and several workers sharing a queue in test_recovery.py; here:
an idle worker is woken by NOTIFY well before its poll, a push through the app's own connection
commits or rolls back with the app's transaction (on every dialect), the DDL, and a worker that
rides out a server restart.
"""
import collections
import os
import sqlite3
import subprocess
import sys

import pytest

import queue
import testjobs
from conftest import MYSQL, POSTGRES, restarts_a_server, require
from helpers import job_count, pg, push_records, stop, wait_worker
from testjobs import values, wait_for

psycopg = pytest.importorskip("psycopg")


def test_an_idle_worker_is_woken_by_notify_long_before_its_poll(postgres_project, tmp_path, spawn):
    """poll is 30 s: without LISTEN/NOTIFY the job would wait up to 30 s."""
    path = str(tmp_path / "record")
    worker = spawn(postgres_project, "work", "--poll", "30")
    queue.push(testjobs.Record(path, "first"))  # taken by its first claim, or woken: LISTEN comes first
    wait_worker(worker, lambda: len(values(path)) == 1, 20, "the worker did not start")
    for n in range(3):
        queue.push(testjobs.Record(path, f"r{n}"))
        wait_worker(worker, lambda: len(values(path)) == n + 2, 5, f"push {n} was not taken within 5 s")
    stop(worker)


def test_a_push_in_the_app_transaction_that_rolls_back_stores_nothing(postgres_project, tmp_path):
    path = str(tmp_path / "record")
    with pg() as conn:
        conn.autocommit = False
        queue.push(testjobs.Record(path, "kept"), using=conn)
        conn.commit()
        queue.push(testjobs.Record(path, "dropped"), using=conn)
        conn.rollback()
    assert job_count(postgres_project) == 1
    queue.Worker(queue.driver(), stop_when_empty=True).run()
    assert values(path) == ["kept"]


def test_a_push_through_a_sqlite_connection_commits_with_it(sqlite_project, tmp_path):
    path = str(tmp_path / "record")
    queue.driver().create_tables()
    conn = sqlite3.connect(os.path.join(sqlite_project.folder, "queue.sqlite3"))
    queue.push(testjobs.Record(path, "dropped"), using=conn)
    conn.rollback()
    queue.push(testjobs.Record(path, "kept"), using=conn)
    conn.commit()
    conn.close()
    queue.Worker(queue.driver(), stop_when_empty=True).run()
    assert values(path) == ["kept"]


def test_a_push_through_a_pymysql_connection_commits_with_it(mysql_project, tmp_path):
    import pymysql
    path = str(tmp_path / "record")
    conn = pymysql.connect(**{k: v for k, v in MYSQL.items() if k != "driver"})
    try:
        queue.push(testjobs.Record(path, "dropped"), using=conn)
        conn.rollback()
        queue.push(testjobs.Record(path, "kept"), using=conn)
        conn.commit()
    finally:
        conn.close()
    queue.Worker(queue.driver(), stop_when_empty=True).run()
    assert values(path) == ["kept"]


def test_push_using_refuses_what_is_not_a_database_connection(sqlite_project, tmp_path):
    with pytest.raises(queue.QueueError, match="sqlite3, pymysql or psycopg"):
        queue.push(testjobs.Record(str(tmp_path / "r"), "x"), using=object())


def test_table_sql_on_postgres(postgres_project):
    ddl = postgres_project.cli("table", "--sql").stdout
    table = postgres_project.drivers["database"]["table"]
    assert f'CREATE TABLE IF NOT EXISTS "{table}" (id BIGSERIAL PRIMARY KEY' in ddl
    assert "BYTEA" in ddl and "TIMESTAMP(6)" in ddl
    result = postgres_project.cli("table")
    assert result.returncode == 0, result.stderr


def _claim_index_reads(conn, table):
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT sum(idx_tup_read) FROM pg_stat_user_indexes WHERE relname = %s AND indexrelname <> %s",
                       (table, f"{table}_pkey")).fetchone()
    return row[0]


def test_a_claim_reads_the_jobs_it_takes_not_the_whole_backlog(postgres_project):
    """A backlog pushed at once (one timestamp) into a table the planner believes small: each
    claim reads about the rows it takes. It read every ready row and every dead index entry
    (a bitmap scan and a sort, or a sort of the whole group of equal timestamps): 66 index
    entries a job at 2,000 jobs, 510 at 20,000, so that a drain took the square of its time."""
    table, jobs = postgres_project.drivers["database"]["table"], 2000
    queue.push(*(testjobs.Record(os.devnull, f"r{i}") for i in range(jobs)))
    with pg() as conn:
        before = _claim_index_reads(conn, table) or 0
        result = postgres_project.cli("work", "--stop-when-empty", timeout=120)
        assert result.returncode == 0, result.stderr
        assert job_count(postgres_project) == 0
        read = []  # a backend's statistics reach the views shortly after it ends
        wait_for(lambda: read.append(_claim_index_reads(conn, table) - before) or read[-1] >= jobs, 10,
                 message=f"index reads not reported: {read[-1:]}")
    assert read[-1] / jobs < 5, f"{read[-1] / jobs:.1f} index entries read a job"


def test_a_push_whose_reply_is_lost_is_sent_again_and_stored_once(postgres_project, tmp_path):
    """A push is one prepared statement; its connection dies after the server committed it and
    before its reply is read: push() reconnects, finds the push's marker, and stores nothing more."""
    driver, path = queue.driver(), str(tmp_path / "record")
    queue.push(testjobs.Record(path, "first"))  # connected: a later loss is a lost connection
    real, lost = driver.dialect.started, []

    def lose_the_reply(conn):
        if not lost:
            lost.append(True)
            wait_for(lambda: job_count(postgres_project) == 2, 10, message="the push did not commit")
            conn.pgconn.finish()  # the connection is gone, its reply with it
        return real(conn)
    driver.dialect.started = lose_the_reply
    try:
        queue.push(testjobs.Record(path, "second"))
    finally:
        del driver.dialect.started
    assert lost and job_count(postgres_project) == 2, "sent again after the lost reply: stored once"


def test_a_push_on_a_connection_the_server_ended_reconnects(postgres_project, tmp_path):
    """The server ends the app's connection (a restart, a pooler, an admin); the next push is of
    a statement not prepared yet on it: it is a lost connection, tried again, not an error."""
    driver, path = queue.driver(), str(tmp_path / "record")
    queue.push(testjobs.Record(path, "first"))
    pid = driver._conn().info.backend_pid
    with pg() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    queue.push(testjobs.Record(path, "second"), testjobs.Record(path, "third"))  # two rows: a new statement
    assert job_count(postgres_project) == 3


def test_a_push_through_a_latin1_connection_keeps_its_text(postgres_project, tmp_path, monkeypatch):
    """A connection whose client encoding is not UTF-8 (PGCLIENTENCODING, a server's default):
    the queue name arrives as written, so a worker finds the job."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    queue._close_drivers()  # connect anew, in that encoding
    queue.push(testjobs.Record(str(tmp_path / "record"), "x"), queue="café")
    assert queue.driver().stats(["café"])["café"]["ready"] == 1


def test_a_start_sent_ahead_that_the_server_rolled_back_is_sent_again(postgres_project, tmp_path, monkeypatch):
    """A start sent ahead fails as a serialization failure (a server whose default isolation is
    REPEATABLE READ, and another transaction that changed the job's row meanwhile): it is sent
    again, so the job's attempt is counted and the job finished before it deleted."""
    monkeypatch.setenv("PGOPTIONS", "-c default_transaction_isolation=repeatable\\ read")
    queue._close_drivers()
    table, path = postgres_project.drivers["database"]["table"], str(tmp_path / "record")
    driver = queue.driver()
    queue.push(testjobs.Record(path, "1"), testjobs.Record(path, "2"))
    driver._local.took = 0.001  # as after quick jobs: the next claim takes both
    first = driver.pop(["default"])
    with pg() as other:
        other.autocommit = False
        held = [row[0] for row in other.execute(f"SELECT id FROM {table} WHERE id <> %s", (first.id,)).fetchall()]
        other.execute(f"UPDATE {table} SET attempts = attempts WHERE id = %s", (held[0],))  # its row, locked
        driver.ack(first)
        second = driver.pop(["default"])  # its start goes ahead, and waits for the lock
        assert second is not None and second.id == held[0]
        other.commit()  # the start fails: the row changed after its snapshot
    driver.stats()  # the next statement reads that failure, and sends the start again
    with pg() as conn:
        rows = conn.execute(f"SELECT id, attempts FROM {table}").fetchall()
    assert rows == [(second.id, 1)], rows
    driver.ack(second)


def test_a_worker_vacuums_its_table_every_ten_thousand_jobs(postgres_project):
    """Each job leaves three dead rows; autovacuum looks once a minute (and is off on some
    servers, this machine's among them): a worker VACUUMs the jobs table itself."""
    table, jobs = postgres_project.drivers["database"]["table"], queue._Postgres.tidy_every + 100

    def vacuums():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()[0]
    queue.push(*(testjobs.Noop() for _ in range(jobs)))
    with pg() as conn:
        before = vacuums()
        result = postgres_project.cli("work", "--stop-when-empty", timeout=180)
        assert result.returncode == 0, result.stderr
        assert job_count(postgres_project) == 0
        wait_for(lambda: vacuums() > before, 10, message="the worker did not vacuum its table")


def test_without_psycopg_the_postgres_dialect_is_one_line_naming_the_install(postgres_project):
    result = subprocess.run([sys.executable, "-S", "queue.py", "status"], cwd=postgres_project.folder,
                            capture_output=True, text=True, timeout=60, env=postgres_project.env())
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "pip install 'psycopg[binary]'" in result.stderr, result.stderr


@restarts_a_server
def test_a_worker_survives_a_postgres_restart(postgres_project, tmp_path, spawn):
    require("PostgreSQL", POSTGRES["host"], POSTGRES["port"])
    path = str(tmp_path / "record")
    names = push_records(path, 200, batch=50)
    worker = spawn(postgres_project, "work")
    wait_worker(worker, lambda: len(values(path)) >= 20, 30, "the worker did not start")
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=120)
    later = [f"after{n}" for n in range(20)]
    wait_for(lambda: _push_when_up(path, later), 60, interval=0.5, message="PostgreSQL did not come back")
    wait_worker(worker, lambda: set(values(path)) >= set(names + later), 90, "not every job ran after the restart")
    stop(worker)
    counts = collections.Counter(values(path))
    assert sum(1 for n in counts.values() if n > 1) <= 1, "at most the job in flight ran twice"


def _push_when_up(path, names):
    try:
        queue.push(*(testjobs.Record(path, name) for name in names))
        return True
    except queue.QueueError:
        return False
