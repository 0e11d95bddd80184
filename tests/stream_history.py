"""Synthetic allocator histories at scale (millions of events, numpy), consistent with the caching
allocator's rules, for the streamed-recorder tests: one large segment used as a stack. Each step
allocates a temporary at the top and frees it again (alloc, free_requested, free_completed); every
`pin_every` steps a long-lived block (a KV chunk) stays, so later temporaries sit above it and the
trace keeps a growing live set. Temporaries of 1-3 MiB are split from the free rest of the segment
(remainder > 1 MiB), so their block size is the rounded request, as the layout mirror computes."""
from __future__ import annotations

import numpy as np

SEGMENT = 1 << 40  # the segment's address
SEGMENT_SIZE = 1 << 38
ALLOC, FREE_REQUESTED, FREE_COMPLETED, SEGMENT_ALLOC = 0, 1, 2, 3


def stack_history(steps: int, *, base: int = SEGMENT, t0: int = 1_000_000, ctx: int = 1, pin_every: int = 97,
                  seed: int = 0, segment: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """Columns (action, addr, size, t_ns, ctx) of `steps` allocations (3 events each, a pin 1) from
    stack top `base` (with the segment_alloc first when `segment`), times every 2 us from `t0`, all
    in context `ctx`; and the stack top after them (where the next batch goes on)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1 << 20, 3 << 20, steps) // 512 * 512 + rng.integers(1, 512, steps)
    pinned = (np.arange(steps) % pin_every) == pin_every - 1
    rounded = (sizes + 511) // 512 * 512
    grown = np.cumsum(np.where(pinned, rounded, 0))
    top = base + np.concatenate([[0], grown[:-1]])
    per_step = np.where(pinned, 1, 3)
    head = 1 if segment else 0
    n = head + int(per_step.sum())
    action, addr, size = np.empty(n, np.int32), np.empty(n, np.uint64), np.empty(n, np.uint64)
    start = head + np.concatenate([[0], np.cumsum(per_step)[:-1]])
    if segment:
        action[0], addr[0], size[0] = SEGMENT_ALLOC, SEGMENT, SEGMENT_SIZE
    for k, act in enumerate((ALLOC, FREE_REQUESTED, FREE_COMPLETED)):
        pick = np.ones(steps, bool) if k == 0 else ~pinned
        rows = (start + k)[pick]
        action[rows], addr[rows], size[rows] = act, top[pick], sizes[pick]
    t_ns = t0 + np.arange(n, dtype=np.int64) * 2_000
    cols = {"action": action, "addr": addr, "size": size, "t_ns": t_ns, "ctx": np.full(n, ctx, np.int64)}
    return cols, int(base + grown[-1])


def feed(lib, cols: dict[str, np.ndarray]) -> None:
    """Hand the events to the native recorder as the allocator's tracker would, in one call."""
    import ctypes

    def ptr(a, t):
        return a.ctypes.data_as(ctypes.POINTER(t))

    lib.kvp_record_many(len(cols["action"]), ptr(cols["action"], ctypes.c_int32), ptr(cols["addr"], ctypes.c_uint64),
                        ptr(cols["size"], ctypes.c_uint64), ptr(cols["t_ns"], ctypes.c_int64),
                        ptr(cols["ctx"], ctypes.c_int64))


def as_history_entries(cols: dict[str, np.ndarray], t0_unix_ns: int, t0_perf_ns: int) -> list[dict]:
    """The same events as `torch.cuda.memory._snapshot()` device-trace entries (the Python replay's
    input), their time_us chosen so both replays give the same trace times (t0_unix_ns and the
    times' offsets from t0_perf_ns whole microseconds)."""
    names = {0: "alloc", 1: "free_requested", 2: "free_completed", 3: "segment_alloc"}
    t_us = (cols["t_ns"] - t0_perf_ns + t0_unix_ns) // 1000
    return [{"action": names[a], "addr": int(ad), "size": int(s), "time_us": int(t), "user_metadata": str(int(c))}
            for a, ad, s, t, c in zip(cols["action"].tolist(), cols["addr"].tolist(), cols["size"].tolist(),
                                      t_us.tolist(), cols["ctx"].tolist())]
