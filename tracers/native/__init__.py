"""kvprof's native allocator-event recorder (C++ through ctypes): built once per machine and torch version.

`load(cuda=True)` builds `alloc_events.cpp` and `nvml_sampler.cpp` (the device sampler's thread) with
`attach_cuda.cpp` (the c10 trace tracker) against the running torch and returns the library;
`load(cuda=False)` builds the core alone (no torch headers), which the CPU tests drive with recorded
histories (and a stand-in NVML). Builds are cached under
`$KVPROF_CACHE_DIR` (default `~/.cache/kvprof/native`), keyed by the sources, torch's version and
the compiler, and written atomically, so processes of a sweep starting at once share one build.
A machine without a C++ compiler gets `NativeUnavailable` with the reason; the tracer then falls
back to replaying `torch.cuda.memory._snapshot()` histories in Python (and says so in the trace).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
CORE_SOURCES = (HERE / "alloc_events.cpp", HERE / "nvml_sampler.cpp")
CUDA_SOURCES = CORE_SOURCES + (HERE / "attach_cuda.cpp",)
HEADERS = (HERE / "block_layout.h", HERE / "record_cost.h")  # included by the sources: part of a build's key, not of its command line

_I64, _I32, _U64 = ctypes.c_int64, ctypes.c_int32, ctypes.c_uint64
_P64, _P32, _PU64 = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_uint64)
# The C ABI of alloc_events.cpp / attach_cuda.cpp: name -> (argument types, result type).
SIGNATURES: dict[str, tuple[tuple, object]] = {
    "kvp_record": ((_I32, _I32, _U64, _U64, _I64), None),
    "kvp_record_many": ((_I64, _P32, _PU64, _PU64, _P64, _P64), None),
    "kvp_retag": ((_U64, _I64), None),
    "kvp_reset": ((_I32, _I32, _I32, _I64), None),
    "kvp_set_recording": ((_I32,), None),
    "kvp_set_next_id": ((_I64,), None),
    "kvp_adopt": ((_U64, _I64), None),
    "kvp_layout_add": ((_U64, _I64, _I32, _U64, _U64), None),
    "kvp_layout_size": ((), _I64),
    "kvp_layout_export": ((_PU64, _P64, _P32, _PU64, _PU64), None),
    "kvp_live_size": ((), _I64),
    "kvp_live_export": ((_PU64, _P64), None),
    "kvp_stats": ((_P64,), None),
    "kvp_record_cost": ((_P64,), None),
    "kvp_record_cost_kept": ((_P64, _I64), _I64),
    "kvp_buffer_capacity": ((_P64,), None),
    "kvp_drain": ((_P64,), None),
    "kvp_take": ((_P64,) * 13, None),
    # nvml_sampler.cpp: the device sampler's thread (no GIL)
    "kvp_sampler_start": ((ctypes.c_char_p, ctypes.c_char_p, _I32, _I64, _I64), _I32),
    "kvp_sampler_take": ((_P64, _P64, _P64, _I64), _I64),
    "kvp_sampler_state": ((_P64,), None),
    "kvp_sampler_stop": ((), None),
}


class NativeUnavailable(RuntimeError):
    """The native recorder cannot be built or loaded here (the message says why)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("KVPROF_CACHE_DIR") or Path.home() / ".cache" / "kvprof" / "native")


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeUnavailable("no C++ compiler (g++ or $CXX) on this machine")
    return cxx


def _torch_flags() -> list[str]:
    import torch
    from torch.utils import cpp_extension

    try:
        includes = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # torch before 2.6
        includes = cpp_extension.include_paths(cuda=True)
    libs = [str(Path(torch.__file__).parent / "lib")]
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    return ([f"-D_GLIBCXX_USE_CXX11_ABI={abi}"] + [f"-I{p}" for p in includes] + [f"-L{p}" for p in libs]
            + [f"-Wl,-rpath,{p}" for p in libs] + ["-lc10", "-lc10_cuda"])


def _build(name: str, sources: tuple[Path, ...], flags: Callable[[], list[str]], key: str) -> Path:
    """The cached library of `sources` (built with `flags()` only when not cached: torch's include paths cost a
    process that only loads the library a few tenths of a second, in every trace process of a sweep)."""
    cxx = _compiler()
    digest = hashlib.sha256(key.encode() + cxx.encode() + b"".join(p.read_bytes() for p in sources + HEADERS)).hexdigest()[:16]
    out = _cache_dir() / f"{name}-{digest}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        # -pthread, -ldl: the sampler's thread and its dlopen of NVML (part of libc on newer glibc)
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-o", str(built), *map(str, sources), *flags(), "-pthread", "-ldl"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise NativeUnavailable(f"building {name} failed: {' | '.join(tail)}")
        os.replace(built, out)  # atomic: a concurrent build of the same key writes the same bytes
    return out


def _bind(lib: ctypes.CDLL, cuda: bool) -> ctypes.CDLL:
    for fn, (args, res) in SIGNATURES.items():
        f = getattr(lib, fn)
        f.argtypes, f.restype = list(args), res
    if cuda:
        lib.kvp_attach.argtypes, lib.kvp_attach.restype = [], _I32
        lib.kvp_counters.argtypes, lib.kvp_counters.restype = [_I32, _P64], None
        lib.kvp_mark.argtypes, lib.kvp_mark.restype = [_I32], _I64
        lib.kvp_mark_ms.argtypes, lib.kvp_mark_ms.restype = [_I64, _I64], ctypes.c_double
        lib.kvp_marks_reset.argtypes, lib.kvp_marks_reset.restype = [], None
    return lib


def load(cuda: bool, hold_gil: bool = False) -> ctypes.CDLL:
    """The recorder library (with the CUDA allocator hook when `cuda`); NativeUnavailable otherwise.

    `hold_gil`: the same library, its calls made with the GIL held (`ctypes.PyDLL`), for the traced thread's
    microsecond calls at stage boundaries (counters, device-time marks, retags). A `CDLL` call releases the GIL,
    and a thread waiting for it (the drain's Python, the NVML sampler) takes it at once: the traced thread then
    waits for that thread's next release, up to the interpreter's switch interval (5 ms). With one busy Python
    thread beside it a `CDLL` call took ~145 us on the dev CPU, a `PyDLL` call 0.2 us (a traced 21-frame prq_int4
    rollout's stage scopes: 30 -> 24 us on an H200, `benchmarks/RESULTS.md` session 16). Never for a call that waits
    on the recorder's locks (drain, take, adopt): those keep the `CDLL` binding. One object per binding and
    process, however it is asked for."""
    return _load(bool(cuda), bool(hold_gil))


@lru_cache(maxsize=None)
def _load(cuda: bool, hold_gil: bool) -> ctypes.CDLL:
    if cuda:
        import torch

        path = _build("kvprof_alloc_cuda", CUDA_SOURCES, _torch_flags, f"cuda {torch.__version__}")
    else:
        path = _build("kvprof_alloc_core", CORE_SOURCES, list, "core")
    try:
        # RTLD_GLOBAL is not needed: the library's only outside symbols are c10's, already loaded by torch.
        # dlopen hands both bindings the one copy of the library (its globals, its buffer).
        return _bind((ctypes.PyDLL if hold_gil else ctypes.CDLL)(str(path)), cuda)
    except OSError as exc:
        raise NativeUnavailable(f"loading {path} failed: {exc}") from None
