#!/usr/bin/env python3
"""The chaos harness moved to benchmarks/chaos/chaos.py (with its jobs, chaosjobs.py); this file
only forwards, so that `python benchmarks/chaos.py ...` keeps working. Same options."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chaos", "chaos.py"), run_name="__main__")
