"""Dask preload of kvprof's local sweep workers (`Nanny(preload=[...])`): runs in each worker process.

A Ctrl-C (or `timeout -s INT`) reaches the whole process group: the client stops the sweep and
closes the cluster, but every worker process also took the SIGINT and printed asyncio's
KeyboardInterrupt traceback. Workers ignore SIGINT; the client's close ends them. Trace processes
take SIGINT again (`kvprof.sweep.run.die_with_parent`), so the cell being traced closes as
interrupted, and `--resume` runs it again.
"""
from __future__ import annotations

import signal
import threading

if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
    signal.signal(signal.SIGINT, signal.SIG_IGN)
