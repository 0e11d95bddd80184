"""NVML device sampler: a thread that samples device and per-process memory and utilization."""
from __future__ import annotations

import os
import threading
import time
from typing import Callable


class DeviceSampler:
    """Samples GPU `index` every `interval_s` and hands each sample to `emit`.

    Absent NVML or a GPU, `available` is False and `reason` says why (one line for the user).
    """

    def __init__(self, index: int, emit: Callable[[dict], None], interval_s: float = 0.1, procs_every: int = 10):
        self.index = index
        self.emit = emit
        self.interval_s = interval_s
        # The GPU's process list is read every `procs_every`-th sample (once a second) and carried in between: it is
        # two of the four NVML calls a sample makes (pynvml asks for the count, then the list), and each call hands the
        # GIL back and forth with the model's thread, which waits for it (~100 us a hand-over on a VM: issue 15).
        # Where NVML refuses it, never again.
        self.procs_every = max(1, procs_every)
        self._samples = 0
        self._procs: tuple[int, int] = (-1, -1)  # (this process's bytes, other processes) as last read
        self._procs_refused = False
        self.available = False
        self.reason = ""
        self.host_pids = False  # NVML's PIDs are not this PID namespace's: our own bytes are unknown
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.available = True
        except Exception as exc:  # pynvml raises NVMLError_* subclasses, ImportError, OSError
            self.reason = f"device sampler off: NVML unavailable ({type(exc).__name__}: {exc})"

    def _sample(self, t0: float) -> dict:
        nv = self._nvml
        mem = nv.nvmlDeviceGetMemoryInfo(self._handle)
        util = nv.nvmlDeviceGetUtilizationRates(self._handle).gpu
        if self._samples % self.procs_every == 0 and not self._procs_refused:
            self._procs = self._read_procs()
        self._samples += 1
        proc, others = self._procs
        return {"t": time.perf_counter_ns() - t0, "used": int(mem.used), "proc": proc, "util": int(util),
                "others": others}

    def _read_procs(self) -> tuple[int, int]:
        """(this process's bytes on the GPU, how many other processes use it); -1 where unknown."""
        nv = self._nvml
        try:
            procs = list(nv.nvmlDeviceGetComputeRunningProcesses(self._handle))
        except nv.NVMLError:
            procs = None  # per-process accounting is not permitted in some containers
        if procs is None:
            self._procs_refused = True
            proc, others = -1, -1
        else:
            mine = [p for p in procs if p.pid == os.getpid()]
            if mine:
                proc, others = sum(int(p.usedGpuMemory or 0) for p in mine), len(procs) - len(mine)
            else:
                # NVML lists host PIDs, a container sees its own: this process is one of the list (its
                # CUDA context exists before sampling starts) but cannot be told apart from the rest.
                self.host_pids = bool(procs)
                proc, others = -1, max(len(procs) - 1, 0)
        return proc, others

    def start(self, t0_perf_ns: int) -> None:
        if not self.available:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.emit(self._sample(t0_perf_ns))
                except Exception as exc:  # a failing NVML read must not kill the rollout
                    self.reason = f"device sampler stopped: {type(exc).__name__}: {exc}"
                    return
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="kvprof-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
