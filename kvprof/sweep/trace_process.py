"""The trace process of one sweep cell: `python -m kvprof.sweep.trace_process WORKER_PID trace ...`.

A fresh process per trace (nothing held from an earlier one); it dies with the worker that
started it, so a killed worker leaves no orphan on the GPU.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from kvprof.cli import main
    from kvprof.sweep.run import die_with_parent

    die_with_parent(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
