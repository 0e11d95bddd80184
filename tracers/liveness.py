"""Is a trace's writer still alive? A `kill -9` leaves meta.json saying `running` forever; readers
compare meta's writer pid and host with the processes of this machine and show such a trace as
`killed`. Standard library only (readers never import torch)."""
from __future__ import annotations

import os
import socket
from typing import Any

KILLED = "killed"  # shown, never written: meta.json keeps the writer's last word (`running`)
_START_SLACK_NS = 2_000_000_000  # clock ticks and the boot time are coarse


def _process_start_unix_ns(pid: int) -> tuple[int, str] | None:
    """(start time, state letter) of a process from /proc (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
        ticks = int(rest[19]) / os.sysconf("SC_CLK_TCK")
        return int((btime + ticks) * 1e9), rest[0].decode()
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def writer_alive(meta: dict[str, Any]) -> bool | None:
    """True / False when this machine can tell whether the process that writes the trace lives;
    None when it cannot (no pid in meta: an older trace; written on another host)."""
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except OSError:
        return None
    facts = _process_start_unix_ns(pid)
    if facts is None:
        return True
    started, state = facts
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    trace_started = meta.get("started_unix_ns")
    if isinstance(trace_started, int) and started > trace_started + _START_SLACK_NS:
        return False  # the pid was reused by a process younger than the trace
    return True


def shown_status(meta: dict[str, Any]) -> str:
    """The status to show: meta's, except `killed` for a `running` trace whose writer is gone.
    The one function for every reader (summary, compare, report, TUI)."""
    status = str(meta.get("status"))
    if status == "running" and writer_alive(meta) is False:
        return KILLED
    return status
