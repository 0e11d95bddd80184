"""Probe the CUDA caching allocator on this machine: what its history records, and what reading
its counters costs (kvprof reads them at stage boundaries).

    python3 benchmarks/probe_allocator.py             # the history of a few allocations, printed
    python3 benchmarks/probe_allocator.py --counters  # JSON: microseconds per counter read, by API
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time

import torch


def counters_cost(n: int = 2000) -> dict:
    """Mean microseconds per call of each way to read allocated/reserved bytes."""
    keep = [torch.empty(1 << k, device="cuda") for k in range(10, 24)]  # a few blocks, like a real run
    ways = {
        "memory_stats (flattened, sorted)": lambda: torch.cuda.memory_stats()["allocated_bytes.all.current"],
        "memory_stats_as_nested_dict": lambda: torch.cuda.memory_stats_as_nested_dict()["allocated_bytes"]["all"]["current"],
        "memory_allocated": lambda: torch.cuda.memory_allocated(),
    }
    out = {}
    for name, read in ways.items():
        read()
        t = time.perf_counter()
        for _ in range(n):
            read()
        out[name] = round((time.perf_counter() - t) / n * 1e6, 2)
    del keep
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "us_per_call": out, "calls": n}


def history_probe() -> None:
    print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory)
    for m in ["diffusers", "textual", "pynvml", "pandas", "pyarrow", "altair", "vl_convert", "lpips", "rich"]:
        print(m, importlib.util.find_spec(m) is not None)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history("all", context=None, stacks="python", max_entries=10_000_000)
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._set_memory_metadata("ctx1")
    a = torch.empty(1000, device="cuda")  # 4000 B
    b = torch.empty(3 * 1024 * 1024 + 7, dtype=torch.uint8, device="cuda")
    torch.cuda.memory._set_memory_metadata("ctx2")
    c = torch.empty(100, dtype=torch.uint8, device="cuda")
    del b
    d = torch.empty(2 * 1024 * 1024 + 100, dtype=torch.uint8, device="cuda")
    print("allocated", torch.cuda.memory_allocated() - base, "max", torch.cuda.max_memory_allocated())
    snap = torch.cuda.memory._snapshot()
    for e in snap["device_traces"][0]:
        print({k: v for k, v in e.items() if k != "frames"})
    torch.cuda.memory._record_memory_history(None)
    del a, c, d


if __name__ == "__main__":
    if "--counters" in sys.argv:
        print(json.dumps(counters_cost()))
    else:
        history_probe()
