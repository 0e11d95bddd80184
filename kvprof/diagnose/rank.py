"""Causes ranked by what they add over the baseline, and the "and N more" line of buffer lists.

With a bf16 baseline, the question is what explains the *difference*, not what is largest: a cause
the baseline has too (a VAE decode over a live cache) can be the largest while adding nothing.
Each cause's `excess_bytes` is the part of its bytes the baseline does not hold at its own peak,
counted per category of memory:

- the cache state (kv_codes, kv_fp, kv_meta) of the trace is set against the baseline's cache
  state as one pool, credited to codes first (they stand for the same tokens as the baseline's
  full-precision K/V), then full-precision K/V, then metadata (scales, zero points), which have no
  counterpart in an uncompressed cache;
- every other category is set against the same category of the baseline.

A category's uncredited bytes are shared among the trace's buffers of that category in proportion
to their size, and a cause's excess is the sum over its buffers. Excesses of different causes may
overlap (a decode-over-cache cause holds the codes that a wide-codes cause names), as the causes do.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from kvprof.units import fmt_bytes

__all__ = ["CACHE_STATE", "category_excess", "rank_causes", "more_line"]

# The quantized cache's persistent state, in the order the baseline's cache is credited to it.
CACHE_STATE: tuple[str, ...] = ("kv_codes", "kv_fp", "kv_meta")


class _Group(Protocol):
    category: str
    bytes: int


class _Cause(Protocol):
    kind: str
    bytes: int
    buffers: Sequence[_Group]
    excess_bytes: int | None
    in_baseline: bool | None


def category_excess(trace: dict[str, int], baseline: dict[str, int]) -> dict[str, float]:
    """Per category of the trace's live bytes at its peak: the share (0..1) not matched by the
    baseline's live bytes at its peak (see the module doc for the cache-state pool)."""
    out: dict[str, float] = {}
    pool = sum(int(baseline.get(c, 0)) for c in CACHE_STATE)
    for cat in CACHE_STATE:
        have = int(trace.get(cat, 0))
        credit = min(have, pool)
        pool -= credit
        if have:
            out[cat] = (have - credit) / have
    for cat, have in trace.items():
        if cat in CACHE_STATE or not have:
            continue
        out[cat] = max(0, int(have) - int(baseline.get(cat, 0))) / int(have)
    return out


def rank_causes(causes: list, trace_by_cat: dict[str, int], base_by_cat: dict[str, int],
                base_kinds: set[str], difference: int) -> list:
    """Set each cause's `excess_bytes` and `in_baseline`, then order them: an OOM first; when the
    trace is above the baseline, causes that add bytes (those the baseline lacks before those it
    shares, larger additions first), then the rest by size. At or below the baseline: by size."""
    frac = category_excess(trace_by_cat, base_by_cat)
    for c in causes:
        c.in_baseline = c.kind in base_kinds
        c.excess_bytes = int(round(sum(b.bytes * frac.get(b.category, 0.0) for b in c.buffers))) if c.buffers else None

    def key(c: _Cause) -> tuple:
        first = 0 if c.kind == "oom" else 1
        adds = difference > 0 and (c.excess_bytes or 0) > 0
        if not adds:
            return (first, 1, 0, 0, -c.bytes)
        return (first, 0, int(bool(c.in_baseline)), -(c.excess_bytes or 0), -c.bytes)

    return sorted(causes, key=key)


def more_line(groups: Sequence[_Group], shown: int) -> str | None:
    """"and N more (X)" for a list of buffer groups cut at `shown`, so the listed ones and this line
    add up to the total; None when every group is listed."""
    rest = list(groups)[shown:]
    if not rest:
        return None
    return f"and {len(rest)} more ({fmt_bytes(sum(int(g.bytes) for g in rest))})"
