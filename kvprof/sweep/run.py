"""The task of one cell, run on a Dask worker: `kvprof trace` in a fresh process.

A fresh process per trace means each trace starts as `kvprof trace` does: no blocks an earlier
trace left allocated (cuBLAS workspaces, cached blocks), and a CUDA error that poisons a process
poisons only that trace, not the worker. The process costs ~2-5 s of start-up per trace, small
against a GPU trace (30 s to 7 min). A trace process that dies (killed, crashed, a failure) raises
`CellError`, which Dask retries (`retries`) as a new attempt with its own run id; the attempt left
behind is torn (see kvprof.read.manifest).

Workers that do not see the client's sweep folder (checked with a marker file the client wrote)
trace into a temporary folder and send it back as a tar archive in the task's result.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from kvprof.read.manifest import TRACES_DIR, next_attempt

EXIT_OOM = 3  # kvprof.cli.EXIT_OOM (not imported: the CLI module is heavier than this task needs)


class CellError(RuntimeError):
    """The trace process of a cell did not end with a trace outcome (killed, crashed, failed)."""


def sees_folder(marker: str, token: str) -> bool:
    """Whether this process sees the client's sweep folder (the marker holds the sweep's token)."""
    try:
        return Path(marker).read_text().strip() == token
    except OSError:
        return False


def die_with_parent(parent: int) -> None:
    """In the trace process: be killed when the worker that started it dies, so a lost worker's
    trace does not go on holding the GPU beside the retry (Linux; elsewhere it runs to its end).
    Set here, after exec, rather than in a preexec_fn, which is unsafe in a threaded worker. The
    worker ignores SIGINT (kvprof.sweep.worker_setup) and the trace process inherited that: it takes
    SIGINT again, so a stopped sweep closes the cell's trace as interrupted."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(128 + signal.SIGKILL)


def _summary(stdout: str) -> dict[str, Any]:
    """The JSON summary `kvprof trace --json` printed (after whatever a library printed first)."""
    lines = stdout.splitlines()
    start = lines.index("{") if "{" in lines else 0
    return json.loads("\n".join(lines[start:]))


def where() -> dict[str, Any]:
    """The worker, host and GPU this task runs on."""
    try:
        from distributed import get_worker

        w = get_worker()
        worker, name = w.address, str(w.name)
    except (ImportError, ValueError):
        worker, name = None, None
    return {"worker": worker, "worker_name": name, "host": socket.gethostname(), "pid": os.getpid(),
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}


def run_cell(cell: dict[str, Any], sweep_dir: str, marker: str, token: str) -> dict[str, Any]:
    """Trace one cell; returns the manifest fields of its outcome (status complete or oom). Raises
    CellError when the trace process ends any other way (Dask then retries the cell)."""
    shared = sees_folder(marker, token)
    out = Path(sweep_dir) / TRACES_DIR if shared else Path(tempfile.mkdtemp(prefix="kvprof-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    run_id = next_attempt(out, cell["id"])
    cmd = [sys.executable, "-m", "kvprof.sweep.trace_process", str(os.getpid()), "trace", *cell["args"], "--out", str(out),
           "--run-id", run_id, "--json", "--quiet"]
    info = {**where(), "run_id": run_id, "started": time.time()}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        info["finished"] = time.time()
        info["seconds"] = info["finished"] - info["started"]
        if proc.returncode not in (0, EXIT_OOM):
            tail = " ".join(proc.stderr.split())[-600:]
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
            raise CellError(f"{run_id}: kvprof trace {how} on {info['host']} (worker {info['worker_name']}, "
                            f"GPU {info['gpu']}): {tail}")
        try:
            summary = _summary(proc.stdout)
        except ValueError:
            raise CellError(f"{run_id}: kvprof trace printed no JSON summary: {proc.stdout[-300:]!r}") from None
        info.update(status=summary.get("status") or ("oom" if proc.returncode == EXIT_OOM else "complete"),
                    result=result_of(summary), phases=phases_of(out / run_id, info["finished"]))
        if not shared:
            info["tar"] = pack(out / run_id)
    finally:
        if not shared:
            shutil.rmtree(out, ignore_errors=True)
    return info


def phases_of(folder: Path, finished: float) -> dict[str, float] | None:
    """Where a cell's seconds went, from its trace's meta.json: `startup_s` (the process before its trace opened:
    interpreter, imports, CUDA), `trace_s` (the trace, open to closed) and `after_s` (its tables, summary and the
    process's exit, up to `finished`); None when the meta cannot say (no /proc, a damaged file)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    born = (meta.get("environment") or {}).get("process_started_unix_ns")
    opened, closed = meta.get("started_unix_ns"), meta.get("ended_unix_ns")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (born, opened, closed)):
        return None
    return {"startup_s": round((opened - born) / 1e9, 2), "trace_s": round((closed - opened) / 1e9, 2),
            "after_s": round(finished - closed / 1e9, 2)}


def result_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The manifest's figures of a trace (what results tables need without opening the trace)."""
    peak = summary.get("peak") or {}
    rollout_ms = next((r["host_ms"] for r in summary.get("stage_times") or [] if r["stage"] == "rollout"), None)
    rec = summary.get("reconciliation") or {}
    return {"peak_bytes": peak.get("bytes"), "peak_stage": peak.get("stage"), "by_category": peak.get("by_category"),
            "kv": summary.get("kv"), "wall_s": summary.get("wall_s"),
            "rollout_s": rollout_ms / 1e3 if rollout_ms is not None else None,
            "reconciliation": {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}}


def pack(folder: Path) -> bytes:
    """A trace folder as a gzip'd tar (top-level entry: the folder's name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def unpack(data: bytes, root: Path, name: str) -> Path:
    """Extract a packed trace folder as root/name (only plain files and folders, inside root)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        (inner,) = list(tmp.iterdir())
        os.replace(inner, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / name
