"""Dask preload of kvprof's local sweep workers (`Nanny(preload=[...])`): runs in each worker process.

A Ctrl-C (or `timeout -s INT`) reaches the whole process group: the client stops the sweep and
closes the cluster, but every worker process also took the SIGINT and printed asyncio's
KeyboardInterrupt traceback. Workers ignore SIGINT; the client's close ends them. Trace processes
take SIGINT again (`kvprof.sweep.run.die_with_parent`), so the cell being traced closes as
interrupted, and `--resume` runs it again.

Closing the cluster races each worker's heartbeat: the scheduler can close while a worker's heartbeat is on its way,
and distributed logs that at ERROR with a traceback ("Failed to communicate with scheduler during heartbeat";
dask/distributed's own shutdown, seen in CI under load). The worker closes anyway; a scheduler lost mid-sweep is
reported by the client. That one record is dropped in sweep workers; every other worker error still shows.
"""
from __future__ import annotations

import logging
import signal
import threading

HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat"


class DropLostHeartbeat(logging.Filter):
    """Drops distributed.worker's record of a heartbeat that found the scheduler closed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(HEARTBEAT_LOST)


logging.getLogger("distributed.worker").addFilter(DropLostHeartbeat())
if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
    signal.signal(signal.SIGINT, signal.SIG_IGN)
