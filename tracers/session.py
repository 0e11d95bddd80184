"""TraceSession: one traced run. Owns the stage stack, category tags, allocation tracker,
stage timer, device sampler and the trace folder. Code under trace talks to it only through
`tracers.stage / tag / tag_tensor / register` (tracers.context)."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from tracers import context
from tracers.alloc_cuda import CudaHistoryTracker, allocator_block_size
from tracers.alloc_dispatch import DispatchAllocTracker
from tracers.categories import CATEGORIES
from tracers.host_sync import HostActivity
from tracers.sampler import DeviceSampler
from tracers.timing import StageTimer
from tracers.trace_io import (
    EVENTS_FILE,
    META_FILE,
    SCHEMA_VERSION,
    STATUSES,
    EventLog,
    tables_from_records,
    write_json_atomic,
    write_tables,
)

Q_STRIDE = 1 << 32  # q = context * Q_STRIDE + order within the context


class SimulatedOOM(torch.OutOfMemoryError):
    """kvprof's own out-of-memory: tracked live bytes would exceed the `--budget` (CPU)."""

    def __init__(self, requested: int, live: int, budget: int):
        self.requested, self.live, self.budget = requested, live, budget
        super().__init__(
            f"kvprof budget exceeded: tried to allocate {requested} bytes with {live} bytes live "
            f"(budget {budget} bytes)"
        )


class TraceSession:
    """Records one run into `folder` (created). Use as a context manager or call start/close."""

    def __init__(
        self,
        folder: str | Path,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        *,
        budget_bytes: int | None = None,
        tracker: str = "auto",
        sample_interval_s: float = 0.1,
        counter_depth: int | None = 4,
        drain_at_checkpoints: bool = True,
    ):
        self.folder = Path(folder)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.meta: dict[str, Any] = dict(meta or {})
        self.budget_bytes = budget_bytes
        self.sample_interval_s = sample_interval_s
        # Allocator counters cost ~80 us each on CUDA: read them down to layer boundaries only.
        self.counter_depth = counter_depth
        self.drain_at_checkpoints = drain_at_checkpoints
        self.tracer_seconds = 0.0  # time spent draining the allocator history (tracer overhead)
        use_history = tracker == "allocator" or (tracker == "auto" and self.device.type == "cuda")
        self.tracker_kind = "cuda-allocator-history" if use_history else "dispatch"
        self._lock = threading.RLock()
        self._next_alloc = 1
        self._next_span = 1
        self._ctx = 0
        self._ctx_order = 0
        self._ctx_table: dict[int, tuple[int, str]] = {0: (0, "unattributed")}
        self._span_stack: list[tuple[int, str]] = []  # (span id, path element)
        self._tag_stack: list[str] = []
        self.live_bytes = 0  # running total for budgets and progress; analyses recount from records
        self.peak_bytes = 0
        self._alloc_bytes: dict[int, int] = {}
        self._log: EventLog | None = None
        self._dispatch: DispatchAllocTracker | None = None
        self._cuda: CudaHistoryTracker | None = None
        self._timer = StageTimer(self.device)
        self._sampler: DeviceSampler | None = None
        self.notes: list[str] = []
        self.status = "running"
        self._t0_perf = 0
        self._t0_unix_ns = 0
        self._hist_pos = (-1, 0)
        self.failure_stage: str | None = None
        self._armed = False
        self.host_activity = HostActivity(self._current_span_id)  # host syncs, op and tracer time per span
        self._close_hooks: list[Callable[["TraceSession"], None]] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "TraceSession":
        """Create the folder, write meta (status running), start tracking."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / META_FILE).exists():
            raise FileExistsError(f"{self.folder}: a trace already exists there")
        self._t0_perf = time.perf_counter_ns()
        self._t0_unix_ns = time.time_ns()
        self.meta.update(
            schema_version=SCHEMA_VERSION,
            status="running",
            error=None,
            started_unix_ns=self._t0_unix_ns,
            tracker=self.tracker_kind,
            pid=os.getpid(),
        )
        write_json_atomic(self.folder / META_FILE, self.meta)
        self._log = EventLog(self.folder / EVENTS_FILE)
        context._set_active(self)
        if self.tracker_kind == "cuda-allocator-history":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.meta["allocated_before_bytes"] = torch.cuda.memory_allocated(self.device)
            self._cuda = CudaHistoryTracker(self, self.device)
            self._cuda.start()
        else:
            self._dispatch = DispatchAllocTracker(self)
            self._dispatch.__enter__()
        if self.device.type == "cuda":
            self._sampler = DeviceSampler(self.device.index or 0, self._emit_sample, self.sample_interval_s)
            self._sampler.start(self._t0_perf)
            if not self._sampler.available:
                self.notes.append(self._sampler.reason)
        else:
            self.notes.append("device sampler off: no GPU (CPU run)")
        self.host_activity.install(self.device.type)
        self._armed = True
        return self

    def __enter__(self) -> "TraceSession":
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.status != "running":
            return
        if exc is None:
            self.close("complete")
        elif isinstance(exc, torch.OutOfMemoryError):
            self.close("oom", exc)
        elif isinstance(exc, KeyboardInterrupt):
            self.close("interrupted", exc)
        else:
            self.close("failed", exc)

    def close(self, status: str = "complete", error: BaseException | str | None = None) -> None:
        """Stop tracking, resolve device times, write Parquet tables and final meta."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"bad final status {status!r}")
        if self.status != "running":
            return
        for hook in self._close_hooks:  # e.g. the host profiler: stops while the trace is still open
            try:
                hook(self)
            except Exception as exc:  # a failing hook must not lose the trace; its failure is recorded
                self.notes.append(f"close hook {getattr(hook, '__qualname__', hook)!s} failed: {type(exc).__name__}: {exc}")
        self._armed = False
        with self._lock:
            t_end = self._now()
            # Spans still open (an exception unwound past them) end at the failure.
            while self._span_stack:
                span_id, _ = self._span_stack.pop()
                parent = self._span_stack[-1][0] if self._span_stack else 0
                self._write({"k": "e", "id": span_id, "t": t_end, "q": self._q(), "ms": float("nan"),
                             **self.host_activity.end_span(span_id, parent)})
        self.host_activity.uninstall()
        if self._sampler is not None:
            self._sampler.stop()
        if self._dispatch is not None:
            self._dispatch.__exit__(None, None, None)
        if self._cuda is not None:
            assert self._log is not None
            self._log.memory_only = not self.drain_at_checkpoints
            self._cuda.stop()
            self._log.memory_only = False
            self.meta["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            self.meta["memory_allocated_end_bytes"] = torch.cuda.memory_allocated(self.device)
            if self._cuda.oom_events:
                self.meta["allocator_oom_events"] = self._cuda.oom_events
        for span_id, ms in self._timer.resolve().items():
            self._write({"k": "x", "id": span_id, "dms": ms})
        context._set_active(None)
        assert self._log is not None
        self._log.close()
        self.status = status
        self.meta["status"] = status
        self.meta["error"] = None if error is None else f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.meta["ended_unix_ns"] = time.time_ns()
        self.meta["wall_s"] = (time.perf_counter_ns() - self._t0_perf) / 1e9
        self.meta["notes"] = self.notes
        self.meta["tracer_drain_s"] = self.tracer_seconds
        self.meta["tracker_peak_bytes"] = self.peak_bytes  # the tracker's running maximum, for recounts
        self.meta["host_activity"] = {**self.host_activity.describe(), "op_time": self._dispatch is not None}
        tables = tables_from_records(self._log.records)
        write_tables(self.folder, tables)
        write_json_atomic(self.folder / META_FILE, self.meta)
        (self.folder / EVENTS_FILE).unlink(missing_ok=True)

    # ----------------------------------------------------------------- clocks and order
    def _now(self) -> int:
        return time.perf_counter_ns() - self._t0_perf

    def now_ns(self) -> int:
        """The trace clock: ns since the session started (`t` of every record)."""
        return self._now()

    def add_close_hook(self, hook: Callable[["TraceSession"], None]) -> None:
        """Run `hook(session)` first thing in `close`, while spans and meta are still writable."""
        self._close_hooks.append(hook)

    def _current_span_id(self) -> int:
        return self._span_stack[-1][0] if self._span_stack else 0

    def _q(self) -> int:
        self._ctx_order += 1
        return self._ctx * Q_STRIDE + self._ctx_order

    def _new_context(self) -> None:
        self._ctx += 1
        self._ctx_order = 0
        span_id = self._span_stack[-1][0] if self._span_stack else 0
        category = self._tag_stack[-1] if self._tag_stack else "unattributed"
        self._ctx_table[self._ctx] = (span_id, category)
        if self._cuda is not None:
            self._cuda.set_context(self._ctx)

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(record)

    def _emit_sample(self, sample: dict) -> None:
        self._write({"k": "d", **sample})

    # ----------------------------------------------------------------- stages and tags
    def stage_path(self) -> str:
        """Path of the innermost open stage, e.g. 'rollout/chunk[2]/refresh/layer[1]/kv_write'."""
        return "/".join(elem for _, elem in self._span_stack)

    @contextlib.contextmanager
    def stage(self, name: str, index: int | None = None) -> Iterator[None]:
        """Open a span; nested spans build the stage path."""
        elem = name if index is None else f"{name}[{index}]"
        with self._lock:
            span_id = self._next_span
            self._next_span += 1
            parent = self._span_stack[-1][0] if self._span_stack else 0
            self._span_stack.append((span_id, elem))
            self._new_context()
            t = self._now()
            self._write({"k": "b", "id": span_id, "p": parent, "n": name, "i": index, "t": t, "q": self._q()})
            self._counter(span_id)
        self._timer.begin(span_id, self.stage_path())
        try:
            yield
        except BaseException:
            if self.failure_stage is None:
                self.failure_stage = self.stage_path()  # the innermost stage the error left
            raise
        finally:
            self._timer.end(span_id)
            with self._lock:
                t_end = self._now()
                if self._span_stack and self._span_stack[-1][0] == span_id:
                    self._span_stack.pop()
                    self._write({"k": "e", "id": span_id, "t": t_end, "q": self._q(), "ms": (t_end - t) / 1e6,
                                 **self.host_activity.end_span(span_id, parent)})
                    self._new_context()
                    self._counter(span_id)

    def _counter(self, span_id: int) -> None:
        if self._cuda is None:
            return
        if self.counter_depth is not None and len(self._span_stack) > self.counter_depth:
            return
        stats = torch.cuda.memory_stats(self.device)
        self._write(
            {
                "k": "m", "t": self._now(), "q": self._q(), "s": span_id,
                "alloc": stats.get("allocated_bytes.all.current", 0),
                "reserved": stats.get("reserved_bytes.all.current", 0),
            }
        )

    @contextlib.contextmanager
    def tag(self, category: str) -> Iterator[None]:
        """Allocations in the body get `category`."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown memory category {category!r}; categories: {', '.join(CATEGORIES)}")
        with self._lock:
            self._tag_stack.append(category)
            self._new_context()
        try:
            yield
        finally:
            with self._lock:
                self._tag_stack.pop()
                self._new_context()

    def current_category(self) -> str:
        """The category an allocation made now would get."""
        return self._tag_stack[-1] if self._tag_stack else "unattributed"

    # ----------------------------------------------------------------- allocations
    def record_alloc(
        self,
        nbytes: int,
        category: str | None,
        name: str | None,
        *,
        ctx: int | None = None,
        t_unix_us: int | None = None,
    ) -> int:
        """Record one allocation; `ctx` and `t_unix_us` come from the CUDA allocator's history."""
        with self._lock:
            if self._armed and self.budget_bytes is not None and self.live_bytes + nbytes > self.budget_bytes:
                raise SimulatedOOM(nbytes, self.live_bytes, self.budget_bytes)
            alloc_id = self._next_alloc
            self._next_alloc += 1
            if ctx is None:
                span_id, default_cat = self._ctx_table[self._ctx]
                q = self._q()
                t = self._now()
            else:
                span_id, default_cat = self._ctx_table.get(ctx, (0, "unattributed"))
                q = self._history_q(ctx)
                t = self._unix_us_to_t(t_unix_us)
            self._alloc_bytes[alloc_id] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            record = {"k": "a", "id": alloc_id, "t": t, "q": q, "b": nbytes, "c": category or default_cat, "s": span_id}
            if name:
                record["n"] = name
            self._write(record)
            return alloc_id

    def record_free(self, alloc_id: int, *, ctx: int | None = None, t_unix_us: int | None = None) -> None:
        """Record the free of allocation `alloc_id` (bytes are known from its allocation)."""
        with self._lock:
            if ctx is None:
                q, t = self._q(), self._now()
            else:
                q, t = self._history_q(ctx), self._unix_us_to_t(t_unix_us)
            self._write({"k": "f", "id": alloc_id, "t": t, "q": q})
            self.live_bytes -= self._alloc_bytes.pop(alloc_id, 0)

    def _history_q(self, ctx: int) -> int:
        # Allocator events of context c sort after the session's own records of c (small orders),
        # in allocator order; the offset keeps them clear of those.
        last_ctx, order = self._hist_pos
        order = order + 1 if ctx == last_ctx else 1
        self._hist_pos = (ctx, order)
        return ctx * Q_STRIDE + (Q_STRIDE >> 1) + order

    def _unix_us_to_t(self, t_unix_us: int | None) -> int:
        if t_unix_us is None:
            return self._now()
        return int(t_unix_us) * 1000 - self._t0_unix_ns

    def record_size(self, alloc_id: int, nbytes: int) -> None:
        """Correct the byte size of allocation `alloc_id` for its whole life (allocator block size)."""
        with self._lock:
            old = self._alloc_bytes.get(alloc_id)
            if old is None or old == nbytes:
                return
            self._alloc_bytes[alloc_id] = nbytes
            self.live_bytes += nbytes - old
            self._write({"k": "z", "id": alloc_id, "b": nbytes})

    def record_retag(self, alloc_id: int, category: str, name: str | None) -> None:
        """Set the category (and name) of allocation `alloc_id` for its whole life."""
        record = {"k": "r", "id": alloc_id, "c": category}
        if name:
            record["n"] = name
        self._write(record)

    def tag_tensor(self, tensor: torch.Tensor, category: str, name: str | None = None) -> None:
        """Declare what a tensor's storage is (for its whole life)."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown memory category {category!r}; categories: {', '.join(CATEGORIES)}")
        if tensor.device.type == "meta":
            return
        with self._lock:
            if self._dispatch is not None:
                alloc_id = self._dispatch.allocation_of(tensor)
                if alloc_id is None:
                    self._dispatch.track(tensor, category, name)
                else:
                    self.record_retag(alloc_id, category, name)
            elif self._cuda is not None:
                self._new_context()  # orders the retag exactly among allocator events
                self._cuda.retag(self._ctx, tensor.untyped_storage().data_ptr(), category, name)

    def register(self, tensor: torch.Tensor, category: str, name: str | None = None) -> None:
        """Account for a tensor allocated before tracing (weights, inputs)."""
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        with self._lock:
            if self._dispatch is not None:
                alloc_id = self._dispatch.allocation_of(tensor)
                if alloc_id is not None:
                    self.record_retag(alloc_id, category, name)
                else:
                    self._dispatch.track(tensor, category, name)
            elif self._cuda is not None:
                alloc_id = self.record_alloc(allocator_block_size(storage.nbytes()), category, name)
                self._cuda.adopt(storage.data_ptr(), alloc_id)

    def checkpoint(self, force: bool = False) -> None:
        """Make everything so far visible to followers (drains the CUDA allocator history when
        `drain_at_checkpoints` or `force`; a drain also learns the true block sizes of live blocks)."""
        if self._cuda is not None and (self.drain_at_checkpoints or force):
            t = time.perf_counter()
            if self._log is not None:
                # Nobody follows the allocator events of an unfollowed run live: Parquet keeps them.
                self._log.memory_only = not self.drain_at_checkpoints
            try:
                self._cuda.drain()
            finally:
                if self._log is not None:
                    self._log.memory_only = False
            self.tracer_seconds += time.perf_counter() - t
        if self._log is not None:
            self._log.flush()

    def record_kv_bytes(self, chunk: int, logical: int, stored: int, resident: int) -> None:
        """KV byte accounting of the cache after a chunk."""
        with self._lock:
            self._write({"k": "kv", "t": self._now(), "q": self._q(), "chunk": chunk, "logical": logical,
                         "stored": stored, "resident": resident})
