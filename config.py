"""queue.py configuration (optional: without this file the built-in defaults below apply).

The Masonite 4 shape. Every key may be left out; CLI options override these values.
"""
import os

DRIVERS = {
    "default": "database",            # used by push() and `work` when no driver is named
    "database": {
        "connection": "sqlite",       # a name in DATABASES
        "table": "jobs",
        "failed_table": "failed_jobs",  # None: keep no failed jobs (failed() and hooks still run)
        "attempts": 3,                # tries of jobs that do not set `tries`
        "poll": 1,                    # seconds an idle worker waits before looking again
        "tz": "UTC",                  # timestamps are saved and compared in this time zone
        "retry_after": 90,            # seconds before a dead worker's job runs again
        "prefetch": 20,               # most jobs one claim takes (short jobs only); 1: one a claim
    },
    "amqp": {
        "username": "guest", "password": "guest", "host": "localhost", "port": "5672",
        "vhost": "", "channel": "default", "queue": "default",
        "exchange": "",               # "": the default exchange; else a durable direct exchange
        "connection_options": {},     # pika URL options, e.g. {"socket_timeout": 10}
        "heartbeat": 60,              # seconds
        "prefetch": 20,               # unacked messages a worker may hold
        "queue_type": "quorum",       # the broker counts redeliveries; "classic" for existing queues
    },
    "async": {
        "blocking": False,            # True: run each job inside push() (debugging)
        "callback": "handle",         # the method to run
        "mode": "threading",          # or "multiprocess"
        "workers": 1,
    },
}

DATABASES = {
    "sqlite": {"driver": "sqlite", "database": "queue.sqlite3",
               "synchronous": "full"},  # pushed jobs survive a power loss; "normal": only a crash
    "mysql": {"driver": "mysql", "host": "127.0.0.1", "port": 3306, "user": "root",
              "password": "", "database": "test"},           # pip install pymysql
    "postgres": {"driver": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres",
                 "password": "", "database": "test"},        # pip install "psycopg[binary]"
}
# An entry is read only when a driver names it: "connection": "mysql" or "postgres" above.

# The key that signs payloads. Leave it unset on one machine (a random key is kept in .queue.key);
# hosts that share jobs must all set the same secret, e.g. in the environment as QUEUE_KEY.
KEY = os.environ.get("QUEUE_KEY")
