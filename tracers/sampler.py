"""NVML device sampler: device and per-process memory and utilization, every `interval_s`.

Two ways to run it. Beside kvprof's native recorder (a CUDA trace's default) the samples come from a
C++ thread (`tracers/native/nvml_sampler.cpp`) that never takes Python's GIL, and the recorder's drain
thread hands them on every drain (`collect`), reading the GPU's process list then. Otherwise a Python
thread samples through pynvml. A Python sampler makes the traced thread hand the GIL over about thirty
times a second (ctypes releases and retakes it around each NVML call); each hand-over is a wait and a
switch on the model's thread. The device is found by its UUID, so a process restricted by
`CUDA_VISIBLE_DEVICES` samples its own GPU, not NVML's device of the same index.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any, Callable

NVML_LIBRARY = "libnvidia-ml.so.1"
_START_ERRORS = {-1: "already running", -2: "NVML library not loadable", -3: "an NVML function is missing",
                 -4: "nvmlInit failed", -5: "no such device"}


def nvml_uuid(index: int) -> str | None:
    """NVML's UUID ("GPU-...") of torch's CUDA device `index` (which `CUDA_VISIBLE_DEVICES` renumbers); None where
    torch cannot say."""
    try:
        import torch

        return f"GPU-{torch.cuda.get_device_properties(index).uuid}"
    except Exception:  # no CUDA, an old torch without the field
        return None


class DeviceSampler:
    """Samples GPU `index` (NVML's device `uuid` where given) every `interval_s` and hands each sample to `emit`.

    `native`: kvprof's native library; where its sampler thread starts, `collect()` (the drain thread's call)
    hands the samples on. Absent NVML or a GPU, `available` is False and `reason` says why (one line for the user).
    """

    def __init__(self, index: int, emit: Callable[[dict], None], interval_s: float = 0.1, procs_every: int = 10,
                 uuid: str | None = None, native: Any = None, nvml_library: str = NVML_LIBRARY):
        self.index = index
        self.emit = emit
        self.interval_s = interval_s
        # The GPU's process list is read every `procs_every`-th sample (once a second), or at each collect where the
        # native thread samples, and carried in between: pynvml asks for the count, then the list. Where NVML
        # refuses it, never again.
        self.procs_every = max(1, procs_every)
        self._samples = 0
        self._procs: tuple[int, int] = (-1, -1)  # (this process's bytes, other processes) as last read
        self._procs_read_at = float("-inf")
        self._procs_refused = False
        self.available = False
        self.native = False  # sampling on the native library's thread
        self.reason = ""
        self.host_pids = False  # NVML's PIDs are not this PID namespace's: our own bytes are unknown
        self._uuid = uuid
        self._lib = native
        self._nvml_library = nvml_library
        self._collect_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
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
        return self._as_sample(time.perf_counter_ns() - t0, int(mem.used), int(util))

    def _as_sample(self, t: int, used: int, util: int) -> dict:
        """One sample's record, with the process list as last read."""
        proc, others = self._procs
        return {"t": t, "used": used, "proc": proc, "util": util, "others": others}

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
        """Start sampling: on the native library's thread where given and it starts, else on a Python thread."""
        if not self.available:
            return
        if self._lib is not None:
            rc = self._lib.kvp_sampler_start(self._nvml_library.encode(), (self._uuid or "").encode(), self.index,
                                             int(self.interval_s * 1e9), t0_perf_ns)
            if rc == 0:
                self.native = True
                return
            self.reason = f"device sampler on a Python thread: the native one did not start ({_START_ERRORS.get(rc, rc)})"

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

    def collect(self) -> None:
        """Hand the native thread's samples to `emit`, oldest first, with the GPU's process list as read now (at most
        once every `procs_every` samples' time). A no-op when sampling on a Python thread."""
        if not self.native:
            return
        with self._collect_lock:  # the drain thread's and close's calls: samples stay in time order
            cap = 256
            t, used, util = ((ctypes.c_int64 * cap)() for _ in range(3))
            while n := self._lib.kvp_sampler_take(t, used, util, cap):
                now = time.monotonic()
                if not self._procs_refused and now - self._procs_read_at >= self.procs_every * self.interval_s:
                    self._procs, self._procs_read_at = self._read_procs(), now
                for i in range(n):
                    self.emit(self._as_sample(t[i], used[i], util[i]))
            state = (ctypes.c_int64 * 4)()
            self._lib.kvp_sampler_state(state)
            if state[2]:
                self.reason = f"device sampler stopped: NVML error {state[2]}"

    def stop(self) -> None:
        """Stop sampling; the native thread's last samples are handed on."""
        if self.native:
            self._lib.kvp_sampler_stop()
            self.collect()
            self.native = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
