"""Trace your own rollout with kvprof's Python API: a toy autoregressive loop with a growing cache.

    python examples/instrument_loop.py [TRACE_FOLDER]      (default traces/loop-<time>)
    kvprof tui TRACE_FOLDER          kvprof report TRACE_FOLDER -o loop.html

Seven lines talk to kvprof, the import and the summary included.
"""
from __future__ import annotations

import sys
import time

import torch

import kvprof.api as kv
from kvprof.read.summary import Summary


def main(folder: str) -> Summary:
    torch.manual_seed(0)
    weights = torch.randn(256, 256)  # made before tracing began
    cache: list[torch.Tensor] = []
    x = torch.randn(16, 256)
    with kv.trace(folder, meta={"method": "toy-loop"}) as t:
        t.register(weights, "weights", "w")
        for i in range(6):
            with t.stage("step", i), t.category("activations"):
                h = torch.tanh(x @ weights)  # a temporary of the step
                cache.append(h.clone())  # kept across steps: the cache
                x = h[-1:].expand(16, -1)
            t.tag_tensor(cache[-1], "kv_fp", f"cache / step {i}")
    print(f"{folder}: peak {t.summary.peak.bytes:,} B during {t.summary.peak.stage}")
    return t.summary


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else f"traces/loop-{time.strftime('%Y%m%d-%H%M%S')}")
