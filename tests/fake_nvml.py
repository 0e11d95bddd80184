"""A stand-in NVML library for the native sampler's thread (tests, benchmarks): built with the machine's compiler.

Handle 1 is the device "GPU-fake-1" (by UUID), handle 2 NVML's device 0 (by index); used bytes count the reads since
nvmlInit; a read fails with NVML code 15 once FAKE_NVML_FAIL_AT reads were made (0: never).
"""
from __future__ import annotations

import ctypes
import subprocess
import types
from pathlib import Path

FAKE_NVML = r"""
#include <cstdlib>
#include <cstring>
struct Mem { unsigned long long total, free, used; };
struct Util { unsigned int gpu, memory; };
static unsigned long long reads = 0;
extern "C" int nvmlInit_v2() { reads = 0; return 0; }
extern "C" int nvmlDeviceGetHandleByUUID(const char* uuid, void** h) {
  if (std::strcmp(uuid, "GPU-fake-1") != 0) return 6;
  *h = reinterpret_cast<void*>(1); return 0;
}
extern "C" int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void** h) {
  if (i != 0) return 2;
  *h = reinterpret_cast<void*>(2); return 0;
}
extern "C" int nvmlDeviceGetMemoryInfo(void* h, Mem* m) {
  const char* at = std::getenv("FAKE_NVML_FAIL_AT");
  if (at && std::atoll(at) > 0 && reads >= static_cast<unsigned long long>(std::atoll(at))) return 15;
  reads++;
  m->total = 80000; m->used = 1000 * reads; m->free = m->total - m->used; return 0;
}
extern "C" int nvmlDeviceGetUtilizationRates(void* h, Util* u) {
  u->gpu = h == reinterpret_cast<void*>(1) ? 42 : 7; u->memory = 0; return 0;
}
"""


def build_fake_nvml(folder: Path) -> str:
    """The stand-in built into `folder`; its path."""
    from tracers import native

    (folder / "fake_nvml.cpp").write_text(FAKE_NVML)
    out = folder / "libfake-nvml.so"
    subprocess.run([native._compiler(), "-shared", "-fPIC", "-O1", "-o", str(out), str(folder / "fake_nvml.cpp")], check=True)
    return str(out)


class FakeNVMLError(Exception):
    """The stand-in pynvml's NVMLError."""


def fake_pynvml(procs=(), fail: bool = False, call_us: int = 0) -> types.ModuleType:
    """A pynvml stand-in: `procs` are (pid, used bytes) of the GPU's compute processes (the list is refused with
    `fail`); device memory 7,000 of 80,000 B used, 42 % busy. With `call_us`, every NVML call is a ctypes call of that
    many microseconds with the GIL released (libc's usleep), as NVML's ioctls are; the process list is two (pynvml asks
    for the count, then the list)."""
    usleep = ctypes.CDLL(None).usleep if call_us else None

    def call(result):
        if usleep is not None:
            usleep(call_us)
        return result

    nv = types.ModuleType("pynvml")
    nv.NVMLError = FakeNVMLError
    nv.nvmlInit = lambda: call(None)
    nv.nvmlDeviceGetHandleByIndex = lambda i: call(("gpu", i))
    nv.nvmlDeviceGetHandleByUUID = lambda u: call(("gpu", u))
    nv.nvmlDeviceGetMemoryInfo = lambda h: call(types.SimpleNamespace(used=7_000, total=80_000))
    nv.nvmlDeviceGetUtilizationRates = lambda h: call(types.SimpleNamespace(gpu=42))

    def running(h):
        call(None)
        if fail:
            raise FakeNVMLError("Insufficient Permissions")
        return call([types.SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in procs])

    nv.nvmlDeviceGetComputeRunningProcesses = running
    return nv
