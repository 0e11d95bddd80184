"""The status a trace closes with, from the exception that ended its body: one rule for the
session's own context manager and for kvprof.api's TraceRun."""
from __future__ import annotations

import torch


def status_of(error: BaseException | None) -> str:
    """complete (no error), oom (an out-of-memory error, kvprof's simulated one included),
    interrupted (KeyboardInterrupt, also raised for a signal) or failed (anything else)."""
    if error is None:
        return "complete"
    if isinstance(error, torch.OutOfMemoryError):
        return "oom"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "failed"
