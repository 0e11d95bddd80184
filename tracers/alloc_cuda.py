"""Allocation tracking from the CUDA caching allocator's own history.

The allocator records every alloc/free with the metadata string in force; kvprof sets that string
to the number of the current *context* (a stage boundary or a tag change), so each allocator event
maps back to a category and a stage. The history is drained at checkpoints when a follower needs
it, and always at close. Each allocation's size is its *block* size, which is what
`torch.cuda.memory_allocated()` counts: `BlockLayout` mirrors the allocator's segments, splits and
merges from the same history, and every drain checks that mirror against the allocator's snapshot
(and reloads it), so the trace's bytes equal the allocator's counters, not an estimate of them.

A drain turns the events into columns in one pass (no per-event record objects), because the
study's PRQ integration alone makes about ten million allocator events at full size.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tracers.alloc_layout import ALLOCATED, BlockLayout, expandable_segments_requested, round_size, unsupported_reason
from tracers.trace_fold import NO_FREE, Q_STRIDE

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession

MAX_ENTRIES = 50_000_000


@dataclass
class HistoryBatch:
    """The allocator events of one drain, as columns (row i is allocation id `first_id + i`)."""

    first_id: int
    q_alloc: list[int] = field(default_factory=list)
    t_alloc_us: list[int | None] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)
    q_free: list[int] = field(default_factory=list)
    t_free_us: list[int | None] = field(default_factory=list)
    retags: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # row -> (category, name)
    # frees of allocations recorded by earlier drains or registrations: (alloc id, q, t_us)
    earlier_frees: list[tuple[int, int, int | None]] = field(default_factory=list)
    # retags of allocations of earlier drains: (alloc id, category, name) (the Python replay records them at once)
    earlier_retags: list[tuple[int, str, str | None]] = field(default_factory=list)
    # times: "unix_us" (the allocator history's time_us) or "steady_ns" (the native recorder: the trace clock's base)
    clock: str = "unix_us"


@dataclass
class LayoutStats:
    """How each block size was learned; reported in the trace's meta (`allocator_layout`)."""

    exact: int = 0  # sizes from the mirrored layout
    rounded: int = 0  # layout missing or missed: request rounded to 512 B
    corrected: int = 0  # sizes replaced by a snapshot's block size at a drain
    snapshot_mismatches: int = 0  # blocks where the mirrored layout disagreed with a snapshot
    off_reason: str | None = None

    def as_meta(self, misses: int) -> dict[str, Any]:
        return {"model": "off" if self.off_reason else "on", "off_reason": self.off_reason,
                "exact_blocks": self.exact, "rounded_blocks": self.rounded, "corrected_blocks": self.corrected,
                "snapshot_mismatches": self.snapshot_mismatches, "misses": misses}


class CudaHistoryTracker:
    """Replays `torch.cuda.memory._snapshot()` device traces into kvprof allocation records."""

    def __init__(self, session: "TraceSession", device: torch.device, expandable: bool = False):
        self.session = session
        self.device = device
        self.index = device.index or 0  # the session resolves a bare "cuda" to its index
        self._live: dict[int, int] = {}  # block address -> allocation id
        # (ctx, address, category, name), in increasing ctx order (contexts only grow)
        self._pending_retags: deque[tuple[int, int, str, str | None]] = deque()
        self._hist_pos = (-1, 0)  # (context, order) of the last allocator event
        self.oom_events: list[dict[str, Any]] = []
        self.expandable = expandable or expandable_segments_requested()
        self.layout = BlockLayout(expandable=self.expandable)
        self.stats = LayoutStats(off_reason=unsupported_reason())
        self._start_blocks: dict[int, int] = {}  # blocks allocated when tracking started: address -> size

    def _enable(self) -> None:
        torch.cuda.memory._record_memory_history(
            "all", context=None, stacks="python", max_entries=MAX_ENTRIES, device=self.device, clear_history=True
        )

    def _segments(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in snap.get("segments", []) if s.get("device", self.index) == self.index]

    def start(self) -> None:
        """Learn the blocks that exist now, then start recording."""
        segments = self._segments(torch.cuda.memory._snapshot(self.device))
        self.layout.load(segments)
        self._start_blocks = {a: b[0] for a, b in self.layout.blocks.items() if b[1] == ALLOCATED}
        self._enable()

    def set_context(self, ctx: int) -> None:
        """Tag every following allocator event with context number `ctx`."""
        torch.cuda.memory._set_memory_metadata(str(ctx))

    def blocks_at_start(self) -> list[tuple[int, int]]:
        """(address, size) of the blocks allocated when tracking started, in address order."""
        return sorted(self._start_blocks.items())

    def adopt(self, address: int, alloc_id: int) -> None:
        """Follow the free (and retags) of a block that existed before tracking, as `alloc_id`."""
        self._start_blocks.pop(address, None)
        self._live[address] = alloc_id

    def retag(self, ctx: int, address: int, category: str, name: str | None) -> None:
        """Queue a retag of the block at `address`; applied in allocator order at the next drain."""
        self._pending_retags.append((ctx, address, category, name))

    def _apply_retags(self, before_ctx: int | None, batch: HistoryBatch) -> None:
        """Apply queued retags of contexts <= before_ctx (all when None), oldest first."""
        pending = self._pending_retags
        while pending and (before_ctx is None or pending[0][0] <= before_ctx):
            _, address, category, name = pending.popleft()
            alloc_id = self._live.get(address)
            if alloc_id is None:
                continue
            if alloc_id >= batch.first_id:
                batch.retags[alloc_id - batch.first_id] = (category, name)
            else:
                self.session.record_retag(alloc_id, category, name)

    def drain(self) -> None:
        """Turn the allocator events recorded since the last drain into records, then clear them."""
        snap = torch.cuda.memory._snapshot(self.device)
        traces = snap.get("device_traces", [])
        entries = traces[self.index] if self.index < len(traces) else []
        segments = self._segments(snap)
        actions = [e["action"] for e in entries]
        n_alloc = actions.count("alloc")
        batch = HistoryBatch(first_id=self.session.reserve_alloc_ids(n_alloc))
        batch.q_free = [NO_FREE] * n_alloc
        batch.t_free_us = [NO_FREE] * n_alloc
        self._replay(entries, actions, batch)
        self._apply_retags(before_ctx=None, batch=batch)
        self._resync(segments, batch)
        self.session.record_history_batch(batch)
        self._enable()

    def _replay(self, entries: list[dict[str, Any]], actions: list[str], batch: HistoryBatch) -> None:
        # One tight loop: this runs once per allocator event (millions at full size).
        layout = None if self.stats.off_reason else self.layout
        live, pending, first = self._live, self._pending_retags, batch.first_id
        q_alloc, t_alloc, sizes, ctxs = batch.q_alloc, batch.t_alloc_us, batch.size, batch.ctx
        q_free, t_free = batch.q_free, batch.t_free_us
        last_ctx, order = self._hist_pos
        # Allocator events of context c sort after the session's own records of c (small orders), in
        # allocator order; the half-stride offset keeps them clear of those.
        half = Q_STRIDE >> 1
        next_id = first
        exact = rounded = 0
        for e, action in zip(entries, actions):
            if action == "alloc" or action == "free_requested":
                ctx = int(e.get("user_metadata") or 0)
                if ctx == last_ctx:
                    order += 1
                else:
                    if pending and pending[0][0] < ctx:
                        self._apply_retags(ctx - 1, batch)
                    last_ctx, order = ctx, 1
                q = ctx * Q_STRIDE + half + order
                addr = e["addr"]
                if action == "alloc":
                    size = layout.alloc(addr, e["size"]) if layout is not None else None
                    if size is None:
                        size = round_size(e["size"])
                        rounded += 1
                    else:
                        exact += 1
                    live[addr] = next_id
                    next_id += 1
                    q_alloc.append(q)
                    t_alloc.append(e.get("time_us"))
                    sizes.append(size)
                    ctxs.append(ctx)
                else:
                    if layout is not None:
                        layout.free_requested(addr)
                    alloc_id = live.pop(addr, None)
                    if alloc_id is None:
                        continue  # not a block of this trace (blocks from before tracking are adopted at start)
                    if alloc_id >= first:
                        q_free[alloc_id - first] = q
                        t_free[alloc_id - first] = e.get("time_us")
                    else:
                        batch.earlier_frees.append((alloc_id, q, e.get("time_us")))
            elif layout is None:
                if action == "oom":
                    self._oom(e, last_ctx)
            elif action == "free_completed":
                layout.free_completed(e["addr"])
            elif action == "segment_alloc":
                layout.segment_alloc(e["addr"], e["size"])
            elif action == "segment_free":
                layout.segment_free(e["addr"], e["size"])
            elif action in ("segment_map", "segment_unmap") and not self.expandable:
                self.stats.off_reason = "expandable segments the tracker was not told of"
                layout = None
            elif action == "oom":
                self._oom(e, last_ctx)
        self._hist_pos = (last_ctx, order)
        self.stats.exact += exact
        self.stats.rounded += rounded

    def _oom(self, e: dict[str, Any], last_ctx: int) -> None:
        ctx = int(e.get("user_metadata") or last_ctx or 0)
        self.oom_events.append({k: v for k, v in e.items() if k != "frames"} | {"ctx": ctx})

    def _resync(self, segments: list[dict[str, Any]], batch: HistoryBatch) -> None:
        """Check the mirrored layout against the snapshot taken with these events, reload it from
        the snapshot, and take live blocks' sizes from the snapshot where they still differ."""
        if self.stats.off_reason is None:
            self.stats.snapshot_mismatches += self.layout.mismatches(segments)
        self.layout.load(segments)
        first = batch.first_id
        for address, block in self.layout.blocks.items():
            if block[1] != ALLOCATED:
                continue
            alloc_id = self._live.get(address)
            if alloc_id is None:
                continue
            if alloc_id >= first:
                if batch.size[alloc_id - first] != block[0]:
                    batch.size[alloc_id - first] = block[0]
                    self.stats.corrected += 1
            elif self.session.record_size(alloc_id, block[0]):
                self.stats.corrected += 1

    def stop(self) -> None:
        self.drain()
        torch.cuda.memory._set_memory_metadata("")
        torch.cuda.memory._record_memory_history(None, device=self.device)

    def meta(self) -> dict[str, Any]:
        """What the trace's meta records about block sizes."""
        return self.stats.as_meta(self.layout.misses) | {"expandable_segments": self.expandable}
