"""kvprof.sweep.worker_setup, the preload of every local sweep worker: SIGINT ignored, and the heartbeat record of a
scheduler that closed first dropped (distributed logs it with a traceback while a cluster shuts down)."""
from __future__ import annotations

import subprocess
import sys

WORKER = """
import logging, signal, sys
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s - %(levelname)s - %(message)s")
import kvprof.sweep.worker_setup  # as Nanny(preload=[...]) imports it in the worker process
log = logging.getLogger("distributed.worker")
try:
    raise OSError("Stream is closed")
except OSError:
    log.exception("Failed to communicate with scheduler during heartbeat.")
    log.exception("Unexpected exception during heartbeat. Closing worker.")
log.error("Compute Failed")
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
"""


def test_a_sweep_worker_ignores_sigint_and_drops_only_the_lost_heartbeat_record():
    done = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # Ctrl-C is the client's to handle
    assert "Failed to communicate with scheduler during heartbeat" not in done.stderr
    # every other record of the worker still shows, its traceback with it
    assert "Unexpected exception during heartbeat" in done.stderr and "OSError: Stream is closed" in done.stderr
    assert "distributed.worker - ERROR - Compute Failed" in done.stderr
