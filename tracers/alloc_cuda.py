"""Allocation tracking from the CUDA caching allocator's own history.

The allocator records every alloc/free with the metadata string in force; kvprof sets that string
to the number of the current *context* (a stage boundary or a tag change), so each allocator event
maps back to a category and a stage. The history is drained at checkpoints (chunk ends) and at
close, and sizes are rounded as the allocator rounds them (512-byte blocks), which is what
`torch.cuda.memory_allocated()` counts. Blocks the allocator hands out unsplit (a cached block up
to 1 MiB larger than asked) make the two differ; that gap is measured at every boundary, not hidden.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession

MIN_BLOCK = 512
MAX_ENTRIES = 50_000_000


def allocator_block_size(size: int) -> int:
    """The allocator's rounding of a request (c10 CUDACachingAllocator round_size)."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    return MIN_BLOCK * ((size + MIN_BLOCK - 1) // MIN_BLOCK)


class CudaHistoryTracker:
    """Replays `torch.cuda.memory._snapshot()` device traces into kvprof allocation records."""

    def __init__(self, session: "TraceSession", device: torch.device):
        self.session = session
        self.device = device
        self._live: dict[int, int] = {}  # block address -> allocation id
        # (ctx, address, category, name), in increasing ctx order (contexts only grow)
        self._pending_retags: deque[tuple[int, int, str, str | None]] = deque()
        self.oom_events: list[dict[str, Any]] = []

    def _enable(self) -> None:
        torch.cuda.memory._record_memory_history(
            "all", context=None, stacks="python", max_entries=MAX_ENTRIES, device=self.device, clear_history=True
        )

    def start(self) -> None:
        self._enable()

    def set_context(self, ctx: int) -> None:
        """Tag every following allocator event with context number `ctx`."""
        torch.cuda.memory._set_memory_metadata(str(ctx))

    def adopt(self, address: int, alloc_id: int) -> None:
        """Follow the free of a block that existed before tracing (explicitly registered)."""
        self._live[address] = alloc_id

    def retag(self, ctx: int, address: int, category: str, name: str | None) -> None:
        """Queue a retag of the block at `address`; applied in allocator order at the next drain."""
        self._pending_retags.append((ctx, address, category, name))

    def _apply_retags(self, before_ctx: int | None) -> None:
        """Apply queued retags of contexts <= before_ctx (all when None), oldest first."""
        pending = self._pending_retags
        while pending and (before_ctx is None or pending[0][0] <= before_ctx):
            _, address, category, name = pending.popleft()
            alloc_id = self._live.get(address)
            if alloc_id is not None:
                self.session.record_retag(alloc_id, category, name)

    def drain(self) -> None:
        """Turn the allocator events recorded since the last drain into records, then clear them."""
        snap = torch.cuda.memory._snapshot(self.device)
        traces = snap.get("device_traces", [])
        index = self.device.index or 0  # the session resolves a bare "cuda" to its index
        entries = traces[index] if index < len(traces) else []
        for e in entries:
            action = e["action"]
            if action not in ("alloc", "free_requested", "oom"):
                continue
            ctx = int(e.get("user_metadata") or 0)
            if self._pending_retags and self._pending_retags[0][0] < ctx:
                self._apply_retags(before_ctx=ctx - 1)
            if action == "alloc":
                alloc_id = self.session.record_alloc(
                    allocator_block_size(e["size"]), None, None, ctx=ctx, t_unix_us=e.get("time_us")
                )
                self._live[e["addr"]] = alloc_id
            elif action == "free_requested":
                alloc_id = self._live.pop(e["addr"], None)
                if alloc_id is not None:
                    self.session.record_free(alloc_id, ctx=ctx, t_unix_us=e.get("time_us"))
            else:
                self.oom_events.append({k: v for k, v in e.items() if k != "frames"} | {"ctx": ctx})
        self._apply_retags(before_ctx=None)
        self._correct_block_sizes(snap.get("segments", []))
        self._enable()

    def _correct_block_sizes(self, segments: list[dict[str, Any]]) -> None:
        """Replace rounded request sizes by the allocator's real block sizes for live blocks.

        A block handed out unsplit is larger than its rounded request, and memory_allocated()
        counts the whole block; the snapshot's segments give each live block's true size.
        """
        for seg in segments:
            addr = seg["address"]
            for block in seg.get("blocks", []):
                if block.get("state") == "active_allocated":
                    alloc_id = self._live.get(addr)
                    if alloc_id is not None:
                        self.session.record_size(alloc_id, int(block["size"]))
                addr += block["size"]

    def stop(self) -> None:
        self.drain()
        torch.cuda.memory._set_memory_metadata("")
        torch.cuda.memory._record_memory_history(None, device=self.device)
