"""queue.py: background jobs for Python applications, in one file.

Copy this file next to your code, write job classes in ``jobs/`` and push them::

    import queue                                  # this file; the stdlib API stays intact
    from jobs.CreateInvoice import CreateInvoice
    queue.push(CreateInvoice(42), delay="10 minutes")

then run ``python queue.py work``. Drivers: ``database`` (SQLite built in, MySQL/MariaDB
through pymysql, PostgreSQL through psycopg), ``amqp`` (RabbitMQ through pika), ``async``
(threads or processes of the pushing program) and ``memory`` (one process). Payloads are
pickles signed with HMAC-SHA256.

The file is named like the standard library's ``queue`` on purpose: it re-exports that
module's whole API as the very same objects, so ``import queue`` keeps working everywhere
in the process (``concurrent.futures``, ``multiprocessing``, ``logging.handlers``, asyncio).

Sections, in order: the standard library's queue, basics and errors, configuration, time,
payloads, jobs, flow control, drivers (the contract, the database driver and its SQL dialects,
async, amqp, memory), worker, operating it, dashboard and metrics, command line.
"""

# The standard library's queue #################################################################
# This file is loaded in one of three ways, and each ends with one `queue` module per process
# that has both APIs, the standard library's names being its very objects:
# - `python queue.py`: this file runs as __main__ and registers itself as `queue` (so that
#   `from queue import Queueable` in a job finds this module, not a second copy) and names
#   everything below `queue`, so that it pickles by that name;
# - `import queue` with the app's folder first on sys.path: the import system registers it;
# - adopted: a launcher (gunicorn, uvicorn, pytest, ...) imported the standard library's queue
#   first, so `import queue` gave the app that module; the app's jobs/__init__.py then executes
#   this file (see JOBS_INIT). This file keeps the standard library's module registered, the
#   object every holder already has, and gives it this file's names through a module
#   __getattr__ (PEP 562): `queue.push` and `from queue import Queueable` work on it.
import os
import sys
import threading

_held = sys.modules.get("queue")
if __name__ == "__main__" and getattr(sys.modules.get("__main__"), "__dict__", None) is not globals():
    # run in a dict of a runner's (`python -m cProfile queue.py work`): no module holds these
    # names, so a job's `from queue import Queueable` could not find them; load the file as a
    # module named queue and run that
    import importlib.util
    _spec = importlib.util.spec_from_file_location("queue", os.path.abspath(__file__))
    sys.modules["queue"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["queue"])
    sys.exit(sys.modules["queue"].main())
if __name__ == "__main__":
    sys.modules["queue"] = sys.modules["__main__"]
    __name__ = "queue"
_SCRIPT = sys.modules.get("queue") is sys.modules.get("__main__") and __name__ == "queue"
_ADOPTED = not _SCRIPT and getattr(sys.modules.get("queue"), "__dict__", None) is not globals()


def _load_stdlib_queue():
    """The standard library's queue module: the one already loaded, else a fresh load from the
    standard library's own folder (not registered: this file is `queue`)."""
    if _held is not None and vars(_held) is not globals() and hasattr(_held, "Queue"):
        return _held
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("queue", [os.path.dirname(os.__file__)])
    if spec is None:  # pragma: no cover - an unusual layout: search sys.path without our folder
        here = os.path.dirname(os.path.abspath(__file__))
        spec = importlib.machinery.PathFinder.find_spec(
            "queue", [p for p in sys.path if os.path.abspath(p or os.curdir) != here])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stdlib_queue = _load_stdlib_queue()
for _name in _stdlib_queue.__all__:  # Empty, Full, Queue, SimpleQueue, LifoQueue, PriorityQueue, ShutDown
    globals()[_name] = getattr(_stdlib_queue, _name)
del _name


def _from_queue_py(name):
    """Module __getattr__ of an adopted standard-library `queue`: this file's names."""
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module 'queue' has no attribute {name!r}") from None


if _ADOPTED:
    sys.modules["queue"] = _stdlib_queue
    _stdlib_queue.__getattr__ = _from_queue_py
    _stdlib_queue.__queue_py__ = __file__


class _Lazy:
    """A module imported on first use, so that `import queue` stays as cheap as the standard
    library's; on first use it puts the module (or make(module)) in its global's place."""

    def __init__(self, alias, module, make=None):
        self._alias, self._module, self._make = alias, module, make

    def __getattr__(self, attr):
        value = self.__dict__.get("_value")
        if value is None:  # resolved once: a name imported before its first use keeps this proxy
            __import__(self._module)
            value = sys.modules[self._module]
            value = self._value = self._make(value) if self._make else value
            globals()[self._alias] = value
        return getattr(value, attr)


def _logger(logging):
    logger = logging.getLogger("queue")
    logger.addHandler(logging.NullHandler())
    return logger


# Basics and errors ############################################################################
import time

ast = _Lazy("ast", "ast")
copy = _Lazy("copy", "copy")
atexit = _Lazy("atexit", "atexit")
bisect = _Lazy("bisect", "bisect")
collections = _Lazy("collections", "collections")
_dt = _Lazy("_dt", "datetime")
heapq = _Lazy("heapq", "heapq")
importlib = _Lazy("importlib", "importlib.util", lambda m: sys.modules["importlib"])
json = _Lazy("json", "json")
logging = _Lazy("logging", "logging")
math = _Lazy("math", "math")
pickle = _Lazy("pickle", "pickle")
re = _Lazy("re", "re")
secrets = _Lazy("secrets", "secrets")
signal = _Lazy("signal", "signal")
traceback = _Lazy("traceback", "traceback")
log = _Lazy("log", "logging", _logger)

__version__ = "1.2.0"
__all__ = list(_stdlib_queue.__all__) + [
    "Queueable", "push", "chain", "before", "after", "failing", "looping", "configure",
    "driver", "Worker", "Message", "Driver", "FailedStore", "StateStore", "Settings", "DatabaseDriver", "AsyncDriver", "AMQPDriver",
    "MemoryDriver", "RedisDriver", "SyncDriver", "NullDriver", "Cron", "schedule", "scheduled", "Clock", "QueueError", "ConfigError", "ConnectionFailed", "MissingTable", "BadPayload", "CodeMissing",
    "JobTimeout", "MaxAttemptsExceeded", "JobFailed", "status", "failed_jobs", "retry", "forget", "flush", "clear",
    "restart", "run_now", "call", "task", "released", "stopping", "throttle", "funnel", "RateLimited",
    "WithoutOverlapping", "ThrottlesExceptions", "pause", "resume", "paused", "workers", "metrics",
    "dashboard_state", "serve_dashboard", "main",
]

HERE = os.path.dirname(os.path.abspath(__file__))


class QueueError(Exception):
    """An expected error of queue.py: its message is one line for the user."""


class ConfigError(QueueError):
    """A configuration value is wrong; the message names the key."""


class ConnectionFailed(QueueError):
    """A server (database or broker) cannot be reached."""


class MissingTable(QueueError):
    """A table the driver needs does not exist; the message names the command to create it."""


class BadPayload(QueueError):
    """A payload cannot be turned back into a job (bad signature, malformed, unknown class)."""


class CodeMissing(BadPayload):
    """A job's class (or something it refers to) cannot be imported by this worker: during a
    rolling deploy, a worker may run older code than the app that pushed the job. Unlike the
    other bad payloads it is tried again, with the job's tries and backoff."""


class JobTimeout(BaseException):
    """Raised inside a job that ran past its timeout (a BaseException, so `except Exception` in a
    job does not swallow it)."""

    def __init__(self, *args):
        super().__init__(*(args or ("the job ran past its timeout",)))


class MaxAttemptsExceeded(QueueError):
    """A job was reserved more often than it may be tried (a previous attempt died with its worker)."""


class _ColdShutdown(BaseException):
    """Raised inside a job by a second SIGTERM/SIGINT: the job is put back and the worker exits."""


def _import_optional(module, extra, package=None):
    """Import an optional package, or fail with one line naming the pip install to run. (A driver
    asks for its client's module on every call: one already imported is a dict lookup. One that
    another thread is still importing is in sys.modules half made: import_module waits for it.)"""
    found = sys.modules.get(module)
    if found is not None and not getattr(getattr(found, "__spec__", None), "_initializing", False):
        return found
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", module) != module:
            raise
        raise QueueError(f"the {extra} driver needs {module}: pip install '{package or module}'  "
                         f"(or: pip install '.[{extra}]')") from None


# Configuration ################################################################################
# Each driver class (and each SQL dialect) declares the keys of its section: `defaults` and
# `kinds`. A kind checks one value: it returns None when the value is right, else what the
# value must be, for a one-line error that names the key.
_MAX_TABLE = 40      # MySQL names are at most 64 characters, and an index name adds 19
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,%d}$" % (_MAX_TABLE - 1)
_MAX_QUEUE = 200     # bytes of UTF-8: room for the suffixes a driver adds (255 in AMQP)
_MAX_NAME = 150      # characters of a job class name: room for "metric:<name>:le:12" in a 255-character key


def _check_queue_name(name, where="queue", error=None, _good=set()):
    """Refuse a queue name that a backend could not keep exactly as written."""
    if type(name) is str and name in _good:
        return name
    error = error or QueueError
    if not isinstance(name, str) or not name:
        raise error(f"{where}: a queue name is a non-empty string, not {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_QUEUE:
        raise error(f"{where}: queue name {name[:40]!r}... is longer than {_MAX_QUEUE} bytes")
    if name != name.strip() or not name.isprintable():
        raise error(f"{where}: queue name {name!r} has surrounding spaces or control characters")
    if len(_good) < 1000:
        _good.add(name)
    return name


def _kind(test, must):
    """A kind of configuration value: test(value) says whether it is right; `must` says what it must be."""
    def check(value):
        try:
            return None if test(value) else must
        except Exception:
            return must
    check.must = must
    return check


def _choice(*options):
    return _kind(lambda v: isinstance(v, str) and v in options, f"one of {', '.join(map(repr, options))}")


_string = _kind(lambda v: isinstance(v, str), "a string")
_maybe_string = _kind(lambda v: v is None or isinstance(v, str), "None or a string")
_flag = _kind(lambda v: isinstance(v, bool), "True or False")
_mapping = _kind(lambda v: isinstance(v, dict), "a dict")
_whole = _kind(lambda v: type(v) is int and v >= 1, "a whole number of at least 1")
_seconds = _kind(lambda v: _is_number(v) and 0 <= v <= _MAX_DELAY, "a number of seconds from 0 to 100 years")
_lease = _kind(lambda v: _is_number(v) and _MIN_LEASE <= v <= _MAX_DELAY,  # shorter: a renewal could come too late
               "a number of seconds from 1 to 100 years (below 1 s, two workers could run one job at once)")
_MIN_LEASE = 1
_port = _kind(lambda v: not isinstance(v, bool) and str(v).isdigit() and 0 < int(v) < 65536, "a port number")
_table = _kind(lambda v: re.match(_IDENT, v), f"a plain table name of at most {_MAX_TABLE} characters (letters, digits, _)")
_maybe_table = _kind(lambda v: v is None or re.match(_IDENT, v), f"None or {_table.must}")
_zone = _kind(lambda v: _timezone(v), "a time zone name such as 'UTC' or 'Europe/Paris'")
_queue_kind = _kind(lambda v: _check_queue_name(v), f"a queue name of at most {_MAX_QUEUE} bytes, without surrounding spaces")


class Settings:
    """The checks of a DRIVERS section's values, for a driver's `kinds` (README: Writing a
    driver): each returns None for a right value, else what the value must be (a one-line error
    names the key). Settings.kind(test, must) makes another."""

    kind, choice = staticmethod(_kind), staticmethod(_choice)
    string, maybe_string, flag, mapping, whole = _string, _maybe_string, _flag, _mapping, _whole
    seconds, lease, port, table, zone, queue = _seconds, _lease, _port, _table, _zone, _queue_kind


def _options(where, given, defaults, kinds):
    """A section of the configuration: its given keys over the defaults, each known and of its kind."""
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a dict, not {given!r}")
    for key, value in given.items():
        if key not in kinds and key not in defaults:
            import difflib
            names = sorted(set(kinds) | set(defaults))
            near = difflib.get_close_matches(str(key), names, 1, 0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(names)}"
            raise ConfigError(f"{where}[{key!r}]: unknown key ({hint})")
        problem = kinds[key](value) if key in kinds else None
        if problem:
            raise ConfigError(f"{where}[{key!r}] must be {problem}, not {value!r}")
    return dict(defaults, **given)


class Config:
    """Validated configuration: the Masonite 4 shape (DRIVERS, DATABASES) over the defaults that
    the driver and dialect classes declare. Only what queue.py reads is validated: the DRIVERS
    sections, and a DATABASES entry when a driver uses it; the app's own settings in the same
    file are left alone."""

    def __init__(self, drivers=None, databases=None, key=None, path=None, jobs="jobs"):
        for name, value in (("DRIVERS", drivers), ("DATABASES", databases)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{name} must be a dict, not {value!r}")
        if key is not None and not (isinstance(key, (str, bytes)) and len(key) >= 16):
            raise ConfigError("KEY must be a string of at least 16 characters (or None for the key file)")
        if not isinstance(jobs, str) or not re.match(r"^[A-Za-z_]\w*$", jobs):
            raise ConfigError(f"JOBS must be the name of a package beside the config file, not {jobs!r}")
        self.path = path
        self.folder = os.path.dirname(path) if path else HERE
        self.key = key
        self.jobs = jobs
        self.signing_key = None  # resolved on first use (see _signing_key)
        drivers = dict(drivers or {})
        self.default = drivers.pop("default", "database")
        known = Driver.registry
        if not isinstance(self.default, str) or self.default not in known:
            raise ConfigError(f"DRIVERS['default'] must be one of {sorted(known)}, not {self.default!r}")
        for name in drivers:
            if name not in known:
                raise ConfigError(f"DRIVERS[{name!r}]: unknown driver (known: {', '.join(sorted(known))})")
        self.drivers = {name: _options(f"DRIVERS[{name!r}]", drivers.get(name, {}), cls.defaults, cls.kinds)
                        for name, cls in known.items()}
        self.given_databases = dict(databases or {})
        self.databases = {}
        self.database(self.drivers["database"]["connection"], "DRIVERS['database']['connection']")

    def driver(self, name=None):
        """Return (name, options) of a driver; name None means DRIVERS['default']."""
        name = name or self.default
        if name not in self.drivers:
            raise ConfigError(f"unknown driver {name!r} (known: {', '.join(sorted(self.drivers))})")
        return name, self.drivers[name]

    def database(self, name, where="--connection"):
        """Return the validated options of DATABASES[name] (a Django entry is translated). A
        connection named like a dialect (`sqlite`, `mysql`) needs no entry: its defaults serve."""
        if name not in self.databases:
            if name in self.given_databases:
                opts = self.given_databases[name]
            elif name in _Dialect.registry:
                opts = {"driver": name}
            else:
                known = sorted(set(self.given_databases) | set(_Dialect.registry))
                raise ConfigError(f"{where}: no connection {name!r} in DATABASES (known: {', '.join(known)})")
            self.databases[name] = _database_options(f"DATABASES[{name!r}]", opts)
        return self.databases[name]


_DJANGO_ENGINES = {"sqlite3": "sqlite", "mysql": "mysql"}
_DJANGO_KEYS = {"NAME": "database", "USER": "user", "PASSWORD": "password", "HOST": "host", "PORT": "port"}


def _database_options(where, opts):
    """A DATABASES entry over the defaults of its dialect, checked; a Django entry (ENGINE,
    NAME, HOST, ... and OPTIONS) is read as it is."""
    if isinstance(opts, dict) and "ENGINE" in opts:
        engine = str(opts["ENGINE"]).rsplit(".", 1)[-1]
        if engine not in _DJANGO_ENGINES:
            raise ConfigError(f"{where}['ENGINE'] {opts['ENGINE']!r}: queue.py speaks sqlite3 and mysql")
        dialect = _Dialect.registry[_DJANGO_ENGINES[engine]]
        translated = {"driver": dialect.name}
        translated.update((ours, opts[theirs]) for theirs, ours in _DJANGO_KEYS.items() if opts.get(theirs) not in (None, ""))
        translated.update((k, v) for k, v in (opts.get("OPTIONS") or {}).items() if k in dialect.kinds)
        if str(translated.get("port", "")).isdigit():
            translated["port"] = int(translated["port"])
        opts = translated
    if not isinstance(opts, dict):
        raise ConfigError(f"{where} must be a dict, not {opts!r}")
    name = opts.get("driver")
    if not isinstance(name, str) or name not in _Dialect.registry:
        raise ConfigError(f"{where}['driver'] must be one of {', '.join(map(repr, sorted(_Dialect.registry)))}, "
                          f"not {name!r}")
    dialect = _Dialect.registry[name]
    opts = {k: v for k, v in opts.items() if k not in _MASONITE_ORM_KEYS}  # Masonite ORM's own: not ours to read
    return _options(where, opts, dialect.defaults, dialect.kinds)


_MASONITE_ORM_KEYS = ("prefix", "log_queries", "options", "grammar")


_config = None
_config_lock = threading.RLock()


def _find_config_file(path=None):
    """The config file in use: --config, else $QUEUE_CONFIG, else config.py beside queue.py."""
    path = path or os.environ.get("QUEUE_CONFIG")
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        return os.path.abspath(path)
    path = os.path.join(HERE, "config.py")
    return path if os.path.isfile(path) else None


def configure(path=None, **settings):
    """Load configuration: from a file (path, $QUEUE_CONFIG or config.py beside queue.py) or from
    keyword arguments DRIVERS=..., DATABASES=..., KEY=... (used as given, no file is read).
    Closes the drivers built from the previous configuration."""
    global _config
    with _config_lock:
        if settings:
            config = Config(settings.get("DRIVERS"), settings.get("DATABASES"), settings.get("KEY"), path,
                            settings.get("JOBS", "jobs"))
        else:
            path = _find_config_file(path)
            values = _read_config_file(path) if path else {}
            config = Config(values.get("DRIVERS"), values.get("DATABASES"), values.get("KEY"), path,
                            values.get("JOBS", "jobs"))
        _close_drivers()
        _config = config
        if config.folder not in sys.path:
            sys.path.insert(0, config.folder)
        return config


def _read_config_file(path):
    """Execute a config file and return its upper-case names."""
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # config.py may import the app's modules
    spec = importlib.util.spec_from_file_location("_queue_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except QueueError:
        raise
    except BaseException as exc:
        raise ConfigError(f"{path} cannot be executed: {type(exc).__name__}: {exc} (if it is your app's "
                          "own config.py, give queue.py a file of its own: QUEUE_CONFIG=path or --config)") from None
    _warn_misspelled(path, module)
    return {k: getattr(module, k) for k in ("DRIVERS", "DATABASES", "KEY", "JOBS") if hasattr(module, k)}


_MISSPELLED = {"DRIVERS": ("DRIVER", "drivers", "Drivers", "CONNECTIONS", "connections", "QUEUE", "QUEUES"),
               "DATABASES": ("DATABASE", "databases", "Databases", "DB", "DBS")}


def _warn_misspelled(path, module):
    """One warning line for a config file that names its settings in a way queue.py does not read
    (it would run silently on the defaults: the database driver on SQLite)."""
    for right, wrongs in _MISSPELLED.items():
        found = [name for name in wrongs if hasattr(module, name)]
        if found and not hasattr(module, right):
            log.warning("%s defines %s but no %s: queue.py reads DRIVERS and DATABASES (upper case), so the "
                        "defaults are used", path, found[0], right)


def _get_config():
    """The configuration in use, loaded on first use."""
    if _config is None:
        configure()
    return _config


# Time #########################################################################################
_MAX_DELAY = 100 * 365 * 86400
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_HUMAN = r"(?i)^\s*(\d+(?:\.\d+)?)\s*(second|minute|hour|day|week)s?\s*$"


def _timezone(name, where="tz"):
    """Return a tzinfo for a configured zone name."""
    if name.upper() == "UTC":
        return _dt.timezone.utc
    try:
        import zoneinfo
        return zoneinfo.ZoneInfo(name)
    except Exception:
        raise ConfigError(f"{where}: unknown time zone {name!r}") from None


def seconds(delay, tz=None):
    """Turn a delay (seconds, timedelta, datetime, or a string like "10 minutes") into seconds >= 0."""
    if delay is None:
        return 0.0
    if isinstance(delay, bool):
        raise QueueError(f"delay must be seconds, a timedelta, a datetime or a string like '10 minutes', not {delay!r}")
    if isinstance(delay, (int, float)):
        value = float(delay)
    elif isinstance(delay, _dt.timedelta):
        value = delay.total_seconds()
    elif isinstance(delay, _dt.datetime):
        when = delay if delay.tzinfo else delay.replace(tzinfo=tz or _dt.timezone.utc)
        value = (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds()
    elif isinstance(delay, str):
        match = re.match(_HUMAN, delay)
        if not match:
            if delay.strip().lower() == "now":
                return 0.0
            raise QueueError(f"delay {delay!r}: write it like '30 seconds', '10 minutes', '2 hours' or '1 day'")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise QueueError(f"delay must be seconds, a timedelta, a datetime or a string like '10 minutes', not {delay!r}")
    if not math.isfinite(value) or value > _MAX_DELAY:
        raise QueueError(f"delay must be a finite number of seconds up to 100 years, not {delay!r}")
    return max(0.0, value)


class Clock:
    """The one clock of a driver and its workers (injectable, like sched's timefunc/delayfunc).

    Timestamps are UTC whatever `tz` says (`tz` only reads naive datetimes), as strings
    'YYYY-MM-DD HH:MM:SS.ffffff' that sort like times, so daylight-saving changes never move a
    job. A server database sets the clock to the server's time (sync), which then advances on
    this host's monotonic clock: hosts whose clocks disagree, or one whose clock is stepped,
    still agree on every reservation."""

    def __init__(self, tz="UTC", timefunc=None, monotonic=None, sleep=None):
        self.tz = _timezone(tz)
        self.timefunc = timefunc or time.time
        self.monotonic = monotonic or _uptime
        self.sleep = sleep or time.sleep
        self._anchor = None     # (server time, monotonic time) of the last sync
        self.synced = None      # monotonic time of the last sync
        self.offset = 0.0       # seconds added by advance()

    def time(self):
        """Seconds since the epoch: the server's once synced, else this host's."""
        anchor = self._anchor
        now = self.timefunc() if anchor is None else anchor[0] + self.monotonic() - anchor[1]
        return now + self.offset

    def advance(self, seconds):
        """Move this clock forward: a simulation, or a test that lets a reservation lapse now."""
        self.offset += seconds

    def sync(self, server_time, sent, received):
        """Take a server's time, read between monotonic times sent and received."""
        self._anchor = (server_time + (received - sent) / 2, received)
        self.synced = received

    def now(self, plus=0.0, *more):
        """Now (+ plus seconds) as a UTC timestamp; with more offsets, a tuple of timestamps."""
        base = self.time()
        if not more:
            return _stamp(base + plus)
        return tuple([_stamp(base + s) for s in (plus,) + more])


def _uptime():
    """Seconds since boot, a suspended machine's time included (Linux's CLOCK_BOOTTIME), else
    the monotonic clock: what a synced clock advances on."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _epoch(stamp):
    """Seconds since the epoch of a UTC timestamp string (or datetime) as the database gives it back."""
    if not isinstance(stamp, str):
        stamp = str(stamp)
    whole, _, fraction = stamp.partition(".")
    import calendar
    return calendar.timegm(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + (float("0." + fraction) if fraction else 0.0)


def _stamp(epoch, _seconds={}):
    """A UTC timestamp string of epoch seconds (the date and time of the last few seconds are kept:
    a claim asks for now and now + retry_after, in turn)."""
    whole = int(epoch // 1)
    text = _seconds.get(whole)
    if text is None:
        if len(_seconds) > 16:
            _seconds.clear()
        text = _seconds[whole] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))
    return "%s.%06d" % (text, min(999999, int((epoch - whole) * 1e6 + 0.5)))


# Payloads #####################################################################################
# A payload is b"Q2" + HMAC-SHA256(key, signed) + signed, where signed is a 4-byte length, a
# JSON header that the worker trusts without unpickling anything (the job's class name and
# queue, its tries, timeout, backoff and retry_until deadline, read at push) and the pickle of
# {"v": 2, "job": <job>, "chain": [<job>, ...]}. A payload whose signature fails is never
# unpickled; one whose header names another queue or class than the row or message that
# carries it (a replayed or moved payload) is failed unpickled. b"Q1" payloads of queue.py 1.0
# (no header: MAC + pickle of {"v": 1, "job", "chain", "until"}) are still read.
_MAGIC = b"Q2"
_MAC_SIZE = 32
_PICKLE_PROTOCOL = 4  # readable by every supported Python


def _signing_key():
    """The signing key: $QUEUE_KEY, else KEY in config, else a random key kept in .queue.key beside
    config.py (or queue.py), created on first use with mode 0600. Hosts that share jobs must share
    the key: set QUEUE_KEY (or KEY) to the same secret on every host."""
    config = _get_config()
    if config.signing_key is None:
        config.signing_key = _read_signing_key(config)
    return config.signing_key


def _read_signing_key(config):
    key = os.environ.get("QUEUE_KEY") or config.key
    if key and len(key) < 16:
        raise ConfigError("QUEUE_KEY must be at least 16 characters")
    if key:
        return key.encode() if isinstance(key, str) else bytes(key)
    path = os.path.join(config.folder, ".queue.key")
    with _config_lock:  # threads of one process create it once; processes race through link()
        try:
            key = _read_key_file(path)
        except FileNotFoundError:
            key = _create_key_file(path)
    if len(key) < 16:
        raise ConfigError(f"signing key file {path} is too short; delete it or set QUEUE_KEY")
    return key


def _read_key_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key file {path}: {exc.strerror}; fix it or set QUEUE_KEY") from None


def _create_key_file(path):
    """Write a new random key to path, atomically: the first process to link it wins."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot create the signing key file {path}: {exc.strerror}; set QUEUE_KEY") from None
    return _read_key_file(path)


def _mac(data, _pads={}):
    """HMAC-SHA256 of data under the signing key (RFC 2104). Below _SMALL bytes: the key's pads
    hashed once, on CPython's own SHA-256 where it has one (a worker that sat idle checks a
    payload in a third of the time OpenSSL's one-shot HMAC takes, and never loads OpenSSL);
    from _SMALL up, hmac.digest, whose SHA-256 is faster per byte (4 KB: 12 us against 36).
    The same bytes either way; benchmarks/mac.py measures both."""
    key = _signing_key()
    if len(data) >= _SMALL:
        import hmac
        return hmac.digest(key, data, "sha256")
    pads = _pads.get(key)
    if pads is None:
        try:
            from _sha256 import sha256  # Python 3.9 to 3.11
        except ImportError:
            try:
                from _sha2 import sha256  # 3.12+
            except ImportError:
                from hashlib import sha256
        block = (sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        pads = (sha256(block.translate(_IPAD)), sha256(block.translate(_OPAD)))
        _pads.clear()
        _pads[key] = pads
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


_SMALL = 512  # bytes: where OpenSSL's HMAC overtakes the pads on CPython's SHA-256 (benchmarks/mac.py)
_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))

try:  # hmac.compare_digest, constant-time, without loading OpenSSL (3 ms of a worker's start-up)
    from _operator import _compare_digest as _same
except ImportError:  # pragma: no cover - not CPython
    from hmac import compare_digest as _same


def _sign(signed, magic=_MAGIC):
    return magic + _mac(signed) + signed


def pack(job, chain=None, until=None, queue=None, chain_queue=None, lock=None, ready=None):
    """Sign and serialize a job (and the rest of its chain) into a payload for `queue`. The header
    is JSON text: the job's settings and name (checked and encoded once per kind of job), its
    queue, its retry_until deadline, when it was due (the worker reports how long it waited), the
    queue of its chain and the unique lock it holds while queued or running."""
    encode, string = _json()[0].encode, json.encoder.encode_basestring_ascii
    head = [_header_start(job), ',"queue":', string(queue) if type(queue) is str else encode(queue),
            ',"until":', "null" if until is None else encode(until)]
    if ready is not None:
        head += [',"ready":', float.__repr__(round(float(ready), 3))]
    if chain_queue is not None:
        head += [',"chain_queue":', encode(chain_queue)]
    if lock is not None:
        head += [',"unique":', encode(list(lock[:2]))]
    head.append("}")
    try:
        body = pickle.dumps({"v": 2, "job": job, "chain": list(chain or ())}, _PICKLE_PROTOCOL)
    except Exception as exc:
        raise QueueError(f"cannot push {_job_name(job)}: it cannot be pickled ({type(exc).__name__}: "
                         f"{_text(exc)}); keep only plain data on the job") from None
    if b"__main__" in body:
        _refuse_main(job, body)
    return _seal("".join(head), body)


def _header_start(job, _known={}):
    """The JSON text that opens a job's header, '{"tries":...,"name":"..."': its settings
    (_settings checks them) and name, made once per class, name and settings, each value taken
    with its type (so that True is never taken for 1)."""
    backoff = getattr(job, "backoff", 0) or 0
    steps = tuple([(type(b), b) for b in backoff]) if isinstance(backoff, (list, tuple)) else (type(backoff), backoff)
    tries, timeout, most = getattr(job, "tries", None), getattr(job, "timeout", None), getattr(job, "max_exceptions", None)
    kind = type(job)  # by name: a cache that held the class would keep its module alive into shutdown
    key = (kind.__module__, kind.__qualname__, _job_name(job), steps, type(tries), tries, type(timeout), timeout,
           type(most), most)
    try:
        return _known[key]
    except (KeyError, TypeError):  # new, or a value that cannot be a key (it fails its check)
        start = _json()[0].encode(dict(_settings(job), name=_job_name(job)))[:-1]
    if len(_known) > 256:
        _known.clear()
    _known[key] = start
    return start


def _seal(header, body):
    """Sign a header (a dict, or its JSON text) and a pickled body into a Q2 payload."""
    head = (header if isinstance(header, str) else _json()[0].encode(header)).encode()
    return _sign(len(head).to_bytes(4, "big") + head + body)


def readdress(payload, queue):
    """The payload signed again for another queue (`retry --queue`), unpickling nothing."""
    header, body = open_payload(payload)
    return _seal(dict(header, queue=queue), body) if header is not None else payload


def _refuse_main(job, body):
    """Refuse a payload that refers to a class or function of __main__: no worker can import it.
    Only global references count (GLOBAL, or STACK_GLOBAL after its module and name strings,
    which may come from the memo), not data that happens to say "__main__"."""
    import pickletools
    memo, pushed = {}, []
    for op, arg, _ in pickletools.genops(body):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif op.name == "MEMOIZE" and pushed:
            memo[len(memo)] = pushed[-1]
        elif op.name == "STACK_GLOBAL" and len(pushed) >= 2 and pushed[-2] == "__main__":
            name = pushed[-1]
            break
        elif op.name == "GLOBAL" and str(arg).split(" ")[0] == "__main__":
            name = str(arg).split(" ")[-1]
            break
    else:
        return
    raise QueueError(f"cannot push {_job_name(job)}: it refers to {name!r} defined in __main__, "
                     "which a worker cannot import; move it into a module of jobs/")


def open_payload(payload):
    """Verify a payload's signature; return (header, pickled body), header None for a Q1 payload.
    Raises BadPayload, saying why, for anything else. Nothing is unpickled."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise BadPayload(f"malformed payload: {type(payload).__name__}, not bytes")
    if type(payload) is not bytes:
        payload = bytes(payload)
    magic = payload[:2]
    if len(payload) < len(_MAGIC) + _MAC_SIZE or magic not in (b"Q1", b"Q2"):
        raise BadPayload("malformed payload: not a queue.py payload (no Q2 or Q1 header)")
    mac, signed = payload[2:2 + _MAC_SIZE], payload[2 + _MAC_SIZE:]
    if not _same(mac, _mac(signed)):
        raise BadPayload("signature mismatch: the payload was tampered with or signed with another key "
                         "(hosts sharing jobs must share QUEUE_KEY); it was not unpickled")
    if magic == b"Q1":
        return None, signed
    size = int.from_bytes(signed[:4], "big")
    try:
        header, end = _json()[1].raw_decode(signed[4:4 + size].decode())
        assert isinstance(header, dict) and "name" in header and end == size
    except Exception:
        raise BadPayload("malformed payload: its signed header is not readable") from None
    return header, signed[4 + size:]


def _json(_made=[]):
    """(encoder, decoder) of payload headers, made once: json.dumps and json.loads make a new
    encoder, or run two regexes, for every call."""
    if not _made:
        _made[:] = [json.JSONEncoder(separators=(",", ":")), json.JSONDecoder()]
    return _made


def load(body):
    """Unpickle a verified body into its envelope {"job", "chain", ...}; BadPayload if it cannot."""
    try:
        envelope = pickle.loads(body)
    except (_ColdShutdown, JobTimeout):
        raise  # the worker's own: it stops, or the attempt ran out of time
    except BaseException as exc:  # __setstate__ and friends are user code: even SystemExit
        if isinstance(exc, ImportError) or isinstance(exc, AttributeError) and str(exc).startswith("Can't get"):
            raise CodeMissing(f"cannot load the job: {type(exc).__name__}: {_text(exc)} (this worker may run "
                              "older code than the app that pushed it: deploy the new code to the workers and "
                              "restart them; the job is tried again)") from None
        raise BadPayload(f"cannot load the job: {type(exc).__name__}: {_text(exc)}") from None
    if not isinstance(envelope, dict) or envelope.get("v") not in (1, 2) or "job" not in envelope:
        raise BadPayload("malformed payload: unknown envelope version")
    return envelope


def unpack(payload):
    """Verify and load a payload: {"job", "chain", "until", "header"}; BadPayload, saying why."""
    header, body = open_payload(payload)
    envelope = load(body)
    envelope["header"] = header
    if header is not None:
        envelope["until"] = header.get("until")
    return envelope


def _as_bytes(value):
    """A payload column's value as bytes, whatever was stored in it (unpack() judges the bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return b"" if value is None else str(value).encode("utf-8", "replace")


def _job_name(job):
    return getattr(job, "_queue_job_name", None) or type(job).__qualname__


# Jobs #########################################################################################
class Queueable:
    """Base class of jobs: override handle(); set the class attributes to change the defaults.
    Inside handle(), a job can steer itself (Laravel's InteractsWithQueue): release(), fail(),
    delete(), and read `attempts` and `job_id`."""

    tries = None           # attempts before the job is failed (None: the driver's `attempts`)
    timeout = None         # seconds one attempt may run (None: the worker's --timeout, else no limit)
    backoff = 0            # seconds before attempt 2, 3, ... (a number, or a list; its last value repeats)
    queue = None           # default queue of this class (None: the driver's `queue`)
    delay = None           # default delay of this class's pushes (seconds, timedelta, '10 minutes')
    max_exceptions = None  # fail after this many attempts that raised (releases do not count)
    unique_for = None      # seconds: while one is queued or running, another push of it stores nothing
    attempts = 0           # set by the worker: the number of this attempt (1 on the first run)
    job_id = None          # set by the worker: the id the driver gave the job

    def handle(self):
        """Do the job's work."""
        raise NotImplementedError(f"{type(self).__qualname__}.handle() is not written yet")

    def failed(self, exc):
        """Called once, with the last exception, when the job is failed for good."""

    def retry_until(self):
        """Return a deadline (datetime, timedelta or seconds from now) to retry until, instead of `tries`."""
        return None

    def middleware(self):
        """Job middleware, run around each attempt: queue.RateLimited, WithoutOverlapping, ThrottlesExceptions."""
        return []

    def unique_id(self):
        """What makes two jobs of this class the same job, for unique_for (default: the class alone)."""
        return ""

    def release(self, delay=0):
        """Put this job back on its queue, to run again after `delay` (any form push() takes),
        when handle() returns; this attempt counts."""
        self._queue_steer = ("release", delay)

    def fail(self, exc=None):
        """Fail this job for good when handle() returns: failed() runs once, it goes to the failed store."""
        self._queue_steer = ("fail", exc)

    def delete(self):
        """End this job when handle() returns, without running it again and without failing (a chain stops)."""
        self._queue_steer = ("delete", None)

    def __repr__(self):
        return f"<{type(self).__qualname__} job>"


_hooks = {"before": [], "after": [], "failing": [], "looping": [], "released": [], "stopping": []}


def before(fn):
    """Register fn(job), called in the worker before each job runs."""
    _hooks["before"].append(fn)
    return fn


def after(fn):
    """Register fn(job), called in the worker after each job succeeded."""
    _hooks["after"].append(fn)
    return fn


def failing(fn):
    """Register fn(job, exc), called when a job is failed for good."""
    _hooks["failing"].append(fn)
    return fn


def released(fn):
    """Register fn(job, delay), called when a job is put back on its queue (a retry, or release())."""
    _hooks["released"].append(fn)
    return fn


def stopping(fn):
    """Register fn(reason), called when a worker stops ('signal SIGTERM', 'restart', 'max-jobs',
    'max-time', 'memory', 'empty', ...)."""
    _hooks["stopping"].append(fn)
    return fn


def looping(fn):
    """Register fn(), called before the worker looks for its next job; returning False pauses it."""
    _hooks["looping"].append(fn)
    return fn


def _call_hooks(kind, *args):
    """Run the hooks of one kind; a failing hook is logged, never fatal. Returns their results."""
    results = []
    for fn in _hooks[kind]:
        result, exc, text = _guard(fn, *args)
        if exc is not None:
            log.error("%s hook %s failed: %s", kind, getattr(fn, "__qualname__", "?"), text)
        results.append(result)
    return results


def _guard(fn, *args):
    """The one guard around user code (handle, failed, hooks, unpickling): returns (result, None,
    None) or (None, exception, traceback text). Whatever the code raises, SystemExit and
    KeyboardInterrupt included, is its failure, never the caller's; only a worker's own cold
    shutdown goes through. A process that the code forked never returns from here: it exits,
    so that it cannot go on as a second worker on its parent's connections."""
    pid = os.getpid()
    exc = None
    try:
        return fn(*args), None, None
    except _ColdShutdown:
        raise
    except BaseException as error:
        exc = error
        return None, error, _format(error)
    finally:
        if os.getpid() != pid:
            _flush_and_exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else int(exc is not None))


def _flush_and_exit(code):
    """Flush what the standard streams hold (whatever a job did to them), then end the process
    at once with `code`: no exit function, no waiting for threads."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


def _text(value):
    """str(value) that never raises and always encodes as UTF-8 (lone surrogates are escaped)."""
    try:
        text = str(value)
    except BaseException:
        text = f"<{type(value).__name__} whose str() failed>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _format(exc):
    """An exception with its full traceback, as UTF-8-safe text."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        text = f"{type(exc).__name__}: {_text(exc)}\n(its traceback could not be formatted)\n"
    return _text(text)


def _summary(exc):
    """The first line of an exception, with its type, at most 500 characters, its control
    characters escaped (a terminal never gets an escape sequence from it): what `failed` and
    the logs show."""
    lines = _text(exc)[:2000].strip().splitlines()
    return _printable(f"{type(exc).__name__}: {lines[0][:500]}" if lines else type(exc).__name__)


_CONTROLS = {c: f"\\x{c:02x}" for c in list(range(32)) + list(range(127, 160)) if c != 9}


def _printable(text):
    """Text with its control characters (ESC, NUL, newlines, ...) written as \\xNN."""
    return text.translate(_CONTROLS)


_MAX_RECORD = 64 * 1024  # characters of an exception and its traceback kept in the failed store


def _record(summary, text):
    """What the failed store keeps of a failure: the summary line, then the exception and its
    traceback, at most _MAX_RECORD characters (its head and its tail, saying how much was cut),
    with NUL written as \\x00 (a PostgreSQL text column cannot hold it)."""
    text = text or summary
    if len(text) > _MAX_RECORD:
        head, tail = _MAX_RECORD // 4, _MAX_RECORD - _MAX_RECORD // 4
        text = f"{text[:head]}\n[... {len(text) - head - tail:,} characters cut ...]\n{text[-tail:]}"
    return f"{summary}\n\n{text}".replace("\x00", "\\x00")


def _settings(job):
    """A job's tries, timeout and backoff, checked at push (where a wrong one is written), and
    signed into its payload: the worker decides with them before it unpickles anything."""
    name = _job_name(job)
    tries, timeout = getattr(job, "tries", None), getattr(job, "timeout", None)
    backoff = getattr(job, "backoff", 0) or 0
    if tries is not None and (type(tries) is not int or tries < 1):
        raise QueueError(f"{name}.tries must be a whole number of at least 1 (or None), not {tries!r}")
    if timeout is not None and not (_is_number(timeout) and 0 < timeout <= _MAX_DELAY):
        raise QueueError(f"{name}.timeout must be a number of seconds above 0 (or None), not {timeout!r}")
    steps = list(backoff) if isinstance(backoff, (list, tuple)) else [backoff]
    if not all(_is_number(b) and 0 <= b <= _MAX_DELAY for b in steps):
        raise QueueError(f"{name}.backoff must be seconds (a number or a list of numbers), not {backoff!r}")
    most = getattr(job, "max_exceptions", None)
    if most is not None and (type(most) is not int or most < 1):
        raise QueueError(f"{name}.max_exceptions must be a whole number of at least 1 (or None), not {most!r}")
    settings = {"tries": tries, "timeout": timeout, "backoff": steps if isinstance(backoff, (list, tuple)) else backoff}
    if most is not None:
        settings["max_exceptions"] = most
    return settings


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class JobFailed(Exception):
    """What failed() receives when a job called self.fail() without an exception."""


def push(*jobs, driver=None, queue=None, delay=None, connection=None, using=None):
    """Push jobs: onto `driver` (default: DRIVERS['default']) and `queue` (default: the job's class
    `queue`, else the driver's), runnable after `delay` (seconds, timedelta, datetime or '10
    minutes'; default: the class's `delay`). A class is pushed as an instance made without
    arguments. `using`: the app's own database connection (sqlite3, pymysql, psycopg, or a Django
    connection): the jobs are written through it and commit or roll back with the app's
    transaction. Returns True, or False when a unique job was left out."""
    if not jobs:
        raise QueueError("push() needs at least one job")
    target = _driver(driver, connection)
    if using is not None:
        if not isinstance(target, DatabaseDriver):
            raise QueueError(f"push(using=...) writes to a database: the {target.name} driver has none")
        return target.put_through(target.messages(jobs, queue, delay), using)
    return target.push(jobs, queue=queue, delay=delay)


def chain(*jobs, driver=None, queue=None, delay=None, connection=None):
    """Push jobs as a chain: each runs only after the previous one succeeded; a failure stops it.
    `queue` and `driver` apply to every link that names no queue of its own."""
    if not jobs:
        raise QueueError("chain() needs at least one job")
    _driver(driver, connection).push([jobs[0]], delay=delay, chain=jobs[1:], chain_queue=queue)
    return True


def run_now(job):
    """Run a job at once in this process (Laravel's dispatchNow), with its tries (retried at once,
    without backoff), failed() and the failed store; return 'done' or 'failed'. The sync driver's path."""
    return _driver("sync").run_now(job)


class _Call(Queueable):
    """A module-level function (or bound method, or functools.partial) pushed as a job."""

    def __init__(self, fn, args, kwargs):
        name = getattr(fn, "__qualname__", "") or getattr(getattr(fn, "func", None), "__qualname__", "")
        if "<lambda>" in name or "<locals>" in name:
            raise QueueError(f"cannot push {name}: a lambda or a function defined inside another cannot be "
                             "pickled; define it at module level in a module of jobs/")
        self.fn, self.args, self.kwargs = fn, args, kwargs
        for attribute in _TASK_SETTINGS:
            if hasattr(fn, f"queue_{attribute}"):
                setattr(self, attribute, getattr(fn, f"queue_{attribute}"))

    @property
    def _queue_job_name(self):
        fn = getattr(self.fn, "func", self.fn)
        return getattr(fn, "__qualname__", type(fn).__qualname__)

    def handle(self):
        result = self.fn(*self.args, **self.kwargs)
        if hasattr(result, "__await__"):
            import asyncio
            asyncio.run(result)


def call(fn, *args, **kwargs):
    """A job that calls fn(*args, **kwargs): push it, `queue.push(queue.call(send_mail, to))`."""
    return _Call(fn, args, kwargs)


_TASK_SETTINGS = ("tries", "timeout", "backoff", "queue", "delay", "max_exceptions", "unique_for")


def task(fn=None, **settings):
    """Decorate a module-level function so that fn.push(*args, **kwargs) pushes a call of it;
    the settings of a job class (tries, timeout, backoff, queue, delay, max_exceptions,
    unique_for) apply to its jobs: @queue.task(tries=5). Every argument of fn.push() is the
    function's (checked against its signature at push); where the job goes is said with
    fn.push_with(args, kwargs, queue=..., driver=..., connection=..., delay=...)."""
    for key in settings:
        if key not in _TASK_SETTINGS:
            import difflib
            near = difflib.get_close_matches(key, _TASK_SETTINGS, 1, 0.6)
            raise QueueError(f"@queue.task({key}=...): unknown setting" +
                             (f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(_TASK_SETTINGS)})"))

    def decorate(fn):
        for key, value in settings.items():
            setattr(fn, f"queue_{key}", value)
        fn.push = lambda *args, **kwargs: push(_task_call(fn, args, kwargs))
        fn.push_with = lambda args=(), kwargs=None, **options: push(_task_call(fn, tuple(args), dict(kwargs or {})),
                                                                    **options)
        fn.call = lambda *args, **kwargs: _task_call(fn, args, kwargs)
        return fn
    return decorate(fn) if fn is not None else decorate


def _task_call(fn, args, kwargs):
    """A call of a task, its arguments checked against the function's signature: a push option
    given to fn.push() (connection=, queue=) is refused, never passed on silently."""
    import inspect
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        options = sorted(set(kwargs) & {"queue", "driver", "connection", "delay", "using"})
        hint = f"; to choose where it goes: {fn.__name__}.push_with(args, kwargs, {options[0]}=...)" if options else ""
        raise QueueError(f"cannot push {fn.__qualname__}: {exc}{hint}") from None
    except ValueError:
        pass  # a callable without a signature (a builtin): nothing to check
    return _Call(fn, args, kwargs)


# Flow control #################################################################################
# Rate limits, concurrency limits and unique jobs live in the StateStore of the driver that runs
# the job (its `failed` setting: the database driver's connection by default, Redis's own server),
# so they hold across every worker process and host that shares it. Hosts that share limits must
# point it at one server, not at a SQLite file of their own.
_leases = {}  # slot name -> [holder, seconds, last renewed, store]: funnel slots held here (a worker renews them)
_here = threading.local()  # .state: the StateStore of the driver whose job this thread runs


def _state():
    """The StateStore of the driver whose job this thread runs, else of the default driver."""
    store = getattr(_here, "state", None)
    return store if store is not None else _driver().state_store()


def _holder():
    return f"{os.getpid()}-{os.urandom(8).hex()}"


class _Limit:
    """A context manager that takes one of `count` slots of a key for `hold` seconds; entering
    it says whether a slot was free. `retry_after`: seconds until one frees, when none was."""

    kind = ""

    def __init__(self, key, count, hold):
        if not isinstance(key, str) or not key or len(key) > 160:
            raise QueueError(f"a {self.kind} key is a string of 1 to 160 characters, not {key!r}")
        for name, value in (("count", count), ("hold", hold)):
            if not (_is_number(value) and value > 0):
                raise QueueError(f"{self.kind}({key!r}): {name} must be a number above 0, not {value!r}")
        self.names = [f"{self.kind}:{key}:{i}" for i in range(int(count))]
        self.hold, self.holder, self.slot, self.retry_after = float(hold), _holder(), None, 0.0

    def __enter__(self):
        self.store = _state()
        self.slot = self.store.take_slot(self.names, self.hold, self.holder)
        if self.slot is None:
            self.retry_after = self.store.slots_free_in(self.names)
        return self.slot is not None

    def __exit__(self, *exc_info):
        return False


class _Throttle(_Limit):
    kind = "throttle"  # a start leases its slot for the whole period: never more than `allow` per period


class _Funnel(_Limit):
    kind = "funnel"

    def __enter__(self):
        taken = super().__enter__()
        if taken:
            _leases[self.slot] = [self.holder, self.hold, time.monotonic(), self.store]
        return taken

    def __exit__(self, *exc_info):
        if self.slot is not None:
            _leases.pop(self.slot, None)
            self.store.hold_slot(self.slot, self.holder, 0)  # free at once
            self.slot = None
        return False


def throttle(key, allow, every):
    """At most `allow` starts per `every` seconds for `key`, across every worker and host:
    `with queue.throttle("mailgun", allow=10, every=60) as ok:` (ok False: no slot now)."""
    return _Throttle(key, allow, every)


def funnel(key, limit=1, hold=None):
    """At most `limit` holders of `key` at once: `with queue.funnel("invoice-42", limit=1) as ok:`.
    A slot is held until the block ends; if its holder dies, it frees after `hold` seconds
    (default: the database driver's retry_after), renewed meanwhile while a worker runs the job."""
    return _Funnel(key, limit, hold or _state().retry_after)


def _renew_leases():
    """Renew the funnel slots this process holds, each a third of its time before it would end
    (the worker's keeper calls it four times a second)."""
    for slot, lease in list(_leases.items()):
        holder, hold, renewed, store = lease
        if time.monotonic() - renewed >= hold / 3:
            lease[2] = time.monotonic()
            store.hold_slot(slot, holder, hold)


class RateLimited:
    """Job middleware: at most `allow` jobs with this key start per `every` seconds; a job over the
    limit is released (the attempt counts) until a slot frees."""

    def __init__(self, key, allow, every):
        self.limit = throttle(key, allow, every)

    def enter(self, job):
        """None to go on, else the seconds after which the job should run again."""
        return None if self.limit.__enter__() else max(self.limit.retry_after, 0.01)

    def exit(self, job, exc):
        """Called after the job ran (exc: what it raised, or None)."""


class WithoutOverlapping(RateLimited):
    """Job middleware: one job with this key runs at a time; another is released after
    `release_after` seconds (default: it looks again within a second, so it runs about a second
    after the holder ends). The slot lapses `expire_after` seconds after its holder died
    (default retry_after)."""

    def __init__(self, key, release_after=None, expire_after=None):
        self.limit, self.release_after = funnel(key, 1, expire_after), release_after

    def enter(self, job):
        if self.limit.__enter__():
            return None
        if self.release_after is not None:
            return self.release_after
        return min(max(self.limit.retry_after, 0.01), 1.0)  # a holder that ends frees the slot at once: look again soon

    def exit(self, job, exc):
        self.limit.__exit__()


class ThrottlesExceptions(RateLimited):
    """Job middleware: after `max_exceptions` attempts that raised within `decay` seconds, jobs
    with this key (default: the job's class) are released until `decay` has passed; a success
    starts the count again."""

    def __init__(self, max_exceptions, decay, key=None):
        self.most, self.decay, self.key = max_exceptions, decay, key

    def _name(self, job):
        return f"exceptions:{self.key or _job_name(job)}"

    def enter(self, job):
        count = _state().value_of(self._name(job))
        return self.decay if count is not None and float(count) >= self.most else None

    def exit(self, job, exc):
        if exc is None:
            _state().unlock(self._name(job))
        elif not isinstance(exc, (_ColdShutdown,)):
            _state().add_to(self._name(job), 1, self.decay)


class _Estimate(int):
    """A count the server estimated (past its dialect's count_cap), not counted: `status` shows it
    as ~N, the dashboard likewise, and /metrics says so in queue_count_estimated."""


def _skip_scan(cur, first_queue, mark):
    """The queues of a table, from its index on queue: one index seek per queue (a skip scan),
    instead of reading every row. first_queue: SELECT MIN(queue) FROM the table; mark: the
    dialect's parameter mark. A loop here, not a recursive CTE: MariaDB runs that CTE's subquery
    as a scan of the whole index (126 ms at a million rows, against 0.2 ms a seek)."""
    names = []
    while True:
        if names:
            cur.execute(f"{first_queue} WHERE queue > {mark}", (names[-1],))
        else:
            cur.execute(first_queue)
        name = cur.fetchone()[0]
        if name is None:
            return names
        names.append(name)


def _free_unique_locks(store, payloads):
    """Free the unique locks of jobs deleted unrun (clear) in `store`: the lock goes with its job."""
    for payload in payloads:
        try:
            header = open_payload(payload)[0] or {}
        except BadPayload:
            continue
        if header.get("unique"):
            store.unlock(*header["unique"])


def _unique_lock(job):
    """(name, holder, seconds) of the lock a unique job takes at push, or None."""
    seconds_ = getattr(job, "unique_for", None)
    if not seconds_:
        return None
    if not _is_number(seconds_) or seconds_ <= 0:
        raise QueueError(f"{_job_name(job)}.unique_for must be seconds above 0, not {seconds_!r}")
    unique_id = getattr(job, "unique_id", None)
    return f"unique:{_job_name(job)}:{_text(unique_id() if callable(unique_id) else unique_id or '')}", _holder(), \
        float(seconds_)


# Drivers ######################################################################################
class Message:
    """One job as a driver holds it: its id, queue, payload and how often it was reserved."""

    __slots__ = ("id", "queue", "name", "payload", "attempts", "delay", "receipt", "lock")

    def __init__(self, id=None, queue="default", name="", payload=b"", attempts=0, delay=0.0, receipt=None,
                 lock=None):
        self.id, self.queue, self.name, self.payload = id, queue, name, payload
        self.attempts, self.delay = attempts, delay
        self.receipt = receipt  # what the driver that handed it out needs to ack it (its own type)
        self.lock = lock        # a unique job's lock (name, holder, seconds), taken by push()

    def __repr__(self):
        return f"<Message {self.name} #{self.id} on {self.queue!r}, attempt {self.attempts}>"


_id_state = [os.urandom(6).hex(), 0]  # this process's id prefix (new after a fork) and counter


def _new_id():
    """A message id unique across processes and hosts, cheaper than a random one per message."""
    _id_state[1] += 1
    return f"{_id_state[0]}-{_id_state[1]:x}"


class Driver:
    """The driver contract. A driver stores messages (signed payloads) and hands them to workers.

    A new driver is a subclass with a `name` (it registers itself), its `defaults` and `kinds`
    (the keys of its DRIVERS section), and the seven methods of "the interface" below, each of
    which states its promise. push(), the failed store and the worker are shared. One driver
    instance serves a process: push() from any thread (connections are per thread); pop(),
    ack(), release() and close() from one worker thread, keep() from its keeper thread.
    README's "Writing a driver" walks through MemoryDriver, the smallest complete one.
    """

    name = None        # the name in DRIVERS; a subclass with a name is registered under it
    registry = {}      # name -> driver class
    defaults = {"queue": "default", "attempts": 3, "poll": 1, "tz": "UTC", "callback": "handle", "failed": None}
    kinds = {"queue": _queue_kind, "attempts": _whole, "poll": _seconds, "tz": _zone, "callback": _string,
             "failed": _maybe_string}
    keep_every = 30.0  # seconds between keep() calls while a job runs
    shared = True      # other processes (`python queue.py work`) see the jobs it stores
    interrupt = None   # a worker's stop flag: reconnect loops give up soon after it is set

    required = ("put", "pop", "ack", "release", "stats", "clear")  # the interface below: no default

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [m for m in Driver.required if getattr(cls, m) is getattr(Driver, m)]
        if missing and cls.name:  # a registered driver must be complete when its class is made, as abc would say
            raise TypeError(f"driver {cls.__name__} ({cls.name!r}) does not define {', '.join(missing)}(): "
                            "see Driver's interface (README: Writing a driver)")
        if cls.name:
            Driver.registry[cls.name] = cls

    def __init__(self, options, config):
        self.options = options
        self.config = config
        self.clock = Clock(options["tz"])
        self.default_queue = options["queue"]

    # pushing, shared by every driver
    def push(self, jobs, queue=None, delay=None, chain=(), chain_queue=None):
        """Pack jobs into messages and put() them: all of them, or (raising) none. A unique job
        whose twin is queued or running is left out; returns False when one was."""
        messages = self.messages(jobs, queue, delay, chain, chain_queue)
        locked = [m for m in messages if m.lock]
        if locked:
            store = self.state_store()
            messages = [m for m in messages if not m.lock or store.lock(*m.lock)]
            try:
                self.put(messages) if messages else None
            except BaseException:
                for m in messages:
                    store.unlock(*m.lock[:2]) if m.lock else None
                raise
            return len(messages) == len(jobs)
        self.put(messages)
        return True

    def messages(self, jobs, queue=None, delay=None, chain=(), chain_queue=None):
        """The messages of jobs to push. Every job and every link of a chain is checked here,
        where a mistake is written, not in a worker. A class is made into a job by calling it
        without arguments; `chain_queue` is the queue of every link (the head included) that
        names none of its own."""
        jobs, chain = [self._job(job) for job in jobs], [self._job(job) for job in chain]
        messages = []
        for job in jobs:
            until = getattr(job, "retry_until", None)
            until = until() if callable(until) else None
            if until is not None:
                until = self.clock.time() + seconds(until, self.clock.tz)
            name = _check_queue_name(queue or getattr(job, "queue", None) or chain_queue or self.default_queue)
            lock = _unique_lock(job)
            wait = seconds(delay if delay is not None else getattr(job, "delay", None), self.clock.tz)
            if wait > _MAX_PUSH_DELAY:
                raise QueueError(f"a delay of {wait:,.0f} s is longer than the longest that queue.py keeps, "
                                 f"{_MAX_PUSH_DELAY:,.0f} s (about 4 years)")
            if len(_job_name(job)) > _MAX_NAME:
                raise QueueError(f"cannot push {_job_name(job)[:40]}...: a job class name is at most {_MAX_NAME} "
                                 "characters (the worker registry and metrics key their entries by it)")
            payload = pack(job, chain, until, name, chain_queue, lock, ready=self.clock.time() + wait)
            messages.append(Message(None, name, _job_name(job), self.check_size(payload), 0, wait, lock=lock))
        return messages

    def _job(self, job):
        """A job to push, checked: an object with the driver's callback (a class is instantiated)."""
        callback = self.options["callback"]
        if isinstance(job, type) and callable(getattr(job, callback, None)):
            try:
                job = job()
            except Exception as exc:
                raise QueueError(f"cannot push the class {job.__qualname__}: {job.__qualname__}() raised "
                                 f"{_summary(exc)}; push an instance") from None
        if isinstance(job, type) or not callable(getattr(job, callback, None)):
            raise QueueError(f"cannot push {_text(job)[:80]!r}: it has no {callback}() method "
                             "(subclass queue.Queueable, or push queue.call(function, ...))")
        return job

    def check_size(self, payload):
        """The payload, if this driver can store it; else one line that names the limit."""
        limit = self.max_payload()
        if limit is not None and self.payload_size(payload) > limit:
            raise QueueError(f"the job's payload is {len(payload):,} bytes, over the {limit:,} bytes that the "
                             f"{self.name} driver can store ({self.limit_name}): keep large data elsewhere "
                             "and put a reference to it on the job")
        return payload

    limit_name = "its largest message"

    def max_payload(self):
        """The largest payload this driver can store, in bytes (None: no limit of its own)."""
        return None

    def payload_size(self, payload):
        """The bytes a payload takes in this driver's backend."""
        return len(payload)

    # the interface
    def put(self, messages):
        """Store the messages (each is ready after its .delay seconds, with .attempts attempts so
        far) durably before returning, all of them or, raising, none."""
        raise NotImplementedError

    def pop(self, queues, wait=0.0):
        """Reserve and return the next ready message of the first of `queues` that has one (a
        strict priority order), its .attempts counting this attempt and its .receipt set; no
        other pop() returns it while it is reserved. None if nothing is ready within `wait` s.
        A driver may reserve several at once (a prefetch); close() gives back those not handed out."""
        raise NotImplementedError

    def ack(self, message, failed=False):
        """The message is done: remove it. This may complete in the next pop() or close() of the
        thread; failed=True (it went to the failed store) completes it at once."""
        raise NotImplementedError

    def release(self, message, delay=0.0):
        """Make the message ready again after `delay` seconds, with message.attempts as its
        count of attempts so far."""
        raise NotImplementedError

    def keep(self, message):
        """Called every `keep_every` seconds while a job runs, from the keeper thread: renew the
        message's reservation (database) or keep the connection alive (amqp)."""

    def longest_job(self, queue):
        """(seconds, why): the longest a job of `queue` may run before the backend hands it to
        another worker whatever the worker does (RabbitMQ's consumer_timeout); None: no limit.
        The worker stops a job before then (JobTimeout), so that it never runs twice at once."""
        return None

    def stats(self, queues=None):
        """{queue: {"ready": n, "delayed": n, "reserved": n}} for `queues` (default: every queue
        the driver can list); None where a count cannot be known."""
        raise NotImplementedError

    def clear(self, queue):
        """Delete the ready and delayed messages of `queue` (not the reserved ones), in bounded
        batches, and free the unique locks they held (_free_unique_locks); return how many."""
        raise NotImplementedError

    def oldest_ready(self):
        """{queue: seconds the oldest ready message has waited}, where the backend can tell."""
        return {}

    def durability(self):
        """One line when the server keeps pushed jobs only in memory (a restart loses them), else None."""
        return None

    def close(self):
        """Finish pending acks and close this thread's connections."""

    def lanes(self, count):
        """A worker is about to pop() from `count` threads at once (each of them then close()s);
        a driver that shares one connection among them makes room for that many jobs."""

    # where this driver's failed jobs and state live (its `failed` setting)
    own_stores = False  # True: the driver keeps them itself (own_failed and own_state), by default

    def _keeper(self):
        """The driver whose own stores keep this driver's failed jobs and state: itself where it
        can keep them (`failed` is its own name, or unset on a driver that keeps its own), else
        the database driver on the DATABASES connection `failed` names; unset, the default
        driver's keeper where that driver keeps its own (a Redis-only app), else the database driver.
        Found once per process (a worker asks for every job)."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] != os.getpid() or kept[1] is not _drivers.get(kept[2]):
            keeper = self._find_keeper()
            kept = self._kept = (os.getpid(), keeper, next((k for k, v in _drivers.items() if v is keeper), None))
        return kept[1]

    def _find_keeper(self):
        where = self.options.get("failed")
        if where == self.name or (where is None and self.own_stores):
            if not self.own_stores:
                raise ConfigError(f"DRIVERS[{self.name!r}]['failed']: the {self.name} driver cannot keep failed "
                                  "jobs itself; name a DATABASES connection")
            return self
        if where is not None:
            self.config.database(where, f"DRIVERS[{self.name!r}]['failed'] (a DATABASES connection, or {self.name!r})")
            return _driver("database", where)
        default = _driver()  # unset: the default driver's stores where it keeps its own (redis), else the database's
        return default._keeper() if default.own_stores and default is not self else _driver("database")

    def state_store(self):
        """The StateStore that keeps this driver's flow control, unique locks, pauses, workers and metrics."""
        return self._keeper().own_state

    def failed_store(self):
        """The FailedStore that keeps this driver's failed jobs (None: they are not kept)."""
        return self._keeper().own_failed

    def fail(self, message, record):
        """Fail a message for good: keep it in the failed store with its record (the exception and
        its traceback), then ack it at once. False if it had been failed already (its worker died
        before the ack): then it is only acked, and failed() must not run again."""
        store, first = self.failed_store(), True
        if store is not None:
            first = store.add_failed(self.name, self.connection_name, message, record)
        else:
            log.error("%s #%s failed and is dropped (failed_table is None): %s", message.name, message.id,
                      record.splitlines()[0])
        self.ack(message, failed=True)
        return first

    @property
    def connection_name(self):
        """The connection a failed job is recorded with (the database driver's, the broker's)."""
        return ""


class FailedStore:
    """Where failed jobs of every driver are kept: the interface that the worker (through
    Driver.fail) and the commands use. DatabaseDriver implements it on its failed_table."""

    def add_failed(self, driver_name, connection, message, exception):
        """Keep a failed job: its payload, and its exception with the full traceback."""
        raise NotImplementedError

    def failed_jobs(self, ids=None, limit=None, newest_first=False, payloads=True):
        """The failed jobs (all, or those of `ids`) as dicts, at most `limit` of them."""
        raise NotImplementedError

    def forget(self, ids=None, older_than=None):
        """Delete failed jobs (those of `ids`, or those over `older_than` s old, or all); how many."""
        raise NotImplementedError

    def failed_counts(self):
        """{queue: number of failed jobs}."""
        raise NotImplementedError

    def retry_failed(self, ids=None, queue=None, target=None):
        """Put failed jobs back on their queue; yield each row moved."""
        raise NotImplementedError


class StateStore:
    """What workers of every process and host that share a driver agree on: the interface that
    flow control (throttle, funnel, middleware), unique jobs, max_exceptions, pauses, the worker
    registry and metrics use, and nothing else. Names are strings up to 255 characters; values
    are short strings (a counter's is a number). Every entry expires: a read never sees an
    entry whose time is up, whether or not prune() has deleted it. Each method is atomic across
    every process and host that shares the store. `retry_after`: the default hold of a funnel."""

    def __init__(self, driver):
        self.db, self.retry_after = driver, driver.retry_after  # the driver that keeps it, and its lease

    @property
    def clock(self):
        return self.db.clock  # the driver's (a test may put in a clock of its own)

    def take_slot(self, names, hold, holder):
        """Lease to `holder` for `hold` seconds the first of the slots `names` that is free (never
        used, or its lease ended); its name, or None when every one is held."""
        raise NotImplementedError

    def slots_free_in(self, names):
        """Seconds until the first of the slots `names` frees (0.0 if one is free)."""
        raise NotImplementedError

    def hold_slot(self, name, holder, hold):
        """Extend (hold > 0) or end (hold = 0) the lease `holder` has on slot `name`; a slot it
        no longer holds is left as it is."""
        raise NotImplementedError

    def lock(self, name, holder, ttl):
        """Take the lock `name` for `ttl` seconds if it is free or expired (or `holder` has it); True if taken."""
        raise NotImplementedError

    def unlock(self, name, holder=None, retry=True):
        """Delete the entry `name` (a lock, a counter, a pause); with a holder, only if that holder has it."""
        raise NotImplementedError

    def value_of(self, name):
        """The value of a live entry (a string, or a number for a counter); None if missing or expired."""
        raise NotImplementedError

    def add_to(self, name, amount=1, ttl=3600.0):
        """Add `amount` to the counter `name` (0 if missing or expired), keep it `ttl` s more; its new value."""
        raise NotImplementedError

    def entries(self, prefix, retry=True):
        """{name: value} of the live entries whose name starts with `prefix`."""
        raise NotImplementedError

    def put_entries(self, entries, adds=(), retry=True):
        """All or none: set entries [(name, value, ttl)] and add to counters [(name, amount, ttl)]."""
        raise NotImplementedError

    def prune(self, retry=True):
        """Delete expired entries (a worker calls it every minute; a store that expires on its own need not)."""


_drivers = {}
_drivers_lock = threading.Lock()


def _driver(name=None, connection=None):
    """The driver instance for a name (default DRIVERS['default']), one per process."""
    config = _get_config()
    name, options = config.driver(name)
    if connection:
        if name != "database":
            raise ConfigError(f"--connection only applies to the database driver, not {name!r}")
        config.database(connection)
        options = dict(options, connection=connection)
    key = (name, options.get("connection"), os.getpid())
    instance = _drivers.get(key)
    if instance is None:
        with _drivers_lock:
            instance = _drivers.get(key)
            if instance is None:
                if not _drivers:
                    atexit.unregister(_drop_connections)
                    atexit.register(_drop_connections)
                instance = _drivers[key] = Driver.registry[name](options, config)
    return instance


def driver(name=None, connection=None):
    """Return the driver instance for `name` (and, for the database driver, `connection`)."""
    return _driver(name, connection)


def _close_drivers():
    with _drivers_lock:
        for instance in list(_drivers.values()):
            try:
                instance.close()
            except Exception:
                log.debug("closing %r failed", instance, exc_info=True)
        _drivers.clear()


def _close_thread_connections():
    """Close the connections this thread opened, on every driver of the process (the dashboard's
    request threads)."""
    for instance in list(_drivers.values()):
        for close in ("_drop", "_drop_publisher"):
            if hasattr(instance, close):
                _guard(getattr(instance, close))


def _drop_connections():
    """At exit: close the database connections of this thread, with no statement (the server
    may be gone), before the interpreter's teardown, where pymysql's finalizer prints a traceback."""
    for instance in list(_drivers.values()):
        if isinstance(instance, DatabaseDriver):
            instance._drop()


def _forget_drivers_after_fork():
    global _drivers_lock, _config_lock
    _drivers_lock, _config_lock = threading.Lock(), threading.RLock()  # another thread may have held them
    _drivers.clear()  # a child process must never use its parent's connections
    _id_state[:] = [os.urandom(6).hex(), 0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_drivers_after_fork)


# The contract's worked example: the memory driver ###########################################
class MemoryDriver(Driver):
    """Jobs in this process's memory: the worked example of a driver (README: Writing a driver)
    and a backend for tests and scripts that push and work in one process. Nothing survives
    the process, and `python queue.py work` cannot see another process's jobs. A reservation
    lapses after `retry_after` seconds unless keep() renews it, as on the database driver."""

    name = "memory"
    shared = False
    own_stores = True  # its failed jobs and state in memory too (`failed`: a DATABASES connection instead)
    defaults = dict(Driver.defaults, retry_after=90)
    kinds = dict(Driver.kinds, retry_after=_lease)

    _changed = threading.Condition()  # every instance of a process shares the jobs
    _jobs = {}                        # id -> Message, its .delay holding when it is due
    _due = {}                         # queue -> heap of (due, order, id), one entry per schedule:
    _entry = {}                       # id -> the order of its job's entry that counts (the others
    _order = [0]                      # are dropped when met, or when the heap is rebuilt)

    def __init__(self, options, config):
        super().__init__(options, config)
        self.retry_after = float(options["retry_after"])
        self.keep_every = max(0.05, self.retry_after / 3)
        self.own_state, self.own_failed = _MemoryState(self), _MemoryFailed(self)

    def put(self, messages):
        now = self.clock.time()
        with self._changed:
            for m in messages:
                job_id = _new_id()  # unique across processes (failed jobs outlive the process)
                self._due_at(Message(job_id, m.queue, m.name, m.payload, m.attempts), now + m.delay)
            self._changed.notify_all()

    def _due_at(self, job, when):
        """(Re)schedule a job (under the lock): ready at `when`, after the jobs scheduled before
        it for the same moment. A heap grown past twice the jobs is rebuilt of its live entries."""
        self._jobs[job.id], job.delay = job, when
        self._order[0] += 1
        self._entry[job.id] = self._order[0]
        heap = self._due.setdefault(job.queue, [])
        heapq.heappush(heap, (when, self._order[0], job.id))
        if len(heap) > 2 * len(self._jobs) + 100:
            heap[:] = [entry for entry in heap if self._live(entry)]
            heapq.heapify(heap)

    def _live(self, entry):
        return entry[2] in self._jobs and self._entry.get(entry[2]) == entry[1]

    def pop(self, queues, wait=0.0):
        deadline = self.clock.monotonic() + wait
        with self._changed:
            while True:
                now = self.clock.time()
                for queue_name in queues:
                    heap = self._due.get(queue_name, ())
                    while heap and heap[0][0] <= now:
                        entry = heapq.heappop(heap)
                        if not self._live(entry):
                            continue  # acked, or rescheduled (its newer entry is in the heap)
                        job = self._jobs[entry[2]]
                        job.attempts, job.receipt = job.attempts + 1, now
                        self._due_at(job, now + self.retry_after)  # ready again if its reservation lapses
                        return Message(job.id, job.queue, job.name, job.payload, job.attempts, receipt=now)
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.05))  # a delayed job comes due without a notify

    def ack(self, message, failed=False):
        with self._changed:
            self._jobs.pop(message.id, None)
            self._entry.pop(message.id, None)

    def release(self, message, delay=0.0):
        with self._changed:
            job = self._jobs.get(message.id)
            if job is not None:
                job.attempts, job.receipt = message.attempts, None
                self._due_at(job, self.clock.time() + delay)
                self._changed.notify_all()

    def keep(self, message):
        with self._changed:
            job = self._jobs.get(message.id)
            if job is not None and job.receipt == message.receipt:
                self._due_at(job, self.clock.time() + self.retry_after)

    def clear(self, queue):
        now = self.clock.time()
        with self._changed:
            gone = [i for i, job in self._jobs.items() if job.queue == queue and (job.receipt is None or job.delay <= now)]
            payloads = [self._jobs[job_id].payload for job_id in gone]
            for job_id in gone:
                del self._jobs[job_id], self._entry[job_id]
        _free_unique_locks(self.state_store(), payloads)
        return len(gone)

    def stats(self, queues=None):
        now = self.clock.time()
        result = {q: {"ready": 0, "delayed": 0, "reserved": 0} for q in queues or ()}
        with self._changed:
            for job in self._jobs.values():
                if queues and job.queue not in queues:
                    continue
                kind = "ready" if job.delay <= now else "delayed" if job.receipt is None else "reserved"
                result.setdefault(job.queue, {"ready": 0, "delayed": 0, "reserved": 0})[kind] += 1
        return result


class _MemoryState(StateStore):
    """The state store in this process's memory (the memory driver's): the smallest complete
    one. Entries are [value, expires at]; one lock makes every method atomic."""

    _entries, _lock = {}, threading.RLock()  # shared by every instance of the process, as the jobs are

    def _live(self, name):
        entry = self._entries.get(name)
        return entry if entry is not None and entry[1] >= self.clock.time() else None

    def take_slot(self, names, hold, holder):
        with self._lock:
            for name in names:
                if self._live(name) is None:
                    self._entries[name] = [holder, self.clock.time() + hold + _SLOT_MARGIN]
                    return name
        return None

    def slots_free_in(self, names):
        with self._lock:
            held = [self._live(name) for name in names]
            return 0.0 if None in held else max(0.0, min(e[1] for e in held) - self.clock.time())

    def hold_slot(self, name, holder, hold):
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry[0] == holder:
                entry[1] = self.clock.time() + hold if hold > 0 else float("-inf")

    def lock(self, name, holder, ttl):
        with self._lock:
            entry = self._live(name)
            if entry is not None and entry[0] != holder:
                return False
            self._entries[name] = [holder, self.clock.time() + ttl]
            return True

    def unlock(self, name, holder=None, retry=True):
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and (holder is None or entry[0] == holder):
                del self._entries[name]

    def value_of(self, name):
        entry = self._live(name)
        return None if entry is None else entry[0]

    def add_to(self, name, amount=1, ttl=3600.0):
        with self._lock:
            entry = self._live(name)
            value = (float(entry[0]) if entry is not None else 0) + amount
            self._entries[name] = [int(value) if value == int(value) else value, self.clock.time() + ttl]
            return int(value)

    def entries(self, prefix, retry=True):
        with self._lock:
            return {name: str(e[0]) for name, e in list(self._entries.items())
                    if name.startswith(prefix) and self._live(name) is not None}

    def put_entries(self, entries, adds=(), retry=True):
        with self._lock:
            for name, value, ttl in entries:
                self._entries[name] = [value, self.clock.time() + ttl]
            for name, amount, ttl in adds:
                self.add_to(name, amount, ttl)

    def prune(self, retry=True):
        with self._lock:
            for name in [n for n in self._entries if self._live(n) is None]:
                del self._entries[name]


class _MemoryFailed(FailedStore):
    """The failed store in this process's memory (the memory driver's)."""

    _rows, _marks, _lock = {}, set(), threading.RLock()

    def __init__(self, driver):
        self.driver = driver

    def add_failed(self, driver_name, connection, message, exception):
        with self._lock:
            mark = (driver_name, message.queue, message.id)
            if message.id and mark in self._marks:
                return False
            self._marks.add(mark) if message.id else None
            job_id = max(self._rows, default=0) + 1
            self._rows[job_id] = {"id": job_id, "driver": driver_name, "connection": connection,
                                  "queue": message.queue, "name": message.name, "exception": exception,
                                  "failed_at": _stamp(self.driver.clock.time()), "payload": message.payload}
            return True

    def failed_jobs(self, ids=None, limit=None, newest_first=False, payloads=True):
        with self._lock:
            chosen = sorted(set(ids) & set(self._rows) if ids else self._rows, reverse=newest_first)[:limit]
            return [{k: v for k, v in self._rows[i].items() if payloads or k != "payload"} for i in chosen]

    def forget(self, ids=None, older_than=None):
        with self._lock:
            cutoff = None if older_than is None else _stamp(self.driver.clock.time() - older_than)
            gone = [i for i, row in self._rows.items() if (ids is None or i in ids)
                    and (cutoff is None or row["failed_at"] < cutoff)]
            for i in gone:
                del self._rows[i]
            return len(gone)

    def failed_counts(self):
        with self._lock:
            return dict(collections.Counter(row["queue"] for row in self._rows.values()))

    def retry_failed(self, ids=None, queue=None, target=None):
        for row in self.failed_jobs(ids):  # those failed before it began
            row["queue"] = queue or row["queue"]
            payload = readdress(row["payload"], row["queue"]) if queue else row["payload"]
            row["target"] = target(row) if target else self.driver
            row["target"].put([Message(None, row["queue"], row["name"], payload, 0, 0.0)])
            self.forget([row["id"]])
            yield row


# The database driver: SQLite, MySQL/MariaDB and PostgreSQL dialects ##########################
class _Retry:
    """The reconnect policy of every driver: waits of 0.1 s doubling to 5 s, for `patience`
    seconds (None: for ever, as a worker does). Once `interrupt` (a worker's stop Event) is
    set, it gives up within 3 s, so that a worker whose server is gone still stops at once."""

    def __init__(self, patience=30.0, interrupt=None):
        self.delay = 0.1
        self.deadline = None if patience is None else time.monotonic() + patience
        self.interrupt = interrupt
        self.grace = None

    def again(self):
        """Wait before the next try and return True; or return False: time to give up."""
        now = time.monotonic()
        if self.interrupt is not None and self.interrupt.is_set():
            self.grace = self.grace or now + 3.0
            if now >= self.grace:
                return False
        elif self.deadline is not None and now >= self.deadline:
            return False
        wait = self.next_wait()
        time.sleep(wait if self.grace is None else min(wait, 0.2))
        return True

    def next_wait(self):
        """The next wait: 0.1 s, doubling up to 5 s."""
        wait, self.delay = self.delay, min(self.delay * 2, 5.0)
        return wait


class _Dialect:
    """What differs between SQL databases, in one place each (peewee's way): connecting, column
    types, the claim's lock clause, how statements travel, and the translation of the driver's
    errors into kinds. `networked`: the database is a server whose connection can drop in the
    middle of a statement, so a write that must happen once carries a marker, and the driver's
    clock is the server's."""

    name = None                       # the `driver` of a DATABASES entry; subclasses register under it
    registry = {}                     # name -> dialect class
    defaults = {}                     # the keys of a DATABASES entry, with their defaults
    kinds = {"driver": _string}
    param = "?"
    begin = "BEGIN"
    skip_locked = ""                  # appended to the claim's SELECT
    blob = text = stamp = key = ""    # column types
    name_type = "VARCHAR(255)"        # queue and class names, compared byte for byte
    table_options = ""                # after CREATE TABLE (...)
    networked = False
    auto_create = False               # tables are created on first use (else: `python queue.py table`)
    # add to a counter of the state table, restarting it when it had expired
    upsert_add = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON CONFLICT (name) DO UPDATE "
                  "SET value = CASE WHEN {state}.expires_at < {p} THEN {p} ELSE CAST({state}.value AS REAL) + {p} END, "
                  "expires_at = {p}")
    insert_ignore = "INSERT INTO {state} (name, value, expires_at) VALUES ({p}, '', {p}) ON CONFLICT (name) DO NOTHING"
    # lease a free slot (one of the names that follow) to a holder: one statement, atomic
    take_slot = ("UPDATE {state} SET value = {p}, expires_at = {p} WHERE name = (SELECT name FROM {state} "
                 "WHERE expires_at <= {p} AND name IN ({names}) ORDER BY expires_at LIMIT 1)")
    # take a lock that is free or expired; the row count says whether it was taken
    upsert_lock = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON CONFLICT (name) DO UPDATE "
                   "SET value = excluded.value, expires_at = excluded.expires_at "
                   "WHERE {state}.expires_at < {p} OR {state}.value = {p}")
    # set an entry of the state table, whatever it held
    upsert_set = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON CONFLICT (name) DO UPDATE "
                  "SET value = excluded.value, expires_at = excluded.expires_at")
    max_payload = None                # the largest payload it stores (known after check_server)
    limit_name = "the database's largest value"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            _Dialect.registry[cls.name] = cls

    def __init__(self, options, folder):
        self.options = options
        self.where = ""

    def connect(self):
        """A new connection in autocommit mode (ConnectionFailed, one line, if it cannot)."""
        raise NotImplementedError

    def error_kind(self, exc):
        """What a driver exception means: 'missing' (a table), 'column', 'busy' (run the
        transaction again), 'locked' (waited in vain for a lock), 'lost' (the connection
        dropped), 'refused' (the database said no: one line for the user), or None (a bug)."""
        raise NotImplementedError

    def check_server(self, conn):
        """Refuse a server that cannot claim safely; learn its limits."""

    def server_time(self, cur, driver=None):
        """The server's time in seconds since the epoch (None: the clock is this host's)."""
        return None

    def worker_session(self, driver, cur):
        """Tune the connection of a worker thread (once, before its first claim)."""

    def quote(self, name):
        """A table or index name, quoted (so that SQL keywords such as `order` are names too)."""
        return f'"{name}"'

    def marks(self, count):
        """The placeholders of an IN list of `count` values."""
        return ", ".join([self.param] * count)

    claim_index = "queue, available_at"  # the claim reads it in order (MySQL's and SQLite's end with the id)

    def index(self, table, columns):
        """(statement, clause) that create an index of a table: a statement of its own, or a
        clause inside CREATE TABLE (MySQL 8 has no CREATE INDEX IF NOT EXISTS)."""
        name = self.quote(f"{table}_{columns.replace(', ', '_')}")
        return f"CREATE INDEX IF NOT EXISTS {name} ON {self.quote(table)} ({columns})", ""

    def script(self, cur, statements):
        """Run [(sql, params), ...] in order; return the rows of the last statement."""
        for sql, params in statements:
            cur.execute(sql, params)
        return cur.fetchall()

    def payload_size(self, payload):
        """The bytes a payload takes on its way to the server."""
        return len(payload)

    def claim(self, driver, cur, queues, done, now, until, count=1):
        """In one transaction: delete the ids in `done`, then reserve (until `until`) up to
        `count` ready jobs of the first of `queues` that has any (a claim never mixes queues, so
        the priority order holds); return [(id, queue, name, payload, attempts so far)], oldest
        id first. The attempt is counted when a job starts (start()). The generic way: BEGIN;
        DELETE; SELECT ... (one per queue tried), then UPDATE; COMMIT."""
        sql = driver._sql

        def statements(cur):
            script, taken = [(self.begin, ())], []
            if done:
                script.append((f"{sql['delete']}({self.marks(len(done))})", done))
            for queue_name in queues:
                taken = _in_order(self.script(cur, script + [(sql["next"], (queue_name, now, count))]), queue_name)
                script = []
                if taken:
                    break
            if taken:
                ids = [row[0] for row in taken]
                script = [(f"{sql['reserve']}({self.marks(len(ids))})", (now, now, until, *ids))]
            self.script(cur, script + [("COMMIT", ())])
            return taken
        return driver._transaction(cur, statements, begin=False)

    def start(self, driver, cur, done, id_, stamp, until):
        """In one transaction: delete the ids in `done`, then count the attempt of job `id_` and
        renew its reservation (until), if the claim made at `stamp` still holds it (else another
        worker took it after it lapsed: False)."""
        sql = driver._sql

        def statements(cur):
            if done:
                cur.execute(f"{sql['delete']}({self.marks(len(done))})", done)
            cur.execute(sql["start"], (until, id_, stamp))
            return cur.rowcount == 1
        return driver._transaction(cur, statements)

    sends_ahead = False  # a start may go without waiting for its reply: send_start(), then started()

    def execute(self, cur, sql, params):
        """Run one statement (a write made one by one_statement())."""
        cur.execute(sql, params)

    tidy_every = float("inf")  # a worker calls tidy() after it started this many jobs

    def tidy(self, driver, cur):
        """Keep the jobs table lean as its rows die (a worker, every tidy_every jobs it starts)."""

    def wait(self, driver, conn, seconds, mark=None):
        """Wait up to `seconds` for a push (True: something may be ready) since `mark` was taken
        (a claim found nothing after it). False: no way to be woken here; the worker polls."""
        return False

    def mark(self, conn):
        """Where the database stands, read before a claim, for wait() to wake on any commit after
        it (None: the dialect's wake-ups need none)."""
        return None

    count_cap = None  # counts per queue are exact up to this many, then estimated (None: always exact)
    id_ranges = "{table} WHERE ({ranges}) AND {where}"  # a read of id ranges, through the primary key
    durable = None    # the statement that makes one transaction of a worker's session wait for the disk

    def estimate(self, cur, select, params, windows=20, most=250):
        """About how many rows `select` ("SELECT ... FROM table WHERE ...") returns: a count of
        `windows` runs of consecutive ids spread over the table's ids (each at most `most` ids,
        read through the primary key), scaled to the whole span; counted, when fewer than 50 of
        the rows read are the select's. The servers' own estimates were 0.5 to 2 times the truth
        at 100,000 and 1,000,000 rows (MariaDB's EXPLAIN, InnoDB's index dives; PostgreSQL's
        TABLESAMPLE SYSTEM of 1% of the pages)."""
        table, where = select.split(" FROM ", 1)[1].split(" WHERE ", 1)
        cur.execute(f"SELECT MIN(id), MAX(id) FROM {table}")
        low, high = cur.fetchone()
        if low is None:
            return 0
        span = high - low + 1
        width = max(1, min(most, span // windows))
        starts = [low + span * i // windows for i in range(windows)]
        ranges = " OR ".join(f"id BETWEEN {start:d} AND {start + width - 1:d}" for start in starts)
        cur.execute("SELECT COUNT(*) FROM " + self.id_ranges.format(table=table, ranges=ranges, where=where), params)
        found = int(cur.fetchone()[0])
        if found < 50:  # too few to scale (the rows sit between the runs: one old row makes the span long)
            cur.execute(f"SELECT COUNT(*) FROM ({select}) x", params)
            return int(cur.fetchone()[0])
        return round(found * span / (width * windows))

    def compact(self, driver, cur):
        """Give the space of deleted rows back to the disk (`python queue.py compact`)."""

    def one_statement(self, statements):
        """The statements of a write as one statement, which is one transaction in autocommit
        (None: the dialect runs them between BEGIN and COMMIT)."""
        return None

    def notify(self, driver, queue):
        """Statements that wake idle workers of `queue` when the push that runs them commits."""
        return []

    def ready(self, driver, conn):
        """Whether a job of the queues the worker waits for is ready: one indexed read that locks nothing."""
        queues = driver.waiting_for
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT 1 FROM {self.quote(driver.table)} WHERE queue IN ({self.marks(len(queues))}) "
                        f"AND available_at <= {self.param} LIMIT 1", (*queues, driver.clock.now()))
            return bool(cur.fetchall())
        finally:
            cur.close()

    def upgrade(self, driver, cur):
        """Bring tables of an earlier version up to date (the `table` command)."""


class _SQLite(_Dialect):
    """SQLite: the embedded default, in WAL mode. `synchronous` (default full) applies to the
    commits that create jobs, so a pushed job survives a power loss; a worker's own commits
    (claims, acks, releases) run at normal, since losing one of those can only make a job run
    again: a WAL recovers a prefix of its commits, never a later one without an earlier one."""

    name = "sqlite"
    defaults = {"driver": "sqlite", "database": "queue.sqlite3", "synchronous": "full", "timeout": 60}
    kinds = dict(_Dialect.kinds, database=_string, synchronous=_choice("off", "normal", "full", "extra"),
                 timeout=_seconds)
    begin = "BEGIN IMMEDIATE"         # takes the write lock, so two workers never claim one job
    blob, text, stamp, key = "BLOB", "TEXT", "TEXT", "INTEGER PRIMARY KEY AUTOINCREMENT"
    auto_create = True
    max_payload = 1_000_000_000 - 1024  # SQLITE_MAX_LENGTH
    limit_name = "SQLite's largest value, SQLITE_MAX_LENGTH"

    def __init__(self, options, folder):
        super().__init__(options, folder)
        path = options["database"] or "queue.sqlite3"
        self.path = path if path == ":memory:" or os.path.isabs(path) else os.path.join(folder, path)
        self.where = self.path
        # the lanes of a worker claim in turn here: SQLite's own busy handler would make a waiting
        # writer sleep for up to 100 ms at a time
        self.claiming = threading.Lock()

    def connect(self):
        import sqlite3
        deadline = time.monotonic() + self.options["timeout"]
        while True:
            try:
                conn = sqlite3.connect(self.path, timeout=self.options["timeout"], isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.options['synchronous']}")
                return conn
            except sqlite3.OperationalError as exc:  # a new file: another process is making it WAL
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise ConnectionFailed(f"cannot open SQLite database {self.path}: {exc}") from None
                time.sleep(0.01)
            except sqlite3.Error as exc:
                raise ConnectionFailed(f"cannot open SQLite database {self.path}: {exc}") from None

    def error_kind(self, exc):
        import sqlite3
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in text:
            return "missing"
        if isinstance(exc, sqlite3.OperationalError) and "no such column" in text:
            return "column"
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return "locked"
        if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)) and not isinstance(exc, sqlite3.ProgrammingError):
            return "refused"  # read-only file, disk full, not a database, ...
        return None

    def worker_session(self, driver, cur):
        if self.options["synchronous"] in ("full", "extra"):
            cur.execute("PRAGMA synchronous=normal")

    def server_time(self, cur, driver=None):
        """The host's clock, which every process of this host shares: the epoch time of the
        monotonic clock's zero since the last boot, written once in the state table by the first
        process, plus the monotonic clock. A step of the wall clock (NTP, a VM resumed) then
        moves no reservation. None where the host has no boot id (its wall clock serves)."""
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                name = f"clock:{f.read().strip()}"
        except OSError:
            return None
        up = driver.clock.monotonic
        state, zero = self.quote(driver.state_table), time.time() - up()
        try:
            cur.execute(f"INSERT INTO {state} (name, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                        (name, repr(zero), _stamp(zero + up() + 400 * 86400)))
            cur.execute(f"SELECT value FROM {state} WHERE name = ?", (name,))
            return float(cur.fetchone()[0]) + up()
        except Exception:  # no state table (yet): the wall clock serves
            return None

    def claim(self, driver, cur, queues, done, now, until, count=1):
        """BEGIN IMMEDIATE; DELETE the acked; UPDATE ... RETURNING the next jobs (one UPDATE per
        queue tried); COMMIT. SQLite before 3.35 has no RETURNING: the generic claim."""
        import sqlite3
        if sqlite3.sqlite_version_info < (3, 35):
            return super().claim(driver, cur, queues, done, now, until, count)
        claim = driver._sql["claim"]

        def statements(cur):
            cur.execute(self.begin)
            if done:
                cur.execute(f"{driver._sql['delete']}({self.marks(len(done))})", done)
            taken = []
            for queue_name in queues:
                cur.execute(claim, (now, now, until, queue_name, now, count))
                taken = _in_order(cur.fetchall(), queue_name)
                if taken:
                    break
            cur.execute("COMMIT")
            return taken
        with self.claiming:
            return driver._transaction(cur, statements, begin=False)

    def start(self, driver, cur, done, id_, stamp, until):
        with self.claiming:  # lanes take turns for the write lock (SQLite's busy handler sleeps)
            return super().start(driver, cur, done, id_, stamp, until)

    def mark(self, conn):
        return conn.execute("PRAGMA data_version").fetchone()[0]

    def compact(self, driver, cur):
        """VACUUM: the file is written anew without its free pages (workers wait meanwhile)."""
        cur.execute("VACUUM")

    def wait(self, driver, conn, seconds, mark=None):
        """Wait up to `seconds` until another connection commits after `mark` (PRAGMA
        data_version changes): on Linux, asleep until the kernel says the WAL file was written
        (inotify), so an idle worker costs nothing and wakes within a millisecond; elsewhere,
        looking every 4 ms."""
        deadline = time.monotonic() + seconds
        version = self.mark(conn) if mark is None else mark
        watch = self._watch()
        changed = lambda: conn.execute("PRAGMA data_version").fetchone()[0] != version  # noqa: E731
        while time.monotonic() < deadline and not (driver.interrupt is not None and driver.interrupt.is_set()):
            left = max(0.0, deadline - time.monotonic())
            if watch is None:
                time.sleep(min(0.004, left))
            else:
                import select
                if select.select([watch], [], [], min(0.25, left))[0]:
                    try:
                        os.read(watch, 65536)
                    except BlockingIOError:
                        pass  # another lane of this worker read the event first
                    # the WAL is written before the commit shows in its index: look again for 20 ms
                    for _ in range(20):
                        if changed():
                            return True
                        time.sleep(0.001)
            if changed():
                return True
        return False

    def _watch(self):
        """An inotify descriptor that becomes readable when the WAL file is written (Linux), or None."""
        if not hasattr(self, "_inotify"):
            self._inotify = None
            try:
                import ctypes
                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if fd >= 0 and libc.inotify_add_watch(fd, (self.path + "-wal").encode(), 0x2) >= 0:  # IN_MODIFY
                    self._inotify = fd
                elif fd >= 0:
                    os.close(fd)
            except (OSError, AttributeError):
                pass  # not Linux: look every few milliseconds
        return self._inotify


class _MySQL(_Dialect):
    """MySQL 8.0+ / MariaDB 10.6+ through pymysql: claims with SELECT ... FOR UPDATE SKIP LOCKED.
    Statements travel together as multi-statement queries (one round trip for several), each
    query at most max_allowed_packet long."""

    name = "mysql"
    defaults = {"driver": "mysql", "host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
    kinds = dict(_Dialect.kinds, host=_string, port=_port, user=_string, password=_string, database=_string,
                 charset=_string, unix_socket=_string, ssl=_mapping, connect_timeout=_seconds)
    param = "%s"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    blob, text, stamp, key = "LONGBLOB", "LONGTEXT", "DATETIME(6)", "BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY"
    name_type = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    networked = True
    upsert_add = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON DUPLICATE KEY UPDATE "
                  "value = IF(expires_at < {p}, {p}, value + {p}), expires_at = {p}")
    insert_ignore = "INSERT IGNORE INTO {state} (name, value, expires_at) VALUES ({p}, '', {p})"
    take_slot = ("UPDATE {state} SET value = {p}, expires_at = {p} WHERE expires_at <= {p} AND name IN ({names}) "
                 "ORDER BY expires_at LIMIT 1")
    upsert_set = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON DUPLICATE KEY UPDATE "
                  "value = VALUES(value), expires_at = VALUES(expires_at)")
    upsert_lock = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, {p}, {p}) ON DUPLICATE KEY UPDATE "
                   "value = IF(expires_at < {p}, VALUES(value), value), "
                   "expires_at = IF(value = {p}, VALUES(expires_at), expires_at)")  # the holder as a parameter:
    # after `value` is assigned, MariaDB's VALUES(value) gives the assigned value back
    limit_name = "the server's max_allowed_packet"
    _pass = ("host", "port", "user", "password", "database", "charset", "unix_socket", "ssl", "connect_timeout")
    _codes = {1146: "missing", 1054: "column", 1213: "busy", 1205: "locked", 2003: "lost", 2006: "lost",
              2013: "lost", 2014: "lost", 2055: "lost", 1053: "lost", 1927: "lost", 4031: "lost",
              1153: "refused", 1406: "refused", 1366: "refused", 1114: "refused", 1021: "refused"}

    def __init__(self, options, folder):
        super().__init__(options, folder)
        self.where = f"{options['host']}:{options['port']}/{options['database']}"
        self.packet = 4 * 1024 * 1024  # max_allowed_packet, read by check_server
        self.mariadb = False           # MariaDB runs anonymous blocks (see wait)

    def connect(self):
        pymysql = _import_optional("pymysql", "mysql")
        kwargs = {k: self.options[k] for k in self._pass if self.options.get(k) is not None}
        kwargs["port"] = int(kwargs.get("port", 3306))
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("charset", "utf8mb4")
        kwargs["client_flag"] = pymysql.constants.CLIENT.MULTI_STATEMENTS  # see script()
        try:
            conn = pymysql.connect(autocommit=True, **kwargs)
        except pymysql.err.MySQLError as exc:
            raise ConnectionFailed(f"cannot connect to MySQL at {self.where}: {exc.args[-1]}") from None
        return conn

    def error_kind(self, exc):
        import pymysql
        if isinstance(exc, (pymysql.err.InterfaceError, OSError)):
            return "lost"
        if isinstance(exc, pymysql.err.MySQLError) and exc.args:
            return self._codes.get(exc.args[0])
        return None

    def check_server(self, conn):
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@max_allowed_packet")
            version, packet = cur.fetchone()
        numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
        self.mariadb = "MariaDB" in version
        needed = (10, 6) if self.mariadb else (8, 0)
        if numbers < needed:
            raise QueueError(f"MySQL server {version} at {self.where} has no SKIP LOCKED; "
                             f"queue.py needs MariaDB 10.6+ or MySQL 8.0+")
        self.packet = int(packet)
        self.max_payload = self.packet - 4096  # the rest of the INSERT around it

    def server_time(self, cur, driver=None):
        cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        return float(cur.fetchone()[0])

    def quote(self, name):
        return f"`{name}`"

    def index(self, table, columns):
        return None, f", INDEX {self.quote(table + '_' + columns.replace(', ', '_'))} ({columns})"

    def payload_size(self, payload):
        # pymysql sends a value escaped inside the query text: these bytes take two
        return len(payload) + sum(payload.count(c) for c in (b"\0", b"\n", b"\r", b"\\", b"'", b'"', b"\x1a"))

    def script(self, cur, statements):
        """Send the statements as multi-statement queries: one round trip for all of them, or
        a few when together they would pass max_allowed_packet."""
        rows, packet, size = (), [], 0
        for sql, params in statements:
            text = cur.mogrify(sql, params) if params else sql
            if packet and size + len(text) + 1 > self.packet - 1024:
                rows = self._send(cur, packet)
                packet, size = [], 0
            packet.append(text)
            size += len(text) + 1
        return self._send(cur, packet) if packet else rows

    def _send(self, cur, texts):
        cur.execute(";".join(texts))
        rows = cur.fetchall()
        while cur.nextset():
            rows = cur.fetchall()
        return rows

    def start(self, driver, cur, done, id_, stamp, until):
        """One round trip: BEGIN; DELETE; UPDATE; the UPDATE's row count kept; COMMIT; read it."""
        sql = driver._sql
        script = [(self.begin, ())] + ([(f"{sql['delete']}({self.marks(len(done))})", done)] if done else [])
        script += [(sql["start"], (until, id_, stamp)), ("SET @queue_py_started = ROW_COUNT()", ()),
                   ("COMMIT", ()), ("SELECT @queue_py_started", ())]
        return driver._transaction(cur, lambda cur: self.script(cur, script)[0][0] == 1, begin=False)

    def wait(self, driver, conn, seconds, mark=None):
        """MySQL has no notifications: look every 20 ms for a ready job of the worker's queues
        with one indexed read that locks nothing, for up to `seconds`. MariaDB looks itself, in
        an anonymous block of a quarter second that the worker waits on (no CPU of the worker's,
        half the server's of a query every 20 ms); MySQL gets a round trip each time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (driver.interrupt is not None and driver.interrupt.is_set()):
            left = max(0.0, deadline - time.monotonic())
            if self.mariadb and left > 0.04:
                names = ", ".join([conn.escape(name) for name in driver.waiting_for])
                conn.query(f"BEGIN NOT ATOMIC DECLARE turns INT DEFAULT {int(min(left, 0.25) / 0.02)}; "
                           f"WHILE turns > 0 AND NOT EXISTS (SELECT 1 FROM {self.quote(driver.table)} WHERE queue "
                           f"IN ({names}) AND available_at <= UTC_TIMESTAMP(6)) DO DO SLEEP(0.02); "
                           f"SET turns = turns - 1; END WHILE; END")
            else:
                time.sleep(min(0.02, left))
            if self.ready(driver, conn):  # by the worker's clock (the server's, synced)
                return True
        return False

    def ready(self, driver, conn):
        """The generic read, answered by an OK packet instead of a result set, which costs pymysql
        half as much to read: SELECT ... INTO a variable reports the rows it selected (1 or 0)."""
        names = ", ".join([conn.escape(name) for name in driver.waiting_for])
        return conn.query(f"SELECT 1 FROM {self.quote(driver.table)} WHERE queue IN ({names}) AND available_at <= "
                          f"{conn.escape(driver.clock.now())} LIMIT 1 INTO @queue_py_ready") > 0

    count_cap = 10_000  # a million index entries take a second to count: past this, an estimate
    id_ranges = "{table} FORCE INDEX (PRIMARY) WHERE ({ranges}) AND {where}"

    def compact(self, driver, cur):
        """Give the space of deleted rows back to the disk: OPTIMIZE TABLE (InnoDB rebuilds
        each table; reads and writes go on meanwhile)."""
        tables = [driver.table, driver.state_table] + ([driver.failed_table] if driver.failed_table else [])
        cur.execute(f"OPTIMIZE TABLE {', '.join(self.quote(t) for t in tables)}")
        cur.fetchall()

    def upgrade(self, driver, cur):
        """Tables of queue.py 1.0 compared queue names without case: make them exact."""
        cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = %s AND COLUMN_NAME IN ('queue', 'name') AND COLLATION_NAME <> 'utf8mb4_bin'",
                    (driver.table,))
        for (column,) in cur.fetchall():
            cur.execute(f"ALTER TABLE {self.quote(driver.table)} MODIFY {column} {self.name_type} NOT NULL")
        # a failed table of queue.py 1.1 or older has no index on queue (its counts per queue read it)
        cur.execute("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
                    "AND COLUMN_NAME = 'queue' AND SEQ_IN_INDEX = 1", (driver.failed_table,))
        if driver.failed_table and not cur.fetchall():
            cur.execute(f"ALTER TABLE {self.quote(driver.failed_table)} "
                        f"ADD INDEX {self.quote(driver.failed_table + '_queue')} (queue)")


class _Postgres(_Dialect):
    """PostgreSQL through psycopg 3. A claim is one statement, so one round trip and one commit:
    `WITH done AS (DELETE ...) UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)
    RETURNING ...`. A push NOTIFYs its queue's channel in its own transaction (so at commit), and
    an idle worker LISTENs: it wakes within milliseconds, and still looks every `poll` seconds,
    in case a notification was lost. Statements of a script travel together (pipeline mode)."""

    name = "postgres"
    defaults = {"driver": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres", "password": "",
                "database": "test"}
    kinds = dict(_Dialect.kinds, host=_string, port=_port, user=_string, password=_string, database=_string,
                 sslmode=_string, sslrootcert=_string, sslcert=_string, sslkey=_string, connect_timeout=_seconds,
                 application_name=_string)
    param = "%s"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    blob, text, stamp, key = "BYTEA", "TEXT", "TIMESTAMP(6)", "BIGSERIAL PRIMARY KEY"
    networked = True
    max_payload = 1024 ** 3 - 4096     # the largest bytea
    limit_name = "PostgreSQL's largest bytea value (1 GB)"
    upsert_add = ("INSERT INTO {state} (name, value, expires_at) VALUES ({p}, CAST({p} AS TEXT), {p}) "
                  "ON CONFLICT (name) DO UPDATE SET value = CAST(CASE WHEN {state}.expires_at < {p} THEN {p} "
                  "ELSE CAST({state}.value AS DOUBLE PRECISION) + {p} END AS TEXT), expires_at = {p}")
    insert_ignore = _SQLite.insert_ignore
    take_slot = ("UPDATE {state} SET value = {p}, expires_at = {p} WHERE name = (SELECT name FROM {state} "
                 "WHERE expires_at <= {p} AND name IN ({names}) ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED)")
    upsert_lock = _SQLite.upsert_lock
    upsert_set = _SQLite.upsert_set
    name_type = 'VARCHAR(255) COLLATE "C"'  # byte for byte, so that prefixes of the state table are ranges
    _pass = {"host": "host", "port": "port", "user": "user", "password": "password", "database": "dbname",
             "sslmode": "sslmode", "sslrootcert": "sslrootcert", "sslcert": "sslcert", "sslkey": "sslkey",
             "connect_timeout": "connect_timeout", "application_name": "application_name"}

    def __init__(self, options, folder):
        super().__init__(options, folder)
        self.where = f"{options['host']}:{options['port']}/{options['database']}"

    def connect(self):
        psycopg = _import_optional("psycopg", "postgres", "psycopg[binary]")
        kwargs = {theirs: self.options[ours] for ours, theirs in self._pass.items() if self.options.get(ours) not in (None, "")}
        kwargs.setdefault("connect_timeout", 10)
        kwargs["connect_timeout"] = max(1, int(kwargs["connect_timeout"]))
        try:
            return psycopg.connect(autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise ConnectionFailed(f"cannot connect to PostgreSQL at {self.where}: {_text(exc).strip().splitlines()[0]}") from None

    def error_kind(self, exc):
        import psycopg
        errors = psycopg.errors
        if isinstance(exc, errors.UndefinedTable):
            return "missing"
        if isinstance(exc, errors.UndefinedColumn):
            return "column"
        if isinstance(exc, (errors.DeadlockDetected, errors.SerializationFailure)):
            return "busy"
        if isinstance(exc, errors.LockNotAvailable):
            return "locked"
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError)):
            return "lost"
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError,
                            psycopg.InternalError, psycopg.NotSupportedError)):
            return "refused"
        return None

    def server_time(self, cur, driver=None):
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        return float(cur.fetchone()[0])

    def script(self, cur, statements):
        """Send the statements in one round trip (pipeline mode); the rows of the last one."""
        with cur.connection.pipeline():
            for sql, params in statements:
                cur.execute(sql, params or None)
        return cur.fetchall() if cur.description else []

    def one_statement(self, statements):
        """INSERT, UPDATE and DELETE statements as data-modifying CTEs of one statement, whose
        main query is their one SELECT (pg_notify), or SELECT 1: one round trip without BEGIN and
        COMMIT, atomic."""
        writes = [(sql, params) for sql, params in statements if sql.startswith(("INSERT", "UPDATE", "DELETE"))]
        reads = [(sql, params) for sql, params in statements if sql.startswith("SELECT")]
        if not writes or len(writes) + len(reads) != len(statements) or len(reads) > 1:
            return None
        if sum(len(params) for _, params in statements) > 60000:  # a statement takes at most 65,535
            return None
        last = reads[0] if reads else ("SELECT 1", ())
        parts = ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(writes))
        return f"WITH {parts} {last[0]}", [p for _, params in writes + [last] for p in params]

    count_cap = 10_000  # a million index entries take most of a second to count: past this, an estimate
    id_ranges = "(SELECT * FROM {table} WHERE {ranges} OFFSET 0) x WHERE {where}"  # OFFSET 0: the planner may
    # not add the index of the where to the id ranges (it did, reading 750,000 index entries)
    durable = "SET LOCAL synchronous_commit TO on"

    def compact(self, driver, cur):
        """VACUUM FULL of the three tables: each is written anew, locked meanwhile (PostgreSQL's
        autovacuum already makes deleted rows' space reusable; this gives it back to the disk)."""
        for table in [driver.table, driver.state_table] + ([driver.failed_table] if driver.failed_table else []):
            cur.execute(f"VACUUM FULL {self.quote(table)}")

    def channel(self, driver):
        return self.quote(f"{driver.table}_pushed")

    claim_index = "queue, available_at, id"  # the claim's order, so that it reads only the rows it takes

    def worker_session(self, driver, cur):
        """LISTEN for pushes; and a worker's own commits (claims, starts, acks, releases, and
        what its jobs push) do not wait for the disk: a crash can lose only the last of them, a
        suffix in commit order (the WAL's), so a job may run again but none is lost (a push by
        the app, on its own connection, stays synchronous). No bitmap scans: the planner took
        one for the claim on a table whose statistics said it was small, which reads every ready
        row (and every dead index entry, which a bitmap scan never marks dead) to sort them and
        lock the first few: a claim grew with the backlog, and a drain with its square."""
        cur.execute(f"LISTEN {self.channel(driver)}")
        cur.execute("SET synchronous_commit TO off")
        cur.execute("SET enable_bitmapscan TO off")

    tidy_every = 10_000

    def tidy(self, driver, cur):
        """VACUUM the jobs and state tables (skipped when another worker is at it): each job
        leaves three dead rows (its claim, its start, its delete) and a push's marker one,
        autovacuum looks once a minute (if it is on), and a table with half a million of them
        doubled the server's time per job (claims and starts step over them). It takes about
        50 ms for 10,000 jobs (a user that does not own a table gets a warning from the server,
        and nothing is done)."""
        skip = " (SKIP_LOCKED)" if cur.connection.info.server_version >= 120000 else ""  # (PostgreSQL 12+)
        cur.execute(f"VACUUM{skip} {self.quote(driver.table)}, {self.quote(driver.state_table)}")

    def upgrade(self, driver, cur):
        """Tables of queue.py 1.2 or older: the claim's index ends with the id (see claim_index;
        `table` has just made the new one)."""
        cur.execute(f"DROP INDEX IF EXISTS {self.quote(driver.table + '_queue_available_at')}")

    def notify(self, driver, queue):
        return [("SELECT pg_notify(%s, %s)", (f"{driver.table}_pushed", queue))]

    def claim(self, driver, cur, queues, done, now, until, count=1):
        for index, queue_name in enumerate(queues):
            self._after_deleting(driver, cur, [] if index else done, "claim", [now, now, until, queue_name, now, count])
            taken = _in_order(cur.fetchall(), queue_name)
            if taken:
                return taken
        return []

    def start(self, driver, cur, done, id_, stamp, until):
        self._after_deleting(driver, cur, done, "start", [until, id_, stamp])
        return cur.rowcount == 1

    sends_ahead = True

    def send_start(self, driver, conn, start):
        """Send a start (_Ahead) without waiting for its reply (read by started()): one statement
        that deletes the finished ids and sets the attempt count and the reservation."""
        t = self.quote(driver.table)
        self._send(conn, f"WITH done AS (DELETE FROM {t} WHERE id = ANY(%s::BIGINT[])) UPDATE {t} SET attempts = %s, "
                         "available_at = %s WHERE id = %s AND reserved_at = %s", start.params)

    def execute(self, cur, sql, params):
        """One statement sent by libpq (_send), its parameters as text (bytes as binary):
        psycopg's own adaptation of a push's ten parameters cost it a tenth of its time."""
        conn = cur.connection
        if sql not in conn.__dict__.get("_queue_prepared", ()) and (
                len(conn.__dict__.get("_queue_prepared", ())) >= 200 or conn.info.encoding != "utf-8"
                or any(type(p) in (list, tuple, dict) for p in params)):  # (psycopg encodes text for the connection)
            return cur.execute(sql, params)
        binary = [type(p) in (bytes, bytearray, memoryview) for p in params]
        values = [p if kind else None if p is None else (("true" if p else "false") if type(p) is bool else str(p)).encode()
                  for p, kind in zip(params, binary)]
        self._send(conn, sql, values, [int(kind) for kind in binary])
        self.started(conn)

    def _send(self, conn, sql, values, formats=None):
        """Send a statement (placeholders %s) as one prepared once per connection, its values as
        libpq takes them; its reply is read by started()."""
        prepared = conn.__dict__.setdefault("_queue_prepared", {})
        name = prepared.get(sql)
        if name is None:
            name, numbered = b"queue_%d" % len(prepared), iter(range(1, len(values) + 1))
            self._raise_for(conn, conn.pgconn.prepare(name, re.sub("%s", lambda _: f"${next(numbered)}", sql).encode()))
            prepared[sql] = name
        conn.pgconn.send_query_prepared(name, values, param_formats=formats)
        conn.wait(self._generators().send(conn.pgconn))

    def started(self, conn):
        """Read the reply of the statement sent on conn; for a start sent ahead, did it count the
        attempt (its claim held)?"""
        rows = 0
        for result in conn.wait(self._generators().fetch_many(conn.pgconn)):
            self._raise_for(conn, result)
            rows += result.command_tuples or 0
        return rows == 1

    @staticmethod
    def _generators():
        from psycopg import generators
        return generators

    @staticmethod
    def _raise_for(conn, result):
        """Raise what psycopg would for a failed result (a connection that died: OperationalError)."""
        import psycopg
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError((result.error_message or b"").decode(errors="replace").strip())
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)

    def _after_deleting(self, driver, cur, done, statement, params):
        """Run one of the driver's statements, deleting the ids in `done` in the same statement
        (WITH done AS (DELETE ...)): one round trip, one commit."""
        if done:
            cur.execute(f"WITH done AS (DELETE FROM {self.quote(driver.table)} WHERE id = ANY(%s)) "
                        + driver._sql[statement], [list(done)] + params)
        else:
            cur.execute(driver._sql[statement], params)

    def wait(self, driver, conn, seconds, mark=None):
        """Sleep until a push to our table is notified (or `seconds` pass), in slices of 0.25 s
        so that a stopping worker returns quickly; every second it also looks for a ready job,
        for a delayed job that came due (no push notifies it) or a notification lost."""
        deadline, looked = time.monotonic() + seconds, time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (driver.interrupt is not None and driver.interrupt.is_set()):
                return False
            if list(conn.notifies(timeout=min(left, 0.25), stop_after=1)):
                return True
            if time.monotonic() - looked >= 1.0:
                looked = time.monotonic()
                if self.ready(driver, conn):
                    return True


_MARK_TTL = 300.0  # seconds a write's marker is kept: far longer than a write is retried
_SLOT_MARGIN = 0.05  # seconds a slot's lease outlasts what was asked (see take_slot)


_BATCH_WORK = 0.05  # seconds of work a worker claims at once (database and redis: see _Prefetch)


class _Claim:
    """The receipt of the jobs of one claim: its stamp (database: their reserved_at, which
    start(), keep() and put_back() match; redis: when their reservation ends, which keep()
    moves on) and the thread's jobs claimed ahead (keep() renews them too)."""

    __slots__ = ("stamp", "held", "lost", "since")

    def __init__(self, stamp, held, since=None):
        self.stamp, self.held, self.lost = stamp, held, set()  # lost (redis): ids keep() found taken
        self.since = since  # database: the epoch of the claim, by the driver's clock


class _Ahead:
    """A database start sent without waiting for its reply (DatabaseDriver._start): the job, the
    statement's parameters (text) and the connection it went out on."""

    __slots__ = ("id", "params", "conn")

    def __init__(self, id_, params):
        self.id, self.params, self.conn = id_, [param.encode() for param in params], None


class _Prefetch:
    """A driver whose pop() claims several jobs at once (database, redis): up to `prefetch`, as
    many as this thread ran in the last _BATCH_WORK seconds, so short jobs share a claim's round
    trip while a job that takes that long is claimed alone. Each job's attempt is counted when it
    starts, so a killed worker's jobs claimed but not started come back with none counted. The
    driver keeps them in this thread's `held` (the order to run them) and gives them back in
    put_back() (a worker that stops, or that asks for other queues)."""

    def _held(self):
        """This thread's jobs claimed ahead, not started yet (in the order to run them)."""
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = collections.deque()
        return held

    def _pace(self):
        """How many jobs to claim now: up to prefetch, as many as ran lately in _BATCH_WORK s
        (the time from one pop() to the next, averaged over the last few)."""
        local, now = self._local, self.clock.time()
        handed, took = getattr(local, "handed", None), getattr(local, "took", None)
        if handed is not None:
            spent = now - handed
            local.took = took = spent if took is None else took * 0.75 + spent * 0.25
        local.handed = None
        if took is None or self.prefetch == 1:
            return 1
        return max(1, min(self.prefetch, int(_BATCH_WORK / max(took, 1e-6))))

    def _handed(self, message):
        self._local.handed = self.clock.time()
        return message

    def _next_held(self, queues):
        """The next job claimed ahead for `queues` that starts (its attempt counted), or None
        (none held; or held for other queues, given back)."""
        held = self._held()
        if held and queues != getattr(self._local, "held_for", None):
            self.put_back()
        while held:
            message = held.popleft()
            if self._start(message):
                return self._handed(message)
        return None


def _in_order(rows, queue_name):
    """A claim's rows (id, name, payload, attempts) of one queue, oldest id first."""
    return [(row[0], queue_name, row[1], row[2], row[3]) for row in sorted(rows, key=lambda row: row[0])]


class _SQLDatabase:
    """A SQL database through one dialect, shared by its three stores (the jobs table, the
    failed table and the state table): every statement, this thread's connection, the one place
    errors are read and connections retried, transactions, writes made exactly once, and the
    tables. DatabaseDriver (the jobs), _SQLFailed and _SQLState use it."""

    def _statements(self):
        """Every SQL statement of the driver, in one place."""
        q, p = self.dialect.quote, self.dialect.param
        t, f, s = q(self.table), q(self.failed_table or "failed_jobs"), q(self.state_table)
        ready = f"FROM {t} WHERE queue = {p} AND available_at <= {p} ORDER BY available_at, id LIMIT {p}"
        reserve = f"UPDATE {t} SET reserved_at = {p}, ran_at = {p}, available_at = {p}"
        return {
            "insert": f"INSERT INTO {t} (name, queue, payload, attempts, available_at, created_at) VALUES ",
            "next": f"SELECT id, name, payload, attempts {ready}{self.dialect.skip_locked}",
            "reserve": f"{reserve} WHERE id IN ",
            "claim": f"{reserve} WHERE id IN (SELECT id {ready}{self.dialect.skip_locked}) "
                     f"RETURNING id, name, payload, attempts",
            "release": f"UPDATE {t} SET reserved_at = NULL, available_at = {p}, attempts = {p} WHERE id = {p}",
            "start": f"UPDATE {t} SET attempts = attempts + 1, available_at = {p} WHERE id = {p} AND reserved_at = {p}",
            "keep": f"UPDATE {t} SET available_at = {p} WHERE reserved_at = {p} AND id IN ",
            "put_back": f"UPDATE {t} SET available_at = reserved_at, reserved_at = NULL WHERE reserved_at = {p} AND id IN ",
            "delete": f"DELETE FROM {t} WHERE id IN ",
            "clearable": f"SELECT {{columns}} FROM {t} WHERE queue = {p} AND (reserved_at IS NULL OR available_at <= {p}) "
                         f"LIMIT {p}{self.dialect.skip_locked}",
            **self._count_statements(t, f, p),
            "add_failed": f"INSERT INTO {f} (driver, connection, queue, name, payload, exception, failed_at, "
                          f"created_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
            "failed": f"SELECT {{columns}} FROM {f}{{where}} ORDER BY id {{order}} LIMIT {{limit}}",
            "forget": f"DELETE FROM {f}",
            "failed_upto": f"SELECT id FROM {f}{{where}} ORDER BY id LIMIT 1 OFFSET {{offset}}",
            "mark": f"INSERT INTO {s} (name, expires_at) VALUES ({p}, {p})",
            "marked": f"SELECT 1 FROM {s} WHERE name = {p}",
            "prune": f"DELETE FROM {s} WHERE expires_at < {p}",
            "add": self.dialect.upsert_add.format(state=s, p=p),
            "value": f"SELECT value FROM {s} WHERE name = {p}",
            "slots": f"SELECT name, expires_at FROM {s} WHERE name IN ",
            "new_slot": self.dialect.insert_ignore.format(state=s, p=p),
            "take": self.dialect.take_slot.format(state=s, p=p, names="{names}"),
            "taken": f"SELECT name FROM {s} WHERE value = {p} AND name IN ",
            "hold": f"UPDATE {s} SET expires_at = {p} WHERE name = {p} AND value = {p}",
            "lock": self.dialect.upsert_lock.format(state=s, p=p),
            "unlock": f"DELETE FROM {s} WHERE name = {p}",
            "unlock_held": f"DELETE FROM {s} WHERE name = {p} AND value = {p}",
            "current": f"SELECT value FROM {s} WHERE name = {p} AND expires_at >= {p}",
            "set": self.dialect.upsert_set.format(state=s, p=p),
            "entries": f"SELECT name, value FROM {s} WHERE name >= {p} AND name < {p} AND expires_at >= {p}",
        }

    def _count_statements(self, t, f, p):
        """Counts per queue, from the claim's index (queue, available_at): the queues by a skip
        scan, then counts of index ranges, so no job row is read (reserved_at only of the jobs
        whose reservation ends within retry_after: the reserved ones). A server database counts
        up to its count_cap and estimates past it (_Estimate); failed jobs likewise, on the
        failed table's index of queue."""
        cap = f" LIMIT {self.dialect.count_cap + 1}" if self.dialect.count_cap else ""
        ready, later = (f"SELECT 1 AS one FROM {t} WHERE queue = {p} AND available_at {op} {p}" for op in ("<=", ">"))
        failed = f"SELECT 1 AS one FROM {f} WHERE queue = {p}"
        return {
            "first_queue": f"SELECT MIN(queue) FROM {t}", "ready": ready, "later": later, "failed_rows": failed,
            "counts": f"SELECT (SELECT COUNT(*) FROM ({ready}{cap}) a), (SELECT COUNT(*) FROM ({later}{cap}) b), "
                      f"(SELECT COUNT(reserved_at) FROM {t} WHERE queue = {p} AND available_at > {p} "
                      f"AND available_at <= {p}), (SELECT MIN(available_at) FROM {t} WHERE queue = {p})",
            "first_failed_queue": f"SELECT MIN(queue) FROM {f}",
            "failed_count": f"SELECT COUNT(*) FROM ({failed}{cap}) c",
        }

    @property
    def connection_name(self):
        return self.connection

    # connections and errors
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "ahead", None) is not None:
            self._settle(conn)
        if conn is None:
            conn = self.dialect.connect()
            if not getattr(self, "_checked", False):
                self.dialect.check_server(conn)
                self._checked = True
            self._local.conn = conn
            self._connected_once = True
            if self.dialect.auto_create and not getattr(self, "_created", False):
                self._create_tables(conn)
                self._created = True
            self._sync_clock(conn)
            if getattr(self._local, "ahead", None) is not None:
                self._settle(conn)
        elif self.dialect.networked and self.clock.monotonic() - (self.clock.synced or 0) > 300:
            self._sync_clock(conn)
        return conn

    def _settle(self, conn):
        """Read the reply of this thread's start sent ahead (see DatabaseDriver._start), before
        anything else goes on its connection; sent again first if that connection was lost (it
        may not have run: it sets the count, so it may run twice)."""
        ahead = self._local.ahead
        if ahead.conn is not conn:
            self.dialect.send_start(self, conn, ahead)
            ahead.conn = conn
        try:
            held = self.dialect.started(conn)
        except Exception as exc:
            if self.dialect.error_kind(exc) in ("lost", "busy", "locked"):  # rolled back, or maybe never run:
                ahead.conn = None  # sent again when _execute tries again (on this connection, or a new one)
            else:  # refused: sending it again would fail again
                self._local.ahead = None
            raise
        self._local.ahead = None
        if not held:
            log.warning("job #%s ran though its claim had lapsed (this worker stalled for %g s): it may run twice",
                        ahead.id, 0.4 * self.retry_after)

    def _sync_clock(self, conn):
        """Set the driver's clock to the server's (every new connection, and every 5 minutes). The
        server's time is taken as that of the midpoint of the round trip, so the reading with the
        shortest of up to 5 round trips counts (one under 10 ms ends it): a server that stalls
        (just restarted, say) must not set a worker's clock seconds ahead of the others', which
        would let it claim a job another worker holds. SQLite's "server" is this host's clock
        (_SQLite.server_time)."""
        cur = conn.cursor()
        try:
            best = None
            for _ in range(5):
                sent = self.clock.monotonic()
                server = self.dialect.server_time(cur, self)
                if server is None:
                    return
                received = self.clock.monotonic()
                if best is None or received - sent < best[2] - best[1]:
                    best = (server, sent, received)
                if received - sent <= 0.01:
                    break
            self.clock.sync(*best)
        finally:
            cur.close()

    def _execute(self, work, retry=True):
        """Run work(cursor) on this thread's connection, translating driver errors. A lost
        connection is reopened (see _Retry): for 30 s (retry=True) or for as long as the worker
        runs (retry='forever'); work must be safe to run again (see _write_once)."""
        policy = [None, retry]  # the _Retry, made at the first failure
        if not getattr(self, "_connected_once", False):
            retry = False  # never reached this server: say so at once
        while True:
            try:
                conn = self._conn()
                cur = conn.cursor()
                try:
                    result = work(cur)
                finally:
                    cur.close()
                if self._reconnecting:
                    log.warning("database %s: reconnected", self.dialect.where)
                    self._reconnecting = False
                return result
            except ConnectionFailed as exc:
                if not (retry and self._lost(exc, policy)):
                    raise
            except QueueError:
                raise
            except Exception as exc:
                kind = self.dialect.error_kind(exc)
                if kind == "busy":  # deadlock: the transaction was rolled back; run it again
                    continue
                if (kind == "lost" and retry or kind == "locked" and retry == "forever") and self._lost(exc, policy):
                    continue  # a push waits for a lock as long as the busy timeout says; a worker for ever
                self._drop()
                raise self._error(kind, exc) from None

    def _error(self, kind, exc):
        """The QueueError for a driver exception of a kind (or the exception itself: a bug)."""
        first = _text(exc.args[-1] if exc.args else exc).splitlines()[0]
        if kind == "missing":
            return MissingTable(f"a table of queue.py does not exist in {self.dialect.where} ({first}): run "
                                f"`python queue.py table --connection {self.connection}`")
        if kind == "column":
            return MissingTable(f"{self.dialect.where}: {first}: add the missing column "
                                "(`python queue.py table --sql` prints the columns queue.py needs)")
        if kind == "lost":
            return ConnectionFailed(f"lost the connection to {self.dialect.where}: {first}")
        if kind == "locked":
            return QueueError(f"{self.dialect.where} stayed locked by another connection: {first}")
        if kind == "refused":
            return QueueError(f"{self.dialect.where} refused: {first}")
        return exc

    def _lost(self, exc, policy):
        """Drop the connection and wait before the next try; False: give up."""
        self._drop()
        if policy[0] is None:
            forever = policy[1] == "forever"
            policy[0] = _Retry(None if forever else 30.0, self.interrupt if forever else None)
        if not self._reconnecting:
            log.warning("database %s: %s; reconnecting", self.dialect.where, _text(exc).splitlines()[0])
            self._reconnecting = True
        return policy[0].again()

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _transaction(self, cur, statements, begin=True):
        """Run statements(cur) in a transaction (begin=False: statements sends BEGIN itself);
        roll it back on any error, so that a connection never stays inside a transaction."""
        if begin:
            cur.execute(self.dialect.begin)
        try:
            result = statements(cur)
            if begin:
                cur.execute("COMMIT")
            return result
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except Exception:
                pass  # the connection is gone: the server rolled back
            raise

    def _write_once(self, statements, retry=True, durable=False):
        """Run [(sql, params), ...] in one transaction, exactly once. On a networked database
        the transaction also writes a marker to the state table, and a try after a lost
        connection first looks for it: the lost try may have committed. durable: the commit
        waits for the disk even on a worker's session (a failure, before failed() runs)."""
        d = self.dialect
        mark = f"once:{os.urandom(12).hex()}" if d.networked else None
        statements = list(statements) + ([(self._sql["mark"], (mark, self.clock.now(_MARK_TTL)))] if mark else [])
        single = None if durable and d.durable else d.one_statement(statements)  # PostgreSQL: one statement
        script = [single] if single else [(d.begin, ())] + ([(d.durable, ())] if durable and d.durable else []) \
            + statements + [("COMMIT", ())]
        tried = []

        def write(cur):
            if tried and mark and d.script(cur, [(self._sql["marked"], (mark,))]):
                return  # the lost try committed
            tried.append(True)
            if single:
                return d.execute(cur, *single)
            self._transaction(cur, lambda c: d.script(c, script), begin=False)
        self._execute(write, retry)

    # tables
    def ddl(self):
        """The statements that create this driver's tables (idempotent)."""
        d = self.dialect
        t, f, s, n = d.quote(self.table), d.quote(self.failed_table or ""), d.quote(self.state_table), d.name_type
        claim, claim_clause = d.index(self.table, d.claim_index)
        expiry, expiry_clause = d.index(self.state_table, "expires_at")
        statements = [
            f"CREATE TABLE IF NOT EXISTS {t} (id {d.key}, name {n} NOT NULL, queue {n} NOT NULL, "
            f"payload {d.blob} NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, ran_at {d.stamp} NULL, "
            f"available_at {d.stamp} NOT NULL, reserved_at {d.stamp} NULL, created_at {d.stamp} NOT NULL"
            f"{claim_clause}){d.table_options}", claim,
            f"CREATE TABLE IF NOT EXISTS {s} (name {n} NOT NULL PRIMARY KEY, value {d.text} NULL, "
            f"expires_at {d.stamp} NULL{expiry_clause}){d.table_options}", expiry,
        ]
        if self.failed_table:
            by_queue, by_queue_clause = d.index(self.failed_table, "queue")  # counts per queue, index only
            statements += [
                f"CREATE TABLE IF NOT EXISTS {f} (id {d.key}, driver VARCHAR(255) NOT NULL, "
                f"connection VARCHAR(255) NOT NULL, queue {n} NOT NULL, name {n} NOT NULL, "
                f"payload {d.blob} NOT NULL, exception {d.text} NOT NULL, failed_at {d.stamp} NOT NULL, "
                f"created_at {d.stamp} NOT NULL{by_queue_clause}){d.table_options}", by_queue]
        return [statement for statement in statements if statement]

    def create_tables(self):
        """Create the jobs, failed-jobs and state tables and the claim's index, if missing; then
        check that existing tables (Masonite's, say) have every column queue.py needs."""
        self._create_tables(self._conn())
        self._execute(lambda cur: self.dialect.upgrade(self, cur))
        checks = [(self.table, "id, name, queue, payload, attempts, ran_at, available_at, reserved_at, created_at")]
        if self.failed_table:
            checks.append((self.failed_table, "id, driver, connection, queue, name, payload, exception, failed_at"))
        for table, columns in checks:
            self._execute(lambda cur: (cur.execute(f"SELECT {columns} FROM {self.dialect.quote(table)} WHERE 1 = 0"),
                                       cur.fetchall()))

    def _create_tables(self, conn):
        cur = conn.cursor()
        try:
            for statement in self.ddl():
                cur.execute(statement)
        except Exception as exc:
            raise self._error(self.dialect.error_kind(exc), exc) from None
        finally:
            cur.close()

    def _inserts(self, rows):
        """Multi-row INSERTs of the rows: up to 100 rows, or a quarter of the largest query, each."""
        d, statements, chunk, size = self.dialect, [], [], 0
        budget = getattr(d, "packet", 1 << 30) // 4
        for row in rows + [None]:
            if chunk and (row is None or len(chunk) == 100 or size + d.payload_size(row[2]) > budget):
                values = ", ".join([f"({d.marks(6)})"] * len(chunk))
                statements.append((self._sql["insert"] + values, [v for r in chunk for v in r]))
                chunk, size = [], 0
            if row is not None:
                chunk.append(row)
                size += d.payload_size(row[2])
        return statements

    def _past_cap(self, cur, counted, rows, params):
        """A count as it was counted, or, past the dialect's count_cap, the server's estimate."""
        cap = self.dialect.count_cap
        if not cap or counted <= cap:
            return int(counted)
        return _Estimate(max(cap + 1, self.dialect.estimate(cur, self._sql[rows], params)))


class DatabaseDriver(_Prefetch, _SQLDatabase, Driver):
    """Jobs in a table (Masonite's layout). A claim is one transaction: it deletes the jobs this
    worker finished since its last claim, selects the next ready jobs in queue priority order (up
    to `prefetch` short ones) and reserves them by moving `available_at` to now + retry_after. A
    job whose worker died becomes ready again when that moment passes; keep() renews the
    reservations of a running job and of the jobs claimed with it.
    The same connection keeps the failed store (failed_table) and the state table (markers
    that make writes exactly once)."""

    name = "database"
    defaults = dict(Driver.defaults, connection="sqlite", table="jobs", failed_table="failed_jobs",
                    state_table="queue_state", retry_after=90, prefetch=20)
    kinds = dict(Driver.kinds, connection=_string, table=_table, failed_table=_maybe_table, state_table=_table,
                 retry_after=_lease, prefetch=_whole)

    def __init__(self, options, config):
        super().__init__(options, config)
        self.connection = options["connection"]
        db = config.database(self.connection, "DRIVERS['database']['connection']")
        self.dialect = _Dialect.registry[db["driver"]](db, config.folder)
        self.table = options["table"]
        self.failed_table = options["failed_table"]
        self.state_table = options["state_table"]
        self.retry_after = float(options["retry_after"])
        self.prefetch = options["prefetch"]
        self.keep_every = max(0.05, self.retry_after / 3)
        self.limit_name = self.dialect.limit_name
        self._local = threading.local()
        self._reconnecting = False
        self._started = 0  # jobs this process started since it last tidied the table (dialect.tidy)
        self._sql = self._statements()
        self.own_state = _SQLState(self)
        self.own_failed = _SQLFailed(self) if self.failed_table else None

    # the interface
    def max_payload(self):
        if not getattr(self, "_checked", False):
            self._execute(lambda cur: None)  # connect: the server's limits are then known
        return self.dialect.max_payload

    def payload_size(self, payload):
        return self.dialect.payload_size(payload)

    def put(self, messages):
        """Insert the messages in one transaction: all of them or none, exactly once."""
        self._write_once(self._writes(messages, self))

    def _writes(self, messages, sql):
        """The statements that insert the messages (and wake idle workers), with `sql`'s dialect."""
        now = self.clock.time()
        created = _stamp(now)
        rows = [(m.name, m.queue, m.payload, m.attempts, _stamp(now + m.delay) if m.delay else created, created)
                for m in messages]
        wake = [statement for q in sorted({m.queue for m in messages}) for statement in sql.dialect.notify(sql, q)]
        return sql._inserts(rows) + wake

    def put_through(self, messages, conn):
        """Insert the messages (and take the locks of unique jobs) through the app's own
        connection, inside the app's transaction: they commit or roll back with the app's rows
        (the outbox pattern). Nothing is committed here. False if a unique job was left out."""
        raw = getattr(conn, "connection", None) if type(conn).__module__.startswith("django") else conn
        if raw is None:  # a Django connection that has not connected yet
            conn.ensure_connection()
            raw = conn.connection
        module = type(raw).__module__.split(".")[0]
        kinds = {"sqlite3": "sqlite", "pymysql": "mysql", "psycopg": "postgres"}
        if module not in kinds:
            raise QueueError(f"push(using=...) takes a sqlite3, pymysql or psycopg connection, not {type(raw).__name__}")
        if kinds[module] != self.dialect.name:
            raise QueueError(f"push(using=...) got a {module} connection, but the database driver's connection "
                             f"{self.connection!r} is {self.dialect.name}: no worker would read the job there")
        twin = copy.copy(self)
        twin.dialect = _Dialect.registry[kinds[module]](_Dialect.registry[kinds[module]].defaults, self.config.folder)
        twin._sql = twin._statements()
        cur = raw.cursor()
        try:
            locks = _SQLState(twin)
            kept = [m for m in messages if not m.lock or locks._take_lock(
                lambda statements: _Dialect.script(twin.dialect, cur, statements), *m.lock)]
            for sql, params in self._writes(kept, twin):
                cur.execute(sql, params)
        finally:
            cur.close()
        return len(kept) == len(messages)

    def pop(self, queues, wait=0.0):
        """The next job this thread claimed ahead, or a claim in one transaction that also
        deletes the jobs this thread acked (the dialect's claim(): 2 round trips on MySQL, 1 on
        PostgreSQL). A claim takes up to `prefetch` jobs, as many as this thread ran in the last
        _BATCH_WORK seconds (one, for jobs that take that long). With nothing ready, a dialect
        that can be woken (PostgreSQL's LISTEN, SQLite's WAL) waits up to `wait` s for a push."""
        local, d = self._local, self.dialect
        count, message = self._pace(), self._next_held(queues)
        if message is not None:
            return message
        if self._started >= d.tidy_every:
            self._started = 0
            _, exc, _ = _guard(lambda: self._execute(lambda cur: d.tidy(self, cur)))
            if exc is not None:
                log.warning("database %s: tidying %s: %s", d.where, self.table, _summary(exc))
        held, done = self._held(), self._acked()

        def session(cur):
            if getattr(local, "worker_conn", None) is not local.conn:
                d.worker_session(self, cur)
                local.worker_conn = local.conn
            self.waiting_for, deadline = queues, time.monotonic() + wait
            while True:  # a wait woken by a push another worker took goes on waiting, never blind
                mark = d.mark(local.conn) if wait else None  # before the claim: a push after it wakes the wait
                since = self.clock.time()
                now, until = self.clock.now(0, self.retry_after)
                rows = d.claim(self, cur, queues, done, now, until, count)
                del done[:]
                left = deadline - time.monotonic()
                if rows or left <= 0 or not d.wait(self, local.conn, left, mark):
                    break
            if not rows:
                return False
            receipt = _Claim(now, held, since)
            held.extend(Message(id_, queue_name, name, _as_bytes(payload), attempts, receipt=receipt)
                        for id_, queue_name, name, payload, attempts in rows)
            local.held_for = queues
            return True
        while self._execute(session, retry="forever"):
            message = self._next_held(queues)
            if message is not None:
                return message
        return None

    def _start(self, message):
        """Before a claimed job runs, in one transaction: delete the jobs this thread acked (so a
        worker killed during this job runs none of them again), count this job's attempt and
        renew its reservation. False if its claim lapsed and another worker took it. A dialect
        that sends ahead (PostgreSQL) sends it without waiting while the claim is young (made
        under 0.4 x retry_after ago: no other worker can hold the job yet), and the job runs
        meanwhile; its reply is read before this thread's next statement (_settle)."""
        done, until, claim = self._acked(), self.clock.now(self.retry_after), message.receipt
        if self.dialect.sends_ahead and self.clock.time() - claim.since < 0.4 * self.retry_after:
            ahead = _Ahead(message.id, ["{%s}" % ",".join(map(str, done)), str(message.attempts + 1), until,
                                        str(message.id), claim.stamp])
            self._execute(lambda cur: self._send_ahead(cur.connection, ahead), retry="forever")
            started = True
        else:
            started = self._execute(lambda cur: self.dialect.start(self, cur, done, message.id, claim.stamp, until),
                                    retry="forever")
        del done[:]
        if started:
            message.attempts += 1
            self._started += 1
        return started

    def _send_ahead(self, conn, ahead):
        self.dialect.send_start(self, conn, ahead)
        ahead.conn, self._local.ahead = conn, ahead

    def put_back(self):
        """Make this thread's jobs claimed ahead ready again at once (a worker that stops, or
        that is asked for other queues), ahead of jobs that came due after the claim; they had
        not started, so no attempt of theirs was counted. The SQL sets available_at before
        reserved_at: MySQL assigns from left to right."""
        held = self._held()
        if held:
            ids, stamp = [m.id for m in held], held[0].receipt.stamp
            held.clear()
            self._execute(lambda cur: cur.execute(f"{self._sql['put_back']}({self.dialect.marks(len(ids))})",
                                                  (stamp, *ids)), retry="forever")

    def _acked(self):
        """Ids this thread acked since its last claim (deleted by that claim's transaction)."""
        done = getattr(self._local, "done", None)
        if done is None:
            done = self._local.done = []
        return done

    def ack(self, message, failed=False):
        self._acked().append(message.id)  # deleted by the next pop() or close() of this thread

    def release(self, message, delay=0.0):
        values = (self.clock.now(delay), message.attempts, message.id)
        self._execute(lambda cur: cur.execute(self._sql["release"], values), retry="forever")

    def keep(self, message):
        """Renew the reservation of the running job and of the jobs claimed with it that wait
        (one statement, matched by the claim's time)."""
        claim = message.receipt
        ids = [message.id] + [m.id for m in list(claim.held) if m.receipt is claim]
        values = (self.clock.now(self.retry_after), claim.stamp, *ids)
        self._execute(lambda cur: cur.execute(f"{self._sql['keep']}({self.dialect.marks(len(ids))})", values))

    def stats(self, queues=None):
        return {q: {k: c[k] for k in ("ready", "delayed", "reserved")} for q, c in self._counts(queues).items()}

    def oldest_ready(self):
        now = self.clock.time()
        return {q: max(0.0, now - c["oldest"]) for q, c in self._counts().items() if c["oldest"] is not None}

    def _counts(self, queues=None):
        """{queue: ready, delayed, reserved, oldest (the epoch its oldest ready job came due)},
        each queue counted on the claim's index (see "counts")."""
        now = self.clock.now()

        def count(cur):
            names = list(queues or ()) or _skip_scan(cur, self._sql["first_queue"], self.dialect.param)
            result = {}
            horizon = self.clock.now(self.retry_after + 1)  # no reservation ends later than this
            for name in names:
                cur.execute(self._sql["counts"], (name, now, name, now, name, now, horizon, name))
                ready, later, reserved, first = cur.fetchone()
                ready = self._past_cap(cur, ready, "ready", (name, now))
                later = self._past_cap(cur, later, "later", (name, now))
                result[name] = {"ready": ready, "delayed": type(later)(max(0, later - reserved)),
                                "reserved": int(reserved), "oldest": _epoch(first) if ready and first is not None else None}
            return result
        return self._execute(count)

    def clear(self, queue, batch=1000):
        now, count = self.clock.now(), 0
        locks = bool(self.state_store().entries("unique:"))  # else no payload need be read
        select = self._sql["clearable"].format(columns="id, payload" if locks else "id, NULL")

        def delete(cur):
            cur.execute(select, (queue, now, batch))
            rows = cur.fetchall()
            if rows:
                cur.execute(f"{self._sql['delete']}({self.dialect.marks(len(rows))})", [r[0] for r in rows])
            return rows
        while True:
            rows = self._execute(lambda cur: self._transaction(cur, delete))
            _free_unique_locks(self.state_store(), (_as_bytes(payload) for _, payload in rows)) if locks else None
            count += len(rows)
            if len(rows) < batch:
                return count

    def close(self):
        try:
            self.put_back()
            self._delete_acked()
            if getattr(self._local, "ahead", None) is not None:
                self._execute(lambda cur: None, retry="forever")  # the reply of a start sent ahead
        finally:
            self._drop()

    def _delete_acked(self):
        done = self._acked()
        if done:
            self._execute(lambda cur: cur.execute(f"{self._sql['delete']}({self.dialect.marks(len(done))})", done),
                          retry="forever")
            del done[:]

    # where its failed jobs and state live: its own connection (unless `failed` names another)
    own_stores = True

    def fail(self, message, record):
        """Into this driver's own failed table and out of the jobs table in one transaction."""
        if self.own_failed is None or self.failed_store() is not self.own_failed:
            return super().fail(message, record)
        now = self.clock.now()
        self._write_once([(self._sql["add_failed"], (self.name, self.connection, message.queue, message.name,
                                                     message.payload, record, now, now)),
                          (f"{self._sql['delete']}({self.dialect.param})", (message.id,))], retry="forever",
                         durable=True)  # on disk before failed() runs: it runs once
        return True

class _SQLState(StateStore):
    """The state store on a database connection: the state table, seen by every worker of every
    host that shares the database. Its writes go through the job driver's connections."""

    def __init__(self, db):
        super().__init__(db)
        self.dialect, self._sql = db.dialect, db._sql

    def prune(self, retry=True):
        """Delete expired entries of the state table (a worker does it every minute)."""
        now = self.clock.now()
        self.db._execute(lambda cur: cur.execute(self._sql["prune"], (now,)), retry)

    def take_slot(self, names, hold, holder):
        """Lease one of the slots `names` that is free (never used, or its lease ended) to
        `holder` for `hold` seconds; return its name, or None when every slot is held. One
        statement decides, so every worker of every host agrees. The lease runs 50 ms longer
        than asked: the statement may wait that long for its lock after `now` was read, and
        hosts' clocks agree only to a few milliseconds; a slot is never free early."""
        d = self.dialect
        now, until = self.clock.now(0, hold + _SLOT_MARGIN)
        marks = d.marks(len(names))
        take = (self._sql["take"].replace("({names})", f"({marks})"), (holder, until, now, *names))
        which = (self._sql["taken"] + f"({marks})", (holder, *names))

        def attempt(cur):
            rows = d.script(cur, [take, which])
            if not rows and self._missing_slots(cur, names):  # first use, or pruned: make them, then again
                rows = d.script(cur, [take, which])
            return rows[0][0] if rows else None
        return self.db._execute(attempt)

    def _missing_slots(self, cur, names):
        have = {row[0] for row in self.dialect.script(cur, [(self._sql["slots"] + f"({self.dialect.marks(len(names))})",
                                                             tuple(names))])}
        missing = [name for name in names if name not in have]
        if missing:
            free = _stamp(0)
            self.dialect.script(cur, [(self._sql["new_slot"], (name, free)) for name in missing])
        return bool(missing)

    def hold_slot(self, name, holder, hold):
        """Extend (hold > 0) or end (hold = 0) a lease that `holder` has on slot `name`."""
        values = (self.clock.now(hold), name, holder)
        self.db._execute(lambda cur: cur.execute(self._sql["hold"], values))

    def slots_free_in(self, names):
        """Seconds until the first of the slots `names` is free (0 if one is)."""
        sql = self._sql["slots"] + f"({self.dialect.marks(len(names))})"
        rows = self.db._execute(lambda cur: (cur.execute(sql, tuple(names)), cur.fetchall())[1])
        if len(rows) < len(names):
            return 0.0
        first = min(_epoch(str(row[1])) for row in rows)
        return max(0.0, first - self.clock.time())

    def lock(self, name, holder, ttl):
        """Take the lock `name` for `ttl` seconds if it is free or expired; True if taken."""
        return self.db._execute(lambda cur: self._take_lock(lambda statements: self.dialect.script(cur, statements),
                                                         name, holder, ttl))

    def _take_lock(self, script, name, holder, ttl):
        """The lock taken through script(statements); the row count cannot tell (pymysql counts
        found rows): the holder is read back."""
        now, until = self.clock.now(0, ttl)
        rows = script([(self._sql["lock"], (name, holder, until, now, holder)), (self._sql["value"], (name,))])
        return bool(rows) and rows[0][0] == holder

    def unlock(self, name, holder=None, retry=True):
        """Free the lock (or counter) `name`; with a holder, only if that holder has it."""
        sql, values = (self._sql["unlock"], (name,)) if holder is None else (self._sql["unlock_held"], (name, holder))
        self.db._execute(lambda cur: cur.execute(sql, values), retry)

    def value_of(self, name):
        """The value of an entry of the state table (a counter as a number), None if missing or expired."""
        now = self.clock.now()
        rows = self.db._execute(lambda cur: (cur.execute(self._sql["current"], (name, now)), cur.fetchall())[1])
        return rows[0][0] if rows else None

    def entries(self, prefix, retry=True):
        """{name: value} of the live entries of the state table whose name starts with `prefix`."""
        values = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), self.clock.now())
        return dict(self.db._execute(lambda cur: (cur.execute(self._sql["entries"], values), cur.fetchall())[1], retry))

    def put_entries(self, entries, adds=(), retry=True):
        """In one transaction: set entries [(name, value, ttl)] and add to counters [(name, amount, ttl)]."""
        now = self.clock.time()
        statements = [(self._sql["set"], (name, value, _stamp(now + ttl))) for name, value, ttl in entries]
        statements += [(self._sql["add"], (name, amount, _stamp(now + ttl), _stamp(now), amount, amount,
                                           _stamp(now + ttl))) for name, amount, ttl in adds]
        if statements:
            self.db._write_once(statements, retry)

    def add_to(self, name, amount=1, ttl=3600.0):
        """Add `amount` to the counter `name` (0 if missing or expired), keep it `ttl` seconds
        more, and return its new value, atomically across processes and hosts."""
        now, until = self.clock.now(0, ttl)
        d = self.dialect

        def add(cur):
            rows = d.script(cur, [(d.begin, ()), (self._sql["add"], (name, amount, until, now, amount, amount, until)),
                                  (self._sql["value"], (name,))])
            d.script(cur, [("COMMIT", ())])
            return int(float(rows[0][0]))
        return self.db._execute(lambda cur: self.db._transaction(cur, add, begin=False))


class _SQLFailed(FailedStore):
    """The failed store on a database connection: the failed_table."""

    def __init__(self, db):
        self.db, self.dialect, self._sql = db, db.dialect, db._sql

    @property
    def clock(self):
        return self.db.clock  # the driver's (a test may put in a clock of its own)

    def add_failed(self, driver_name, connection, message, exception):
        """Keep a failed job: its payload, and its exception with the full traceback. A message
        of another driver is kept once (a marker of its id, for a week): if its worker died
        before the ack, it comes back and is failed again; that second time returns False."""
        now, week = self.clock.now(), 7 * 86400.0
        marker = f"failed:{driver_name}:{message.queue}:{message.id}" if message.id else None
        if marker and self.db.own_state.value_of(marker) is not None:
            return False
        self.db._write_once([(self._sql["add_failed"], (driver_name, connection, message.queue, message.name,
                                                     message.payload, exception, now, now))]
                         + ([(self._sql["set"], (marker, "1", self.clock.now(week)))] if marker else []),
                         retry="forever")
        return True

    def failed_jobs(self, ids=None, limit=None, newest_first=False, payloads=True):
        """The failed jobs (all, or those of `ids`) as dicts, oldest first (or newest first), at
        most `limit` of them; payloads=False leaves the payloads in the database."""
        columns = ["id", "driver", "connection", "queue", "name", "exception", "failed_at"] + (["payload"] if payloads else [])
        where = f" WHERE id IN ({self.dialect.marks(len(ids))})" if ids else ""
        sql = self._sql["failed"].format(columns=", ".join(columns), where=where,
                                         order="DESC" if newest_first else "ASC", limit=int(limit or 2**62))

        def select(cur):
            cur.execute(sql, list(ids or ()))
            return [dict(zip(columns, row)) for row in cur.fetchall()]
        return self.db._execute(select)

    def forget(self, ids=None, older_than=None, batch=10000):
        """Delete failed jobs (all when ids is None, or those failed over `older_than` seconds
        ago), `batch` at a time, oldest first (each a short transaction, however many there are);
        return how many."""
        if ids is not None and not ids:
            return 0
        where, params = "", list(ids or ())
        if ids is not None:
            where = f" WHERE id IN ({self.dialect.marks(len(ids))})"
        elif older_than is not None:
            where, params = f" WHERE failed_at < {self.dialect.param}", [self.clock.now(-older_than)]
        upto = self._sql["failed_upto"].format(where=where, offset=batch - 1)
        count = 0

        def delete(cur):
            last = None
            if ids is None:  # the id of the batch's last row: delete up to it
                cur.execute(upto, params)
                last = (cur.fetchall() or [[None]])[0][0]
            bound = (f"{' AND' if where else ' WHERE'} id <= {self.dialect.param}", [last]) if last is not None else ("", [])
            cur.execute(self._sql["forget"] + where + bound[0], params + bound[1])
            return cur.rowcount, last is not None
        while True:
            deleted, more = self.db._execute(delete)
            count += deleted
            if not more:
                return count

    def failed_counts(self):
        """{queue: number of failed jobs}, counted per queue on the failed table's queue index."""
        def count(cur):
            result = {}
            for name in _skip_scan(cur, self._sql["first_failed_queue"], self.db.dialect.param):
                cur.execute(self._sql["failed_count"], (name,))
                result[name] = self.db._past_cap(cur, cur.fetchone()[0], "failed_rows", (name,))
            return result
        return self.db._execute(count)

    def retry_failed(self, ids=None, queue=None, target=None, batch=200):
        """Put failed jobs (all, or those of `ids`) back at the end of their queue (or `queue`),
        on their driver (or `target`), oldest first; yield each row moved. Into this database's
        own jobs table a batch moves in one transaction: safe to run twice at once or to kill.
        Onto another driver a row stays in the failed store, locked, until that driver has it:
        a kill in between may put it back twice."""
        d, sql = self.dialect, self._sql
        ids = list(ids) if ids else None
        last = self.db._execute(lambda cur: (cur.execute(sql["failed"].format(columns="id", where="", order="DESC",
                                                                              limit=1)), cur.fetchall())[1])
        while last:  # those failed before it began: a job retried onto sync may fail again meanwhile
            where = f" WHERE id IN ({d.marks(len(ids))})" if ids else f" WHERE id <= {int(last[0][0])}"
            select = sql["failed"].format(columns="id, driver, connection, queue, name, payload", where=where,
                                          order="ASC", limit=batch) + d.skip_locked
            later = []  # onto a driver that runs jobs in this process (sync, async): after the commit
            moved = self.db._execute(lambda cur: self.db._transaction(
                cur, lambda c: self._move(c, select, ids, queue, target, later)))
            for driver, message in later:
                driver.put([message])
            yield from moved
            if not moved or ids:
                return

    def _move(self, cur, select, ids, queue, target, later):
        cur.execute(select, list(ids or ()))
        rows = [dict(zip(("id", "driver", "connection", "queue", "name", "payload"), r)) for r in cur.fetchall()]
        mine, now = [], self.clock.now()
        for row in rows:
            row["queue"] = queue or row["queue"]
            payload = _as_bytes(row["payload"])
            payload = readdress(payload, row["queue"]) if queue else payload
            driver = target(row) if target else self.db
            message = Message(None, row["queue"], row["name"], payload, 0, 0.0)
            if driver is self.db:
                mine.append((row["name"], row["queue"], payload, 0, now, now))
            elif not driver.shared:
                later[len(later):] = [(driver, message)]
            else:
                driver.put([message])
            row["target"] = driver
        if rows:
            self.dialect.script(cur, self.db._inserts(mine) + [
                (self._sql["forget"] + f" WHERE id IN ({self.dialect.marks(len(rows))})", [r["id"] for r in rows])])
        return rows


# The async driver #############################################################################
class AsyncDriver(Driver):
    """Runs jobs in the pushing process: on a thread pool (`mode: threading`) or a process pool
    (`mode: multiprocess`) of `workers`; `blocking: True` runs each job inside push(). Retries
    and failures follow the same rules as every driver; at a normal interpreter exit, push()ed
    jobs (and their pending retries) are finished first."""

    name = "async"
    shared = False
    defaults = dict(Driver.defaults, blocking=False, mode="threading", workers=1)
    kinds = dict(Driver.kinds, blocking=_flag, mode=_choice("threading", "multiprocess"), workers=_whole)

    def __init__(self, options, config):
        super().__init__(options, config)
        self.blocking = options["blocking"]
        self.mode = options["mode"]
        self.workers = options["workers"]
        self.worker = Worker(self, attempts=options["attempts"], callback=options["callback"])
        self._pool = None
        self._pool_lock = threading.Lock()  # one thread at a time makes, replaces or forks into a pool
        self._pending = 0
        self._idle = threading.Condition()
        self._timers = set()
        self._in_children, self._waiting = 0, collections.deque()  # multiprocess: in the pool, waiting for it
        self._inline = SyncDriver({k: options[k] for k in SyncDriver.defaults}, config) if self.blocking else None
        if self._inline is not None:
            self._inline.name = self.name  # its failed jobs are the async driver's (retry pushes them here)
        if not self.blocking:
            atexit.register(self.join)

    def _executor(self):
        if self._pool is None:
            import concurrent.futures as cf
            if self.mode == "multiprocess":
                self._pool = cf.ProcessPoolExecutor(self.workers, initializer=_pool_child)
            else:
                self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="queue-async")
        return self._pool

    def put(self, messages):
        if self.blocking:  # the sync driver's path, with this driver's settings
            return self._inline.put(messages)
        for message in messages:
            message.id = message.id or _new_id()
            self._schedule(message, message.delay)

    def _schedule(self, message, delay):
        with self._idle:
            self._pending += 1
        if delay > 0:
            timer = threading.Timer(delay, self._submit, (message,))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()
        else:
            self._submit(message)

    def _submit(self, message):
        self._timers.discard(threading.current_thread())
        message.attempts += 1
        if self.mode == "multiprocess":
            # at most `workers` in the pool, the others wait here: a child that dies (os._exit)
            # breaks the pool, whose attempts under way all fail (one each, as a worker's lanes)
            with self._idle:
                if self._in_children >= self.workers:
                    self._waiting.append(message)
                    return
                self._in_children += 1
        self._start(message)

    def _start(self, message):
        if self.mode == "multiprocess":
            return self._start_in_child(message)
        try:
            self._executor().submit(self._run, message)
        except RuntimeError:
            self._run(message)  # the interpreter is shutting down: run it here rather than drop it

    def _start_in_child(self, message):
        """Submit an attempt to the process pool. Pools are made, replaced and forked into (a
        submit() may fork) by one thread at a time: a child forked by one thread while another
        forks inherits the other's pipes, and its pool would never see that child die. A broken
        pool is replaced once, by whichever thread finds it broken first."""
        with self._pool_lock:
            future = None
            while future is None:
                pool = self._executor()
                try:
                    future = pool.submit(_attempt_in_child, message, self.worker.callback)
                except RuntimeError:
                    if not getattr(pool, "_broken", False):
                        break  # the interpreter is shutting down
                    self._retire(pool)  # a child died: a new pool
                    self._pool = None
        if future is None:
            return self._run(message)  # at exit: run it here rather than drop it
        # settled on a thread of its own: a broken pool calls back under its own lock (Python
        # 3.12+), which a release or the next submit() would wait for forever
        future.add_done_callback(lambda f: threading.Thread(target=self._settle_child, args=(message, f),
                                                            name="queue-async-settle", daemon=True).start())

    def _run(self, message):
        try:
            self.worker.process(message)
        finally:
            self._next_in_pool()
            self._finished()

    def _settle_child(self, message, future):
        """Settle, in this process, the outcome of an attempt that a child ran (done, raised,
        released, failed or deleted itself); a child that died failed its attempt."""
        try:
            try:
                outcome = future.result()
            except BaseException as exc:  # the child process died
                outcome = (exc, _format(exc), None)
            self.worker.process(message, outcome=outcome)
        finally:
            self._next_in_pool()
            self._finished()

    @staticmethod
    def _retire(pool):
        """A broken pool's children are ended for good (SIGKILL): a child whose job ignored the
        pool's SIGTERM would otherwise outlive it and hold the program's exit."""
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            _guard(process.kill)
        _guard(pool.shutdown, False)

    def _next_in_pool(self):
        """A multiprocess attempt ended: its place in the pool goes to the next one waiting."""
        if self.mode == "multiprocess":
            with self._idle:
                following = self._waiting.popleft() if self._waiting else None
                self._in_children -= following is None
            self._start(following) if following is not None else None

    def _finished(self):
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def pop(self, queues, wait=0.0):
        raise QueueError("the async driver runs jobs inside the program that pushes them: there is "
                         "nothing for `python queue.py work` to do (use the database or amqp driver)")

    def ack(self, message, failed=False):
        pass

    def release(self, message, delay=0.0):
        self._schedule(message, delay)

    def clear(self, queue):
        count = 0
        for timer in list(self._timers):
            if timer.args[0].queue == queue:
                timer.cancel()
                self._timers.discard(timer)
                self._finished()
                count += 1
        return count

    def stats(self, queues=None):
        return {self.default_queue: {"ready": self._pending, "delayed": len(self._timers), "reserved": 0}}

    def join(self, timeout=None):
        """Wait until every pushed job (and retry) has finished; True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            if self._pending:
                log.info("async: waiting for %d job(s) to finish", self._pending)
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self):
        self.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _attempt_in_child(message, callback):
    """Run one attempt in a process-pool child, by a worker's own attempt path (the timeout,
    before hooks, middleware, an `async def` callback); return (exception or None, traceback
    text, what the job asked for: ("release", delay), ("fail", exc), ("delete", None) or None)
    for the parent to settle."""
    worker = _driver("async").worker
    worker.callback = callback
    lane = worker.lane
    try:
        header, body = lane._open(message)
    except BadPayload as error:
        return error, None, None
    spent = lane._spent(message, header)  # past its retry_until deadline: failed unrun
    if spent is not None:
        return spent, None, None
    kept = _child_signals()
    try:
        envelope, exc, text = lane._attempt(message, header, body)
    finally:
        _child_signals(kept)  # what the job did to the child's signals must not reach the next job
    steer = getattr(envelope["job"], "_queue_steer", None) if envelope else None
    if steer and isinstance(steer[1], BaseException):
        steer = (steer[0], _picklable(steer[1]))
    return (exc if exc is None else _picklable(exc)), text, steer


def _pool_child():
    """In each child of the async driver's process pool, before its first job: the child ends
    when its pool shuts down whatever threads its jobs left (multiprocessing joins every
    non-daemon thread of a child that ends, and the program's exit would wait for it)."""
    if hasattr(threading, "_shutdown"):
        threading._shutdown = lambda: None


def _child_signals(kept=None):
    """A pool child's signal state (SIGTERM, SIGINT, SIGALRM handlers, its mask), or, given one,
    put back as it was, with no timer pending: the pool's SIGTERM must still end the child."""
    import _signal
    sigs = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGALRM)
    if kept is None:
        return [_signal.getsignal(sig) for sig in sigs], _signal.pthread_sigmask(_signal.SIG_BLOCK, [])
    handlers, mask = kept
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    for sig, handler in zip(sigs, handlers):
        if _signal.getsignal(sig) is not handler:
            _signal.signal(sig, handler)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
    return None


def _picklable(exc):
    """The exception, or a RuntimeError with its summary if it cannot travel between processes."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except BaseException:
        return RuntimeError(_summary(exc))


# The amqp driver (RabbitMQ) ###################################################################
# Durable quorum queues, persistent messages, publisher confirms. A worker's thread consumes into
# a local buffer and acks on its own connection between jobs; while a job runs, the worker's
# keeper thread services that connection through keep() (heartbeats, deliveries). A lock makes
# the two take turns: a pika connection is not thread-safe, but it may serve one thread at a time.
# Delays need no plugin and make no queue per delay: a ladder of 30 durable queues per vhost holds
# them (see _ladder). Attempts = our header x-attempts (raised by each release) + the
# broker's x-delivery-count (raised by each redelivery after a worker died), so a job that kills
# its worker ends in the failed store. Classic queues have no delivery count and a best-effort
# `redelivered` flag only: there a redelivered message is published again with the dead attempt
# counted, which holds as long as the broker sets the flag (it may not after a broker restart).
class AMQPDriver(Driver):
    """RabbitMQ through pika: queues are durable, messages persistent, push() confirmed."""

    name = "amqp"
    keep_every = 0.25  # during a job: the acks of the jobs before it go out, heartbeats too
    defaults = dict(Driver.defaults, username="guest", password="guest", host="localhost", port=5672, vhost="",
                    channel="default", exchange="", connection_options={}, heartbeat=60, prefetch=20,
                    queue_type="quorum", max_message_size=134217728, management_port=15672, consumer_timeout=1800)
    kinds = dict(Driver.kinds, username=_string, password=_string, vhost=_string,
                 host=_kind(lambda v: isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(h, str) for h in v)),
                            "a host name, or a list of them (a cluster: the first that answers)"),
                 port=_port,
                 channel=_string, exchange=_string, connection_options=_mapping, heartbeat=_seconds,
                 prefetch=_whole, queue_type=_choice("quorum", "classic"), max_message_size=_whole,
                 management_port=_port, consumer_timeout=_lease)

    def __init__(self, options, config):
        super().__init__(options, config)
        self.exchange = options["exchange"]
        self.prefetch = int(options["prefetch"])
        self.queue_type = options["queue_type"]
        hosts = options["host"] if isinstance(options["host"], list) else options["host"].split(",")
        self.hosts = [h.strip() for h in hosts if h.strip()]
        self.hosts = [h if ":" in h else f"{h}:{options['port']}" for h in self.hosts]  # "host" or "host:port"
        self.where = ",".join(self.hosts)
        self._local = threading.local()
        self._consumer = None
        self._consumer_lock = threading.Lock()
        self._sharing = 1  # threads that pop through the one consumer; the last to close() stops it
        self._connected_once = False

    limit_name = "the broker's max_message_size (DRIVERS['amqp']['max_message_size'])"

    def max_payload(self):
        return self.options["max_message_size"]

    @property
    def connection_name(self):
        return self.where

    def parameters(self):
        """pika connection parameters from the Masonite keys (connection_options are URL options),
        one per host: pika tries them in order, as a cluster's clients do."""
        pika = _import_optional("pika", "amqp")
        from urllib.parse import quote, urlencode
        o = self.options
        query = dict(o["connection_options"] or {})
        query.setdefault("heartbeat", int(o["heartbeat"]))
        query.setdefault("connection_attempts", 1)
        query.setdefault("socket_timeout", 5)
        query.setdefault("stack_timeout", 5)  # a broker that takes TCP but never finishes the handshake
        return [pika.URLParameters(f"amqp://{quote(str(o['username']), safe='')}:{quote(str(o['password']), safe='')}"
                                   f"@{host}/{quote(o['vhost'] or '/', safe='')}?{urlencode(query)}")
                for host in self.hosts]

    def connect(self):
        """A new BlockingConnection to the first host that answers, or ConnectionFailed (one line)."""
        pika = _import_optional("pika", "amqp")
        for host, parameters in zip(self.hosts, self.parameters()):
            try:
                connection = pika.BlockingConnection(parameters)
            except pika.exceptions.ProbableAuthenticationError:
                error = ConnectionFailed(f"RabbitMQ at {host} refused the username or password")
            except pika.exceptions.ProbableAccessDeniedError:
                error = ConnectionFailed(f"RabbitMQ at {host} denied access to vhost {self.options['vhost'] or '/'!r}")
            except Exception as exc:  # pika's connector errors are not all AMQPErrors
                error = ConnectionFailed(f"cannot connect to RabbitMQ at {host}: {exc!r}")
            else:
                self._connected_once = True
                return connection
        raise error

    # queues
    def declare(self, channel, queue_name, declared):
        """Declare a durable queue (again every _REDECLARE seconds of a connection: a queue
        deleted meanwhile comes back); bind it when an exchange is configured."""
        if declared.get(queue_name, 0.0) > time.monotonic():
            return
        channel.queue_declare(queue_name, durable=True, arguments={"x-queue-type": self.queue_type})
        if self.exchange:
            channel.exchange_declare(self.exchange, "direct", durable=True)
            channel.queue_bind(queue_name, self.exchange, routing_key=queue_name)
        declared[queue_name] = time.monotonic() + _REDECLARE

    def ladder_names(self):
        """The ladder's queue (and exchange) names, level 0 first, and its delivery exchange."""
        prefix = "queue.py.delay" if self.queue_type == "quorum" else "queue.py.delay-classic"
        return [f"{prefix}.{k}" for k in range(_LEVELS)], f"{prefix}.delivery"

    def _ladder(self, channel, declared):
        """Declare the delay ladder (once per connection): a fixed set of broker objects per vhost,
        whatever the delays. A delay is a whole number of eighths of a second, written in binary in
        the routing key (30 words "0"/"1", the highest bit first). Level k is a topic exchange and a
        queue whose messages wait 2**k eighths of a second: the exchange routes a message whose bit
        k is 1 into the queue and one whose bit is 0 on to level k-1; the queue dead-letters its
        due messages into level k-1 too (at least once, on quorum queues). Below level 0, a headers
        exchange delivers each message to the queue named in its queue.py-delayed-for header (RabbitMQ ignores x- headers in matches). So a
        message waits the sum of its bits, at most 1/8 s late per push, in due order, durably."""
        if "ladder" in declared:
            return
        queues, delivery = self.ladder_names()
        # a due message whose queue is gone goes to a sink that keeps it an hour: every dead-letter
        # must be routable, or an at-least-once dead-letterer retries it for ever, holding its queue
        channel.exchange_declare(f"{delivery}.lost", "fanout", durable=True)
        channel.queue_declare(f"{delivery}.lost", durable=True, arguments={"x-message-ttl": 3_600_000})
        channel.queue_bind(f"{delivery}.lost", f"{delivery}.lost")
        channel.exchange_declare(delivery, "headers", durable=True, arguments={"alternate-exchange": f"{delivery}.lost"})
        for k, name in enumerate(queues):
            below = queues[k - 1] if k else delivery
            arguments = {"x-queue-type": self.queue_type, "x-message-ttl": int(2 ** k * _DELAY_UNIT * 1000),
                         "x-dead-letter-exchange": below}
            if self.queue_type == "quorum":  # at-least-once: a due message is never dropped on the way
                arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
            channel.exchange_declare(name, "topic", durable=True)
            channel.queue_declare(name, durable=True, arguments=arguments)
            words = "*." * (_LEVELS - 1 - k)
            channel.queue_bind(name, name, routing_key=words + "1.#")
            if k:
                channel.exchange_bind(below, name, routing_key=words + "0.#")
            else:
                channel.exchange_bind(delivery, name, routing_key=words + "0.#")
        declared["ladder"] = float("inf")

    def _bind_delivery(self, channel, queue_name, declared):
        """Bind a queue to the ladder's delivery (again every _REDECLARE seconds: a deleted and
        declared again queue has lost its binding, and its due messages would go to the sink)."""
        if declared.get(("delivery", queue_name), 0.0) <= time.monotonic():
            self.declare(channel, queue_name, declared)
            channel.queue_bind(queue_name, self.ladder_names()[1],
                               arguments={"x-match": "all", "queue.py-delayed-for": queue_name})
            declared[("delivery", queue_name)] = time.monotonic() + _REDECLARE

    def _delayed(self, channel, queue_name, delay, declared):
        """(exchange, routing key, headers) that deliver a message to queue_name after `delay` s."""
        self._ladder(channel, declared)
        self._bind_delivery(channel, queue_name, declared)
        units = min(2 ** _LEVELS - 1, math.ceil(delay / _DELAY_UNIT))
        key = ".".join("1" if units >> bit & 1 else "0" for bit in range(_LEVELS - 1, -1, -1))
        return self.ladder_names()[0][-1], key, {"queue.py-delayed-for": queue_name}

    # publishing: one connection per thread, publisher confirms for whole batches
    def _publisher(self):
        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            publisher = self._local.publisher = _Publisher(self)
        return publisher

    def _drop_publisher(self):
        publisher = getattr(self._local, "publisher", None)
        self._local.publisher = None
        if publisher is not None:
            publisher.close()

    def put(self, messages, forever=False):
        """Publish persistent messages; return once the broker confirmed them all. After a lost
        connection the unconfirmed batch is published again (a copy is possible, at least once)."""
        pika = _import_optional("pika", "amqp")
        policy = _Retry(None if forever else 30.0, self.interrupt if forever else None)
        while True:
            try:
                return self._publisher().publish(messages)
            except ConnectionFailed as exc:
                self._drop_publisher()
                if not ((forever or self._connected_once) and policy.again()):
                    raise
                log.warning("amqp %s: %s; publishing again", self.where, _text(exc))
            except _Unconfirmed:
                self._drop_publisher()  # declare everything again on a new connection, once
                if getattr(policy, "redeclared", False):
                    raise
                policy.redeclared = True
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._drop_publisher()
                if exc.reply_code == 404 and not getattr(policy, "redeclared", False):
                    policy.redeclared = True  # an exchange or queue was deleted meanwhile: declare again
                    continue
                raise QueueError(f"RabbitMQ at {self.where} refused: {exc.reply_text}") from None
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop_publisher()
                if not policy.again():
                    raise ConnectionFailed(f"lost the connection to RabbitMQ at {self.where}: {exc!r}") from None
                log.warning("amqp %s: %r; publishing again", self.where, exc)

    # consuming
    def lanes(self, count):
        """The lanes share the consumer: the broker may hand it two messages per lane (one running,
        one waiting while the acks of finished ones travel)."""
        self._sharing = count
        self.prefetch = max(self.prefetch, 2 * count) if count > 1 else self.prefetch

    def pop(self, queues, wait=0.0):
        with self._consumer_lock:
            consumer, queues = self._consumer, list(queues)
            # a worker of several queues asks them one by one (basic.get): its consumer serves any
            # of them (a paused queue is left out), so the lanes' deliveries stay on their channel
            if consumer is None or not (consumer.queues == queues or len(consumer.queues) > 1 <= len(queues)
                                        and set(queues) <= set(consumer.queues)):
                if consumer is not None:
                    consumer.stop()
                consumer = self._consumer = _Consumer(self, queues)
        while True:
            message = consumer.take(wait, queues)
            if message is None or not message.receipt.uncounted:
                return message
            # redelivered from a classic queue: its worker died (or its connection dropped) before
            # the ack. Count that attempt for good by publishing it again, then ack this delivery.
            again = Message(message.id, message.queue, message.name, message.payload, message.attempts, 0.0)
            self.put([again], forever=True)
            consumer.settle(message, remember=False, now=True)

    def ack(self, message, failed=False):
        message.receipt.consumer.settle(message, now=failed)

    def keep(self, message):
        """Service the consuming connection while a job runs (heartbeats, deliveries)."""
        consumer = self._consumer
        if consumer is not None:
            consumer.service()

    def release(self, message, delay=0.0):
        again = Message(message.id, message.queue, message.name, message.payload, message.attempts, delay)
        self.put([again], forever=True)
        message.receipt.consumer.settle(message, remember=False, now=True)

    def longest_job(self, queue):
        """The broker's consumer timeout (the queue's x-consumer-timeout or consumer-timeout policy
        where the management API tells, else DRIVERS['amqp']['consumer_timeout'], RabbitMQ's
        default 1800 s), less a margin for the broker's periodic check: past it, the broker closes
        the channel and delivers the job to another worker while this one still runs it."""
        limits = getattr(self, "_limits", None)
        if limits is None:
            limits = self._limits = {}
            for q in self._management_queues(",arguments,effective_policy_definition") or ():
                given = (q.get("arguments") or {}).get("x-consumer-timeout") or \
                    (q.get("effective_policy_definition") or {}).get("consumer-timeout")
                if isinstance(given, int) and given > 0:
                    limits[q["name"]] = given / 1000
        seconds_ = limits.get(queue, float(self.options["consumer_timeout"]))
        margin = min(60.0, max(1.0, seconds_ * 0.05))
        return seconds_ - margin, (f"RabbitMQ's consumer timeout of {seconds_:g} s would give it to another worker while "
                                   "it runs: raise consumer_timeout (rabbitmq.conf, and DRIVERS['amqp']) for longer jobs")

    def stats(self, queues=None):
        """Ready counts come from the broker over AMQP (exact); without `queues`, every queue of
        the vhost that the management API lists (else the default queue). AMQP cannot tell unacked
        messages: they come from the management API when it answers (its figures lag by up to 5 s),
        else they are None. Delayed messages wait in the shared delay ladder, which cannot tell
        whose they are: None per queue (delayed_total() counts them all)."""
        listed = self._management_queues()
        if queues:
            names = list(queues)
        else:
            ours = [q["name"] for q in listed or () if not q["name"].startswith("queue.py.") and ".delay." not in q["name"]]
            names = sorted(ours) or [self.default_queue]
        unacked = {q["name"]: q.get("messages_unacknowledged") or 0 for q in listed or ()}

        def count(connection):
            pika, result = sys.modules["pika"], {}
            for name in names:
                channel = connection.channel()
                try:
                    ready = channel.queue_declare(name, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    ready = 0  # no such queue (yet)
                result[name] = {"ready": ready, "delayed": None,
                                "reserved": None if listed is None else unacked.get(name, 0)}
            return result
        return self._briefly(count)

    def delayed_total(self):
        """Messages waiting in this vhost's delay ladder, for every queue (None if unknown)."""
        listed = self._management_queues()
        if listed is None:
            return None
        queues = set(self.ladder_names()[0])
        return sum(q.get("messages") or 0 for q in listed if q["name"] in queues)

    def _briefly(self, work):
        """work(connection) on a connection of its own, broker errors as one line."""
        pika = _import_optional("pika", "amqp")
        connection = self.connect()
        try:
            return work(connection)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ConnectionFailed(f"RabbitMQ at {self.where}: {exc!r}") from None
        finally:
            if connection.is_open:
                connection.close()

    def clear(self, queue):
        """Purge the queue (and delay queues of queue.py 1.0); with unique locks about, take its
        messages one by one instead, to free theirs. Its jobs still waiting in the delay ladder,
        which holds every queue's, cannot be taken out: a clear mark in the state store makes
        workers drop those pushed before it when they come due (_cleared)."""
        self.state_store().put_entries([(f"cleared:{queue}", repr(time.time()), _MAX_PUSH_DELAY)])
        locks = bool(self.state_store().entries("unique:"))

        def purge(connection):
            pika, count = sys.modules["pika"], 0
            for name in [queue] + self._old_delay_queues(queue):
                try:
                    channel = connection.channel()
                    if not locks:
                        count += channel.queue_purge(name).method.message_count
                        continue
                    while True:
                        method, _, body = channel.basic_get(name, auto_ack=True)
                        if method is None:
                            break
                        count += 1
                        _free_unique_locks(self.state_store(), [body])
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # no such queue
            return count
        return self._briefly(purge)

    def _cleared(self, queue, headers):
        """Whether a delayed message came due after a clear of its queue that it predates (the
        marks are read at most once a second); its unique lock is then freed by the caller."""
        if "queue.py-delayed-for" not in headers:
            return False
        marks = getattr(self, "_marks", None)
        if marks is None or time.monotonic() - marks[0] > 1.0:
            entries, exc, _ = _guard(lambda: self.state_store().entries("cleared:", retry=False))
            if exc is None:
                known = {k[len("cleared:"):]: float(v) for k, v in entries.items()}
            else:  # the state store is unreachable: the marks known before serve (a delivery is never held)
                log.warning("amqp: cannot read the clear marks: %s", _summary(exc))
                known = marks[1] if marks else {}
            marks = self._marks = (time.monotonic(), known)
        mark, pushed = marks[1].get(queue), headers.get("queue.py-pushed")
        return mark is not None and isinstance(pushed, int) and pushed / 1e6 < mark

    def _old_delay_queues(self, queue):
        """The per-delay queues "<queue>.delay.<ms>" of queue.py 1.0 that still exist: they drain
        into their queue when due, then delete themselves."""
        return sorted(q["name"] for q in self._management_queues() or () if q["name"].startswith(f"{queue}.delay."))

    def _management_queues(self, more=""):
        """The queues of our vhost from the management HTTP API, or None when it does not answer."""
        import base64
        import json
        import urllib.parse
        import urllib.request
        o = self.options
        vhost = urllib.parse.quote(o["vhost"] or "/", safe="")
        url = (f"http://{self.hosts[0].rsplit(':', 1)[0]}:{int(o['management_port'])}/api/queues/{vhost}"
               f"?columns=name,messages,messages_ready,messages_unacknowledged{more}")
        auth = base64.b64encode(f"{o['username']}:{o['password']}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                return json.load(response)
        except Exception:
            return None

    def delete_queues(self, *names):
        """Delete queues (and delay queues of queue.py 1.0); their delayed messages in the ladder
        are then dropped by the broker when due (no queue is bound for them)."""
        def delete(connection):
            channel = connection.channel()
            for name in names:
                for q in [name] + self._old_delay_queues(name):
                    channel.queue_delete(q)
        self._briefly(delete)

    def delete_ladder(self):
        """Delete this vhost's delay ladder (its delayed messages with it)."""
        def delete(connection):
            channel = connection.channel()
            queues, delivery = self.ladder_names()
            for name in queues:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            channel.exchange_delete(delivery)
            channel.queue_delete(f"{delivery}.lost")
            channel.exchange_delete(f"{delivery}.lost")
        self._briefly(delete)

    def close(self):
        with self._consumer_lock:
            self._sharing -= 1
            if self._sharing <= 0:  # the last lane (or the only one) stops the consumer
                self._sharing = 1
                if self._consumer is not None:
                    self._consumer.stop()
                    self._consumer = None
        self._drop_publisher()


class _Unconfirmed(QueueError):
    """The broker returned or refused a publish (an exchange or queue deleted meanwhile, say)."""


class _Publisher:
    """A connection that publishes with publisher confirms. pika's BlockingChannel waits for the
    confirm of each message in turn; this publishes a whole batch on the underlying channel
    (`BlockingChannel._impl`, stable across pika 1.x) and waits once for all the confirms."""

    def __init__(self, driver):
        self.driver = driver
        self.connection = driver.connect()
        self.channel = self.connection.channel()
        self.declared = {}
        self.sent = self.confirmed = 0
        self.nacked, self.returned, self.opened = [], [], []
        self.channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self.opened.append)
        self.channel.add_on_return_callback(lambda ch, method, props, body: self.returned.append(method.routing_key))
        while not self.opened:
            self.connection.process_data_events(time_limit=0.05)

    def _on_confirm(self, frame):
        method = frame.method
        first = self.confirmed + 1 if method.multiple else method.delivery_tag
        if type(method).__name__ == "Nack":
            self.nacked.extend(range(first, method.delivery_tag + 1))
        self.confirmed = max(self.confirmed, method.delivery_tag)
        if self.confirmed >= self.sent:
            self.connection.call_later(0, lambda: None)  # wake process_data_events at once

    def publish(self, messages):
        pika = sys.modules["pika"]  # imported by connect()
        driver, channel = self.driver, self.channel
        for m in messages:
            driver.declare(channel, m.queue, self.declared)
            headers = {"x-attempts": m.attempts}
            if m.delay > 0:
                exchange, key, more = driver._delayed(channel, m.queue, m.delay, self.declared)
                headers.update(more, **{"queue.py-pushed": int(time.time() * 1e6)})  # a clear of its queue drops it
            else:
                exchange, key = driver.exchange, m.queue
            m.id = m.id or _new_id()
            properties = pika.BasicProperties(delivery_mode=2, message_id=m.id, type=m.name, headers=headers)
            channel._impl.basic_publish(exchange, key, m.payload, properties, mandatory=True)
            self.sent += 1
        while self.confirmed < self.sent:
            if channel.is_closed or self.connection.is_closed:
                raise pika.exceptions.StreamLostError("the channel closed before the broker confirmed")
            self.connection.process_data_events(time_limit=0.05)
        if self.returned or self.nacked:
            what = f"could not route to {self.returned[0]!r}" if self.returned else "refused (nack) a message"
            self.returned, self.nacked = [], []
            raise _Unconfirmed(f"RabbitMQ at {driver.where} {what}; nothing of this push was confirmed")

    def close(self):
        try:
            self.connection.close()
        except Exception:
            pass


_REDECLARE = 5.0     # seconds an amqp connection trusts that a queue it declared (and its binding) exists
_LEVELS = 30         # levels of the amqp delay ladder
_DELAY_UNIT = 0.125  # seconds: its precision
_MAX_PUSH_DELAY = (2 ** _LEVELS - 1) * _DELAY_UNIT  # about 4.25 years: the longest delay of every driver


class _Delivery:
    """The receipt of an amqp message: the consumer, connection (generation) and delivery tag to
    ack it on, and whether it is a redelivery the broker did not count (classic queues)."""

    __slots__ = ("consumer", "generation", "tag", "uncounted")

    def __init__(self, consumer, generation, tag, uncounted):
        self.consumer, self.generation, self.tag, self.uncounted = consumer, generation, tag, uncounted


class _Consumer:
    """The consuming connection of an amqp worker: deliveries go to a local buffer (at most
    `prefetch` unacked messages), taken in queue priority order. Whoever holds `lock` may touch
    the connection: the worker's thread between jobs, its keeper thread during one. A dropped
    connection is reopened with backoff; the broker requeues what it had not seen acked."""

    def __init__(self, driver, queues):
        self.driver, self.queues, self.asked = driver, queues, queues
        self.lock = threading.Lock()
        self.buffer = {q: collections.deque() for q in queues}
        self.connection = self.channel = None
        self.generation = 0            # which connection a delivery tag belongs to
        self.lost, self.retry_at, self.retry = False, 0.0, _Retry(None)
        self.cancelled = False         # the broker cancelled our consumer (Basic.Cancel): consume again
        self.done = collections.deque(maxlen=max(64, 4 * driver.prefetch))  # ids completed lately
        self.unsent = 0                # acks of completed jobs not yet sent
        self.unsent_at = 0.0           # when the oldest of them was settled (monotonic)
        self.delivered = collections.deque()  # delivery tags handed to the buffer, not yet acked
        self.finished, self.alone = set(), set()  # tags completed, not acked yet; tags acked one by one
        self.send_every = max(1, driver.prefetch // 4)

    def take(self, wait, queues=None):
        """The first buffered message of `queues` (default: all of ours) in priority order,
        waiting up to `wait` seconds."""
        self.asked = queues or self.queues
        deadline = time.monotonic() + wait
        serviced = False
        turn = 0.05 if self.driver._sharing > 1 else float("inf")  # lanes take turns with the connection
        while True:
            with self.lock:
                if self.unsent >= self.send_every or (self.unsent and time.monotonic() - self.unsent_at >= 0.1):
                    self._service(0, fetch=False)  # send the acks (the broker then delivers more)
                for queue_name in self.asked:
                    if self.buffer[queue_name]:
                        return self.buffer[queue_name].popleft()
                left = deadline - time.monotonic()
                if left <= 0 and serviced and (wait or not self._held_by_broker()):
                    return None
                self._service(min(max(left, 0.01), turn))  # wait=0 still asks the broker once
                serviced = True

    def _held_by_broker(self):
        """Whether the broker holds ready messages of our queues that it has not delivered yet
        (it delivers more as acks arrive): then a worker asked for wait=0 (--stop-when-empty)
        must wait for them, not report its queues empty."""
        if self.channel is None:
            return False
        try:
            return any(self.channel.queue_declare(q, passive=True).method.message_count for q in self.asked)
        except Exception as exc:  # a queue deleted meanwhile (the channel closes), a lost connection
            try:
                self.connection.close()  # the broker requeues what this connection held
            except Exception:
                pass
            self._lost(exc)  # the next _service() reconnects (and declares the queues again)
            return False

    def service(self):
        """Let the connection do its work for a moment (from the keeper thread, during a job)."""
        with self.lock:
            if self.connection is not None:
                self._service(0.01, fetch=False)

    def _service(self, time_limit, fetch=True):
        """Process the connection's events for up to time_limit seconds (reconnecting if need be).
        A worker of several queues asks them in priority order (basic.get) instead of consuming,
        so that no lower job is delivered ahead of a higher one; between rounds it waits 50 ms."""
        pika = _import_optional("pika", "amqp")
        try:
            if self.connection is None:
                if time.monotonic() < self.retry_at:
                    time.sleep(min(time_limit, self.retry_at - time.monotonic()))
                    return
                self._connect()
            self._write_acks()
            if len(self.queues) > 1:
                for queue_name in self.asked if fetch else ():
                    method, properties, body = self.channel.basic_get(queue_name)
                    if method is not None:
                        return self._on_message(queue_name)(self.channel, method, properties, body)
                time_limit = min(time_limit, 0.05)
            self.connection.process_data_events(time_limit=time_limit)  # sends what is buffered, too
            self.unsent = 0
            if self.cancelled:  # the broker cancelled the consumer (its queue was deleted, say): consume anew
                self.connection.close()  # the broker requeues what it held of ours
                raise pika.exceptions.ConsumerCancelled("the broker cancelled the consumer (its queue deleted?)")
        except ConnectionFailed as exc:
            if not self.generation:  # never connected: say so at once
                raise
            self._lost(exc)
        except (pika.exceptions.AMQPError, OSError) as exc:
            if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and not self.generation:
                raise QueueError(f"RabbitMQ at {self.driver.where} refused: {exc.reply_text}") from None
            self._lost(exc)

    def _write_acks(self):
        """Write the acks of the jobs completed since the last time: one ack (multiple) for the
        oldest deliveries while all of them are settled, one ack each for the others (a job
        still waiting in the buffer, or running in a lane, keeps its own delivery unacked)."""
        if not self.finished:
            return
        finished, self.finished = self.finished, set()
        last, ack = None, self.channel._impl.basic_ack
        while self.delivered and (self.delivered[0] in finished or self.delivered[0] in self.alone):
            tag = self.delivered.popleft()
            self.alone.discard(tag)
            if tag in finished:
                finished.discard(tag)
                last = tag
        if last is not None:
            ack(last, multiple=True)
        for tag in finished:
            ack(tag)
            self.alone.add(tag)

    def _connect(self):
        connection = self.driver.connect()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.driver.prefetch)
            declared = {}
            self.driver._ladder(channel, declared)
            for queue_name in self.queues:  # declared (and bound to the delay ladder) again after a deletion
                self.driver._bind_delivery(channel, queue_name, declared)
                if len(self.queues) == 1:
                    channel.basic_consume(queue_name, self._on_message(queue_name))
            channel.add_on_cancel_callback(lambda frame: setattr(self, "cancelled", True))
        except BaseException:
            connection.close() if connection.is_open else None
            raise
        self.connection, self.channel, self.cancelled = connection, channel, False
        self.delivered, self.finished, self.alone = collections.deque(), set(), set()  # tags start again
        self.generation += 1
        if self.lost:
            log.warning("amqp %s: reconnected", self.driver.where)
            self.lost, self.retry = False, _Retry(None)

    def _lost(self, exc):
        self.connection = self.channel = None
        self.unsent = 0
        for items in self.buffer.values():
            items.clear()  # void: the broker requeues every unacked delivery of that connection
        if not self.lost:
            log.warning("amqp %s: %r; reconnecting", self.driver.where, exc)
            self.lost = True
        self.retry_at = time.monotonic() + self.retry.next_wait()  # the worker's loop waits, not this

    def _on_message(self, queue_name):
        def deliver(channel, method, properties, body):
            headers = properties.headers or {}
            try:  # headers are not signed: anything unreadable counts as no earlier attempt
                attempts = int(headers.get("x-attempts", 0)) + int(headers.get("x-delivery-count", 0)) + 1
            except (TypeError, ValueError, AttributeError):
                attempts = 1
            # a quorum queue counts deliveries itself; on a classic queue a redelivered message is
            # published again to count the attempt that died (pop), as far as the flag tells
            uncounted = method.redelivered and "x-delivery-count" not in headers
            receipt = _Delivery(self, self.generation, method.delivery_tag, uncounted)
            if method.redelivered and properties.message_id and properties.message_id in self.done:
                channel.basic_ack(method.delivery_tag)  # done here already; only its ack was lost
                return
            if self.driver._cleared(queue_name, headers):
                channel.basic_ack(method.delivery_tag)  # pushed before a clear of its queue
                _guard(_free_unique_locks, [body])
                return
            self.delivered.append(method.delivery_tag)
            self.buffer[queue_name].append(
                Message(properties.message_id, queue_name, properties.type or "", body, attempts, receipt=receipt))
        return deliver

    def settle(self, message, remember=True, now=False):
        """Ack a delivery; one of a dropped connection needs none (the broker requeued it).
        remember: the job ended here (kept in mind, in case the ack is lost with the connection).
        Acks of completed jobs are kept and sent every prefetch/4 jobs, or once the oldest is
        0.1 s old (by the next take, or the keeper during a job), most of them as one ack (see
        _write_acks): a worker killed in between runs those few jobs again (at least once).
        now: send it at once (after a failure, or to complete a republish: were that ack lost,
        the job would be failed twice, or exist twice)."""
        if remember and message.id:
            self.done.append(message.id)
        pika = _import_optional("pika", "amqp")
        with self.lock:
            receipt = message.receipt
            if self.channel is None or receipt.consumer is not self or receipt.generation != self.generation:
                return
            try:
                if now:
                    self.channel._impl.basic_ack(message.receipt.tag)
                    self.alone.add(message.receipt.tag)
                    self._service(0, fetch=False)
                    return
                if not self.unsent:
                    self.unsent_at = time.monotonic()
                self.unsent += 1
                self.finished.add(message.receipt.tag)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._lost(exc)

    def stop(self):
        """Close the connection; the broker requeues the deliveries that were not acked."""
        with self.lock:
            connection = self.connection
            if connection is not None and connection.is_open:
                try:
                    self._write_acks()
                except Exception:
                    pass
            self.connection = self.channel = None
            if connection is not None and connection.is_open:
                try:
                    connection.process_data_events(0)  # send the acks first
                    connection.close()
                except Exception:
                    pass


# The redis driver #############################################################################
# Every key of a queue carries the hash tag {queue} (Laravel's rule), so a queue lives in one slot
# of a Redis Cluster: <prefix>{q} is the list of ready ids; :delayed (id -> when it is due) and
# :reserved (id -> when its lease ends) are sorted sets; :jobs (id -> class name NUL payload) and
# :tries (id -> attempts so far) are hashes; :notify wakes blocked workers (at most 16 tokens);
# :pushed remembers the token of each push for two minutes (a push is tried again for at most 30 s),
# its last 100,000 at most (about 8 MB: 20 s at 5,000 pushes a second). A pop reserves up to
# `prefetch` jobs (_Prefetch) and counts the first one's attempt; each of the others is counted when
# it starts, by a script whose reply the worker reads with its next command (the worker sends it
# on a connection of its thread's own, so that it reaches the server before anything after it; it
# sets the count rather than adding to it, so that it can be sent again after a lost connection).
# The state store lives under the tag {state}, the failed store under {failed}. Every move is one
# Lua script, timed by the driver's clock (synced to the server's). A script may run twice (redis-py
# sends a command again after a lost reply): a push is stored once (its token), a release moves only
# a job still reserved, deletes are deletes; a pop sent twice reserves a second job, and the first
# runs when its lease lapses (one attempt more counted).
_REDIS_POP = """
local now, npop, want, a = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), 5
for g = 0, #KEYS / 6 - 1 do
  for i = 1, tonumber(ARGV[a]) do
    local id = ARGV[a + i]
    redis.call('ZREM', KEYS[g*6+3], id); redis.call('HDEL', KEYS[g*6+4], id); redis.call('HDEL', KEYS[g*6+5], id)
  end
  a = a + 1 + tonumber(ARGV[a])
end
local soonest = false
for g = 0, npop - 1 do
  local ready, reserved, jobs = KEYS[g*6+1], KEYS[g*6+3], KEYS[g*6+4]
  for _, from in ipairs({KEYS[g*6+2], reserved}) do
    local due = redis.call('ZRANGEBYSCORE', from, '-inf', now, 'LIMIT', 0, 100)
    if #due > 0 then redis.call('ZREM', from, unpack(due)); redis.call('RPUSH', ready, unpack(due)) end
  end
  local out = {g}
  while #out < 1 + 3 * want do
    local id = redis.call('LPOP', ready)
    if not id then break end
    local job = redis.call('HGET', jobs, id)
    if job then
      redis.call('ZADD', reserved, ARGV[2], id)
      local tries = #out == 1 and redis.call('HINCRBY', KEYS[g*6+5], id, 1) or tonumber(redis.call('HGET', KEYS[g*6+5], id) or '0')
      out[#out + 1] = id; out[#out + 1] = job; out[#out + 1] = tries
    end
  end
  if #out > 1 then return out end
  for _, from in ipairs({KEYS[g*6+2], reserved}) do
    local first = redis.call('ZRANGE', from, 0, 0, 'WITHSCORES')
    if first[2] and (not soonest or tonumber(first[2]) < soonest) then soonest = tonumber(first[2]) end
  end
end
return {-1, tostring(soonest or '')}
"""
_REDIS_START = """
for i = 3, #ARGV do redis.call('ZREM', KEYS[3], ARGV[i]); redis.call('HDEL', KEYS[1], ARGV[i]); redis.call('HDEL', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
_REDIS_PUT_BACK = """
local back = 0
for i = #ARGV, 2, -1 do
  if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[i]) or '-1') == tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[2], ARGV[i]); redis.call('LPUSH', KEYS[1], ARGV[i]); back = back + 1
  end
end
for i = 1, math.min(back, 16 - redis.call('LLEN', KEYS[3])) do redis.call('RPUSH', KEYS[3], '1') end
return back
"""
_REDIS_RENEW = """
local renewed = {}
for i = 3, #ARGV do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '-1') == tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i]); renewed[#renewed + 1] = ARGV[i]
  end
end
return renewed
"""
_REDIS_PUSH = """
if redis.call('ZSCORE', KEYS[7], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[7], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', tonumber(ARGV[1]) - 120)
if redis.call('ZCARD', KEYS[7]) > 100000 then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, 9999) end
local ready = 0
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[4], id, ARGV[i+3])
  if ARGV[i+2] ~= '0' then redis.call('HSET', KEYS[5], id, ARGV[i+2]) end
  if ARGV[i+1] == '' then redis.call('RPUSH', KEYS[1], id); ready = ready + 1
  else redis.call('ZADD', KEYS[2], ARGV[i+1], id) end
end
for i = 1, math.min(ready, 16 - redis.call('LLEN', KEYS[6])) do redis.call('RPUSH', KEYS[6], '1') end
return 1
"""
_REDIS_RELEASE = """
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
if not redis.call('HEXISTS', KEYS[4], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]); return 1 end
redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[6]) < 16 then redis.call('RPUSH', KEYS[6], '1') end
return 1
"""
_REDIS_CLEAR = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1]) or {}
local more = tonumber(ARGV[1]) - #ids
if more > 0 then
  local later = redis.call('ZRANGE', KEYS[2], 0, more - 1)
  if #later > 0 then redis.call('ZREM', KEYS[2], unpack(later)) end
  for _, id in ipairs(later) do ids[#ids + 1] = id end
end
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = ARGV[2] == '1' and (redis.call('HGET', KEYS[4], id) or '') or ''
  redis.call('HDEL', KEYS[4], id); redis.call('HDEL', KEYS[5], id)
end
return out
"""


def _resp(words):
    """Words (bytes or str) in RESP, the protocol of Redis, without the count of a command."""
    return b"".join([b"$%d\r\n%s\r\n" % (len(w), w) for w in [x if type(x) is bytes else x.encode() for x in words]])


class _OwnConn:
    """A connection of redis-py's pool that one thread keeps (RedisDriver._mail): given back to
    the pool when the thread ends (its locals go, and this with them) or the driver drops it;
    a forked child sees another pid and takes its own."""

    def __init__(self, pool):
        self.pool, self.pid = pool, os.getpid()
        try:
            self.conn = pool.get_connection()
        except TypeError:  # redis-py before 5.1 names a command
            self.conn = pool.get_connection("EVAL")

    def __del__(self):
        if self.conn is not None and self.pid == os.getpid():
            _guard(lambda: self.pool.release(self.conn))


class RedisDriver(_Prefetch, Driver):
    """Jobs in Redis through redis-py: at least once with a lease, as the database driver. A pop
    is one script that also deletes the jobs this thread finished since its last pop, moves due
    delayed jobs and lapsed leases to the ready list, and reserves the next jobs (up to
    prefetch) until now + retry_after (keep() renews them while a job runs). An idle worker
    blocks on the queue's notify list for up to block_for (never past poll, nor past the next
    delayed job's time)."""

    name = "redis"
    own_stores = True
    defaults = dict(Driver.defaults, host="127.0.0.1", port=6379, db=0, password=None, username=None, url=None,
                    retry_after=90, block_for=5, prefix="queues:", cluster=False, prefetch=20)
    kinds = dict(Driver.kinds, host=_string, port=_port, db=_kind(lambda v: type(v) is int and v >= 0, "a whole number"),
                 password=_maybe_string, username=_maybe_string, url=_maybe_string, retry_after=_lease,
                 block_for=_kind(lambda v: v is None or (_is_number(v) and 0 <= v <= 3600), "None or 0 to 3600 seconds"),
                 prefix=_string, cluster=_flag, prefetch=_whole)
    limit_name = "Redis's proto-max-bulk-len"

    def __init__(self, options, config):
        super().__init__(options, config)
        o = options
        self.retry_after, self.block_for = float(o["retry_after"]), float(o["block_for"] or 0)
        self.prefix, self.cluster, self.prefetch = o["prefix"], o["cluster"], o["prefetch"]
        self.keep_every = max(0.05, self.retry_after / 3)
        self.where = self._where()
        self._client, self._scripts, self._local = None, {}, threading.local()
        self._heads = {}  # (queue, words) -> the packed start of a single push's EVALSHA (see put())
        self._lanes_of = None  # the thread that started a worker's lanes (see close())
        self._leases = threading.RLock()  # a claim's stamp: the keeper moves it, the lanes read it
        self._known, self._limit, self._synced, self._connected = set(), None, 0.0, False
        self.own_state, self.own_failed = _RedisState(self), _RedisFailed(self)

    def _where(self):
        url = self.options["url"]
        if url:
            from urllib.parse import urlsplit
            parts = urlsplit(url)
            return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{(parts.path or '/0').lstrip('/') or 0}"
        return f"{self.options['host']}:{self.options['port']}/{self.options['db']}"

    @property
    def connection_name(self):
        return self.where

    # connecting, and the one place errors are read
    def client(self):
        """The process's redis-py client (thread-safe: a pool of connections), made on first use."""
        if self._client is None:
            redis, o = _import_optional("redis", "redis"), self.options
            settings = dict(socket_timeout=max(self.block_for, float(o["poll"])) + 15, socket_connect_timeout=5,
                            socket_keepalive=True, health_check_interval=30)
            if self.cluster:
                from redis.cluster import RedisCluster
                self._client = (RedisCluster.from_url(o["url"], **settings) if o["url"] else
                                RedisCluster(host=o["host"], port=int(o["port"]), password=o["password"],
                                             username=o["username"], **settings))
            else:
                self._client = (redis.Redis.from_url(o["url"], **settings) if o["url"] else
                                redis.Redis(host=o["host"], port=int(o["port"]), db=o["db"], password=o["password"],
                                            username=o["username"], **settings))
        return self._client

    def run(self, work, retry=True):
        """work(client)'s result. A lost connection (or a server still loading its data) is tried
        again with the shared policy (30 s; "forever" for a worker; False: never), once this
        process has reached the server (a server that never answered is one line at once, as on
        every driver); everything else is one line."""
        redis = _import_optional("redis", "redis")
        errors = redis.exceptions
        policy = _Retry(None if retry == "forever" else 30.0, self.interrupt) if retry else None
        while True:
            try:
                if time.monotonic() - self._synced > 300:
                    self._sync_clock()
                result = work(self.client())
                self._connected = True
                return result
            except errors.AuthenticationError as exc:
                raise ConnectionFailed(f"Redis at {self.where} refused the password: {exc}") from None
            except (errors.ConnectionError, errors.TimeoutError, errors.ClusterError) as exc:
                self._no_such_db(exc)
                if policy is None or not self._connected or not policy.again():
                    raise ConnectionFailed(f"cannot reach Redis at {self.where}: {exc}") from None
                log.warning("redis %s: %s; trying again", self.where, _summary(exc))
            except errors.ResponseError as exc:
                if isinstance(exc, errors.NoScriptError) or "NOSCRIPT" in str(exc):
                    self._scripts.clear()  # the server restarted (or failed over) without our scripts: load them again
                    self._heads.clear()
                    continue
                self._no_such_db(exc)
                raise QueueError(f"Redis at {self.where} refused: {exc}") from None

    def _no_such_db(self, exc):
        if "db index" in str(exc).lower() or "invalid database" in str(exc).lower():
            raise ConfigError(f"DRIVERS['redis']['db'] = {self.options['db']!r}: Redis at {self.where} "
                              f"has no such database ({exc})") from None

    def _sync_clock(self):
        self._synced = time.monotonic()
        sent = self.clock.monotonic()
        seconds, micros = self.client().time()
        self.clock.sync(seconds + micros / 1e6, sent, self.clock.monotonic())

    def script(self, client, name, keys, args):
        """Run one of the Lua scripts above (loaded once per process, by its SHA)."""
        return client.evalsha(self.sha(client, name), len(keys), *keys, *args)

    def sha(self, client, name):
        sha = self._scripts.get(name)
        if sha is None:
            sha = self._scripts[name] = client.script_load(globals()[name])
        return sha

    def keys(self, queue, _known={}):
        """The six keys of a queue: ready, delayed, reserved, jobs, tries, and notify (a new list)."""
        keys = _known.get((self.prefix, queue))
        if keys is None:
            if len(_known) > 1024:
                _known.clear()
            base = f"{self.prefix}{{{queue}}}"
            keys = _known[self.prefix, queue] = (base, base + ":delayed", base + ":reserved", base + ":jobs",
                                                   base + ":tries", base + ":notify")
        return list(keys)

    def durability(self):
        """One line when the server keeps its jobs only in memory or in snapshots (None: on disk, or unknown)."""
        def read(client):
            config = client.config_get("appendonly")
            config.update(client.config_get("appendfsync"), **client.config_get("save"))
            return config
        try:
            config = self.run(read, retry=False)
        except QueueError:
            return None  # CONFIG is disabled on many managed servers
        if config.get("appendonly") == "yes":
            return None  # appendfsync always: a restart loses nothing; everysec: up to the last second of pushes
        if config.get("save"):
            return f"Redis at {self.where} keeps only snapshots (save {config['save']!r}): a restart loses " \
                   "the jobs pushed since the last one; set appendonly yes"
        return f"Redis at {self.where} keeps nothing on disk: a restart loses every job; set appendonly yes"

    def check_queue(self, queue):
        if "{" in queue or "}" in queue:
            raise QueueError(f"queue name {queue!r}: the redis driver's queue names have no braces "
                             "(they mark a Redis Cluster hash tag)")
        return queue

    def max_payload(self):
        if self._limit is None:
            try:
                self._limit = int(self.run(lambda c: c.config_get("proto-max-bulk-len"), retry=False)
                                  .get("proto-max-bulk-len", 512 << 20)) - 256
            except (QueueError, ValueError):
                self._limit = (512 << 20) - 256
        return self._limit

    # the interface
    def put(self, messages, also=None):
        """One script per queue, each all or none; on a single server one transaction for all of
        them (a cluster keeps queues in different slots: there each queue's part is all or none).
        A push sent again after a lost reply is stored once (its token)."""
        token, now, by_queue = os.urandom(12).hex(), self.clock.time(), {}
        for m in messages:
            job = m.name.encode() + b"\0" + m.payload
            due = "" if m.delay <= 0 else repr(now + m.delay)
            by_queue.setdefault(self.check_queue(m.queue), []).extend([m.id or _new_id(), due, str(m.attempts), job])
        new = [q for q in by_queue if q not in self._known]

        def push(client):
            calls = [(self.keys(q) + [self.keys(q)[0] + ":pushed"], [repr(now), token, *args]) for q, args in by_queue.items()]
            if len(calls) == 1 and not new and also is None and not self.cluster:  # one command, our own packing
                (keys, args), key = calls[0], (next(iter(by_queue)), len(calls[0][1]))
                head = self._heads.get(key)
                if head is None:  # the same for every push of one job to this queue (a script's SHA is its text's)
                    if len(self._heads) > 1024:
                        self._heads.clear()
                    words = ["EVALSHA", self.sha(client, "_REDIS_PUSH"), str(len(keys)), *keys]
                    head = self._heads[key] = b"*%d\r\n" % (len(words) + len(args)) + _resp(words)
                self._mail().append(head + _resp(args))
                return self._flushed(None)(client)
            if self.cluster:  # one command each: a cluster keeps queues in different slots
                [self.script(client, "_REDIS_PUSH", *call) for call in calls]
                return client.sadd(self.own_state.key("queues"), *new) if new else None
            pipe = client.pipeline(transaction=True)
            for keys, args in calls:
                pipe.eval(_REDIS_PUSH, len(keys), *keys, *args)  # the text: a NOSCRIPT inside MULTI would not undo the rest
            pipe.sadd(self.own_state.key("queues"), *new) if new else None
            also(pipe) if also is not None else None  # a retry's delete from the failed store
            pipe.execute()
        self.run(push)
        self._known.update(new)

    def _acked(self):
        """(queue, id) of the jobs this thread finished since its last pop (deleted by the next)."""
        done = getattr(self._local, "done", None)
        if done is None:
            done = self._local.done = []
        return done

    def pop(self, queues, wait=0.0):
        count, message = self._pace(), self._next_held(queues)
        if message is not None:
            return message
        deadline = self.clock.monotonic() + wait
        while True:
            message, soonest = self._pop_once(list(queues), count)
            if message is not None:
                self._local.held_for = queues
                return self._handed(message)
            left = deadline - self.clock.monotonic()
            if soonest is not None:
                left = min(left, max(0.0, soonest - self.clock.time()))
            if left <= 0:
                if deadline - self.clock.monotonic() <= 0:
                    return None
                continue  # a delayed job is due (or a lease lapsed): take it
            if self.block_for <= 0 or not queues:
                self.clock.sleep(left)
                continue
            notify = [self.keys(q)[5] for q in (queues[:1] if self.cluster else queues)]
            self.run(lambda c: c.blpop(notify, timeout=max(0.01, min(left, self.block_for))), retry="forever")

    def _pop_once(self, queues, count=1):
        """(message or None, epoch of the soonest delayed job or lease end of `queues`); the
        other jobs taken with the message wait in this thread's held."""
        done, now = self._acked(), self.clock.time()
        until = repr(now + self.retry_after)
        groups = queues + sorted({q for q, _ in done} - set(queues))
        calls = [groups] if not self.cluster else [[q] for q in groups]
        soonest = None
        for group in calls:
            pops = [q for q in group if q in queues]
            keys, args = [], [repr(now), until, str(len(pops)), str(count)]
            for q in group:
                ids = [i for name, i in done if name == q]
                keys += self.keys(q)
                args += [str(len(ids)), *ids]
            reply = self.run(lambda c: self._flushed(self.script)(c, "_REDIS_POP", keys, args), retry="forever")
            done[:] = [(q, i) for q, i in done if q not in group]
            if int(reply[0]) >= 0:
                held, queue_name = self._held(), group[int(reply[0])]
                claim, taken = _Claim(until, held), []
                for job_id, job, tries in zip(*[iter(reply[1:])] * 3):
                    name, _, payload = job.partition(b"\0")
                    taken.append(Message(job_id.decode(), queue_name, name.decode(), payload, int(tries), receipt=claim))
                held.extend(taken[1:])  # their attempts are counted when they start (_start)
                return taken[0], None
            if reply[1]:
                soonest = min(float(reply[1]), soonest or float("inf"))
        return None, soonest

    def _start(self, message):
        """Count the attempt of a job claimed ahead as it starts, deleting the jobs of its queue
        this thread finished, in one script whose reply is read with this thread's next command
        (on a cluster, at once). A job whose reservation ends within 0.6 x retry_after is given
        back with the others held, and claimed anew (the keeper renews a running job's claim a
        third of retry_after after it starts: it must not lapse before); one keep() found taken
        by another worker (this one stalled past its reservation) is not started."""
        with self._leases:
            if message.id in message.receipt.lost:
                return False
            if float(message.receipt.stamp) - self.clock.time() < 0.6 * self.retry_after:
                self._held().appendleft(message)
                self.put_back()
                return False
        done, keys = self._acked(), self.keys(message.queue)
        command = ["EVAL", _REDIS_START, "3", keys[3], keys[4], keys[2], message.id, str(message.attempts + 1)]
        command += [i for q, i in done if q == message.queue]
        done[:] = [(q, i) for q, i in done if q != message.queue]
        if self.cluster:
            self.run(lambda c: c.execute_command(*command), retry="forever")
        else:
            self._mail().append(command)
            self.run(self._flushed(None, read=False), retry="forever")
        message.attempts += 1
        return True

    def _mail(self):
        """This thread's commands sent ahead on a connection of its own (_OwnConn), their replies
        read with its next command: those to send (again, after a lost connection: each may run
        twice), then those sent whose reply is not read yet. (A single push goes this way too:
        redis-py's packing of its 16 words, and taking a connection from the pool and giving it
        back, cost more than the rest of the push.)"""
        local = self._local
        if getattr(local, "unsent", None) is None or local.conn is not None and local.own.pid != os.getpid():
            local.unsent, local.sent, local.conn = [], [], None  # (a forked child: what its parent sent is not its own)
        return local.unsent

    def _flushed(self, call, read=True):
        """A function of the client that sends this thread's commands not sent yet and (read)
        reads the replies of those sent, then returns call(client, ...) (call None: None)."""
        def flush(client, *args):
            local, unsent = self._local, self._mail()  # (no health-check PING: it would read a reply of ours)
            try:
                if unsent:
                    if local.conn is None:
                        local.own = _OwnConn(client.connection_pool)
                        local.conn = local.own.conn
                    local.conn.send_packed_command([b"".join(c if type(c) is bytes else b"*%d\r\n" % len(c) + _resp(c)
                                                             for c in unsent)], check_health=False)
                    local.sent += unsent
                    del unsent[:]
                while read and local.sent:
                    local.conn.read_response()
                    del local.sent[0]
            except _import_optional("redis", "redis").exceptions.ResponseError:
                del local.sent[:1]  # the server refused it (out of memory, say): not sent again
                raise
            except BaseException:
                self._lose_conn()
                raise
            return call(client, *args) if call is not None else None
        return flush

    def _lose_conn(self, forget=False):
        """Drop this thread's own connection; what was sent on it is sent again (forget: not)."""
        local, unsent = self._local, self._mail()
        unsent[:] = [] if forget else local.sent + unsent
        local.sent, conn, local.conn = [], local.conn, None
        if conn is not None:
            local.own.conn = None
            if local.own.pid == os.getpid():  # (a forked child's copy is its parent's socket: left alone)
                _guard(conn.disconnect)
                _guard(lambda: local.own.pool.release(conn))

    def put_back(self):
        """Make this thread's jobs claimed ahead ready again at once, at the head of their queue
        (they had not started: no attempt of theirs was counted); only those still reserved by
        this claim (its stamp, which keep() moves on)."""
        held = self._held()
        if held:
            claim, ids, keys = held[0].receipt, [m.id for m in held], self.keys(held[0].queue)
            held.clear()
            with self._leases:  # not while the keeper moves the claim's stamp
                self.run(lambda c: self._flushed(self.script)(c, "_REDIS_PUT_BACK", [keys[0], keys[2], keys[5]],
                                                               [claim.stamp, *ids]), retry="forever")

    def ack(self, message, failed=False):
        self._acked().append((message.queue, message.id))
        if failed:
            self._pop_once([])

    def release(self, message, delay=0.0):
        due = "" if delay <= 0 else repr(self.clock.time() + delay)
        self.run(lambda c: self._flushed(self.script)(c, "_REDIS_RELEASE", self.keys(message.queue),
                                                       [message.id, str(message.attempts), due]), retry="forever")

    def keep(self, message):
        """Renew the reservation of the running job and of the jobs claimed with it that wait,
        those still reserved by this claim (its stamp); the others were taken by another worker
        after this one stalled past its reservation: they are not started (_start)."""
        claim, until = message.receipt, repr(self.clock.time() + self.retry_after)
        with self._leases:
            ids = [message.id] + [m.id for m in list(claim.held) if m.receipt is claim and m.id not in claim.lost]
            renewed = self.run(lambda c: self.script(c, "_REDIS_RENEW", [self.keys(message.queue)[2]],
                                                     [claim.stamp, until, *ids]), retry="forever")
            claim.lost.update(set(ids) - {i.decode() for i in renewed})
            claim.stamp = until if renewed else claim.stamp

    def stats(self, queues=None):
        now = repr(self.clock.time())

        def count(client):
            names = list(queues) if queues else sorted(n.decode() for n in client.smembers(self.own_state.key("queues")))
            pipe = client.pipeline(transaction=False)
            for q in names:
                ready, delayed, reserved = self.keys(q)[:3]
                pipe.llen(ready).zcount(delayed, "-inf", now).zcard(delayed)
                pipe.zcount(reserved, "-inf", now).zcard(reserved)
            values = pipe.execute()
            return {q: {"ready": r + due + lapsed, "delayed": later - due, "reserved": held - lapsed}
                    for q, (r, due, later, lapsed, held) in zip(names, zip(*[iter(values)] * 5))}
        return self.run(count)

    def clear(self, queue, batch=1000):
        locks = bool(self.state_store().entries("unique:"))
        count = 0
        while True:
            jobs = self.run(lambda c: self.script(c, "_REDIS_CLEAR", self.keys(self.check_queue(queue)),
                                                  [str(batch), "1" if locks else "0"]))
            _free_unique_locks(self.state_store(), (j.partition(b"\0")[2] for j in jobs)) if locks else None
            count += len(jobs)
            if len(jobs) < batch:
                return count

    def lanes(self, count):
        self._lanes_of = threading.get_ident() if count > 1 else None  # see close()

    def close(self):
        """This thread's part (its jobs held, its deletes, its own connection); then the
        process's client, unless this is a lane of a worker whose other lanes may still use it
        (the thread that started the lanes closes it, once they have ended)."""
        _guard(self.put_back)
        if self._acked() or self._mail() or self._local.sent:
            _guard(lambda: self._pop_once([]))  # the deletes, and the replies of what was sent ahead
        self._lose_conn(forget=True)
        if self._lanes_of not in (None, threading.get_ident()):
            return
        self._lanes_of, client, self._client = None, self._client, None
        _guard(client.close) if client is not None else None


_REDIS_STATE = """
local names, values, expires, now, op = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2]
local function live(name)
  local e = redis.call('ZSCORE', expires, name)
  if e and tonumber(e) >= now then return redis.call('HGET', values, name) end
  return false
end
local function set(name, value, untl)
  redis.call('ZADD', names, 0, name); redis.call('HSET', values, name, value); redis.call('ZADD', expires, untl, name)
end
local function drop(name)
  redis.call('ZREM', names, name); redis.call('HDEL', values, name); redis.call('ZREM', expires, name)
end
if op == 'get' then return live(ARGV[3])
elseif op == 'lock' then
  local held = live(ARGV[3])
  if held and held ~= ARGV[4] then return 0 end
  set(ARGV[3], ARGV[4], ARGV[5]); return 1
elseif op == 'unlock' then
  if ARGV[4] and redis.call('HGET', values, ARGV[3]) ~= ARGV[4] then return 0 end
  drop(ARGV[3]); return 1
elseif op == 'take' then
  for i = 5, #ARGV do
    if not live(ARGV[i]) then set(ARGV[i], ARGV[3], ARGV[4]); return ARGV[i] end
  end
  return false
elseif op == 'free_in' then
  local first = false
  for i = 3, #ARGV do
    local e = redis.call('ZSCORE', expires, ARGV[i])
    if not e or tonumber(e) < now then return '0' end
    if not first or tonumber(e) < first then first = tonumber(e) end
  end
  return tostring(first - now)
elseif op == 'hold' then
  if redis.call('HGET', values, ARGV[3]) ~= ARGV[4] then return 0 end
  if ARGV[5] == '' then drop(ARGV[3]) else redis.call('ZADD', expires, ARGV[5], ARGV[3]) end
  return 1
elseif op == 'put' then
  local n, last = tonumber(ARGV[3]), false
  for i = 4, 3 + 3 * n, 3 do set(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
  for i = 4 + 3 * n, #ARGV, 3 do
    last = (tonumber(live(ARGV[i]) or '0') or 0) + tonumber(ARGV[i + 1])
    set(ARGV[i], tostring(last), ARGV[i + 2])
  end
  return last and tostring(last) or false
elseif op == 'entries' then
  local out = {}
  for _, name in ipairs(redis.call('ZRANGEBYLEX', names, '[' .. ARGV[3], '(' .. ARGV[4])) do
    local value = live(name)
    if value then out[#out + 1] = name; out[#out + 1] = value end
  end
  return out
elseif op == 'prune' then
  local gone = redis.call('ZRANGEBYSCORE', expires, '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
  for _, name in ipairs(gone) do drop(name) end
  return #gone
end
"""


class _RedisState(StateStore):
    """The state store in Redis: entries under the hash tag {state} (one slot of a cluster), each
    with its expiry; every method is one script, timed by the driver's clock."""

    def key(self, name):
        return f"{self.db.prefix}{{state}}:{name}"

    def _call(self, op, *args, retry=True):
        keys = [self.key("names"), self.key("values"), self.key("expires")]
        args = [repr(self.db.clock.time()), op, *map(str, args)]
        value = self.db.run(lambda c: self.db.script(c, "_REDIS_STATE", keys, args), retry)
        return value.decode() if isinstance(value, bytes) else value

    def _until(self, seconds):
        return repr(self.db.clock.time() + seconds)

    def take_slot(self, names, hold, holder):
        return self._call("take", holder, self._until(hold + _SLOT_MARGIN), *names)

    def slots_free_in(self, names):
        return max(0.0, float(self._call("free_in", *names)))

    def hold_slot(self, name, holder, hold):
        self._call("hold", name, holder, self._until(hold) if hold > 0 else "")

    def lock(self, name, holder, ttl):
        return self._call("lock", name, holder, self._until(ttl)) == 1

    def unlock(self, name, holder=None, retry=True):
        self._call("unlock", name, *([holder] if holder is not None else []), retry=retry)

    def value_of(self, name):
        return self._call("get", name)

    def add_to(self, name, amount=1, ttl=3600.0):
        return int(float(self._call("put", 0, name, amount, self._until(ttl))))

    def entries(self, prefix, retry=True):
        flat = self._call("entries", prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), retry=retry)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def put_entries(self, entries, adds=(), retry=True):
        args = [v for name, value, ttl in entries for v in (name, value, self._until(ttl))]
        args += [v for name, amount, ttl in adds for v in (name, amount, self._until(ttl))]
        if args:
            self._call("put", len(entries), *args, retry=retry)

    def prune(self, retry=True):
        while self._call("prune", retry=retry) == 1000:
            pass


_REDIS_FAIL = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', ARGV[2] .. id, 'driver', ARGV[3], 'connection', ARGV[4], 'queue', ARGV[5], 'name', ARGV[6],
           'payload', ARGV[7], 'exception', ARGV[8], 'failed_at', ARGV[9])
redis.call('ZADD', KEYS[1], ARGV[10], id)
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
return id
"""
_REDIS_FORGET = """
local count = 0
for i = 2, #ARGV do
  local queue = redis.call('HGET', ARGV[1] .. ARGV[i], 'queue')
  if queue then
    redis.call('DEL', ARGV[1] .. ARGV[i]); redis.call('ZREM', KEYS[1], ARGV[i])
    if redis.call('HINCRBY', KEYS[2], queue, -1) <= 0 then redis.call('HDEL', KEYS[2], queue) end
    count = count + 1
  end
end
return count
"""


class _RedisFailed(FailedStore):
    """The failed store in Redis, under the hash tag {failed}: a hash per failed job, their ids
    in a sorted set by the time they failed, and counts per queue."""

    _fields = ("driver", "connection", "queue", "name", "exception", "failed_at", "payload")

    def __init__(self, db):
        self.db = db

    def key(self, name):
        return f"{self.db.prefix}{{failed}}:{name}"

    def add_failed(self, driver_name, connection, message, exception):
        """Keep a failed job once: a marker of its id (for a week) makes its second failure (its
        worker died before the ack) return False."""
        now = self.db.clock.time()
        mark = self.key(f"mark:{driver_name}:{message.queue}:{message.id or os.urandom(8).hex()}")
        keys = [self.key("ids"), self.key("next"), self.key("counts"), mark]
        args = [str(7 * 86400 * 1000), self.key("job:"), driver_name, connection, message.queue, message.name,
                message.payload, exception, _stamp(now), repr(now)]
        return bool(self.db.run(lambda c: self.db.script(c, "_REDIS_FAIL", keys, args), retry="forever"))

    def failed_jobs(self, ids=None, limit=None, newest_first=False, payloads=True):
        def read(client):
            chosen = [str(i) for i in ids] if ids else [
                i.decode() for i in client.zrange(self.key("ids"), 0, (limit or 0) - 1, desc=newest_first)]
            pipe = client.pipeline(transaction=False)
            for i in chosen:
                pipe.hgetall(self.key(f"job:{i}"))
            return [(int(i), row) for i, row in zip(chosen, pipe.execute()) if row]
        rows = []
        for job_id, row in sorted(self.db.run(read), reverse=newest_first)[:limit]:
            row = {k.decode(): v for k, v in row.items()}
            rows.append(dict({k: row[k].decode("utf-8", "replace") for k in self._fields[:-1]}, id=job_id,
                             **({"payload": row["payload"]} if payloads else {})))
        return rows

    def forget(self, ids=None, older_than=None, batch=10000):
        if ids is not None:
            return self._forget([str(i) for i in ids]) if ids else 0
        cutoff = "+inf" if older_than is None else f"({self.db.clock.time() - older_than!r}"
        count = 0
        while True:
            chosen = self.db.run(lambda c: c.zrangebyscore(self.key("ids"), "-inf", cutoff, start=0, num=batch))
            count += self._forget([i.decode() for i in chosen]) if chosen else 0
            if len(chosen) < batch:
                return count

    def _forget(self, ids, pipe=None):
        keys, args = [self.key("ids"), self.key("counts")], [self.key("job:"), *ids]
        if pipe is not None:
            return pipe.eval(_REDIS_FORGET, 2, *keys, *args)
        return self.db.run(lambda c: self.db.script(c, "_REDIS_FORGET", keys, args))

    def failed_counts(self):
        counts = self.db.run(lambda c: c.hgetall(self.key("counts")))
        return {q.decode(): int(n) for q, n in sorted(counts.items()) if int(n) > 0}

    def retry_failed(self, ids=None, queue=None, target=None, batch=200):
        """Put failed jobs back on their queue (or `queue`), oldest first; yield each row moved.
        Onto this Redis (not a cluster) a batch moves in one transaction; onto another driver a
        row leaves the failed store once that driver has it: a kill in between may put it back twice."""
        last = int(self.db.run(lambda c: c.get(self.key("next"))) or 0)
        while True:  # those failed before it began: a job retried onto sync may fail again meanwhile
            rows = [row for row in self.failed_jobs(ids, limit=None if ids else batch) if row["id"] <= last]
            for row in rows:
                row["queue"] = queue or row["queue"]
                payload = readdress(row["payload"], row["queue"]) if queue else row["payload"]
                row["target"] = target(row) if target else self.db
                message = Message(None, row["queue"], row["name"], payload, 0, 0.0)
                if row["target"] is self.db and not self.db.cluster:
                    self.db.put([message], also=lambda pipe: self._forget([str(row["id"])], pipe))
                else:
                    row["target"].put([message])
                    self._forget([str(row["id"])])
                yield row
            if not rows or ids:
                return


# The beanstalkd driver ########################################################################
# Tube = queue. A job's body is its class name, the attempts it had before this push and its queue,
# then the payload (NUL-separated). Delays and the reservation (TTR = retry_after, whole seconds)
# are the server's; a running job is touched so its TTR never lapses. Attempts = the body's + the
# server's count of reserves, so a job that kills its worker ends in the failed store. Each thread
# has its own connections (a reserved job belongs to the connection that reserved it: the keeper
# touches it through that connection, under its lock). A finished job is deleted with the next
# reserve, in one round trip (_Beanstalk).
_TUBE = r"^[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}$"


class _Beanstalk:
    """One connection to beanstalkd: a greenstalk client on a socket of ours, and the worker's
    round trips on that same socket as protocol lines (beanstalkd's protocol.txt), pipelined,
    which greenstalk cannot do: the deletes of the jobs finished since the last reserve go with the
    next reserve. A connection that watches one tube also uses it, and asks `peek-ready` after each
    reserve: the next reserve then sends `stats-job` of the job it expects in the same round trip
    (its answer, read after the reserve's, counts this reserve); when another job came, it asks
    again. Between two of its exchanges nothing is left unread, so greenstalk's calls and these
    take turns on the socket."""

    def __init__(self, greenstalk, address, watch):
        import socket
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.peeks = len(watch) == 1  # the one tube it watches is the one it uses: peek-ready sees it
        self.tube = watch[0] if self.peeks else "default"  # the tube it puts into
        self.client = greenstalk.Client(self.sock, encoding=None, use=self.tube, watch=list(watch) or "default")
        self.reader = self.sock.makefile("rb")
        self.lock = threading.Lock()  # the keeper touches a running job through this connection
        self.done = []                # ids of the jobs finished since its last reserve, not deleted yet
        self.expected = None          # the id at the head of the tube after the last reserve (peeks)

    def reserve(self, timeout):
        """(id, body, reserves, tube) of the next job of the watched tubes, or None after `timeout`
        whole seconds; the finished jobs are deleted in the same round trip."""
        while True:
            expected, self.expected = self.expected, None
            job, stats = self._exchange(0 if expected else timeout, expected)
            if job or not expected or not timeout:
                break  # else the expected job went to another worker and the tube is empty: wait now
        if not job:
            return None
        job_id, body = job
        if job_id != expected:
            self.sock.sendall(b"stats-job %d\r\n" % job_id)
            stats = self._answer(b"OK")
        reserves, tube = re.search(rb"\nreserves: (\d+)", stats[-1]), re.search(rb"\ntube: (\S+)", stats[-1])
        return job_id, body, int(reserves.group(1)), tube.group(1).decode()

    def _exchange(self, timeout, expected):
        """One round trip: the deletes, the reserve, the expected job's stats, the peek; return
        ((id, body) or None, the stats or None)."""
        done, self.done = self.done, []
        lines = [b"delete %d\r\n" % i for i in done] + [b"reserve-with-timeout %d\r\n" % timeout]
        lines += [b"stats-job %d\r\n" % expected] if expected else []
        self.sock.sendall(b"".join(lines + [b"peek-ready\r\n"] if self.peeks else lines))
        for _ in done:
            self._line()  # DELETED, or NOT_FOUND: its reservation had lapsed, and it runs again
        head = self._line().split()
        job = None
        if head[0] not in (b"TIMED_OUT", b"DEADLINE_SOON"):
            job = int(self._expect(head, b"RESERVED")[1]), self._chunk(head[2])
        stats = self._answer(b"OK") if expected else None
        if self.peeks:
            found = self._answer(b"FOUND")
            self.expected = found and int(found[0])
        return job, stats

    def flush(self):
        """Delete the finished jobs now (a worker that stops, or reserves on another connection),
        under the lock through which the keeper touches them."""
        with self.lock:
            done, self.done = self.done, []
            if done:
                self.sock.sendall(b"".join([b"delete %d\r\n" % i for i in done]))
                for _ in done:
                    self._line()

    def close(self, flush=True):
        """Close it, deleting the finished jobs first (flush=False: the connection is lost, and
        their reservations with it); return the ids whose delete could not be sent."""
        lost = list(self.done)
        if flush and lost:
            self.sock.settimeout(5.0)  # a server that vanished without a reset must not hold a stopping worker
            lost = [] if _guard(self.flush)[1] is None else lost
        _guard(self.reader.close)
        _guard(self.client.close)
        return lost

    def _line(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("beanstalkd closed the connection")
        return line

    def _answer(self, word):
        """The next answer: `word` with its fields and data as a list, or None for NOT_FOUND."""
        head = self._line().split()
        if head[0] == b"NOT_FOUND":
            return None
        return self._expect(head, word)[1:-1] + [self._chunk(head[-1])]

    def _chunk(self, size):
        data = self.reader.read(int(size) + 2)
        if len(data) != int(size) + 2:
            raise ConnectionError("beanstalkd closed the connection")
        return data[:-2]

    @staticmethod
    def _expect(head, word):
        if not head or head[0] != word:
            raise QueueError(f"beanstalkd answered {b' '.join(head).decode(errors='replace')!r} instead of {word.decode()}")
        return head


class BeanstalkdDriver(Driver):
    """Jobs in beanstalkd through greenstalk. A worker of several queues looks at each tube in
    order (strict priority), then waits on all of them."""

    name = "beanstalkd"
    defaults = dict(Driver.defaults, host="127.0.0.1", port=11300, retry_after=90)
    kinds = dict(Driver.kinds, host=_string, port=_port, retry_after=_lease)
    limit_name = "beanstalkd's max-job-size (its -z option)"

    def __init__(self, options, config):
        super().__init__(options, config)
        self.retry_after = max(1, math.ceil(options["retry_after"]))
        self.keep_every = max(0.5, self.retry_after / 3)
        self.where = f"{options['host']}:{options['port']}"
        self._local, self._limit, self._connected = threading.local(), None, False

    @property
    def connection_name(self):
        return self.where

    def client(self, watch=()):
        """This thread's connection (_Beanstalk) watching `watch` (a tuple of tubes)."""
        clients = self._local.__dict__.setdefault("clients", {})
        if watch not in clients:
            greenstalk = _import_optional("greenstalk", "beanstalkd")
            try:
                clients[watch] = _Beanstalk(greenstalk, (self.options["host"], int(self.options["port"])), watch)
            except OSError as exc:
                raise ConnectionFailed(f"cannot reach beanstalkd at {self.where}: {exc}") from None
        return clients[watch]

    def run(self, work, retry=True):
        """work()'s result; a lost connection is tried again with the shared policy once this
        process has reached the server (one that never answered is one line at once)."""
        greenstalk = _import_optional("greenstalk", "beanstalkd")
        policy = _Retry(None if retry == "forever" else 30.0, self.interrupt) if retry else None
        while True:
            try:
                result = work()
                self._connected = True
                return result
            except (ConnectionFailed, OSError, greenstalk.UnknownResponseError) as exc:
                self._drop()
                if policy is None or not self._connected or not policy.again():
                    if isinstance(exc, ConnectionFailed):
                        raise
                    raise ConnectionFailed(f"lost the connection to beanstalkd at {self.where}: {exc}") from None
                log.warning("beanstalkd %s: %s; trying again", self.where, _summary(exc))
            except greenstalk.JobTooBigError:
                raise QueueError(f"beanstalkd at {self.where} refused a job over its max-job-size") from None
            except greenstalk.Error as exc:
                raise QueueError(f"beanstalkd at {self.where} refused: {type(exc).__name__} {exc}") from None

    def _drop(self, flush=False):
        """Close this thread's connections (flush: deleting their finished jobs first); return
        the ids of finished jobs left undeleted (they run again)."""
        lost = [i for connection in getattr(self._local, "clients", {}).values() for i in connection.close(flush)]
        self._local.clients = {}
        return lost

    def check_queue(self, queue):
        if not re.match(_TUBE, queue):
            raise QueueError(f"queue name {queue!r}: a beanstalkd tube name is 1 to 200 of A-Z a-z 0-9 + / ; . $ _ ( ) -, "
                             "not starting with -")
        return queue

    def max_payload(self):
        if self._limit is None:
            self._limit = int(self.run(lambda: self.client().client.stats()["max-job-size"])) - 512
        return self._limit

    # the interface
    def put(self, messages):
        """One put per message (beanstalkd has no transaction: a push of several that fails half
        way deletes the ones it put, if the server still answers)."""
        done = []
        try:
            for m in messages:
                body = b"\0".join([m.name.encode(), str(m.attempts).encode(), self.check_queue(m.queue).encode(), m.payload])
                done.append(self.run(lambda: self._put(m.queue, body, m.delay)))
        except BaseException:
            for job_id in done:
                _guard(lambda: self.client().client.delete(job_id))
            raise

    def _use(self, queue):
        """This thread's pushing client, using the tube `queue` (one round trip only to change it)."""
        connection = self.client()
        if connection.tube != queue:
            connection.client.use(queue)
            connection.tube = queue
        return connection.client

    def _put(self, queue, body, delay):
        client = self._use(queue)
        return client.put(body, priority=1024, delay=math.ceil(max(0.0, delay)), ttr=self.retry_after)

    def pop(self, queues, wait=0.0):
        deadline = self.clock.monotonic() + wait
        if len(queues) > 1:  # strict priority: each tube in order, then wait on all of them
            for queue_name in queues:
                message = self.run(lambda: self._reserve((queue_name,), 0), retry="forever")
                if message is not None:
                    return message
        left = round(max(0.0, deadline - self.clock.monotonic()))
        return self.run(lambda: self._reserve(tuple(queues), left), retry="forever")

    def _reserve(self, watch, timeout):
        connection = self.client(watch)
        for other in list(self._local.clients.values()):  # jobs finished through another connection
            if other.done and other is not connection:   # (another set of queues): deleted now
                other.flush()
        with connection.lock:
            job = connection.reserve(timeout)
        if job is None:
            return None
        job_id, body, reserves, tube = job
        try:
            name, before, queue_name, payload = body.split(b"\0", 3)
            name, queue_name, attempts = name.decode(), queue_name.decode(), int(before) + reserves
        except ValueError:  # a body this driver did not write: its payload check fails it (failed store)
            name, queue_name, payload, attempts = "", tube, body, reserves
        job = _import_optional("greenstalk", "beanstalkd").Job(job_id, b"")  # greenstalk's release and touch take one
        return Message(str(job_id), queue_name, name, payload, attempts, receipt=(connection, job, attempts))

    def _with(self, message, action):
        connection, job, _ = message.receipt
        with connection.lock:
            return action(connection.client, job)

    def ack(self, message, failed=False):
        """Deleted with this thread's next reserve on the connection that reserved it (or when the
        worker stops); until then it stays reserved, touched by the keeper."""
        message.receipt[0].done.append(message.receipt[1].id)

    def release(self, message, delay=0.0):
        """At the server (its count of reserves goes on) when the attempts are those of the pop;
        else (a middleware release, which spends no try) a new job with the attempts so far, then
        the old one deleted."""
        if message.attempts == message.receipt[2]:
            try:
                self.run(lambda: self._with(message, lambda c, job: c.release(job, priority=1024,
                                                                               delay=math.ceil(max(0.0, delay)))),
                         retry=False)
            except ConnectionFailed as exc:  # the connection and its reservation are gone: the job is back already
                log.warning("beanstalkd %s: %s: %r is ready again at once", self.where, _summary(exc), message)
            return
        self.put([Message(None, message.queue, message.name, message.payload, message.attempts, delay)])
        self.ack(message)

    def keep(self, message):
        self.run(lambda: self._with(message, lambda c, job: c.touch(job)), retry=False)

    def stats(self, queues=None):
        greenstalk = _import_optional("greenstalk", "beanstalkd")

        def count():
            client = self.client().client
            names = list(queues) if queues else sorted(t.decode() if isinstance(t, bytes) else t for t in client.tubes())
            result = {}
            for name in names:
                try:
                    s = client.stats_tube(name)
                except greenstalk.NotFoundError:
                    s = {}
                result[name] = {"ready": int(s.get("current-jobs-ready", 0)), "delayed": int(s.get("current-jobs-delayed", 0)),
                                "reserved": int(s.get("current-jobs-reserved", 0))}
            return result
        return self.run(count)

    def clear(self, queue, batch=1000):
        greenstalk = _import_optional("greenstalk", "beanstalkd")
        locks, count = bool(self.state_store().entries("unique:")), 0

        def take():
            client = self._use(self.check_queue(queue))
            for peek in (client.peek_ready, client.peek_delayed):
                try:
                    job = peek()
                except greenstalk.NotFoundError:
                    continue
                client.delete(job)
                return job.body.split(b"\0", 3)[3]
            return None
        while True:
            payload = self.run(take)
            if payload is None:
                return count
            count += 1
            _free_unique_locks(self.state_store(), [payload]) if locks else None

    def close(self):
        lost = self._drop(flush=True)
        if lost:
            raise ConnectionFailed(f"beanstalkd at {self.where} did not take the delete of jobs {lost}: they run again")


# The sqs driver ###############################################################################
# A queue is an SQS standard queue named prefix + queue, made on first use (14 days' retention, the
# longest). The body is the payload in base64 (SQS bodies are text); the class name, the attempts
# before this push, when it was pushed and when it is due are message attributes. A delay past SQS's
# 15 minutes is delayed again on arrival until it is due. retry_after is the visibility timeout,
# renewed while a job runs; attempts = the attribute's + SQS's ApproximateReceiveCount. `clear`
# deletes the ready messages and leaves a clear mark in the state store: the delayed ones pushed
# before it are dropped when they arrive (as on amqp).
_SQS_NAME = r"^[A-Za-z0-9_-]{1,80}$"
_SQS_MAX_DELAY = 900


class SQSDriver(Driver):
    """Jobs in Amazon SQS (standard queues) through boto3."""

    name = "sqs"
    defaults = dict(Driver.defaults, endpoint=None, region="us-east-1", prefix="", retry_after=90, key=None, secret=None)
    kinds = dict(Driver.kinds, endpoint=_maybe_string, region=_string, prefix=_string, retry_after=_lease,
                 key=_maybe_string, secret=_maybe_string)
    limit_name = "the queue's MaximumMessageSize"

    def __init__(self, options, config):
        super().__init__(options, config)
        self.retry_after = min(43200, max(1, math.ceil(options["retry_after"])))
        self.keep_every = max(0.5, self.retry_after / 3)
        self.where = options["endpoint"] or f"SQS {options['region']}"
        self._client, self._urls, self._limits, self._connected = None, {}, {}, False
        self._client_lock, self._marks = threading.Lock(), {}  # queue -> (its clear mark, when read)

    @property
    def connection_name(self):
        return self.where

    def client(self):
        with self._client_lock:
            if self._client is None:
                boto3, o = _import_optional("boto3", "sqs"), self.options
                credentials = {"aws_access_key_id": o["key"], "aws_secret_access_key": o["secret"]} if o["key"] else {}
                config = _import_optional("botocore.config", "sqs", "boto3").Config(
                    retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30)
                self._client = boto3.client("sqs", endpoint_url=o["endpoint"], region_name=o["region"], config=config,
                                            **credentials)
        return self._client

    def run(self, work, retry=True):
        """work(client)'s result; a lost connection is tried again with the shared policy once
        this process has reached SQS; a refusal (credentials, a name) is one line."""
        botocore = _import_optional("botocore.exceptions", "sqs", "boto3")
        policy = _Retry(None if retry == "forever" else 30.0, self.interrupt) if retry else None
        while True:
            try:
                result = work(self.client())
                self._connected = True
                return result
            except (botocore.EndpointConnectionError, botocore.ConnectionClosedError, botocore.ReadTimeoutError) as exc:
                if policy is None or not self._connected or not policy.again():
                    raise ConnectionFailed(f"cannot reach {self.where}: {exc}") from None
                log.warning("sqs %s: %s; trying again", self.where, _summary(exc))
            except botocore.NoCredentialsError:
                raise ConfigError("the sqs driver has no credentials: set DRIVERS['sqs']['key'] and ['secret'], "
                                  "or boto3's usual AWS_ACCESS_KEY_ID / ~/.aws/credentials") from None
            except botocore.ClientError as exc:
                raise QueueError(f"{self.where} refused: {exc.response.get('Error', {}).get('Message') or exc}") from None
            except botocore.BotoCoreError as exc:
                raise QueueError(f"{self.where}: {exc}") from None

    def url(self, queue):
        """The queue's URL, made on first use."""
        url = self._urls.get(queue)
        if url is None:
            name = self.options["prefix"] + queue
            if not re.match(_SQS_NAME, name):
                raise QueueError(f"queue name {name!r}: an SQS queue name is 1 to 80 of A-Z a-z 0-9 - _ (prefix included)")
            attributes = {"VisibilityTimeout": str(self.retry_after), "MessageRetentionPeriod": "1209600"}
            url = self._urls[queue] = self.run(lambda c: c.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
        return url

    def max_payload(self):
        return None  # per queue: checked in put()

    def _check(self, queue, body):
        if queue not in self._limits:
            self._limits[queue] = int(self.run(lambda c: c.get_queue_attributes(
                QueueUrl=self.url(queue), AttributeNames=["MaximumMessageSize"])["Attributes"]["MaximumMessageSize"]))
        if len(body) + 512 > self._limits[queue]:
            raise QueueError(f"the job's payload takes {len(body):,} bytes in SQS, over the {self._limits[queue]:,} bytes "
                             f"of the queue's MaximumMessageSize: keep large data elsewhere and put a reference on the job")

    # the interface
    def put(self, messages):
        """Up to 10 messages a request (SQS has no transaction across requests)."""
        import base64
        now, batches = self.clock.time(), {}
        for m in messages:
            body = base64.b64encode(m.payload).decode()
            self._check(m.queue, body)
            attributes = {"name": m.name, "attempts": str(m.attempts), "pushed": repr(now), "due": repr(now + m.delay)}
            batches.setdefault(m.queue, []).append({
                "Id": str(len(batches.get(m.queue, ()))), "MessageBody": body,
                "DelaySeconds": int(min(_SQS_MAX_DELAY, math.ceil(max(0.0, m.delay)))),
                "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}})
        for queue_name, entries in batches.items():
            for i in range(0, len(entries), 10):
                chunk = entries[i:i + 10]
                failed = self.run(lambda c: c.send_message_batch(QueueUrl=self.url(queue_name), Entries=chunk)).get("Failed")
                if failed:
                    raise QueueError(f"{self.where} refused a message: {failed[0].get('Message')}")

    def pop(self, queues, wait=0.0):
        deadline = self.clock.monotonic() + wait
        while True:
            for i, queue_name in enumerate(queues):  # strict priority: each in order, long polling on the last
                left = deadline - self.clock.monotonic()
                waiting = int(min(20, max(0, round(left)))) if i == len(queues) - 1 else 0
                message = self._receive(queue_name, waiting)
                if message is not None:
                    return message
            if deadline - self.clock.monotonic() <= 0.5:
                return None

    def _receive(self, queue_name, waiting):
        """The next message of the queue that is due (those put off are passed over), or None."""
        import base64
        while True:
            reply = self.run(lambda c: c.receive_message(
                QueueUrl=self.url(queue_name), MaxNumberOfMessages=1, WaitTimeSeconds=waiting,
                AttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["All"]), retry="forever")
            if not reply.get("Messages"):
                return None
            m = reply["Messages"][0]
            attributes = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
            if self._put_off(queue_name, m, attributes):
                continue
            received = int(m["Attributes"]["ApproximateReceiveCount"])
            try:
                attempts, payload = int(attributes.get("attempts", 0)) + received, base64.b64decode(m["Body"], validate=True)
            except ValueError:  # a message this driver did not write: its payload check fails it (failed store)
                attempts, payload = received, m["Body"].encode("utf-8", "surrogateescape")
            return Message(m["MessageId"], queue_name, attributes.get("name", ""), payload,
                           attempts, receipt=(m["ReceiptHandle"], attempts, m["Body"], attributes))

    def _put_off(self, queue_name, m, attributes):
        """A message not due yet (a delay past 15 minutes) is sent again with the delay left; one
        pushed before a clear is deleted. True if it was."""
        try:
            due, pushed = float(attributes.get("due", 0)), float(attributes.get("pushed", 0))
        except ValueError:  # not written by this driver: taken now, failed by its payload check
            return False
        left, cleared = due - self.clock.time(), self._cleared(queue_name)
        if cleared is not None and pushed < cleared:
            self.run(lambda c: c.delete_message(QueueUrl=self.url(queue_name), ReceiptHandle=m["ReceiptHandle"]))
            return True
        if due and left > 1:
            entry = {"DelaySeconds": int(min(_SQS_MAX_DELAY, math.ceil(left))), "MessageBody": m["Body"],
                     "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}}
            self.run(lambda c: c.send_message(QueueUrl=self.url(queue_name), **entry))
            self.run(lambda c: c.delete_message(QueueUrl=self.url(queue_name), ReceiptHandle=m["ReceiptHandle"]))
            return True
        return False

    def _cleared(self, queue_name):
        """When the queue was last cleared (read again every 5 s), or None."""
        mark = self._marks.get(queue_name)
        if mark is None or time.monotonic() - mark[1] > 5:
            mark = self._marks[queue_name] = (self.state_store().value_of(f"cleared:{self.name}:{queue_name}"),
                                              time.monotonic())
        return None if mark[0] is None else float(mark[0])

    def ack(self, message, failed=False):
        self.run(lambda c: c.delete_message(QueueUrl=self.url(message.queue), ReceiptHandle=message.receipt[0]),
                 retry="forever")

    def release(self, message, delay=0.0):
        """At SQS (its receive count goes on) when the attempts are those of the pop and the delay
        fits its 12 hours of visibility; else a new message with the attempts so far, then the
        old one deleted."""
        if message.attempts == message.receipt[1] and delay <= 43200:
            self.run(lambda c: c.change_message_visibility(QueueUrl=self.url(message.queue),
                                                           ReceiptHandle=message.receipt[0],
                                                           VisibilityTimeout=int(math.ceil(max(0.0, delay)))),
                     retry="forever")
            return
        self.put([Message(None, message.queue, message.name, message.payload, message.attempts, delay)])
        self.ack(message)

    def keep(self, message):
        self.run(lambda c: c.change_message_visibility(QueueUrl=self.url(message.queue),
                                                       ReceiptHandle=message.receipt[0],
                                                       VisibilityTimeout=self.retry_after), retry=False)

    def stats(self, queues=None):
        prefix = self.options["prefix"]

        def count(c):
            names = list(queues) if queues else sorted(
                url.rsplit("/", 1)[1][len(prefix):] for url in c.list_queues(QueueNamePrefix=prefix).get("QueueUrls", ()))
            keys = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed", "ApproximateNumberOfMessagesNotVisible"]
            result = {}
            for name in names:
                a = c.get_queue_attributes(QueueUrl=self.url(name), AttributeNames=keys)["Attributes"]
                result[name] = {"ready": int(a[keys[0]]), "delayed": int(a[keys[1]]), "reserved": int(a[keys[2]])}
            return result
        return self.run(count)

    def clear(self, queue):
        """Delete the ready messages (received and deleted, 10 at a time) and mark the queue
        cleared: its delayed messages pushed before now are dropped when they arrive."""
        url, count = self.url(queue), 0
        self.state_store().put_entries([(f"cleared:{self.name}:{queue}", repr(self.clock.time()), _MAX_PUSH_DELAY)])
        self._marks.clear()
        locks = bool(self.state_store().entries("unique:"))
        delayed = self.stats([queue])[queue]["delayed"]
        while True:
            got = self.run(lambda c: c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                                       WaitTimeSeconds=0)).get("Messages", [])
            if not got:
                return count + delayed
            self.run(lambda c: c.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]))
            count += len(got)
            if locks:
                import base64
                _free_unique_locks(self.state_store(), [base64.b64decode(m["Body"]) for m in got])


# The sync and null drivers ####################################################################
class SyncDriver(Driver):
    """Laravel's sync connection: push() runs each job at once, in the pushing thread, by a
    worker's own attempt path: its tries (retried at once: a push never waits out a backoff),
    timeout, middleware, hooks, failed() and the failed store. queue.run_now() and the async
    driver's `blocking: True` are this driver."""

    name = "sync"
    shared = False

    def __init__(self, options, config):
        super().__init__(options, config)
        self.worker = Worker(self, attempts=options["attempts"], callback=options["callback"])
        self._held_back = {}  # id -> the delay a middleware released the job for

    def put(self, messages):
        for message in messages:
            message.id = message.id or _new_id()
            self.run(message)

    def run(self, message):
        """Every attempt of a message now, in this thread, without backoff; the last status. A
        release by middleware (which spends no try) waits its delay: it would come back at once
        for ever."""
        while True:
            message.attempts += 1
            tried = message.attempts
            status = self.worker.process(message)
            if status != "released":
                return status
            if message.attempts < tried:
                self.clock.sleep(self._held_back.pop(message.id, 1.0))

    def run_now(self, job):
        """Run a job at once in this thread (queue.run_now); 'done' or 'failed' (or 'deleted')."""
        [message] = self.messages([job])
        message.id = _new_id()
        return self.run(message)

    def pop(self, queues, wait=0.0):
        raise QueueError(f"the {self.name} driver runs each job inside push(): there is nothing for "
                         "`python queue.py work` to do (use the database, redis or amqp driver)")

    def ack(self, message, failed=False):
        pass

    def release(self, message, delay=0.0):
        self._held_back[message.id] = delay  # run() runs it again: at once, or after a middleware's delay

    def stats(self, queues=None):
        return {}

    def clear(self, queue):
        return 0


class NullDriver(Driver):
    """Laravel's null connection: discards every job; push() returns True. A worker on it waits."""

    name = "null"

    def put(self, messages):
        pass

    def pop(self, queues, wait=0.0):
        self.clock.sleep(wait)

    def ack(self, message, failed=False):
        pass

    def release(self, message, delay=0.0):
        pass

    def stats(self, queues=None):
        return {}

    def clear(self, queue):
        return 0


# Worker #######################################################################################
class _Flag:
    """A stop flag that a signal handler may set: setting it takes no lock (a threading.Event
    would, and a handler that interrupts the lock's holder would wait for ever). Waiting on it
    sleeps in slices of 50 ms."""

    def __init__(self):
        self._set = False

    def set(self):
        self._set = True

    def is_set(self):
        return self._set

    def wait(self, timeout):
        """Sleep until the flag is set or timeout seconds have passed; return the flag."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
        return self._set


class _Running:
    """The job a worker is running: its message, when it started (monotonic) and its timeout."""

    __slots__ = ("message", "started", "timeout")

    def __init__(self, message, started, timeout):
        self.message, self.started, self.timeout = message, started, timeout


class Worker:
    """Takes jobs from a driver and runs them; handles tries, backoff, timeouts, failures, chains.

    run() is the loop of `python queue.py work`; process() handles one message and is also used
    by the async driver: it decides (is the payload sound, are tries left?), attempts (unpickle
    and run, under the timeout, inside the one guard for user code) and settles (ack, release or
    fail). Signal handlers only set flags; a second SIGTERM/SIGINT during a job also interrupts
    it (cold shutdown: it goes back on its queue). Either way the worker exits 0.

    concurrency=N runs N lanes: the main thread's loop and N-1 threads with loops of their own,
    each one job at a time with its own claim, reservation and attempt count; they share the stop
    flag, the keeper and the counts. A lane's timeout (and a cold shutdown) is raised in its
    thread by the keeper: it interrupts Python code, and a blocking call once it returns."""

    def __init__(self, driver, queues=None, *, attempts=None, timeout=None, poll=None, callback=None,
                 once=False, stop_when_empty=False, max_jobs=None, max_time=None, backoff=None, memory=None,
                 concurrency=1, schedule=True):
        self.driver = driver
        self.keeps_schedule = schedule      # keep the schedule (queue.schedule) on a thread of its own
        self.concurrency = 1 if once else max(1, int(concurrency or 1))
        options = driver.options
        self.queues = [_check_queue_name(q, "--queue") for q in queues or [options["queue"]]]
        self.attempts = attempts or options["attempts"]
        self.timeout = timeout
        self.poll = options["poll"] if poll is None else poll
        self.callback = callback or options["callback"]
        self.once, self.stop_when_empty = once, stop_when_empty
        self.max_jobs, self.max_time = max_jobs, max_time
        self.backoff = backoff or 0         # for jobs that set none
        self.memory = memory                # MB of RSS after which the worker exits (between jobs)
        self.stopping = _Flag()             # set by a signal or a limit: no new job is taken
        self._ended = threading.Event()     # set when the loop has ended: the keeper stops
        self.processed = 0
        self._total = [0]                   # jobs run by every lane (for max_jobs)
        self.tally = _Tally()               # what it did since its last beat
        self._paused = set()                # its queues that are paused (refreshed every second)
        self.lane = _Lane(self)             # the main thread's loop (process() runs one job on it)
        self._lanes = [self.lane]           # this worker's loops: the main one, or N on threads of their own
        self.registry_key = f"worker:{os.uname().nodename}:{os.getpid()}"
        self.started_at = time.time()
        self._signals = []                  # the signals received, in order
        self._old_handlers = {}
        self._c_signal = self._mask = None  # the C signal module and the thread's mask, once installed
        self._job_handlers, self._real_signal = {}, None  # a job's SIGTERM/SIGINT handlers; signal.signal
        self._in_signal = False             # a job's handler runs, called by the worker's

    # the loop
    def run(self):
        """Work until told to stop; return the exit status (0)."""
        _signing_key()  # an unreadable key stops the worker before it claims anything
        self._install_signals()
        self.driver.interrupt = self.stopping
        _guard(self._refresh_paused)  # before the first claim; then every second, on the keeper
        keeper = threading.Thread(target=self._keep, name="queue-keeper", daemon=True)
        keeper.start()
        _Scheduler(self.stopping).start() if self.keeps_schedule and _schedule else None
        switching = sys.getswitchinterval()
        threads = self._start_lanes()
        reason = "error"
        try:
            if threads:
                self._join(threads)
                reasons = [lane.reason for lane in self._lanes if lane.reason] or [
                    "signal " + signal.Signals(self._signals[-1]).name + " (cold)"]
                reason = next((r for r in reasons if r not in ("stopped", "empty")), reasons[0])
            else:
                reason = self.lane._loop()
        except _ColdShutdown:
            reason = "signal " + signal.Signals(self._signals[-1]).name + " (cold)"
        except ConnectionFailed as exc:
            if not self.stopping.is_set():
                raise
            reason = "signal while the server is unreachable"
            log.warning("worker %d: stopped while %s; its reserved jobs come back after retry_after",
                        os.getpid(), _text(exc))
        finally:
            self.stopping.set()
            self._join(threads, raising=False)
            self.lane._close()  # settle the last jobs before the stopping hooks, however long they take
            self._ended.set()
            _call_hooks("stopping", reason)
            _, exc, _ = _guard(self._beat, True)
            self._restore_signals()
            sys.setswitchinterval(switching)
            self.driver.interrupt = None
        self.processed = self._total[0]
        log.info("worker %d: stopped after %d job(s): %s", os.getpid(), self.processed, reason)
        return 0

    # lanes (--concurrency)
    def _start_lanes(self):
        """With concurrency N, N lanes on threads of their own while the main thread only waits,
        so that no job can change the process's signal handlers under the others (Python allows
        that in the main thread only); return the started threads ([]: one lane, the main one)."""
        self._lanes = [_Lane(self) for _ in range(self.concurrency)] if self.concurrency > 1 else [self.lane]
        self.driver.lanes(self.concurrency)
        if self.concurrency > 1:
            sys.setswitchinterval(0.001)  # a lane whose job ended gets the GIL in 1 ms, not 5
        threads = [threading.Thread(target=lane._run_lane, args=(i == 0,), name=f"queue-lane-{i}", daemon=True)
                   for i, lane in enumerate(self._lanes) if lane is not self.lane]
        for thread in threads:
            thread.start()
        return threads

    def process(self, message, outcome=None):
        """Run one message on the main lane (or settle the outcome of an attempt run elsewhere);
        return 'done', 'released', 'failed' or 'deleted'."""
        return self.lane.process(message, outcome)

    def _join(self, threads, raising=True):
        """Wait for the lanes' threads (in slices, so that signals are handled); raise what ended one."""
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
        errors = [lane.error for lane in self._lanes if lane.error is not None]
        if raising and errors:
            raise errors[0]

    # signals
    def _install_signals(self):
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return
        self._handler = self._on_signal  # one bound method, compared by identity after each job
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._handler)
        import _signal
        self._c_signal = _signal
        # SIGALRM is ours while the worker runs: an alarm a job leaves behind is ignored, never fatal
        self._alarm_handler = self.lane.alarm.on_alarm
        self._old_alarm = signal.signal(signal.SIGALRM, self._alarm_handler)
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else None
        # a job that sets its own SIGTERM/SIGINT handler (SIG_IGN, say) gets it as a handler that the
        # worker's calls after taking the signal: a SIGTERM during that job still stops the worker
        self._real_signal = signal.signal
        signal.signal = self._signal_for_jobs

    def _signal_for_jobs(self, signalnum, handler):
        """signal.signal while the worker runs: in the main thread, SIGTERM and SIGINT stay the
        worker's, and the handler a job sets is kept to be called by the worker's own."""
        if signalnum not in self._old_handlers or threading.current_thread() is not threading.main_thread():
            return self._real_signal(signalnum, handler)
        if not (callable(handler) or handler in (signal.SIG_IGN, signal.SIG_DFL)):
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object")
        previous = self._job_handlers.pop(signalnum, self._handler)
        if handler != self._handler:  # the worker's own, set back: the job has none any more
            self._job_handlers[signalnum] = handler
        return previous

    def _reset_signals(self):
        """Undo what a job did to the worker's signal state: handlers (the main thread's), a pending
        alarm, this thread's mask. (The C module's getsignal: the signal module's wraps every
        answer in an enum.) With lanes, no lane's timeout uses SIGALRM: any lane may cancel it."""
        _signal = self._c_signal
        if _signal is None:  # not run by run() in the main thread
            return
        for sig in self._old_handlers:  # the main lane's
            if _signal.getsignal(sig) is not self._handler:
                self._real_signal(sig, self._handler)
        if self._job_handlers:
            self._job_handlers.clear()
        if hasattr(_signal, "setitimer"):
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        if self._old_handlers and _signal.getsignal(_signal.SIGALRM) is not self._alarm_handler:
            signal.signal(_signal.SIGALRM, self._alarm_handler)
        if self._mask is not None:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, self._mask)

    def _restore_signals(self):
        if getattr(self, "_real_signal", None) is not None and signal.signal == self._signal_for_jobs:
            signal.signal = self._real_signal
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self._old_handlers:
            signal.signal(signal.SIGALRM, self._old_alarm)

    def _on_signal(self, signum, frame):
        if self._in_signal:  # a job's handler that calls its "previous" one: the worker's, taken already
            return
        self._signals.append(signum)
        self.stopping.set()
        job_handler = self._job_handlers.get(signum)
        if self.lane._in_job and callable(job_handler):  # the running job's own, after the worker's
            self._in_signal = True
            try:
                job_handler(signum, frame)
            finally:
                self._in_signal = False
        if len(self._signals) > 1:
            for lane in self._lanes:
                if lane is not self.lane:
                    lane._interrupt(_ColdShutdown)
            if self.lane._in_job:  # the main thread's job
                raise _ColdShutdown()

    def _keep(self):
        """Keeper thread: every driver.keep_every seconds of a running job, driver.keep() renews its
        reservation (database: on the thread's own connection) or keeps the connection alive
        (amqp); it also says which signals arrived (a handler does not log). It runs until the
        loop has ended, warm shutdown included."""
        period, told, kept, raised = self.driver.keep_every, 0, {}, {}
        chores = [[_BEAT_EVERY, 0.0, self._beat], [1.0, 1.0, self._refresh_paused], [_PRUNE_EVERY, 5.0, self._prune]]
        while not self._ended.wait(min(period, 0.25)):
            for signum in self._signals[told:]:
                told += 1
                log.info("worker %d: %s: %s", os.getpid(), signal.Signals(signum).name,
                         "finishing the current job, then exiting (again to stop now)" if told == 1
                         else "stopping now; the current job goes back on its queue")
            for lane in self._lanes:
                current, settling = lane.current, lane._settling
                renew = current or settling  # a job whose after hooks run is not deleted yet: renewed too
                if renew is not None and time.monotonic() - max(renew.started, kept.get(lane, 0.0)) >= period:
                    kept[lane] = time.monotonic()
                    try:
                        self.driver.keep(renew.message)
                    except Exception as exc:
                        log.warning("could not renew the reservation of %r: %s", renew.message, _text(exc))
                late = current is not None and current.timeout and time.monotonic() - current.started > current.timeout
                if late and time.monotonic() - raised.get(lane, 0.0) >= 1.0:  # then again every second
                    raised[lane] = time.monotonic()
                    lane.timer.overdue(current)
            if _leases:
                _, exc, _ = _guard(_renew_leases)
                if exc is not None:
                    log.warning("could not renew a funnel slot: %s", _summary(exc))
            for chore in chores:  # [every, next time, what]: the beat, the paused queues, pruning
                if time.monotonic() >= chore[1]:
                    chore[1] = time.monotonic() + chore[0]
                    _, exc, _ = _guard(chore[2])
                    if exc is not None:
                        log.debug("worker %d: %s: %s", os.getpid(), chore[2].__name__, _summary(exc))

    def _beat(self, last=False):
        """Report this worker in the state table (host, pid, queues, current job, counts), with
        what it did since the last beat (metrics), every few seconds: no query per job."""
        import json
        current = next((lane.current for lane in self._lanes if lane.current is not None), None)
        me = {"host": os.uname().nodename, "pid": os.getpid(), "driver": self.driver.name, "queues": self.queues,
              "connection": self.driver.connection_name,
              "current": current.message.name if current else None, "since": time.time() - (time.monotonic() - current.started)
              if current else None, "done": self.tally.done, "failed": self.tally.failed, "started": self.started_at,
              "beat": time.time()}
        adds = self.tally.take()
        try:
            if last:  # one try each: a worker whose database is gone must still stop at once
                self.driver.state_store().put_entries([], adds, retry=False)
                self.driver.state_store().unlock(self.registry_key, retry=False)
            else:  # one try: the keeper must not stall, it renews the running job's reservation
                self.driver.state_store().put_entries([(self.registry_key, json.dumps(me), _BEAT_TTL)], adds, retry=False)
        except BaseException:
            self.tally.give_back(adds)
            raise

    def _refresh_paused(self):
        paused = {name[len("paused:"):] for name in self.driver.state_store().entries("paused:", retry=False)}
        paused &= set(self.queues)
        self._paused.intersection_update(paused)  # in place: the lanes share the set
        self._paused.update(paused)

    def _prune(self):
        self.driver.state_store().prune(retry=False)


async def _bounded(coroutine, timeout):
    """Await an `async def` job's coroutine, cancelled (JobTimeout) after `timeout` seconds."""
    import asyncio
    if not timeout:
        return await coroutine
    try:
        return await asyncio.wait_for(coroutine, timeout)
    except asyncio.TimeoutError:
        raise JobTimeout(f"the job ran past its timeout of {timeout:g} s") from None


_lane_loops = threading.local()


def _lane_loop():
    """This thread's event loop for `async def` jobs (a lane's; made anew after a fork)."""
    loop = getattr(_lane_loops, "loop", None)
    if loop is None or loop.is_closed() or getattr(_lane_loops, "pid", None) != os.getpid():
        import asyncio
        loop = _lane_loops.loop = asyncio.new_event_loop()
        _lane_loops.pid = os.getpid()
    return loop


def _running_loop():
    """The event loop running in this thread, or None."""
    import asyncio
    return asyncio._get_running_loop()


def _in_a_thread(fn):
    """fn() on a thread of its own, waited for: its result, or what it raised."""
    outcome = []

    def run():
        try:
            outcome.append((fn(), None))
        except BaseException as exc:
            outcome.append((None, exc))
    thread = threading.Thread(target=run, name="queue-async-inline", daemon=True)
    thread.start()
    thread.join()
    result, exc = outcome[0]
    if exc is not None:
        raise exc
    return result


def _drop_lane_loop(loop):
    """Cancel what is left on a loop whose job ended in an exception, and forget the loop."""
    _lane_loops.loop = None
    try:
        import asyncio
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()
    except BaseException:
        pass


def _call_failed(job, exc, callback):
    """job.failed(exc); a Masonite 4 job's failed(payload, exc) gets its payload as Masonite's
    dict {"obj": job, "callback": ..., "args": ()} first."""
    failed = getattr(job, "failed", None)
    if not callable(failed):
        return None
    code = getattr(getattr(failed, "__func__", failed), "__code__", None)
    if code is not None and code.co_argcount - hasattr(failed, "__self__") == 2:
        return failed({"obj": job, "callback": callback, "args": ()}, exc)
    return failed(exc)


_PRUNE_EVERY = 60.0  # seconds between two deletions of expired entries of the state table
_LATE = 2.0  # seconds a retry released before its retry_until deadline may arrive late and still run
# (a first attempt taken after the deadline is failed without running, as Laravel does)


_BEAT_EVERY = 5.0           # seconds between a worker's beats in the state table
_BEAT_TTL = 30.0            # a worker that stopped beating drops out after this
_METRIC_TTL = 400 * 86400   # totals of a job class that nothing updates are forgotten after this
_SERIES_TTL = 2 * 3600      # per-minute figures are kept two hours
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)  # seconds, then +Inf


class _Lane:
    """One loop of a worker, one job at a time: the main thread's (concurrency 1) or one of the
    threads of `--concurrency N`. What is its own is set here; everything else (the driver, the
    settings, the stop flag, the counts, the signals) is its worker's, read through self.worker.
    It decides (is the payload sound, are tries left?), attempts (unpickle and run, under the
    timeout, inside the one guard for user code) and settles (ack, release or fail) each job."""

    def __init__(self, worker):
        self.worker = worker
        self.current = None                 # the _Running job
        self._settling = None               # the job that ran last, until the next pop() settles it (hooks run)
        self._in_job = False
        self._limit = None                  # the timeout of the user code running
        self.alarm, self.deadline = _Alarm(self), _Deadline(self)  # its two ways to stop a job that runs too long
        self.timer = self.deadline          # the one its running job uses (chosen for each job)
        self._told_paused = False           # it said that all of its queues are paused
        self.processed = 0                  # jobs it ran
        self.error = None                   # what ended its thread
        self.reason = None                  # why its loop ended

    def _run_lane(self, announce):
        try:
            self.reason = self._loop(announce=announce)
            if self.reason != "empty":
                self.worker.stopping.set()  # a limit, `restart`: the whole worker stops
        except _ColdShutdown:
            pass
        except BaseException as exc:
            self.error = exc
            self.worker.stopping.set()
        finally:
            self._close()

    def _loop(self, announce=True):
        """Take and run jobs until a limit or a signal says stop; return why it stopped."""
        started = time.monotonic()
        restart_path = os.path.join(self.worker.driver.config.folder, ".queue.restart")
        restart_mark = _restart_mark(restart_path)
        announced = not announce
        while not self.worker.stopping.is_set():
            if _restart_mark(restart_path) != restart_mark:  # one stat() per job
                return "restart"
            if self.worker.max_time is not None and time.monotonic() - started >= self.worker.max_time:
                return "max-time"
            if False in _call_hooks("looping"):
                self.worker.driver.close()
                self.worker.stopping.wait(self.worker.poll)
                continue
            queues = self._unpaused()
            if not queues:  # every queue of this worker is paused
                self.worker.stopping.wait(min(self.worker.poll, 0.5))
                continue
            asked = time.monotonic()
            message = self.worker.driver.pop(queues, 0 if self.worker.once or self.worker.stop_when_empty else self.worker.poll)
            self._settling = None  # the job before is settled: its deletion went with this claim
            if not announced:  # after the first pop: a worker that cannot start says only why
                log.info("worker %d: %s driver, queues %s%s", os.getpid(), self.worker.driver.name, ",".join(self.worker.queues),
                         f", {self.worker.concurrency} jobs at once" if self.worker.concurrency > 1 else "")
                _guard(lambda: self.worker.driver.durability() and log.warning("%s", self.worker.driver.durability()))
                announced = True
            if message is None:
                if self.worker.once or self.worker.stop_when_empty:
                    return "empty"
                self.worker.stopping.wait(self.worker.poll - (time.monotonic() - asked))  # drivers that do not wait
                continue
            if self.worker.concurrency > 1:
                self.worker._reset_signals()  # a timer another lane's job set now must not reach this job
            self.process(message)
            self.worker._reset_signals()
            self.processed += 1
            self.worker._total[0] += 1
            if self.worker.once or (self.worker.max_jobs and self.worker._total[0] >= self.worker.max_jobs):
                return "max-jobs"
            if self.worker.memory and _rss_mb() > self.worker.memory:
                return "memory"
        return "signal " + signal.Signals(self.worker._signals[0]).name if self.worker._signals else "stopped"

    def _unpaused(self):
        """This worker's queues that are not paused; the first time all are, it says so."""
        queues = [q for q in self.worker.queues if q not in self.worker._paused] if self.worker._paused else self.worker.queues
        if not queues and not self._told_paused:
            log.info("worker %d: every queue it serves is paused (%s): waiting for `resume`", os.getpid(),
                     ",".join(self.worker.queues))
        self._told_paused = not queues
        return queues

    def _close(self):
        try:
            self.worker.driver.close()
        except ConnectionFailed as exc:
            log.warning("worker %d: could not finish its acks (%s): those jobs may run again", os.getpid(), _text(exc))

    # one job: deciding, attempting, settling
    def process(self, message, outcome=None):
        """Run one message (or settle the outcome (exception, traceback) of an attempt run
        elsewhere); return 'done', 'released', 'failed' or 'deleted'. A unique job's lock is
        freed once it has ended."""
        started, began = time.monotonic(), self.worker.driver.clock.time()
        kept, _here.state = getattr(_here, "state", None), self.worker.driver.state_store()  # the job's flow control
        try:
            status, header = self._process(message, outcome)
        finally:
            _here.state = kept
        ready = (header or {}).get("ready")
        self.worker.tally.record(message.name, status, time.monotonic() - started,
                          began - ready if isinstance(ready, (int, float)) else None, began)
        unique = (header or {}).get("unique")
        if unique and status != "released":
            _, exc, _ = _guard(lambda: self.worker.driver.state_store().unlock(*unique))
            if exc is not None:
                log.warning("%s #%s: its unique lock stays until it expires: %s", message.name, message.id, _summary(exc))
        return status

    def _process(self, message, outcome):
        started = time.monotonic()
        envelope = None
        try:
            header, body = self._open(message)
        except BadPayload as exc:
            return self._fail(message, None, exc, None, started), None
        if header is None or outcome is not None:
            # a Q1 payload, whose settings are on the job, or an attempt that ran in another
            # process (its chain and failed() are settled here): load the job first
            envelope, exc, text = self._timed(self.worker.timeout, load, body)
            if exc is not None:
                return self._fail(message, body, exc, text, started), header
            if header is None:
                header = dict(_guard(_settings, envelope["job"])[0] or {}, until=envelope.get("until"))
        spent = self._spent(message, header) if outcome is None else None
        if spent is not None:
            return self._fail(message, body, spent, None, started, envelope, header, load_for_failed=True), header
        if outcome is None:
            envelope, exc, text = self._attempt(message, header, body, envelope)
        else:
            exc, text, steer = outcome
            if steer:
                _guard(setattr, envelope["job"], "_queue_steer", steer)
        return self._settle(message, header, body, envelope, exc, text, started), header

    def _open(self, message):
        """Verify a message's payload; a payload signed for another queue or job is refused."""
        header, body = open_payload(message.payload)
        if header is not None:
            for key, have in (("queue", message.queue), ("name", message.name)):
                if header.get(key) not in (None, have) and have:
                    raise BadPayload(f"the payload was signed for {key} {header[key]!r}, not {have!r}: "
                                     "a moved or replayed payload is not run")
        return header, body

    def _spent(self, message, header):
        """MaxAttemptsExceeded if the message may not run again (an attempt died with its worker)."""
        tries = (header or {}).get("tries") or self.worker.attempts
        until = (header or {}).get("until")
        if until is None and message.attempts > tries:
            return MaxAttemptsExceeded(f"{message.name} was taken {message.attempts} times but may be tried {tries}: "
                                       "an earlier attempt ended with its worker (killed, or the connection lost)")
        if until is not None and self.worker.driver.clock.time() > until + (_LATE if message.attempts > 1 else 0.0):
            return MaxAttemptsExceeded(f"{message.name} came up for attempt {message.attempts} after its "
                                       "retry_until deadline had passed")
        return None

    def _attempt(self, message, header, body, envelope=None):
        """Unpickle and run the job once in this thread, with its timeout; return (envelope or
        None, exception or None, traceback text or None)."""
        own = timeout = (header or {}).get("timeout") or self.worker.timeout
        longest = self.worker.driver.longest_job(message.queue)
        if longest and (not timeout or timeout > longest[0]):
            timeout = longest[0]
        self.current = _Running(message, time.monotonic(), timeout)
        loaded = []
        try:
            _, exc, text = self._timed(timeout, self._run, message, envelope or body, loaded, arm=bool(own))
            if isinstance(exc, JobTimeout) and longest and timeout == longest[0]:
                exc = JobTimeout(f"the job ran {timeout:g} s: {longest[1]}")
                text = _format(exc)
            elif exc is not None and timeout and time.monotonic() - self.current.started >= timeout and \
                    not isinstance(exc, JobTimeout):  # stopped by the alarm the keeper set again, through the job's handler
                exc, text = JobTimeout(f"the job ran past its timeout of {timeout:g} s; it ended with {_summary(exc)}"), text
            self._settling = self.current  # renewed by the keeper until the next pop() deletes it
            return (loaded[0] if loaded else None), exc, text
        except _ColdShutdown:
            message.attempts -= 1  # the interrupted attempt does not count
            self.worker.driver.release(message, 0)
            log.info("%s #%s put back on %r: the worker was stopped", message.name, message.id, message.queue)
            raise
        finally:
            self.current = None

    def _timed(self, timeout, fn, *args, arm=True):
        """_guard(fn, *args) under a timeout: the main thread's alarm (_Alarm) or a lane's deadline
        (_Deadline) raises JobTimeout inside it, and again every second until it gives up.
        arm=False: no alarm is set (the limit is a backend's, far off: the keeper sets the alarm if
        the job gets there)."""
        main = (self.worker.concurrency == 1 and hasattr(signal, "setitimer")
                and threading.current_thread() is threading.main_thread())  # the sync driver's lane runs in any thread
        self.timer = self.alarm if main else self.deadline
        self.timer.begin(timeout, arm)
        self._in_job, self._limit = True, timeout
        try:
            return _guard(fn, *args)
        except JobTimeout as late:  # raised in this thread by the keeper just as the job returned
            return None, late, _format(late)
        finally:
            self.timer.end()

    def _interrupt(self, exc_type):
        """Raise exc_type in this lane's thread if it runs a job (as SIGALRM does in the main one)."""
        thread = self.deadline.thread if self.timer is self.deadline else None
        if self._in_job and thread is not None:
            import ctypes
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exc_type))

    def _run(self, message, body, loaded):
        """The user code of one attempt: unpickling, the before hooks, the job's callback. The
        job learns its attempt number and id (Queueable.attempts, job_id)."""
        envelope = body if isinstance(body, dict) else load(body)
        loaded.append(envelope)
        job = envelope["job"]
        try:
            job.attempts, job.job_id, job._queue_steer = message.attempts, message.id, None
        except Exception:
            pass  # a job object that takes no attributes
        if _hooks["before"]:
            _call_hooks("before", job)
        middleware = getattr(job, "middleware", None)
        middleware = list(middleware() or ()) if callable(middleware) else []
        if not middleware:
            return self._call(job)
        return self._through(job, middleware)

    def _call(self, job):
        """The job's callback; an `async def` one runs on this lane's own event loop, under the
        job's timeout: a job that blocks its loop (time.sleep in a coroutine) holds up only its
        own lane, whose keeper-raised timeout ends it."""
        result = getattr(job, self.worker.callback)()
        if not (hasattr(result, "__await__") and hasattr(result, "send")):  # not a coroutine
            return result
        if _running_loop() is not None:  # called inside an event loop (run_now from async code): another thread's
            return _in_a_thread(lambda: _lane_loop().run_until_complete(_bounded(result, self._limit)))
        loop = _lane_loop()
        try:
            return loop.run_until_complete(_bounded(result, self._limit))
        except Exception:
            raise  # the job's own exception: the loop is as it was (clients bound to it go on working)
        except BaseException:
            _drop_lane_loop(loop)  # stopped from outside (a timeout, a cold shutdown): what it left must not run on
            raise

    def _through(self, job, middleware):
        """Run the job through its middleware: one that says wait releases the job for that long."""
        entered, error = [], None
        try:
            for step in middleware:
                wait = step.enter(job)
                if wait is not None:
                    job._queue_steer = ("release", wait, "middleware")
                    return None
                entered.append(step)
            return self._call(job)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for step in reversed(entered):
                step.exit(job, error)

    def _settle(self, message, header, body, envelope, exc, text, started):
        """Ack a job that succeeded (pushing the next link of its chain first), release one that
        failed with tries left after its backoff, fail the others for good; a job that called
        release(), fail() or delete() gets what it asked for."""
        job = envelope["job"] if envelope else None
        steer = getattr(job, "_queue_steer", None)
        if steer:
            return self._steer(message, header, body, envelope, steer, exc, text, started)
        if exc is None:
            links = envelope.get("chain")
            if links:  # the next job of a chain, pushed before this one is acked (at least once)
                self.worker.driver.push(links[:1], chain=links[1:], chain_queue=header.get("chain_queue"))
            self.worker.driver.ack(message)
            _call_hooks("after", job)
            return self._finish(message, started, "done")
        backoff = _backoff(header.get("backoff") or self.worker.backoff, message.attempts)
        if header.get("until") is not None:  # retry_until: fail now if the next attempt would start too late
            exhausted = self.worker.driver.clock.time() + backoff > header["until"]
        else:
            exhausted = message.attempts >= (header.get("tries") or self.worker.attempts)
        final = isinstance(exc, BadPayload) and not isinstance(exc, CodeMissing)  # nothing to try again
        most = header.get("max_exceptions")
        if most and not exhausted and not final:
            exhausted = self._count_exception(message) >= most
        if exhausted or final:
            return self._fail(message, body, exc, text, started, envelope)
        return self._release(message, job, backoff, started, exc)

    def _steer(self, message, header, body, envelope, steer, exc, text, started):
        """What a job asked for in handle(): release(delay), fail(exc) or delete()."""
        action, value = steer[:2]
        if exc is not None:
            log.warning("%s #%s raised after it called %s(): %s", message.name, message.id, action, _summary(exc))
        if action == "release":
            delay, error, _ = _guard(seconds, value, self.worker.driver.clock.tz)
            if steer[2:] == ("middleware",):
                message.attempts -= 1  # a job its middleware holds back spends none of its tries
            return self._release(message, envelope["job"], delay or 0.0, started, error)
        if action == "fail":
            failure = value if isinstance(value, BaseException) else JobFailed(
                f"{message.name} failed itself" + (f": {_text(value)}" if value is not None else ""))
            return self._fail(message, body, failure, _format(failure), started, envelope)
        self.worker.driver.ack(message)
        return self._finish(message, started, "deleted")

    def _release(self, message, job, delay, started, exc=None):
        self.worker.driver.release(message, delay)
        _call_hooks("released", job, delay)
        return self._finish(message, started, "released", exc)

    def _count_exception(self, message):
        """How many attempts of this job raised, this one included (for max_exceptions): a counter
        in the state table of the failed store's database, seen by every worker."""
        return self.worker.driver.state_store().add_to(f"exceptions:{self.worker.driver.name}:{message.queue}:{message.id}", 1, 7 * 86400)

    def _fail(self, message, body, exc, text, started, envelope=None, header=None, load_for_failed=False):
        """Fail a message for good: first into the failed store and acked (so that failed() runs
        at most once, even if it ends the worker), then failed(exc) and the failing hooks."""
        summary = _summary(exc)
        if not self.worker.driver.fail(message, _record(summary, text)):
            return self._finish(message, started, "failed", exc)  # failed before: failed() ran then
        if envelope is None and load_for_failed:  # the job was not run: load it for failed()
            envelope = self._timed((header or {}).get("timeout") or self.worker.timeout, load, body)[0]
        job = envelope["job"] if envelope else None
        if job is not None:
            _, failed_exc, failed_text = _guard(_call_failed, job, exc, self.worker.callback)
            if failed_exc is not None:
                log.error("%s.failed() raised: %s", message.name, failed_text)
            _call_hooks("failing", job, exc)
        return self._finish(message, started, "failed", exc)

    def _finish(self, message, started, status, exc=None):
        ms = (time.monotonic() - started) * 1000
        if status == "done":
            log.info("%s #%s done in %.1f ms", message.name, message.id, ms)
        else:
            reason = f": {_summary(exc)}" if exc is not None else ""
            log.warning("%s #%s %s after %.1f ms (attempt %d)%s", message.name, message.id, status, ms,
                        message.attempts, reason)
        return status


class _Alarm:
    """How the main thread's lane stops a job past its timeout: SIGALRM, whose handler raises
    JobTimeout inside the job, then again every second. The keeper sets the alarm again for a job
    that cancelled its own, or that had none set (arm=False: a backend's limit, far off)."""

    def __init__(self, lane):
        self.lane = lane
        self.started = 0.0           # when the job with a limit started
        self.lock = threading.Lock() # the keeper sets the alarm again only while the job runs
        self.rearmed = False         # it did: the job's end clears it
        self.previous = None         # the SIGALRM handler the job's own alarm replaced, until its end

    def begin(self, timeout, arm):
        import _signal  # the C module's signal(): the signal module's converts each answer to an enum, slowly
        if timeout and arm:
            self.previous = (_signal.signal(_signal.SIGALRM, self.on_alarm),)
            _signal.setitimer(_signal.ITIMER_REAL, timeout, 1.0)
        self.started = time.monotonic() if timeout else 0.0

    def end(self):
        import _signal
        with self.lock:
            self.lane._in_job = False
            if self.previous is not None or self.rearmed:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
                self.rearmed = False
        if self.previous is not None:
            _signal.signal(_signal.SIGALRM, self.previous[0])
            self.previous = None

    def overdue(self, current):
        """The keeper: `current` ran past its timeout (a second ago, again): the alarm, at once."""
        import _signal
        with self.lock:
            if self.started and self.lane._in_job and self.lane.current is current:  # that job, not the next
                _signal.setitimer(_signal.ITIMER_REAL, 0.001)
                self.rearmed = True

    def on_alarm(self, signum, frame):
        # an alarm a job left behind (in another lane, say) does not time out this one
        lane = self.lane
        if lane._in_job and lane._limit and self.started and time.monotonic() - self.started >= lane._limit - 0.01:
            raise JobTimeout(f"the job ran past its timeout of {lane._limit:g} s")


class _Deadline:
    """How a lane off the main thread (`--concurrency N`) stops a job past its timeout: no signal
    (any lane's job could cancel it); the keeper raises JobTimeout in the lane's thread once the
    job is past its deadline, then again every second."""

    def __init__(self, lane):
        self.lane = lane
        self.thread = None  # the lane's thread, once it ran a job

    def begin(self, timeout, arm):
        self.thread = threading.get_ident()

    def end(self):
        self.lane._in_job = False

    def overdue(self, current):
        self.lane._interrupt(JobTimeout)


class _Tally:
    """What a worker did since its last beat, per job class and per minute: cheap to record per
    job (tuple keys), made into counter additions for the state table by take(); done and
    failed also add up over the worker's life."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}   # (job class, kind, bucket, minute) -> jobs
        self.sums = {}     # job class -> seconds run
        self.waits = {}    # minute -> [seconds waited, jobs]
        self.carried = {}  # name -> (amount, ttl): additions a beat could not write
        self.done = self.failed = 0

    def record(self, name, status, seconds_, wait, now):
        if status not in ("done", "failed", "deleted"):
            return
        failed = status == "failed"
        bucket = bisect.bisect_left(_BUCKETS, seconds_)  # the first bucket it fits (len: +Inf)
        minute = int(now // 60) * 60
        key = (name, "failed" if failed else "done", bucket, minute)
        with self.lock:
            self.failed += failed
            self.done += not failed
            self.counts[key] = self.counts.get(key, 0) + 1
            self.sums[name] = self.sums.get(name, 0.0) + seconds_
            if wait is not None:
                waited = self.waits.setdefault(minute, [0.0, 0])
                waited[0] += max(0.0, wait)
                waited[1] += 1

    def take(self):
        """The additions since the last take, as [(name in the state table, amount, ttl)]."""
        with self.lock:
            counts, sums, waits, adds = self.counts, self.sums, self.waits, self.carried
            self.counts, self.sums, self.waits, self.carried = {}, {}, {}, {}

        def add(name, amount, ttl):
            adds[name] = (adds.get(name, (0, ttl))[0] + amount, ttl)
        for (name, kind, bucket, minute), jobs in counts.items():
            add(f"metric:{name}:{kind}", jobs, _METRIC_TTL)
            add(f"metric:{name}:le:{bucket}", jobs, _METRIC_TTL)
            add(f"series:{minute}:{kind}", jobs, _SERIES_TTL)
        for name, total in sums.items():
            add(f"metric:{name}:sum", total, _METRIC_TTL)
        for minute, (total, jobs) in waits.items():
            add(f"series:{minute}:wait_sum", total, _SERIES_TTL)
            add(f"series:{minute}:wait_n", jobs, _SERIES_TTL)
        return [(name, amount, ttl) for name, (amount, ttl) in adds.items()]

    def give_back(self, adds):
        """Keep additions a beat could not write, for the next beat."""
        with self.lock:
            for name, amount, ttl in adds:
                self.carried[name] = (self.carried.get(name, (0, ttl))[0] + amount, ttl)


def _backoff(backoff, attempts):
    """Seconds to wait before attempt `attempts + 1`: backoff is a number or a list."""
    backoff = backoff or 0
    if isinstance(backoff, (list, tuple)):
        return float(backoff[min(attempts, len(backoff)) - 1]) if backoff else 0.0
    return float(backoff)


def _rss_mb():
    """This process's resident memory in MB (now, from /proc; else its peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _restart_mark(path):
    """The time of the last `python queue.py restart`: the mtime of .queue.restart beside the config."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Supervisor:
    """`work --processes N`: keeps N worker processes alive (`python queue.py work` with the same
    options). A worker that exits (killed, crashed, or done: --max-jobs, --max-time, --memory,
    `restart`) is started again, after a pause that grows while workers die within a second of
    their start; one that stopped because its queue was empty (--once, --stop-when-empty) is not.
    The first SIGTERM/SIGINT is passed to every worker (each finishes its job), a second one too
    (each puts its job back); the supervisor exits 0 once they all have. On Linux a worker also
    gets SIGTERM when its supervisor dies."""

    def __init__(self, argv, count, replace=True):
        self.argv, self.count, self.replace = list(argv), count, replace
        self.children = {}              # pid -> (its Popen, monotonic time it started)
        self.stopping = _Flag()
        self.signals = []

    def run(self):
        """Supervise until stopped (a signal, or every worker done); return the exit status (0)."""
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        pause, told = 0.0, 0
        try:
            while not self.stopping.is_set() or self.children:
                while not self.stopping.is_set() and len(self.children) < self.count:
                    self._start()
                for signum in self.signals[told:]:
                    told += 1
                    log.info("supervisor %d: %s: passed to %d worker(s)", os.getpid(), signal.Signals(signum).name,
                             len(self.children))
                pid, status, started = self._reap()
                if pid is None:
                    self.stopping.wait(0.05)
                    continue
                pause = min(5.0, max(0.1, pause * 2)) if time.monotonic() - started < 1.0 else 0.0
                self._ended(pid, status, pause)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        log.info("supervisor %d: stopped", os.getpid())
        return 0

    def _start(self):
        import subprocess
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "work", *self.argv],
                                 preexec_fn=_die_with_parent)
        self.children[child.pid] = (child, time.monotonic())
        log.info("supervisor %d: started worker %d", os.getpid(), child.pid)

    def _reap(self):
        """(pid, exit status, when it started) of a worker that exited, or (None, None, None)."""
        for pid, (child, started) in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]
                return pid, child.returncode, started
        return None, None, None

    def _ended(self, pid, status, pause):
        if self.stopping.is_set():
            return
        if status == 0 and not self.replace:
            self.count -= 1  # it found its queues empty (--once, --stop-when-empty)
            self.stopping.set() if not self.count else None
            return
        how = "exited" if status >= 0 else f"was killed by {signal.Signals(-status).name}"
        (log.info if status == 0 else log.warning)("supervisor %d: worker %d %s%s; starting another%s", os.getpid(),
                                                   pid, how, f" ({status})" if status > 0 else "",
                                                   f" in {pause:g} s" if pause else "")
        self.stopping.wait(pause)

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        self.stopping.set()
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _die_with_parent():
    """In a supervised worker, before it runs: SIGTERM when the supervisor dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Periodic jobs ################################################################################
# queue.schedule() registers an entry (in jobs/__init__.py or config.py); every worker keeps the
# schedule on a thread of its own (`work --no-schedule` opts one out): there is no scheduler
# process to run. A due slot is claimed in the StateStore of the entry's driver, which every worker
# and host sharing it sees: a lease on the slot (60 s), then the push, then a mark that the slot is
# done (the same entry, kept until after the next slot). A worker killed before its push leaves the
# slot to another once the lease ends (it is pushed late); one killed between its push and its mark
# (one round trip) may let the slot be pushed twice. Slots are UTC epochs; a cron's fields are read
# on the wall clock of its tz, so a daily 02:30 runs once on both days of a daylight-saving change.
_MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
_WEEKDAYS = "SUN MON TUE WED THU FRI SAT".split()
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_SLOT_LEASE = 60.0  # seconds a worker holds a slot it claimed before another may push it instead
_SLOT_LATE = 3.0    # seconds after which a slot not pushed yet was missed (catch_up=False skips it)


class Cron:
    """A five-field cron expression: minute, hour, day of month, month, day of week, each `*`, a
    number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of them; months and days by name
    (JAN, MON-FRI), Sunday as 0 or 7; or one of @hourly, @daily, @weekly, @monthly, @yearly. As in
    Vixie cron, when both day fields are restricted a day that matches either one runs."""

    _fields = (("minute", 0, 59, None, 0), ("hour", 0, 23, None, 0), ("day of month", 1, 31, None, 0),
               ("month", 1, 12, _MONTHS, 1), ("day of week", 0, 7, _WEEKDAYS, 0))

    def __init__(self, expression):
        self.expression = expression
        text = _MACROS.get(expression.strip().lower(), expression) if isinstance(expression, str) else ""
        parts = text.split()
        if len(parts) != 5:
            raise QueueError(f"cron {expression!r}: write five fields (minute hour day month weekday), "
                             "or @hourly, @daily, @weekly, @monthly or @yearly")
        fields = [sorted(self._field(expression, part, *spec)) for part, spec in zip(parts, self._fields)]
        self.minutes, self.hours, self.days, self.months, weekdays = fields
        self.weekdays = {day % 7 for day in weekdays}
        self.every_day, self.every_weekday = parts[2].startswith("*"), parts[4].startswith("*")
        self.next_after(0.0, _dt.timezone.utc)  # one that can never run (31 February) is refused here

    @staticmethod
    def _field(expression, part, name, low, high, names, base):
        values = set()
        for item in part.split(","):
            span, _, step = item.partition("/")
            try:
                for word in sorted(names or (), key=len, reverse=True):
                    span = re.sub(word, str(names.index(word) + base), span, flags=re.I)
                first, _, last = span.partition("-")
                first, last = (low, high) if span == "*" else (int(first), int(last or (high if step else first)))
                step = int(step) if step else 1
            except ValueError:
                raise QueueError(f"cron {expression!r}: the {name} field {item!r} is not a number, range or step") from None
            if not (low <= first <= last <= high) or step < 1:
                raise QueueError(f"cron {expression!r}: the {name} field {item!r} is outside {low}-{high}")
            values.update(range(first, last + 1, step))
        return values

    def _runs_on(self, day):
        if day.month not in self.months:
            return False
        by_date, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.every_day or self.every_weekday:
            return (self.every_day or by_date) and (self.every_weekday or by_weekday)
        return by_date or by_weekday

    def next_after(self, when, tz):
        """The first slot after `when` (seconds since the epoch), as seconds since the epoch."""
        local = _dt.datetime.fromtimestamp(when, tz).replace(tzinfo=None)
        earliest = local - _dt.timedelta(hours=3)  # room for a daylight-saving change
        day = earliest.date()
        for _ in range(366 * 9):  # 29 February on a Monday recurs within 28 years; a match, within 8
            if self._runs_on(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        naive = _dt.datetime(day.year, day.month, day.day, hour, minute)
                        if naive >= earliest:
                            slot = _wall_time(naive, tz)
                            if slot > when:
                                return slot
            day += _dt.timedelta(days=1)
        raise QueueError(f"cron {self.expression!r} never runs")

    def __str__(self):
        return self.expression


def _wall_time(naive, tz):
    """Seconds since the epoch of a wall-clock time of tz: of the first of two (the clocks went
    back), or of the first valid minute after it if the clocks skipped it."""
    for _ in range(24 * 60):
        epoch = naive.replace(tzinfo=tz).timestamp()
        if _dt.datetime.fromtimestamp(epoch, tz).replace(tzinfo=None) == naive:
            return epoch
        naive += _dt.timedelta(minutes=1)
    raise QueueError(f"no valid time near {naive} in {tz}")


class _Every:
    """Slots every `seconds`, on whole multiples of it since the epoch (so every worker agrees)."""

    def __init__(self, every):
        self.seconds = seconds(every)
        if self.seconds < 1:
            raise QueueError(f"schedule(every={every!r}): at least 1 second")

    def next_after(self, when, tz):
        return (math.floor(when / self.seconds) + 1) * self.seconds

    def __str__(self):
        return f"every {self.seconds:g} s"


class _Entry:
    """One entry of the schedule: when its job is pushed, and where."""

    def __init__(self, name, job, timing, tz, queue, driver, catch_up, overlap):
        self.name, self.job, self.timing, self.tz_name = name, job, timing, tz
        self.queue, self.driver, self.catch_up, self.overlap = queue, driver, catch_up, overlap

    @property
    def tz(self):
        return _timezone(self.tz_name) if self.tz_name else _driver(self.driver).clock.tz

    def store(self):
        return _driver(self.driver).state_store()

    def key(self, what):
        return f"schedule:{what}:{self.name}"

    def latest(self, due, now):
        """The last slot at or before `now`, `due` being a slot at or before it (missed slots
        collapse into it: one push for them all)."""
        slot = max(due, now - 2 * 86400)  # more than two days missed: the last of the last two days
        slot = due if slot == due else self.timing.next_after(slot - 1e-6, self.tz)
        following = self.timing.next_after(slot, self.tz)
        while following <= now:
            slot, following = following, self.timing.next_after(following, self.tz)
        return slot

    def push(self, slot):
        """Push the job of a slot; False if overlap=False and the last one is still queued or running."""
        job = self.job
        if not self.overlap:
            job = copy.copy(job)
            job.unique_for, job.unique_id = 7 * 86400.0, self.key("run")
        return push(job, driver=self.driver, queue=self.queue)


_schedule = {}  # name -> _Entry


def schedule(cron=None, job=None, *, every=None, tz=None, queue=None, driver=None, catch_up=True, overlap=True,
             name=None):
    """Push `job` on a cron expression (`schedule("*/15 * * * *", Digest())`, in `tz` or the
    driver's tz) or `every` seconds (a number, a timedelta or "10 minutes"). Every worker keeps
    the schedule and each slot is pushed once across all of them; slots missed while no worker
    ran are pushed once when one comes back (catch_up=False: not at all); overlap=False skips a
    slot while the last run is still queued or running. Registering the same name again replaces it."""
    if (cron is None) == (every is None):
        raise QueueError("schedule() takes a cron expression or every=..., one of them")
    if job is None or not callable(getattr(job, "handle", None) or getattr(job, "__call__", None)):
        raise QueueError(f"schedule(): job must be a job to push (a Queueable), not {job!r}")
    timing = Cron(cron) if cron is not None else _Every(every)
    if tz is not None:
        _timezone(tz, "schedule(tz=...)")
    name = name or f"{_job_name(job)} {timing}{'' if queue is None else ' on ' + queue}"
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise QueueError(f"schedule(name={name!r}): a name of 1 to {_MAX_NAME} characters")
    _schedule[name] = _Entry(name, job, timing, tz, queue, driver, catch_up, overlap)
    return _schedule[name]


class _Scheduler:
    """The schedule as one worker keeps it: a thread that looks at every entry each second."""

    def __init__(self, stopping, clock=None):
        self.stopping, self.clock = stopping, clock or time.time
        self.due = {}  # name -> the next slot this worker will try
        self.holder = _holder()

    def start(self):
        thread = threading.Thread(target=self._run, name="queue-schedule", daemon=True)
        thread.start()
        return thread

    def _run(self):
        while not self.stopping.wait(1.0 - self.clock() % 1.0 + 0.005):  # just after each whole second
            self.tick()

    def tick(self, now=None):
        """Push what is due now; return the names pushed."""
        now, pushed = self.clock() if now is None else now, []
        for entry in list(_schedule.values()):
            done, exc, _ = _guard(lambda: self._check(entry, now))
            if exc is not None:
                log.warning("schedule %s: %s", entry.name, _summary(exc))
            elif done:
                pushed.append(entry.name)
        return pushed

    def _check(self, entry, now):
        due = self.due.get(entry.name)
        if due is None:
            due = self.due[entry.name] = self._first(entry, now)
        if due > now:
            return False
        slot = entry.latest(due, now)
        self.due[entry.name] = entry.timing.next_after(slot, entry.tz)
        if not entry.catch_up and now - slot > _SLOT_LATE:
            return False  # missed while no worker ran (a running worker looks every second)
        return self._claim(entry, slot)

    def _first(self, entry, now):
        """The first slot to try: after the last slot pushed, or after the entry was first seen."""
        store = entry.store()
        store.lock(entry.key("seen"), repr(now), _MAX_PUSH_DELAY)  # the first worker to see it says when
        seen, last = store.value_of(entry.key("seen")), store.value_of(entry.key("last"))
        return entry.timing.next_after(max(float(seen or now), float(last or 0)), entry.tz)

    def _claim(self, entry, slot):
        store, key = entry.store(), entry.key(f"slot:{slot!r}")
        if not store.lock(key, self.holder, _SLOT_LEASE):
            return False  # another worker has it (or had it)
        pushed = entry.push(slot)
        keep = entry.timing.next_after(slot, entry.tz) - slot + 2 * 86400
        store.put_entries([(key, "done", keep), (entry.key("last"), repr(slot), _MAX_PUSH_DELAY)],
                          [(entry.key("runs"), 1, _MAX_PUSH_DELAY)] if pushed else [])
        log.info("schedule %s: %s the job of %s", entry.name, "pushed" if pushed else "skipped (still running)",
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(slot)))
        return pushed


def scheduled():
    """Every entry of the schedule as dicts: name, when (its cron or interval), tz, queue, driver,
    last (the last slot pushed, epoch, or None), next (epoch), runs (how many were pushed)."""
    rows, now = [], time.time()
    for entry in _schedule.values():
        store = entry.store()
        last, runs = store.value_of(entry.key("last")), store.value_of(entry.key("runs"))
        due = entry.timing.next_after(max(float(last or 0), float(store.value_of(entry.key("seen")) or now)), entry.tz)
        rows.append({"name": entry.name, "when": str(entry.timing), "tz": str(entry.tz), "queue": entry.queue,
                     "driver": entry.driver, "last": float(last) if last else None,
                     "next": due if due > now or entry.catch_up else entry.timing.next_after(now, entry.tz),
                     "runs": int(float(runs or 0))})
    return rows


# Operating it #################################################################################
# What the commands (and a dashboard, or your own code) do, as functions that return data.
def _failed_store(connection=None):
    """The failed store of a database connection, else the default driver's."""
    store = _driver("database", connection).failed_store() if connection else _driver().failed_store()
    if store is None:
        raise QueueError("failed jobs are not kept: DRIVERS['database']['failed_table'] is None")
    return store


def status(driver=None, queues=None, connection=None):
    """{queue: {"ready", "delayed", "reserved", "failed"}} of a driver's queues (default: every
    queue it can list), sorted by name; None where the backend cannot tell a count."""
    target = _driver(driver, connection)
    stats = target.stats(queues)
    store = target.failed_store()
    failed = store.failed_counts() if store else {}
    names = sorted(set(stats) | (set(failed) if not queues else set()))
    zero = {"ready": 0, "delayed": 0, "reserved": 0}
    return {q: dict(stats.get(q, zero), failed=failed.get(q, 0)) for q in names}


def failed_jobs(limit=50, connection=None):
    """The failed jobs, newest first, at most `limit`, without their payloads, as dicts: id,
    driver, connection, queue, name, exception (with its traceback), failed_at."""
    return _failed_store(connection).failed_jobs(limit=limit, newest_first=True, payloads=False)


def retry(ids=None, queue=None, driver=None, connection=None, each=None):
    """Put failed jobs (those of `ids`, else all) back at the end of their queue (or `queue`), on
    the driver they failed on (or `driver`), 200 at a time; return how many were moved.
    each(row) is called for every row moved (id, name, queue, its "target" driver): nothing of
    them is kept, so a million failed jobs take no more memory than a few."""
    store = _failed_store(connection)
    if queue is not None:
        _check_queue_name(queue, "queue")
    if ids:
        missing = sorted(set(ids) - {r["id"] for r in store.failed_jobs(ids, payloads=False)})
        if missing:
            raise QueueError(f"no failed job with id {', '.join(map(str, missing))}")

    def target(row):  # a row's connection names a database connection only if it failed on the database driver
        name = driver or row["driver"]
        own = row["connection"] if row["driver"] == "database" else None
        return _driver(name, (connection or own) if name == "database" else None)
    count = 0
    for row in store.retry_failed(ids, queue=queue, target=target):
        count += 1
        each(row) if each is not None else None
    return count


def forget(ids, connection=None):
    """Delete the failed jobs of `ids`; return how many there were."""
    return _failed_store(connection).forget(list(ids))


def flush(hours=None, connection=None):
    """Delete every failed job (or those failed over `hours` hours ago); return how many."""
    return _failed_store(connection).forget(None, older_than=None if hours is None else hours * 3600)


def clear(queue=None, driver=None, connection=None):
    """Delete the ready and delayed jobs of a queue (default: the driver's); return how many.
    Reserved (running) jobs are left to finish."""
    target = _driver(driver, connection)
    return target.clear(_check_queue_name(target.default_queue if queue is None else queue))


def pause(queue, driver=None, connection=None):
    """Workers of a driver (and connection) take no job from `queue` until resume(queue) (they
    see it within a second)."""
    _driver(driver, connection).state_store().put_entries(
        [(f"paused:{_check_queue_name(queue)}", "1", 100 * 365 * 86400.0)])


def resume(queue, driver=None, connection=None):
    """Workers take jobs from `queue` again."""
    _driver(driver, connection).state_store().unlock(f"paused:{_check_queue_name(queue)}")


def paused(queues=None, driver=None, connection=None):
    """The paused queues (of `queues`, else all)."""
    names = [name[len("paused:"):] for name in _driver(driver, connection).state_store().entries("paused:")]
    return sorted(n for n in names if queues is None or n in queues)


def workers(driver=None, connection=None):
    """The live workers (those that beat within the last 30 s) that keep their state where this
    driver (and connection) does, as dicts: host, pid, driver, connection, queues, current job
    and since when (epoch), done, failed, started, beat."""
    import json
    entries = _driver(driver, connection).state_store().entries("worker:")
    return sorted((json.loads(value) for value in entries.values()), key=lambda w: (w["host"], w["pid"]))


def restart():
    """Make every running worker of this project exit after its current job."""
    path = os.path.join(_get_config().folder, ".queue.restart")
    with open(path, "w") as f:
        f.write(f"{time.time()}\n")
    os.utime(path, None)


# Dashboard and metrics ########################################################################
# `python queue.py dashboard` serves one page, its JSON and /metrics from the standard library
# (http.server), as a thin client of the functions above. Every action is a POST that carries the
# token printed at start (or $QUEUE_DASHBOARD_TOKEN): another site cannot trigger one, and the
# server never unpickles a payload. It binds 127.0.0.1 unless told otherwise: behind a reverse
# proxy with TLS for anything else (README: Operating it).
def dashboard_state(driver=None, connection=None):
    """What the dashboard shows, as plain data: queues, workers, failed jobs, the last hour (of
    a driver and, for the database driver, a connection: where its workers keep their state)."""
    target = _driver(driver, connection)
    counts, live = status(driver, connection=connection), workers(driver, connection)
    oldest, stopped = target.oldest_ready(), set(paused(None, driver, connection))
    names = sorted(set(counts) | stopped | {q for w in live for q in w["queues"]})
    empty = {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0}
    queues = [dict(counts.get(q, empty), queue=q, oldest_ready_age=oldest.get(q), paused=q in stopped,
                   estimated=[k for k, v in counts.get(q, empty).items() if isinstance(v, _Estimate)]) for q in names]
    failed = []
    if target.failed_store() is not None:
        for row in target.failed_store().failed_jobs(limit=50, newest_first=True, payloads=False):
            text = _text(row["exception"])
            if len(text) > _PREVIEW:  # a bounded preview: its head and its tail, where the error is
                text = f"{text[:_PREVIEW // 4]}\n[... cut here: `python queue.py failed` ...]\n{text[-_PREVIEW * 3 // 4:]}"
            failed.append({"id": row["id"], "queue": row["queue"], "name": row["name"], "driver": row["driver"],
                           "connection": row["connection"], "failed_at": str(row["failed_at"]),
                           "error": (text.strip().splitlines() or [""])[0], "exception": text})
    return {"queues": queues, "workers": live, "failed": failed, "series": _series(target.state_store()),
            "schedule": _schedule_state(target.state_store()),
            "now": time.time()}


_PREVIEW = 8 * 1024  # characters of a failed job's traceback that the dashboard's state carries


def _schedule_state(store):
    """The periodic jobs pushed so far, as the state store has them: [{name, last, runs, when,
    next}] (when and next where this process has the entry registered)."""
    last, runs = store.entries("schedule:last:"), store.entries("schedule:runs:")
    known = {row["name"]: row for row in scheduled()}
    names = sorted({name[len("schedule:last:"):] for name in last} | set(known))
    return [dict(known.get(n, {"when": None, "next": None}), name=n,
                 last=float(last[f"schedule:last:{n}"]) if f"schedule:last:{n}" in last else None,
                 runs=int(float(runs.get(f"schedule:runs:{n}", 0)))) for n in names]


def _series(store):
    """Per minute of the last hour: jobs done, failed, and their average wait from due to start."""
    values = store.entries("series:")
    now = int(time.time() // 60 * 60)
    series = []
    for minute in range(now - 59 * 60, now + 60, 60):
        get = lambda kind: float(values.get(f"series:{minute}:{kind}") or 0)  # noqa: E731
        waited = get("wait_n")
        series.append({"minute": minute, "done": int(get("done")), "failed": int(get("failed")),
                       "wait": get("wait_sum") / waited if waited else None})
    return series


def metrics(driver=None, connection=None):
    """The Prometheus text exposition of the queues, the job classes and the workers."""
    target = _driver(driver, connection)
    counts, oldest = status(driver, connection=connection), target.oldest_ready()
    lines = []

    def family(name, kind, text, samples):
        lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples)
    for kind in ("ready", "delayed", "reserved", "failed"):  # not queue_jobs_failed: OpenMetrics would read
        family(f"queue_{kind}_jobs", "gauge", f"Jobs {kind} per queue.",  # it as queue_jobs_failed_total's family
               [(_labels(queue=q), c[kind]) for q, c in counts.items() if c[kind] is not None])
    family("queue_count_estimated", "gauge", "1 where a count above is the server's estimate (a large queue).",
           [(_labels(queue=q, count=k), 1) for q, c in counts.items() for k, v in c.items() if isinstance(v, _Estimate)])
    family("queue_oldest_ready_age_seconds", "gauge", "Age of the oldest ready job per queue.",
           [(_labels(queue=q), round(age, 3)) for q, age in oldest.items()])
    entries = _schedule_state(target.state_store())
    family("queue_schedule_runs_total", "counter", "Periodic jobs pushed per schedule entry.",
           [(_labels(entry=e["name"]), e["runs"]) for e in entries])
    family("queue_schedule_last_run_timestamp_seconds", "gauge", "The slot of the last push per schedule entry.",
           [(_labels(entry=e["name"]), e["last"]) for e in entries if e["last"] is not None])
    totals = target.state_store().entries("metric:")
    classes = sorted({name.split(":")[1] for name in totals})
    for kind in ("done", "failed"):
        family(f"queue_jobs_{kind}_total", "counter", f"Jobs {kind} per job class.",
               [(_labels(job=c), int(float(totals.get(f"metric:{c}:{kind}") or 0))) for c in classes])
    lines.extend(["# HELP queue_job_duration_seconds Time to run a job, per job class.",
                  "# TYPE queue_job_duration_seconds histogram"])
    for c in classes:
        running = 0
        for i, le in enumerate(_BUCKETS + ("+Inf",)):
            running += int(float(totals.get(f"metric:{c}:le:{i}") or 0))
            lines.append(f"queue_job_duration_seconds_bucket{{{_labels(job=c, le=le)}}} {running}")
        lines.append(f"queue_job_duration_seconds_sum{{{_labels(job=c)}}} {float(totals.get(f'metric:{c}:sum') or 0)}")
        lines.append(f"queue_job_duration_seconds_count{{{_labels(job=c)}}} {running}")
    family("queue_workers", "gauge", "Live workers.", [("", len(workers(driver, connection)))])
    return "\n".join(lines) + "\n"


def _labels(**labels):
    escape = lambda v: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')  # noqa: E731
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


_ACTIONS = {  # POST /api/<name>: what it does with the JSON body, on the dashboard's driver and connection
    "retry": lambda body, d, c: {"retried": retry(None if body.get("ids") == "all" else _ids_of(body), connection=c)},
    "forget": lambda body, d, c: {"forgot": forget(_ids_of(body), connection=c)},
    "flush": lambda body, d, c: {"deleted": flush(connection=c)},
    "pause": lambda body, d, c: pause(_queue_of(body), d, c) or {},
    "resume": lambda body, d, c: resume(_queue_of(body), d, c) or {},
    "clear": lambda body, d, c: {"deleted": clear(_queue_of(body), d, c)},
}


def _ids_of(body):
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(type(i) is int and 0 < i < 2**63 for i in ids):
        raise ValueError("'ids' must be a list of failed job ids (or 'all' to retry)")
    return ids


def _queue_of(body):
    name = body.get("queue")
    if not isinstance(name, str):
        raise ValueError("'queue' must be a queue name")
    return _check_queue_name(name)


class _DashboardRequests:
    """The dashboard's answers, mixed into http.server's request handler by serve_dashboard()
    (so that `import queue` does not import http.server); `token` and `loopback` are set there."""

    token, loopback, allowed, queue_driver, queue_connection = "", True, (), None, None  # (self.connection: the socket)
    server_version = "queue.py"
    timeout = 15  # seconds a connection may stay silent: half-open connections do not hold threads for ever

    def log_message(self, *args):
        log.debug("dashboard: " + args[0], *args[1:])

    def _send(self, code, body, kind="application/json"):
        data = (json.dumps(body, default=str) if kind == "application/json" else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(data)

    def _guarded(self, work):
        try:
            work()
        except QueueError as exc:
            self._send(400 if isinstance(exc, ConfigError) else 503, {"error": _text(exc)})
        except Exception as exc:
            log.warning("dashboard: %s", _summary(exc))
            self._send(500, {"error": _summary(exc)})

    def _local_only(self):
        """Answer only requests that name a host of ours: a loopback one when bound to
        loopback, else one of --allow-host; another (a page of another site whose name was
        made to point here: DNS rebinding) must carry the token to read."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if self.loopback and host not in ("127.0.0.1", "localhost", "::1"):
            self._send(403, {"error": f"this dashboard answers to 127.0.0.1, not to {host!r}"})
            return False
        if not self.loopback and host not in self.allowed and not self._has_token():
            self._send(403, {"error": f"{host!r} is not an allowed host (--allow-host): send the token "
                                      "(X-Queue-Token, or Authorization: Bearer) to read"})
            return False
        return True

    def _has_token(self):
        given = self.headers.get("X-Queue-Token") or self.headers.get("Authorization", "").replace("Bearer ", "", 1)
        return _same(given.strip().encode(), self.token.encode())

    def do_PUT(self):
        self._send(405, {"error": "GET to read, POST to act"})

    do_DELETE = do_PATCH = do_PUT

    def handle_one_request(self):
        """One request, then this thread's connections are closed: a thread per request must
        not leave a connection (an open file, on SQLite) behind it."""
        try:
            super().handle_one_request()
        finally:
            _close_thread_connections()

    def do_GET(self):
        if not self._local_only():
            return None
        path = self.path.split("?")[0]
        if path == "/":
            return self._send(200, DASHBOARD_PAGE, "text/html")
        if path == "/api/state":
            return self._guarded(lambda: self._send(200, dashboard_state(self.queue_driver, self.queue_connection)))
        if path == "/metrics":
            return self._guarded(lambda: self._send(200, metrics(self.queue_driver, self.queue_connection),
                                                    "text/plain; version=0.0.4"))
        if path.startswith("/api/") and path[5:] in _ACTIONS:
            return self._send(405, {"error": "actions are POST requests"})
        return self._send(404, {"error": f"no page {path}"})

    def do_POST(self):
        if not self._local_only():
            return None
        action = self.path.split("?")[0][len("/api/"):] if self.path.startswith("/api/") else None
        if action not in _ACTIONS:
            return self._send(404, {"error": f"no action {self.path}"})
        if not _same(self.headers.get("X-Queue-Token", "").encode(), self.token.encode()):
            return self._send(403, {"error": "a wrong or missing token (X-Queue-Token): see the line the dashboard printed"})
        try:
            size = int(self.headers.get("Content-Length") or 0)
            if size < 0:
                raise ValueError("Content-Length must be a number of bytes")
            body = json.loads(self.rfile.read(size) or b"{}") if size <= 1 << 20 else None
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object of at most 1 MB")
            work = _ACTIONS[action]
            result = work(body, self.queue_driver, self.queue_connection)
        except (ValueError, QueueError) as exc:
            return self._send(400, {"error": _text(exc)})
        except Exception as exc:
            log.warning("dashboard: %s: %s", action, _summary(exc))
            return self._send(500, {"error": _summary(exc)})
        self._send(200, dict(result or {}, ok=True))


def serve_dashboard(host="127.0.0.1", port=8321, token=None, allow_hosts=(), driver=None, connection=None):
    """Serve the dashboard and /metrics until interrupted; every action needs the token. Bound
    to another address than loopback, it answers reads only for the host names `allow_hosts`
    (as the browser names the server) or with the token."""
    import http.server
    token = token or os.environ.get("QUEUE_DASHBOARD_TOKEN") or secrets.token_urlsafe(18)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not (isinstance(port, int) and 0 <= port < 65536):
        raise QueueError(f"--port must be a port number from 0 to 65535, not {port!r}")
    try:
        handler = type("DashboardHandler", (_DashboardRequests, http.server.BaseHTTPRequestHandler),
                       {"token": token, "loopback": loopback, "allowed": tuple(allow_hosts), "queue_driver": driver,
                        "queue_connection": connection})
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except (OSError, OverflowError) as exc:
        raise QueueError(f"cannot serve the dashboard on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    server.daemon_threads = True
    print(f"queue.py dashboard on http://{host}:{port}/  token: {token}", flush=True)
    if not loopback:
        print(f"reads need the token, or a Host header of {', '.join(allow_hosts) or '(none: give --allow-host)'}",
              flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


DASHBOARD_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>queue.py dashboard</title><link rel="icon" href="data:,">
<style>
:root{--fg:#1d232b;--mute:#66707c;--line:#dde2e8;--bg:#f5f7f9;--done:#2f8f5b;--fail:#c8413a;--wait:#2d6cdf}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:10px 20px;background:#1d232b;color:#fff}
header h1{font-size:17px;margin:0 auto 0 0}header label{font-size:13px}
#token{width:210px;padding:4px 6px;border:1px solid #56606b;border-radius:4px;background:#2b333d;color:#fff}
#status{font-size:12px;color:#b7c0ca}#status.error{color:#ffb4ae}
main{max-width:1200px;margin:0 auto;padding:14px 20px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;margin:0 0 16px;padding:12px 14px;overflow-x:auto}
h2{font-size:15px;margin:0 0 8px;display:flex;gap:8px;align-items:center}h2 .count{color:var(--mute);font-weight:normal}
h2 .tools{margin-left:auto;display:flex;gap:6px}
#message{margin:0 0 14px;padding:8px 12px;border-radius:6px;white-space:pre-wrap}#message:empty{display:none}
#message.ok{background:#e3f4ea;border:1px solid #9fd3b4}#message.error{background:#fde8e6;border:1px solid #eea49d;color:#8a1f17}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--mute);font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.empty td{color:var(--mute);font-style:italic}tr.is-paused{background:#fff7e0}td.paused{font-weight:600}tr.is-paused td.paused{color:#9a6a00}
#failed tr[data-id]{cursor:pointer}#failed tr[data-id]:hover,#failed tr.open{background:#f3f6fa}
td.error{color:#8a1f17;max-width:460px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
td.actions{white-space:nowrap;text-align:right}tr.detail td{background:#f3f6fa;padding:0 8px 8px}
pre.exception{margin:0;padding:8px;max-height:340px;overflow:auto;background:#1d232b;color:#e8ecf0;border-radius:4px;font-size:12px}
button{font:inherit;font-size:12px;padding:3px 9px;border:1px solid #b8c0ca;border-radius:4px;background:#fff;cursor:pointer}
button:hover{background:#eef2f6}button.danger{color:#a3261e;border-color:#e3aaa5}button.danger:hover{background:#fde8e6}
#chart{width:100%;height:auto;display:block}#chart text{font-size:11px;fill:var(--mute)}
.legend{display:flex;gap:14px;font-size:12px;color:var(--mute)}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.idle{color:var(--mute)}
</style></head>
<body>
<header><h1>queue.py dashboard</h1>
<label for="token">Token</label><input id="token" type="password" autocomplete="off" spellcheck="false" placeholder="printed by python queue.py dashboard">
<span id="status">loading&hellip;</span></header>
<main>
<div id="message" role="status" aria-live="polite"></div>
<section><h2>Queues</h2>
<table id="queues"><thead><tr><th>Queue</th><th class="num">Ready</th><th class="num">Delayed</th><th class="num">Reserved</th><th class="num">Failed</th><th class="num">Oldest ready</th><th>State</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Last hour <span class="legend"><span><i style="background:var(--done)"></i>done / min</span><span><i style="background:var(--fail)"></i>failed / min</span><span><i style="background:var(--wait)"></i>average wait</span></span></h2>
<svg id="chart" viewBox="0 0 960 220" role="img" aria-label="jobs done and failed per minute, and the average wait, over the last hour"></svg></section>
<section><h2>Workers <span class="count" id="workers-count"></span></h2>
<table id="workers"><thead><tr><th>Host</th><th class="num">PID</th><th>Driver</th><th>Queues</th><th>Current job</th><th class="num">Done</th><th class="num">Failed</th><th>Last beat</th></tr></thead><tbody></tbody></table></section>
<section><h2>Failed jobs <span class="count" id="failed-count"></span><span class="tools"><button id="retry-all" type="button">Retry all</button><button id="flush" class="danger" type="button">Flush</button></span></h2>
<table id="failed"><thead><tr><th class="num">ID</th><th>Queue</th><th>Job</th><th>Failed at</th><th>Error (click a row for the traceback)</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Schedule <span class="count" id="schedule-count"></span></h2>
<table id="schedule"><thead><tr><th>Entry</th><th>When</th><th>Last run</th><th>Next run</th><th class="num">Runs</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const $ = (s) => document.querySelector(s), SVG = "http://www.w3.org/2000/svg";
const token = $("#token"), rows = {queues: new Map(), workers: new Map(), failed: new Map(), schedule: new Map()}, open = new Set();
let last = null, timer = null, seq = 0;
try { token.value = sessionStorage.getItem("queue-token") || ""; } catch (e) {}
token.addEventListener("input", () => { try { sessionStorage.setItem("queue-token", token.value); } catch (e) {} });

function el(tag, attrs, text) {
  const n = document.createElement(tag);
  for (const k in attrs || {}) n.setAttribute(k, attrs[k]);
  if (text != null) n.textContent = text;
  return n;
}
function put(node, text) { text = String(text); if (node.textContent !== text) node.textContent = text; }
function num(v) { return v == null ? "\u2014" : String(v); }
function dur(s) {
  if (s == null) return "\u2014";
  s = Math.max(0, s);
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
}
function hhmm(t) { return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}); }
function row(map, key, attr, cells, buttons) {
  let tr = map.get(key);
  if (tr) return tr;
  tr = el("tr", {[attr]: key});
  for (const c of cells) tr.appendChild(el("td", {class: c}));
  if (buttons) {
    const td = tr.appendChild(el("td", {class: "actions"}));
    for (const [cls, label] of buttons) td.appendChild(el("button", {class: cls, type: "button"}, label));
  }
  map.set(key, tr);
  return tr;
}
function cell(tr, cls) { return tr.querySelector("td." + cls); }
function place(tbody, nodes, map, keys, emptyText, cols) {
  for (const k of [...map.keys()]) if (!keys.has(k)) map.delete(k);
  if (!nodes.length) nodes = [tbody.querySelector("tr.empty") || el("tr", {class: "empty"})];
  if (nodes[0].className === "empty" && !nodes[0].firstChild) nodes[0].appendChild(el("td", {colspan: cols}, emptyText));
  let ref = tbody.firstChild;
  for (const n of nodes) { if (n === ref) ref = ref.nextSibling; else tbody.insertBefore(n, ref); }
  while (ref) { const next = ref.nextSibling; ref.remove(); ref = next; }
}

function renderQueues(queues) {
  const keys = new Set(), nodes = [];
  for (const q of queues) {
    const tr = row(rows.queues, q.queue, "data-queue", ["name", "ready num", "delayed num", "reserved num", "failed num", "age num", "paused"],
                   [["pause", "Pause"], ["resume", "Resume"], ["clear danger", "Clear"]]);
    keys.add(q.queue); nodes.push(tr);
    put(cell(tr, "name"), q.queue);
    for (const c of ["ready", "delayed", "reserved", "failed"]) put(cell(tr, c), ((q.estimated || []).includes(c) ? "~" : "") + num(q[c]));
    put(cell(tr, "age"), dur(q.oldest_ready_age));
    put(cell(tr, "paused"), q.paused ? "paused" : "active");
    tr.classList.toggle("is-paused", !!q.paused);
    tr.querySelector("button.pause").hidden = !!q.paused;
    tr.querySelector("button.resume").hidden = !q.paused;
  }
  place($("#queues tbody"), nodes, rows.queues, keys, "No queue has jobs yet.", 8);
}
function renderWorkers(workers, now) {
  const keys = new Set(), nodes = [];
  for (const w of workers) {
    const key = w.host + ":" + w.pid;
    const tr = row(rows.workers, key, "data-worker", ["host", "pid num", "driver", "queues", "current", "done num", "failed num", "beat"]);
    keys.add(key); nodes.push(tr);
    put(cell(tr, "host"), w.host); put(cell(tr, "pid"), w.pid); put(cell(tr, "driver"), w.driver);
    put(cell(tr, "queues"), (w.queues || []).join(", "));
    const cur = cell(tr, "current");
    put(cur, w.current ? w.current + (w.since != null ? " for " + dur(now - w.since) : "") : "idle");
    cur.classList.toggle("idle", !w.current);
    put(cell(tr, "done"), w.done); put(cell(tr, "failed"), w.failed);
    put(cell(tr, "beat"), dur(now - w.beat) + " ago");
  }
  put($("#workers-count"), workers.length ? "(" + workers.length + ")" : "");
  place($("#workers tbody"), nodes, rows.workers, keys, "No worker is running.", 8);
}
function renderSchedule(entries) {
  const keys = new Set(), nodes = [], at = (t) => t == null ? "never" : new Date(t * 1000).toLocaleString();
  for (const e of entries) {
    const tr = row(rows.schedule, e.name, "data-entry", ["name", "when", "last", "next", "runs num"]);
    keys.add(e.name); nodes.push(tr);
    put(cell(tr, "name"), e.name); put(cell(tr, "when"), e.when || ""); put(cell(tr, "last"), at(e.last));
    put(cell(tr, "next"), e.next == null ? "" : at(e.next)); put(cell(tr, "runs"), e.runs);
  }
  put($("#schedule-count"), entries.length ? "(" + entries.length + ")" : "");
  place($("#schedule tbody"), nodes, rows.schedule, keys, "No periodic job (queue.schedule).", 5);
}
function renderFailed(failed) {
  const keys = new Set(), nodes = [];
  for (const f of failed) {
    const key = String(f.id);
    const tr = row(rows.failed, key, "data-id", ["id num", "queue", "name", "failed-at", "error"], [["retry", "Retry"], ["forget danger", "Forget"]]);
    keys.add(key); nodes.push(tr);
    put(cell(tr, "id"), f.id); put(cell(tr, "queue"), f.queue); put(cell(tr, "name"), f.name);
    put(cell(tr, "failed-at"), String(f.failed_at).replace(/\.\d+$/, "")); put(cell(tr, "error"), f.error);
    cell(tr, "error").title = f.error;
    tr.classList.toggle("open", open.has(key));
    if (open.has(key)) {
      const d = row(rows.failed, "detail:" + key, "data-detail", []);
      if (!d.firstChild) { d.setAttribute("data-detail", key); d.appendChild(el("td", {colspan: 6})).appendChild(el("pre", {class: "exception"})); }
      put(d.querySelector("pre"), f.exception);
      keys.add("detail:" + key); nodes.push(d);
    }
  }
  for (const k of [...open]) if (!keys.has(k)) open.delete(k);
  put($("#failed-count"), failed.length ? "(" + failed.length + (failed.length >= 50 ? ", newest 50" : "") + ")" : "");
  place($("#failed tbody"), nodes, rows.failed, keys, "No failed job.", 6);
}
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const k in attrs) n.setAttribute(k, attrs[k]);
  if (text != null) n.textContent = text;
  return n;
}
function nice(v) { const p = Math.pow(10, Math.floor(Math.log10(v))); for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p; }
function renderChart(series, now) {
  const W = 960, H = 220, L = 40, R = 58, T = 12, B = 24, w = W - L - R, h = H - T - B, out = [];
  const n = 60, bw = w / n, start = series.length ? series[series.length - 1].minute - (n - 1) * 60 : Math.floor(now / 60) * 60 - (n - 1) * 60;
  const maxC = nice(Math.max(1, ...series.map((s) => s.done + s.failed)));
  const maxW = nice(Math.max(0.001, ...series.map((s) => s.wait || 0)));
  for (let i = 0; i <= 2; i++) {
    const y = T + h - i * h / 2;
    out.push(svg("line", {x1: L, x2: L + w, y1: y, y2: y, stroke: "#dde2e8"}));
    out.push(svg("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, String(Math.round(maxC * i / 2 * 10) / 10)));
    out.push(svg("text", {x: L + w + 6, y: y + 4, style: "fill:var(--wait)"}, i ? dur(maxW * i / 2) : "0"));
  }
  for (const [i, anchor] of [[0, "start"], [30, "middle"], [59, "end"]])
    out.push(svg("text", {x: L + (i + 0.5) * bw, y: H - 6, "text-anchor": anchor}, hhmm(start + i * 60)));
  let d = "", prev = -2;
  for (const s of series) {
    const i = Math.round((s.minute - start) / 60);
    if (i < 0 || i >= n) continue;
    const x = L + i * bw, hd = s.done / maxC * h, hf = s.failed / maxC * h, g = svg("g", {});
    g.appendChild(svg("title", {}, hhmm(s.minute) + ": " + s.done + " done, " + s.failed + " failed, average wait " + dur(s.wait)));
    g.appendChild(svg("rect", {x: x, y: T, width: bw, height: h, fill: "transparent"}));
    if (s.done) g.appendChild(svg("rect", {class: "done", x: x + 1, y: T + h - hd, width: bw - 2, height: hd, fill: "var(--done)"}));
    if (s.failed) g.appendChild(svg("rect", {class: "failed", x: x + 1, y: T + h - hd - hf, width: bw - 2, height: hf, fill: "var(--fail)"}));
    out.push(g);
    if (s.wait != null) {
      const px = (x + bw / 2).toFixed(1), py = (T + h - s.wait / maxW * h).toFixed(1);
      d += (d && prev === i - 1 ? " L" : " M") + px + " " + py;
      out.push(svg("circle", {cx: px, cy: py, r: 2.2, fill: "var(--wait)"}));
    }
    prev = s.wait != null ? i : -2;
  }
  if (d) out.push(svg("path", {class: "wait", d: d.trim(), fill: "none", stroke: "var(--wait)", "stroke-width": 1.6}));
  out.push(svg("line", {x1: L, x2: L + w, y1: T + h, y2: T + h, stroke: "#9aa4ae"}));
  $("#chart").replaceChildren(...out);
}
function render(s) {
  renderQueues(s.queues || []); renderWorkers(s.workers || [], s.now); renderFailed(s.failed || []); renderSchedule(s.schedule || []); renderChart(s.series || [], s.now);
}
async function refresh() {
  const mine = ++seq, started = performance.now();
  clearTimeout(timer);
  try {
    const headers = token.value ? {"X-Queue-Token": token.value} : {};
    const res = await fetch("/api/state", {cache: "no-store", headers});
    if (!res.ok) throw new Error("HTTP " + res.status);
    const state = await res.json();
    if (mine !== seq) return;
    last = state; render(state);
    put($("#status"), "updated " + new Date().toLocaleTimeString()); $("#status").className = "";
  } catch (e) {
    if (mine !== seq) return;
    put($("#status"), "cannot read /api/state: " + e.message); $("#status").className = "error";
  }
  // every 2 s; less often while an answer is slow (5 times its time), every 30 s while the page is hidden
  timer = setTimeout(refresh, document.hidden ? 30000 : Math.max(2000, 5 * (performance.now() - started)));
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
function say(kind, text) { const m = $("#message"); m.className = kind; m.textContent = text; }
async function act(path, body, label) {
  let res, data = {};
  try {
    res = await fetch(path, {method: "POST", cache: "no-store", body: JSON.stringify(body),
                             headers: {"Content-Type": "application/json", "X-Queue-Token": token.value}});
    try { data = await res.json(); } catch (e) {}
  } catch (e) { say("error", label + ": the request could not be sent (" + e.message + ")"); return refresh(); }
  if (res.status === 403) say("error", label + " refused (403): " + (data.error || "missing or wrong token") + ". Type the token printed by `python queue.py dashboard`.");
  else if (!res.ok || data.ok === false) say("error", label + " failed (" + res.status + "): " + (data.error || res.statusText));
  else {
    const bits = Object.keys(data).filter((k) => k !== "ok").map((k) => k + ": " + (Array.isArray(data[k]) ? data[k].length : typeof data[k] === "object" ? JSON.stringify(data[k]) : data[k]));
    say("ok", label + ": done" + (bits.length ? " (" + bits.join(", ") + ")" : ""));
  }
  refresh();
}
$("#queues").addEventListener("click", (e) => {
  const b = e.target.closest("button"), tr = e.target.closest("tr[data-queue]");
  if (!b || !tr) return;
  const q = tr.dataset.queue;
  if (b.classList.contains("pause")) act("/api/pause", {queue: q}, "Pause " + q);
  else if (b.classList.contains("resume")) act("/api/resume", {queue: q}, "Resume " + q);
  else if (b.classList.contains("clear") && confirm("Delete every ready and delayed job of the queue " + q + "?")) act("/api/clear", {queue: q}, "Clear " + q);
});
$("#failed").addEventListener("click", (e) => {
  const b = e.target.closest("button"), tr = e.target.closest("tr[data-id]");
  if (!tr) return;
  const id = tr.dataset.id;
  if (b && b.classList.contains("retry")) act("/api/retry", {ids: [Number(id)]}, "Retry " + id);
  else if (b && b.classList.contains("forget")) act("/api/forget", {ids: [Number(id)]}, "Forget " + id);
  else if (!b) { open.has(id) ? open.delete(id) : open.add(id); if (last) renderFailed(last.failed || []); }
});
$("#retry-all").addEventListener("click", () => act("/api/retry", {ids: "all"}, "Retry all"));
$("#flush").addEventListener("click", () => { if (confirm("Delete every failed job?")) act("/api/flush", {}, "Flush"); });
refresh();
</script>
</body></html>
"""


# Command line #################################################################################
JOBS_INIT = '''"""Job classes, one per module. Importing this package makes `queue` mean queue.py even when a
launcher (gunicorn, uvicorn, celery, ipython, ...) imported the standard library's queue first.
Keep these lines first in this file (`python queue.py job Name` writes them)."""
import sys as _sys

if not hasattr(_sys.modules.get("queue"), "Queueable"):
    import importlib.util as _util
    import os as _os
    _path = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "queue.py")
    if not _os.path.isfile(_path):
        raise ImportError(f"queue.py is not beside {_os.path.dirname(__file__)}: copy it to {_path}")
    _spec = _util.spec_from_file_location("queue", _path)
    _spec.loader.exec_module(_util.module_from_spec(_spec))
'''

JOB_TEMPLATE = '''"""{name}: a job. Push it with queue.push({name}(...)) or `python queue.py push {name}`."""
from queue import Queueable


class {name}(Queueable):
    tries = 3            # attempts before the job is failed
    timeout = None       # seconds one attempt may run (None: no limit)
    backoff = 0          # seconds before attempt 2, 3, ... (a number or a list)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def handle(self):
        """Do the work."""
        print("{name} ran with", self.args, self.kwargs)

    def failed(self, exc):
        """Called once when the job has failed for good."""
'''


def _jobs_folder(config):
    return os.path.join(config.folder, config.jobs)


def _find_job_class(name, config):
    """The Queueable subclass called `name` in jobs/ (jobs/Name.py first, then every module)."""
    folder = _jobs_folder(config)
    if not os.path.isdir(folder):
        raise QueueError(f"no jobs/ folder in {config.folder}: write one with `python queue.py job {name}`")
    modules = [name] if os.path.isfile(os.path.join(folder, f"{name}.py")) else []
    modules += sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f[:-3] not in (name, "__init__"))
    for module_name in modules:
        try:
            module = importlib.import_module(f"{config.jobs}.{module_name}")
        except Exception as exc:
            raise QueueError(f"{config.jobs}/{module_name}.py cannot be imported: {type(exc).__name__}: {exc}") from None
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    raise QueueError(f"no job class {name!r} in {folder}")


def _literal(text):
    """A command-line argument as a Python literal (a bare word stays a string)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return text


def _cmd_work(args, config):
    if args.using:
        if args.driver and args.driver != args.using:
            raise QueueError(f"work {args.using} --driver {args.driver}: name the driver once")
        args.driver = args.using
    queues = [q.strip() for q in args.queue.split(",") if q.strip()] if args.queue else None
    name, _ = config.driver(args.driver)
    if not Driver.registry[name].shared:
        raise QueueError(f"the {name} driver runs jobs inside the program that pushes them: "
                         "`work` needs the database, redis or amqp driver")
    if args.processes > 1:
        return Supervisor(_work_argv(args), args.processes, replace=not (args.once or args.stop_when_empty)).run()
    _import_jobs(config)
    worker = Worker(_driver(args.driver, args.connection), queues, attempts=args.attempts, timeout=args.timeout,
                    poll=args.poll, once=args.once, stop_when_empty=args.stop_when_empty,
                    max_jobs=args.max_jobs, max_time=args.max_time, backoff=args.backoff, memory=args.memory,
                    concurrency=args.concurrency, schedule=not args.no_schedule)
    status = worker.run()
    _exit_past_left_threads(status)
    return status


def _exit_past_left_threads(status):
    """A stopped worker exits even if a job left a thread that never ends (the interpreter would
    wait for every non-daemon thread): the exit functions run, then the process ends."""
    left = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread() and t.is_alive()]
    if left:
        log.warning("worker %d: a job left thread(s) running (%s); exiting without them", os.getpid(),
                    ", ".join(left[:5]))
        _close_drivers()
        atexit._run_exitfuncs()
        logging.shutdown()
        _flush_and_exit(status)


def _work_argv(args):
    """The options of `work` as a worker's command line (without --processes)."""
    argv = [] if getattr(args, "config", None) is None else ["--config", os.path.abspath(args.config)]
    for flag, value in (("--driver", args.driver), ("--connection", args.connection), ("--queue", args.queue),
                        ("--poll", args.poll), ("--attempts", args.attempts), ("--backoff", args.backoff),
                        ("--memory", args.memory), ("--timeout", args.timeout), ("--max-jobs", args.max_jobs),
                        ("--max-time", args.max_time), ("--concurrency", args.concurrency)):
        argv += [flag, str(value)] if value is not None else []
    return argv + ["--once"] * args.once + ["--stop-when-empty"] * args.stop_when_empty + ["--no-schedule"] * args.no_schedule


def _cmd_schedule(args, config):
    _import_jobs(config)
    rows = scheduled()
    if not rows:
        print("no periodic jobs (register them with queue.schedule() in jobs/__init__.py or config.py)")
        return 0
    when = lambda epoch: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "never"  # noqa: E731
    print(f"{'entry':<40} {'when':<18} {'last run':<19} {'next run':<19} {'runs':>6}")
    for row in rows:
        print(f"{row['name'][:40]:<40} {row['when'][:18]:<18} {when(row['last']):<19} {when(row['next']):<19} "
              f"{row['runs']:>6}")
    return 0


def _import_jobs(config):
    """Import jobs/__init__.py (where hooks may be registered), if there is one."""
    if os.path.isfile(os.path.join(_jobs_folder(config), "__init__.py")):
        try:
            importlib.import_module(config.jobs)
        except Exception as exc:
            raise QueueError(f"{config.jobs}/__init__.py cannot be imported: {type(exc).__name__}: {exc}") from None


def _cmd_job(args, config):
    import keyword
    if not args.name.isidentifier() or keyword.iskeyword(args.name) or not args.name.isascii():
        raise QueueError(f"{args.name!r} is not a valid class name (letters, digits and _, not a Python keyword)")
    if args.name in ("Queueable", "queue", "jobs"):
        raise QueueError(f"{args.name!r} would hide the name the job file imports: choose another class name")
    folder = _jobs_folder(config)
    try:
        os.makedirs(folder, exist_ok=True)
        init = os.path.join(folder, "__init__.py")
        if not os.path.exists(init) or not os.path.getsize(init):
            with open(init, "w") as f:
                f.write(JOBS_INIT)
    except OSError as exc:
        raise QueueError(f"cannot write in {folder}: {exc.strerror}") from None
    path = os.path.join(folder, f"{args.name}.py")
    try:
        with open(path, "x") as f:
            f.write(JOB_TEMPLATE.format(name=args.name))
    except FileExistsError:
        raise QueueError(f"{path} exists already; not overwritten") from None
    except OSError as exc:
        raise QueueError(f"cannot write {path}: {exc.strerror}") from None
    print(f"wrote {path}")
    return 0


def _cmd_push(args, config):
    cls = _find_job_class(args.name, config)
    positional = [_literal(a) for a in args.args if "=" not in a or not re.match(r"^\w+=", a)]
    keywords = dict((a.split("=", 1)[0], _literal(a.split("=", 1)[1])) for a in args.args if re.match(r"^\w+=", a))
    try:
        job = cls(*positional, **keywords)
    except Exception as exc:
        raise QueueError(f"{args.name}{tuple(positional)}: {type(exc).__name__}: {exc}") from None
    delay = float(args.delay) if args.delay and re.match(r"^\d+(\.\d+)?$", args.delay) else args.delay
    push(job, driver=args.driver, queue=args.queue, delay=delay, connection=args.connection)
    print(f"pushed {args.name}")
    return 0


def _cmd_compact(args, config):
    store = _driver("database", args.connection)
    started = time.monotonic()
    store._execute(lambda cur: store.dialect.compact(store, cur))
    print(f"compacted the tables of {store.dialect.where} in {time.monotonic() - started:.1f} s")
    return 0


def _cmd_table(args, config):
    store = _driver("database", args.connection)
    if args.sql:
        print(";\n".join(store.ddl()) + ";")
        return 0
    store.create_tables()
    print(f"tables {store.table} and {store.failed_table or '(no failed table)'} are ready in {store.dialect.where}")
    return 0


def _cmd_failed(args, config):
    rows = failed_jobs(limit=args.limit, connection=args.connection)
    if not rows:
        print("no failed jobs")
        return 0
    print(f"{'id':>6}  {'driver/connection':<20} {'queue':<12} {'job':<24} {'failed at':<26} error")
    for r in rows:
        first = _printable((_text(r["exception"]).strip().splitlines() or [""])[0][:80])
        where = f"{r['driver']}/{r['connection']}" if r["connection"] else r["driver"]
        print(f"{r['id']:>6}  {where:<20} {r['queue']:<12} {r['name']:<24} {str(r['failed_at'])[:26]:<26} {first}")
    return 0


def _ids(values):
    try:
        ids = [int(v) for v in values]
    except ValueError:
        raise QueueError(f"failed job ids are numbers (or 'all'), not {' '.join(values)!r}") from None
    if not all(0 < i < 2**63 for i in ids):
        raise QueueError(f"failed job ids are whole numbers from 1 to {2**63 - 1}, not {' '.join(values)!r}")
    return ids


def _cmd_retry(args, config):
    ids = None if not args.ids or args.ids == ["all"] else _ids(args.ids)

    def say(row):  # each job named where the ids were (a few), or with --verbose
        print(f"retrying {row['name']} (failed job {row['id']}) on {row['target'].name}/{row['queue']}")
    count = retry(ids, queue=args.queue, driver=args.driver, connection=args.connection,
                  each=say if ids or args.verbose else None)
    print(f"retried {count} failed job(s)" if count else "no failed jobs")
    return 0


def _cmd_forget(args, config):
    if not forget(_ids([args.id]), connection=args.connection):
        raise QueueError(f"no failed job with id {args.id}")
    print(f"forgot failed job {args.id}")
    return 0


def _cmd_flush(args, config):
    print(f"deleted {flush(args.hours, connection=args.connection)} failed job(s)")
    return 0


def _cmd_restart(args, config):
    restart()
    print("workers will exit after their current job")
    return 0


def _cmd_clear(args, config):
    name = config.driver(args.driver)[1]["queue"] if args.queue is None else _check_queue_name(args.queue, "--queue")
    if not args.force:
        answer = input(f"delete every ready and delayed job of queue {name!r}? [y/N] ") if sys.stdin.isatty() else ""
        if answer.strip().lower() not in ("y", "yes"):
            raise QueueError("nothing deleted (give --force to clear without asking)")
    print(f"deleted {clear(name, driver=args.driver, connection=args.connection)} job(s) from {name!r}")
    return 0


def _cmd_dashboard(args, config):
    hosts = [h.strip() for h in (args.allow_host or "").split(",") if h.strip()]
    return serve_dashboard(args.host, args.port, allow_hosts=hosts, driver=args.driver, connection=args.connection)


def _cmd_pause(args, config):
    try:  # for the warning below only: a pause needs no more than the state store
        counts = status(args.driver, [args.queue], connection=args.connection).get(args.queue, {})
    except QueueError:
        counts = {"ready": None}
    pause(args.queue, args.driver, args.connection)
    print(f"paused {args.queue!r}: workers take no job from it until `python queue.py resume {args.queue}`")
    if counts.get("ready") is not None and not any(counts.get(k) for k in ("ready", "delayed", "reserved", "failed")):
        print(f"queue.py: warning: queue {args.queue!r} holds no job now: is the name right?", file=sys.stderr)
    return 0


def _cmd_resume(args, config):
    resume(args.queue, args.driver, args.connection)
    print(f"resumed {args.queue!r}")
    return 0


def _cmd_status(args, config):
    queues = [q.strip() for q in args.queue.split(",")] if args.queue else None
    counts = status(args.driver, queues, connection=args.connection)
    warning = _driver(args.driver, args.connection).durability()
    print(f"warning: {warning}") if warning else None
    print(f"{'queue':<20} {'ready':>8} {'delayed':>8} {'reserved':>8} {'failed':>8}")
    for name, c in counts.items():
        shown = ["-" if c[k] is None else f"~{c[k]}" if isinstance(c[k], _Estimate) else c[k]
                 for k in ("ready", "delayed", "reserved", "failed")]
        print(f"{name:<20} {shown[0]:>8} {shown[1]:>8} {shown[2]:>8} {shown[3]:>8}")
    total = getattr(_driver(args.driver, args.connection), "delayed_total", None)
    if total is not None and total() is not None:
        print(f"delayed in the broker's delay ladder, all queues: {total()}")
    stopped = paused(queues, args.driver, args.connection)
    if stopped:
        print(f"paused (workers take none of their jobs): {', '.join(stopped)}")
    live = workers(args.driver, args.connection)
    print(f"\n{len(live)} live worker(s)" + (":" if live else ""))
    for w in live:
        doing = f"{w['current']} since {time.strftime('%H:%M:%S', time.localtime(w['since']))}" if w["current"] else "idle"
        where = f"{w['driver']}/{w['connection']}" if w.get("connection") else w["driver"]
        print(f"  {w['host']}:{w['pid']}  {where}  queues {','.join(w['queues'])}  {doing}  "
              f"done {w['done']}  failed {w['failed']}")
    return 0


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise __import__("argparse").ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > _MAX_DELAY:
            raise __import__("argparse").ArgumentTypeError(f"{text!r} is not a finite number")
        if value < 0:
            raise __import__("argparse").ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


def _arg(*flags, **options):
    return flags, options


_CONNECTION = _arg("--connection", help="database connection (a name in DATABASES)")
_DRIVER = _arg("--driver", help="driver (default: DRIVERS['default'])")
_COMMANDS = [  # name, function, help, arguments
    ("work", _cmd_work, "run a worker", [
        _arg("using", nargs="?", metavar="DRIVER", help="the driver to work (Laravel's `queue:work redis`): as --driver"),
        _DRIVER, _CONNECTION,
        _arg("--queue", help="queues in priority order, comma separated (e.g. high,low)"),
        _arg("--poll", "--sleep", type=_positive(float), dest="poll", help="seconds to wait when no job is ready"),
        _arg("--attempts", "--tries", type=_positive(int), dest="attempts", help="tries of jobs that do not set `tries`"),
        _arg("--backoff", type=_positive(float), help="seconds before a retry, for jobs that set no backoff"),
        _arg("--memory", type=_positive(float), metavar="MB", help="exit after the current job once RSS is above MB"),
        _arg("--timeout", type=_positive(float), help="seconds a job may run if it sets no timeout"),
        _arg("--once", action="store_true", help="run at most one job, then exit"),
        _arg("--stop-when-empty", action="store_true", help="exit when no job is ready"),
        _arg("--max-jobs", type=_positive(int), help="exit after this many jobs"),
        _arg("--max-time", type=_positive(float), help="exit after this many seconds (after the current job)"),
        _arg("--processes", type=_positive(int), default=1, metavar="N",
             help="keep N worker processes running (a supervisor restarts one that exits)"),
        _arg("--concurrency", type=_positive(int), default=1, metavar="N",
             help="run N jobs at once in each worker, on threads"),
        _arg("--no-schedule", action="store_true", help="do not push the periodic jobs of queue.schedule()")]),
    ("schedule", _cmd_schedule, "list the periodic jobs (queue.schedule) with their last and next run", []),
    ("job", _cmd_job, "write jobs/Name.py with a job skeleton", [_arg("name", help="class name of the job")]),
    ("push", _cmd_push, "push a job class from jobs/ (arguments are Python literals, or key=value)", [
        _arg("name", help="job class name"), _arg("args", nargs="*", help="arguments of the job's constructor"),
        _DRIVER, _CONNECTION, _arg("--queue"), _arg("--delay", help="seconds, or a time like '10 minutes'")]),
    ("table", _cmd_table, "create the jobs, failed-jobs and state tables (idempotent)", [
        _CONNECTION, _arg("--sql", action="store_true", help="print the DDL instead of running it")]),
    ("failed", _cmd_failed, "list failed jobs, newest first", [
        _CONNECTION, _arg("--limit", type=_positive(int), default=50, help="show at most this many (default 50)")]),
    ("retry", _cmd_retry, "put failed jobs back on a queue (no id: all)", [
        _arg("ids", nargs="*", metavar="ID", help="failed job ids, or 'all'"),
        _arg("--driver", help="push onto this driver (default: the one it failed on)"),
        _arg("--queue", help="push onto this queue (default: the one it failed on)"), _CONNECTION,
        _arg("--verbose", "-v", action="store_true", help="name every job retried (`retry all` says how many)")]),
    ("forget", _cmd_forget, "delete one failed job", [_arg("id"), _CONNECTION]),
    ("flush", _cmd_flush, "delete every failed job (or those older than --hours)", [
        _CONNECTION, _arg("--hours", type=_positive(float), help="only failed jobs older than this many hours")]),
    ("restart", _cmd_restart, "make every running worker exit after its current job", []),
    ("compact", _cmd_compact, "give the space of deleted jobs back to the disk (SQLite VACUUM, MySQL OPTIMIZE "
     "TABLE, PostgreSQL VACUUM FULL)", [_CONNECTION]),
    ("clear", _cmd_clear, "delete the ready and delayed jobs of a queue", [
        _DRIVER, _CONNECTION, _arg("--queue", help="the queue (default: the driver's)"),
        _arg("--force", action="store_true", help="do not ask")]),
    ("dashboard", _cmd_dashboard, "serve the web dashboard and /metrics (actions need the printed token)", [
        _arg("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"),
        _arg("--port", type=int, default=8321, help="port (default 8321)"),
        _arg("--allow-host", help="bound to another address than loopback: the host names a browser may use "
                                  "to read without the token, comma separated"), _DRIVER, _CONNECTION]),
    ("pause", _cmd_pause, "workers take no job from this queue until `resume`", [_arg("queue"), _DRIVER, _CONNECTION]),
    ("resume", _cmd_resume, "workers take jobs from this queue again", [_arg("queue"), _DRIVER, _CONNECTION]),
    ("status", _cmd_status, "jobs per queue: ready, delayed, reserved, failed", [
        _DRIVER, _CONNECTION, _arg("--queue", help="only these queues, comma separated")]),
]


_ALIASES = {  # Laravel's and Masonite's spellings
    "work": ["queue:work"], "retry": ["queue:retry"], "failed": ["queue:failed"], "forget": ["queue:forget"],
    "flush": ["queue:flush"], "restart": ["queue:restart"], "table": ["queue:table", "queue:failed-table"],
    "job": ["make:job"], "clear": ["queue:clear"], "status": ["queue:status"], "pause": ["queue:pause"],
    "resume": ["queue:resume"]}


def _log_lines():
    """Log INFO and up to stderr as logging.basicConfig(format="%(asctime)s %(levelname)s
    %(message)s") would, the date and time formatted once a second: a worker writes one line
    per job, and the logging module's formatter spends 2 to 4 us of it (a no-op job takes 70)."""
    class Lines(logging.StreamHandler):
        plain, second, text = logging.Formatter("%(asctime)s %(levelname)s %(message)s"), None, ""

        def format(self, record):
            form = self.formatter
            if form is not self.plain or record.exc_info or record.exc_text or record.stack_info:
                return super().format(record)  # a formatter set by the app, or a traceback
            second = int(record.created)
            if second != self.second:  # converter: time.localtime, unless the app set another
                self.second, self.text = second, time.strftime(form.default_time_format, form.converter(second))
            return form.default_msec_format % (self.text, record.msecs) + f" {record.levelname} {record.getMessage()}"

    try:  # a stream of its own on a copy of fd 2: a job that closes sys.stderr cannot silence the worker
        stream = open(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding=sys.stderr.encoding,
                      errors="backslashreplace")
    except (OSError, ValueError, AttributeError):
        stream = None
    handler = Lines(stream)
    handler.setFormatter(Lines.plain)
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _parser():
    import argparse
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,  # so that a subcommand does not reset it
                        help="config file (default: $QUEUE_CONFIG, else config.py beside queue.py)")
    parser = argparse.ArgumentParser(prog="python queue.py", parents=[common],
                                     description="queue.py: background jobs. Push jobs from your code; run workers here.")
    parser.add_argument("--version", action="version", version=f"queue.py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, fn, text, arguments in _COMMANDS:
        sub = commands.add_parser(name, parents=[common], help=text, description=text, aliases=_ALIASES.get(name, []))
        sub.set_defaults(fn=fn)
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
    return parser


def main(argv=None):
    """The command line: `python queue.py COMMAND ...`; returns the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        _log_lines()
        logging.getLogger("pika").setLevel(logging.CRITICAL)  # queue.py logs its own line for each problem
    try:
        config = configure(getattr(args, "config", None))
        return args.fn(args, config)
    except QueueError as exc:
        print(f"queue.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `python queue.py status | head -1`: the reader left; stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if _SCRIPT:
    sys.exit(main())
