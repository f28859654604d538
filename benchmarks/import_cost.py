#!/usr/bin/env python3
"""What `import queue` costs with queue.py beside the app, against the standard library's module.

    python benchmarks/import_cost.py              # 30 fresh interpreters per row
    python benchmarks/import_cost.py --runs 100 --python python3.13

Each run is a fresh `python -c` whose working directory is sys.path[0]; inside it,
time.perf_counter() around `import queue` alone (interpreter start-up excluded), and the number
of modules that import added to sys.modules. Medians over the runs.

  ours, .pyc      a folder holding a copy of queue.py whose __pycache__ was written beforehand
  ours, no .pyc   a fresh copy of queue.py, no __pycache__, PYTHONDONTWRITEBYTECODE=1: compiled
                  from source on every run (a read-only deploy, or the first import after a deploy)
  stdlib, .pyc    an empty folder: the standard library's queue, from its installed .pyc
  stdlib, no .pyc a copy of the standard library's queue.py in a folder with no __pycache__,
                  PYTHONDONTWRITEBYTECODE=1 (the same code, compiled from source every run)

The ratio is ours/stdlib on the same row. Every module imported besides queue itself comes from
the installed standard library with its .pyc in every row.
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROBE = (
    "import sys, time\n"
    "before = set(sys.modules)\n"
    "t = time.perf_counter()\n"
    "import queue\n"
    "t = time.perf_counter() - t\n"
    "added = sorted(set(sys.modules) - before)\n"
    "assert hasattr(queue, 'Queueable') == OURS, queue.__file__\n"
    "print(t, ' '.join(added))\n"
)


def measure(python, folder, ours, runs, dont_write):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUEUE_CONFIG", "PYTHONSTARTUP")}
    if dont_write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    times, added = [], None
    for _ in range(runs):
        out = subprocess.run([python, "-c", f"OURS = {ours}\n" + PROBE], cwd=folder, env=env,
                             capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
        times.append(float(out[0]))
        added = out[1].split() if len(out) > 1 else []
    if dont_write:
        assert not os.path.exists(os.path.join(folder, "__pycache__")), f"a .pyc was written in {folder}"
    return statistics.median(times) * 1000, added


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--queue-py", default=os.path.join(ROOT, "queue.py"))
    args = parser.parse_args()

    stdlib_source = subprocess.run(
        [args.python, "-I", "-c", "import os, queue; print(os.path.realpath(queue.__file__))"],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
    version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()

    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: os.path.join(tmp, name) for name in ("ours_pyc", "ours_src", "empty", "stdlib_src")}
        for folder in folders.values():
            os.mkdir(folder)
        shutil.copy(args.queue_py, folders["ours_pyc"])
        shutil.copy(args.queue_py, folders["ours_src"])
        shutil.copy(stdlib_source, folders["stdlib_src"])
        # write the .pyc of the "ours, .pyc" row once
        subprocess.run([args.python, "-c", "import queue"], cwd=folders["ours_pyc"], check=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
        assert os.path.isdir(os.path.join(folders["ours_pyc"], "__pycache__")), "no .pyc was written"

        rows = []
        for label, ours_folder, stdlib_folder, dont_write in (
                (".pyc", folders["ours_pyc"], folders["empty"], False),
                ("no .pyc", folders["ours_src"], folders["stdlib_src"], True)):
            ours_ms, ours_added = measure(args.python, ours_folder, True, args.runs, dont_write)
            std_ms, std_added = measure(args.python, stdlib_folder, False, args.runs, dont_write)
            rows.append((label, ours_ms, ours_added, std_ms, std_added))

    print(f"import queue: median of {args.runs} fresh interpreters, Python {version} "
          f"({platform.machine()}), import alone (perf_counter inside the process)")
    print(f"{'':10} {'ours (queue.py)':>16} {'modules':>8} {'stdlib queue':>14} {'modules':>8} {'ratio':>7}")
    for label, ours_ms, ours_added, std_ms, std_added in rows:
        print(f"{label:10} {ours_ms:13.2f} ms {len(ours_added):8d} {std_ms:11.2f} ms {len(std_added):8d} "
              f"{ours_ms / std_ms:6.1f}x")
    label, _, ours_added, _, std_added = rows[0]
    print(f"modules added by the stdlib's import queue: {' '.join(std_added)}")
    print(f"modules added by ours: {' '.join(ours_added)}")


if __name__ == "__main__":
    main()
