"""Where a trace was taken: interpreter, torch, device and driver versions, host, git revision.

Written into meta.json as `environment` so that two traces can be compared knowing whether they
ran on the same software and card.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "driver_version", "git_revision", "process_started_unix_ns"]


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device facts for meta.json."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "device_type": device.type,
        "process_started_unix_ns": process_started_unix_ns(),  # what the process spent before its trace opened
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_total_bytes=props.total_memory, driver=driver_version())
    else:
        env["device_name"] = platform.processor() or "cpu"
    env["git_revision"] = git_revision()
    return env


def driver_version() -> str:
    """The NVIDIA driver version through NVML, or `unknown (why)`: the trace says what it could not learn."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception as exc:  # NVML missing or not permitted
        return f"unknown ({type(exc).__name__})"


def git_revision(where: Path | None = None) -> str | None:
    """Short revision of the git checkout holding `where` (default: kvprof's own source), or None
    outside a checkout or without git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=where or Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() or None


def process_started_unix_ns() -> int | None:
    """When this process started, on the wall clock (ns, to ~10 ms: /proc's clock ticks), or None where /proc
    does not say (not Linux). A sweep's trace processes spend seconds in start-up (interpreter, imports, CUDA)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return int((time.time() - (uptime - started_after_boot)) * 1e9)
