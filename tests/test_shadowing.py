"""queue.py shadows the standard library's `queue` on purpose: prove that nothing breaks.

For every Python 3.9 ... 3.13 under ~/.pyenv/versions (a missing version is skipped), a script
in a temporary project folder (so the project folder is sys.path[0]) checks that `import queue`
is our file and still is the standard library's queue for everyone else: the same objects, and
the standard library modules that import `queue` (concurrent.futures, multiprocessing,
logging.handlers, asyncio) work. Then the command line: `python queue.py --help` with -P and
-S, and a worker that must have loaded queue.py exactly once.
"""
import glob
import json
import os
import subprocess
import textwrap

import pytest

MINORS = ["3.9", "3.10", "3.11", "3.12", "3.13"]


def _interpreters():
    params = []
    for minor in MINORS:
        found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python3")))
        found = [path for path in found if os.path.basename(os.path.dirname(os.path.dirname(path)))
                 .split(".")[:2] == minor.split(".")]  # 3.1 must not match 3.10
        if not found:
            params.append(pytest.param(None, id=f"py{minor}-missing",
                                       marks=pytest.mark.skip(reason=f"no Python {minor} under ~/.pyenv/versions")))
        for path in found:
            params.append(pytest.param(path, id="py" + os.path.basename(os.path.dirname(os.path.dirname(path)))))
    return params


@pytest.fixture(params=_interpreters())
def python(request):
    return request.param


def version(python):
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                         text=True, check=True).stdout.split()
    return tuple(map(int, out))


def run_script(project, python, source, timeout=60):
    """Run `source` as a script in the project folder; it prints OK at its end."""
    path = os.path.join(project.folder, "check_shadowing.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(source))
    result = subprocess.run([python, path], cwd=project.folder, env=project.env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), \
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


# import queue ################################################################################
def test_import_queue_is_ours_and_the_stdlib_api_is_the_same_objects(sqlite_project, python):
    run_script(sqlite_project, python, '''
        import os, pickle, sys
        import queue
        import _queue

        here = os.path.dirname(os.path.abspath(__file__))
        assert os.path.samefile(queue.__file__, os.path.join(here, "queue.py")), queue.__file__
        assert hasattr(queue, "Queueable") and hasattr(queue, "push")

        # The namespace the standard library's queue classes were defined in: their own module.
        stdlib = queue.Queue.get.__globals__
        stdlib_file = os.path.join(os.path.dirname(os.__file__), "queue.py")
        assert os.path.samefile(stdlib["__file__"], stdlib_file), stdlib["__file__"]
        expected = {"Empty", "Full", "Queue", "PriorityQueue", "LifoQueue", "SimpleQueue"}
        if sys.version_info >= (3, 13):
            expected.add("ShutDown")
        assert set(stdlib["__all__"]) == expected, stdlib["__all__"]
        for name in stdlib["__all__"]:  # our names never override the standard library's
            assert getattr(queue, name) is stdlib[name], name
            assert name in queue.__all__, name
        assert queue.Empty is _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue

        # what the classes raise is what `except queue.X` catches
        q = queue.Queue(1)
        q.put(1)
        try:
            q.put_nowait(2)
        except queue.Full:
            pass
        else:
            raise AssertionError("no queue.Full")
        assert q.get_nowait() == 1
        for empty in (queue.Queue(), queue.SimpleQueue(), queue.LifoQueue(), queue.PriorityQueue()):
            try:
                empty.get(timeout=0.01)
            except queue.Empty:
                pass
            else:
                raise AssertionError(f"no queue.Empty from {empty!r}")
        lifo, prio = queue.LifoQueue(), queue.PriorityQueue()
        for n in (2, 3, 1):
            lifo.put(n)
            prio.put(n)
        assert [lifo.get() for _ in range(3)] == [1, 3, 2]
        assert [prio.get() for _ in range(3)] == [1, 2, 3]
        if sys.version_info >= (3, 13):
            q = queue.Queue()
            q.shutdown()
            try:
                q.put(1)
            except queue.ShutDown:
                pass
            else:
                raise AssertionError("no queue.ShutDown")

        # pickle finds them by name in the one `queue` module (it insists on the same object)
        assert pickle.loads(pickle.dumps(queue.Queue)) is queue.Queue
        assert type(pickle.loads(pickle.dumps(queue.Full("x")))) is queue.Full
        assert type(pickle.loads(pickle.dumps(queue.Empty("x")))) is queue.Empty
        print("OK")
    ''')


# the standard library modules that import queue ##############################################
def test_concurrent_futures_executors(sqlite_project, python):
    run_script(sqlite_project, python, '''
        import concurrent.futures as cf
        import multiprocessing as mp
        import os
        import queue

        def square(x):
            import queue  # in a spawned child too, queue is our file
            assert hasattr(queue, "Queueable"), queue.__file__
            return x * x

        if __name__ == "__main__":
            with cf.ThreadPoolExecutor(2) as pool:
                assert list(pool.map(square, range(20))) == [x * x for x in range(20)]
            for method in ("fork", "spawn"):
                with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
                    assert list(pool.map(square, range(20))) == [x * x for x in range(20)], method
            print("OK")
    ''')


def test_multiprocessing_thread_pool_and_manager_queue(sqlite_project, python):
    run_script(sqlite_project, python, '''
        import multiprocessing as mp
        import multiprocessing.pool
        import queue

        def square(x):
            return x * x

        if __name__ == "__main__":
            with multiprocessing.pool.ThreadPool(2) as pool:
                assert pool.map(square, range(10)) == [x * x for x in range(10)]
                assert pool.apply_async(square, (7,)).get(timeout=10) == 49
            with mp.get_context("spawn").Pool(2) as pool:
                assert pool.map(square, range(10)) == [x * x for x in range(10)]
            with mp.Manager() as manager:
                shared = manager.Queue()
                shared.put("hello")
                assert shared.get(timeout=10) == "hello"
                try:
                    shared.get(timeout=0.01)
                except queue.Empty:  # raised in the manager process, caught here
                    pass
                else:
                    raise AssertionError("no queue.Empty from a manager queue")
            q = mp.Queue()
            q.put(1)
            assert q.get(timeout=10) == 1
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass
            else:
                raise AssertionError("no queue.Empty from multiprocessing.Queue")
            print("OK")
    ''')


def test_logging_queue_handler_and_listener(sqlite_project, python):
    run_script(sqlite_project, python, '''
        import logging
        import logging.handlers
        import queue

        records = queue.Queue()
        got = []

        class Collect(logging.Handler):
            def emit(self, record):
                got.append(record.getMessage())

        listener = logging.handlers.QueueListener(records, Collect())
        listener.start()
        log = logging.getLogger("shadowing-check")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(logging.handlers.QueueHandler(records))
        log.info("hello %s", "listener")
        listener.stop()  # delivers what is queued, then joins
        assert got == ["hello listener"], got
        print("OK")
    ''')


def test_asyncio_to_thread(sqlite_project, python):
    run_script(sqlite_project, python, '''
        import asyncio
        import threading
        import queue

        def where(x):
            return x + 1, threading.current_thread() is threading.main_thread()

        async def main():
            assert await asyncio.to_thread(where, 1) == (2, False)
            assert await asyncio.get_running_loop().run_in_executor(None, where, 2) == (3, False)
            q = asyncio.Queue()
            await q.put("x")
            assert await q.get() == "x"

        asyncio.run(main())
        print("OK")
    ''')


# the command line ############################################################################
@pytest.mark.parametrize("flags", [[], ["-P"], ["-S"], ["-I"]], ids=["plain", "-P", "-S", "-I"])
def test_help_and_status(sqlite_project, python, flags):
    if "-P" in flags and version(python) < (3, 11):
        pytest.skip("-P is new in Python 3.11")
    for args in (["queue.py", "--help"], [os.path.join(sqlite_project.folder, "queue.py"), "work", "--help"],
                 ["queue.py", "status"]):
        result = subprocess.run([python, *flags, *args], cwd=sqlite_project.folder, env=sqlite_project.env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
        if "--help" in args:
            assert result.stdout.startswith("usage: python queue.py"), result.stdout
    assert "ready" in result.stdout  # status printed its table


WHOAMI = '''
import gc
import json
import os
import sys

import queue as imported
from queue import Queueable


class WhoAmI(Queueable):
    """Writes what a job sees of the queue module(s) of its worker into a JSON file."""

    def __init__(self, path):
        self.path = path

    def handle(self):
        main = sys.modules["__main__"]
        mine = os.path.realpath(main.__file__)
        modules = {id(m) for m in list(sys.modules.values())
                   if getattr(m, "__file__", None) and os.path.realpath(m.__file__) == mine}
        classes = [c for c in gc.get_objects() if isinstance(c, type) and c.__name__ == "Queueable"]
        info = {
            "main_is_queue": sys.modules["queue"] is main,
            "imported_is_main": imported is main,
            "modules_from_queue_py": len(modules),
            "queueable_classes": len(classes),
            "queueable_in_mro": main.Queueable in type(self).__mro__,
            "mro": [f"{c.__module__}.{c.__qualname__}" for c in type(self).__mro__],
            "worker_class": f"{type(main.Worker).__module__}",
        }
        with open(self.path, "w") as f:
            json.dump(info, f)
'''


@pytest.mark.parametrize("flags", [[], ["-P"], ["-S"]], ids=["plain", "-P", "-S"])
def test_a_worker_loads_queue_py_once(sqlite_project, python, flags, tmp_path):
    if "-P" in flags and version(python) < (3, 11):
        pytest.skip("-P is new in Python 3.11")
    with open(os.path.join(sqlite_project.folder, "jobs", "WhoAmI.py"), "w") as f:
        f.write(WHOAMI)
    out = tmp_path / "whoami.json"
    for args in (["push", "WhoAmI", str(out)], ["work", "--stop-when-empty"]):
        result = subprocess.run([python, *flags, "queue.py", *args], cwd=sqlite_project.folder,
                                env=sqlite_project.env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert out.exists(), f"the job did not run:\n{result.stdout}\n{result.stderr}"
    info = json.loads(out.read_text())
    assert info["main_is_queue"] and info["imported_is_main"], info
    assert info["modules_from_queue_py"] == 1, info
    assert info["queueable_classes"] == 1, info
    assert info["queueable_in_mro"], info
    assert info["mro"] == ["jobs.WhoAmI.WhoAmI", "queue.Queueable", "builtins.object"], info



def test_the_jobs_package_of_the_repository_is_the_one_queue_py_writes():
    """jobs/__init__.py here is what `python queue.py job Name` writes (queue.JOBS_INIT): the lines
    that adopt a standard-library queue loaded first by a launcher."""
    import queue
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "__init__.py")) as f:
        assert f.read() == queue.JOBS_INIT
