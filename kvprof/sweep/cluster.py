"""The Dask cluster of a sweep: a local one (a worker per visible GPU, or CPU workers), or a running
one at `--scheduler ADDRESS`.

Local workers are `Nanny` processes (a killed worker is restarted by its nanny) with one thread each.
On a GPU machine each worker sees one GPU (`CUDA_VISIBLE_DEVICES`) and has the resource GPU=1, and
each task asks for GPU=1: one trace per worker at a time; `--workers-per-gpu N` starts N such
workers per GPU (several traces share a GPU: bytes stay exact, times include the others' load).
A worker lost mid-task makes the scheduler run the task again once (allowed-failures 1), on top of
the task's own retries for a trace process that died. dask-cuda's LocalCUDACluster would pin GPUs
the same way, but adds a dependency (and its CUDA checks) for nothing a trace process needs: each
trace is its own process and sets up CUDA itself.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

ALLOWED_FAILURES = 1  # a worker lost mid-trace costs the cell one retry


@dataclass
class ClusterInfo:
    """What the manifest and the progress view say about the cluster."""

    scheduler: str
    dashboard: str | None
    workers: int
    gpus: int  # GPU workers (resource GPU), 0 on a CPU cluster
    workers_per_gpu: int
    local: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest."""
        return dict(vars(self))


def visible_gpus() -> int:
    """How many CUDA GPUs this machine shows (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_worker_specs(gpus: int, workers_per_gpu: int, cpu_workers: int) -> dict[str, dict[str, Any]]:
    """The SpecCluster worker specs: per GPU i, `workers_per_gpu` Nannies pinned to it; else CPU workers."""
    from distributed import Nanny

    # traces run in child processes: worker memory is not theirs; workers leave SIGINT to the client (worker_setup)
    base = {"nthreads": 1, "memory_limit": 0, "silence_logs": logging.ERROR, "preload": ["kvprof.sweep.worker_setup"]}
    if gpus == 0:
        return {f"cpu{i}": {"cls": Nanny, "options": dict(base)} for i in range(cpu_workers)}
    # GPU i of this process is the i-th of its own CUDA_VISIBLE_DEVICES, where that is set
    ids = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()][:gpus]
    ids = ids if len(ids) == gpus else [str(i) for i in range(gpus)]
    return {f"gpu{i}" + (f"-{j}" if workers_per_gpu > 1 else ""): {
        "cls": Nanny, "options": {**base, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": ids[i]}}}
        for i in range(gpus) for j in range(workers_per_gpu)}


def start(scheduler: str | None, gpus: int, workers_per_gpu: int, cpu_workers: int) -> tuple[Any, Any, ClusterInfo]:
    """(client, cluster or None, info): a local SpecCluster, or a client of the running scheduler."""
    import dask
    from distributed import Client, Scheduler, SpecCluster

    if scheduler:
        client = Client(scheduler, timeout="30s")
        workers = client.scheduler_info().get("workers", {})
        gpu_workers = sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU"))
        return client, None, ClusterInfo(scheduler, _dashboard(client), len(workers), gpu_workers, 1, False)
    specs = local_worker_specs(gpus, workers_per_gpu, cpu_workers)
    # read by the scheduler when it starts; worker-saturation 1: a worker holds only the task it
    # runs, so the next cell goes to whichever worker is free first
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                              silence_logs=logging.ERROR)  # a lost worker shows in the cell's retry and torn attempt
    client = Client(cluster)
    client.wait_for_workers(len(specs), timeout=120)
    return client, cluster, ClusterInfo(cluster.scheduler_address, _dashboard(client), len(specs),
                                        len(specs) if gpus else 0, workers_per_gpu, True)


def _dashboard(client: Any) -> str | None:
    """The dashboard link where the scheduler serves one (it needs bokeh)."""
    try:
        services = client.scheduler_info().get("services", {})
        return client.dashboard_link if "dashboard" in services else None
    except Exception:  # no dashboard is not an error of the sweep
        return None


def close(client: Any, cluster: Any) -> None:
    """Close the client, and the local cluster when the sweep started one."""
    try:
        client.close(timeout=10)
    finally:
        if cluster is not None:
            cluster.close(timeout=20)
