"""Host-side activity per stage: host syncs, time inside aten ops, the tracer's own bookkeeping.

Counted per span, inclusive of nested spans (like a span's host ms), and written as optional
fields of the span-end record ('e': hs, ons, tns), read back as the spans table's `host_syncs`,
`op_ms` and `tracer_ms` columns.

What counts as a host sync depends on the device the session runs on:
- CPU (the dispatch tracker sees every aten op): calls that block the host on a GPU run. The
  dispatch mode reports `aten._local_scalar_dense` or `aten.item` (`.item()`, `bool()`, `float()`,
  `int()`) and
  ops with data-dependent output shapes (`nonzero`, `masked_select`, `unique`); `.cpu()`,
  `.tolist()` and `.numpy()` never reach the dispatcher on a CPU tensor, so they are counted by
  thin wrappers on `torch.Tensor` installed for the session's lifetime. On CPU these are sync
  *points* (nothing is waited for); on a GPU run each one stalls the host.
- CUDA: `torch.cuda.set_sync_debug_mode("warn")` makes every implicit synchronization
  (`.item()`, `.cpu()`, `.tolist()`, non-blocking=False copies, `nonzero`, stream syncs) raise a
  warning, which is counted and swallowed; explicit `torch.cuda.synchronize()` does not warn and
  is counted by a wrapper. Both are restored at close. (Not yet exercised on a GPU: see issue 8.)

`op_ms` (CPU only) is the wall time spent inside aten ops as the dispatch tracker calls them:
the CPU's device work. `tracer_ms` is the dispatch tracker's own bookkeeping after each op and
at each free, so analyses can take it out of the host time it inflates.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

SYNC_OPS: frozenset[str] = frozenset({
    "_local_scalar_dense",  # .item(), bool(t), float(t), int(t): read one value back to the host
    "item",  # what the dispatch mode sees instead under inference_mode (never both for one call)
    "nonzero",  # data-dependent output shape: the host must learn the count
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
})
# Tensor methods that hand data to the host without reaching the dispatcher on a CPU tensor.
TENSOR_SYNC_METHODS: tuple[str, ...] = ("cpu", "tolist", "numpy")
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"


class HostActivity:
    """Per-span counters. `current_span()` names the innermost open span (0: none)."""

    def __init__(self, current_span: Callable[[], int]):
        self._current_span = current_span
        self._syncs: dict[int, int] = {}
        self._op_ns: dict[int, int] = {}
        self._tracer_ns: dict[int, int] = {}
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self.device_type: str | None = None
        self._thread = threading.get_ident()

    # ----------------------------------------------------------------- counting
    def add_sync(self, n: int = 1) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread (a UI, a sampler): not the traced work
        span = self._current_span()
        with self._lock:
            self._syncs[span] = self._syncs.get(span, 0) + n

    def add_op(self, func: Any, op_ns: int, tracer_ns: int) -> None:
        """One aten op seen by the dispatch tracker: `op_ns` inside it, `tracer_ns` of bookkeeping after it."""
        span = self._current_span()
        with self._lock:
            self._op_ns[span] = self._op_ns.get(span, 0) + op_ns
            self._tracer_ns[span] = self._tracer_ns.get(span, 0) + tracer_ns
            if self.device_type == "cpu" and _op_name(func) in SYNC_OPS:
                self._syncs[span] = self._syncs.get(span, 0) + 1

    def add_tracer(self, tracer_ns: int) -> None:
        span = self._current_span()
        with self._lock:
            self._tracer_ns[span] = self._tracer_ns.get(span, 0) + tracer_ns

    def end_span(self, span_id: int, parent_id: int) -> dict[str, int]:
        """The span's inclusive counters as span-end record fields (only those that are nonzero);
        they are added to the parent's, which is still open."""
        fields: dict[str, int] = {}
        if not (self._syncs or self._op_ns or self._tracer_ns):
            return fields  # nothing counted in any open span (the common case on CUDA)
        with self._lock:
            for key, table in (("hs", self._syncs), ("ons", self._op_ns), ("tns", self._tracer_ns)):
                n = table.pop(span_id, 0)
                if n:
                    fields[key] = n
                    if parent_id:
                        table[parent_id] = table.get(parent_id, 0) + n
        return fields

    def describe(self) -> dict[str, Any]:
        """What the counters mean in this session (for meta.json)."""
        how = {"cpu": "sync points: aten " + ", ".join(sorted(SYNC_OPS)) + " and Tensor." + "/".join(TENSOR_SYNC_METHODS),
               "cuda": "torch.cuda sync-debug warnings and torch.cuda.synchronize calls"}
        return {"host_syncs": how.get(self.device_type or "", "not counted"), "thread_ident": self._thread}

    # ----------------------------------------------------------------- hooks into torch
    def install(self, device_type: str) -> None:
        """Start counting the syncs that do not pass through the dispatch tracker."""
        import torch

        self.device_type = device_type
        self._thread = threading.get_ident()
        if device_type == "cpu":
            for name in TENSOR_SYNC_METHODS:
                self._wrap(torch.Tensor, name)
        elif device_type == "cuda":
            self._wrap(torch.cuda, "synchronize")
            old_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            self._undo.append(lambda: torch.cuda.set_sync_debug_mode(old_mode))
            self._catch_sync_warnings()

    def uninstall(self) -> None:
        """Restore everything `install` changed (in reverse order)."""
        while self._undo:
            self._undo.pop()()

    def _wrap(self, owner: Any, name: str) -> None:
        own = name in vars(owner)  # else inherited (torch.Tensor's methods live on TensorBase)
        original = getattr(owner, name)
        counter = self

        def counted(*args: Any, **kwargs: Any) -> Any:
            counter.add_sync()
            return original(*args, **kwargs)

        counted.__wrapped__ = original  # type: ignore[attr-defined]
        counted.__name__ = getattr(original, "__name__", name)
        counted.__doc__ = getattr(original, "__doc__", None)
        setattr(owner, name, counted)
        self._undo.append(lambda: setattr(owner, name, original) if own else delattr(owner, name))

    def _catch_sync_warnings(self) -> None:
        # Every sync warning must reach showwarning (not just the first per line), and none is shown.
        previous_show = warnings.showwarning
        warnings.filterwarnings("always", message=CUDA_SYNC_WARNING)
        counter = self

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if CUDA_SYNC_WARNING in str(message):
                counter.add_sync()
                return
            previous_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show

        def restore() -> None:
            warnings.showwarning = previous_show
            warnings.filters[:] = [f for f in warnings.filters if not (f[0] == "always" and _filter_text(f) == CUDA_SYNC_WARNING)]

        self._undo.append(restore)


def _op_name(func: Any) -> str:
    # OpOverload: `aten._local_scalar_dense.default` -> packet name `_local_scalar_dense`
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet, "__name__", "") if packet is not None else str(func)


def _filter_text(f: tuple) -> str | None:
    msg = f[1]
    return getattr(msg, "pattern", msg)
