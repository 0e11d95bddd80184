"""Allocation tracking through a TorchDispatchMode: every op output with a new storage is an
allocation of `storage.nbytes()`; a weakref finalizer on the storage reports its free.

Used on CPU (where it is the allocator of record) and as the fallback on CUDA.
"""
from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tracers.trace_fold import LIVE_BEFORE_TRACING

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession


_LIFT_FRESH = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


class DispatchAllocTracker(TorchDispatchMode):
    """Sees every storage created by an aten op while active."""

    def __init__(self, session: "TraceSession"):
        super().__init__()
        self.session = session
        self._known: dict[int, int] = {}  # id(storage) -> allocation id

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _LIFT_FRESH:
            # `torch.tensor(data)` makes its storage outside dispatch and hands it in here, fresh:
            # made now, in this stage (not a storage from before tracing)
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    self.track(leaf, None, None)
        for leaf in tree_leaves((args, kwargs)):
            # A storage an op reads that the tracker never saw existed before tracing: it is held,
            # not made here (else a view of it would count as a new allocation of this stage).
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta" and leaf.layout == torch.strided:
                if id(leaf.untyped_storage()) not in self._known:
                    self.track(leaf, "unattributed", LIVE_BEFORE_TRACING, before=True)
        t0 = time.perf_counter_ns()
        out = func(*args, **(kwargs or {}))
        t1 = time.perf_counter_ns()
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf, None, None)
        self.session.host_activity.add_op(func, t1 - t0, time.perf_counter_ns() - t1)
        return out

    def track(self, tensor: torch.Tensor, category: str | None, name: str | None, before: bool = False) -> int | None:
        """Record the tensor's storage if unseen; return its allocation id (None for empty/meta).
        `before`: the storage existed before tracing (recorded outside any stage)."""
        if tensor.device.type == "meta":
            return None
        storage = tensor.untyped_storage()
        key = id(storage)
        known = self._known.get(key)
        if known is not None:
            return known
        nbytes = storage.nbytes()
        if nbytes == 0:
            return None
        alloc_id = self.session.record_alloc(nbytes, category, name, root=before)
        self._known[key] = alloc_id
        # Storage Python objects are preserved while the C++ storage lives, so this fires at its free.
        weakref.finalize(storage, self._freed, key, alloc_id)
        return alloc_id

    def _freed(self, key: int, alloc_id: int) -> None:
        t0 = time.perf_counter_ns()
        if self._known.get(key) == alloc_id:
            del self._known[key]
        self.session.record_free(alloc_id)
        self.session.host_activity.add_tracer(time.perf_counter_ns() - t0)

    def allocation_of(self, tensor: torch.Tensor) -> int | None:
        """Allocation id of a tracked tensor's storage, or None."""
        if tensor.device.type == "meta":
            return None
        return self._known.get(id(tensor.untyped_storage()))
