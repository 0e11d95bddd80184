"""TraceSession: one traced run. Owns the stage stack, category tags, allocation tracker,
stage timer, device sampler and the trace folder. Code under trace talks to it only through
`tracers.stage / tag / tag_tensor / register` (tracers.context)."""
from __future__ import annotations

import importlib
import os
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tracers import context
from tracers import alloc_rows
from tracers.alloc_cuda import CudaHistoryTracker, HistoryBatch
from tracers.alloc_native import NativeCudaTracker, cuda_tracker
from tracers.alloc_parts import AllocationParts, merge_parts, remove_parts
from tracers.trace_fold import LIVE_BEFORE_TRACING, Q_STRIDE
from tracers.alloc_dispatch import DispatchAllocTracker
from tracers.categories import CATEGORIES
from tracers.host_sync import HostActivity
from tracers.outcome import status_of
from tracers.sampler import DeviceSampler, nvml_uuid
from contextlib import AbstractContextManager

from tracers.scopes import NO_SCOPE, StageScope, TagScope
from tracers.timing import CloseSteps, StageTimer
from tracers.trace_io import (EVENTS_FILE, META_FILE, SCHEMA_VERSION, STATUSES, EventLog, TraceWriteError,
                               tables_from_records, write_closed_trace, write_json_atomic)


_CATEGORY_SET = frozenset(CATEGORIES)


class SimulatedOOM(torch.OutOfMemoryError):
    """kvprof's own out-of-memory: tracked live bytes would exceed the `--budget` (CPU)."""

    def __init__(self, requested: int, live: int, budget: int):
        self.requested, self.live, self.budget = requested, live, budget
        super().__init__(f"kvprof budget exceeded: tried to allocate {requested} bytes with {live} bytes live "
                         f"(budget {budget} bytes)")


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
        timer_depth: int | None = 5,
        drain_at_checkpoints: bool = True,
        fine_stages: bool = False,
    ):
        self.folder = Path(folder)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.meta: dict[str, Any] = dict(meta or {})
        self.budget_bytes = budget_bytes
        self.sample_interval_s = sample_interval_s
        # Allocator counters cost ~28 us each on an H100 (nested form): read them down to layer boundaries only.
        self.counter_depth = counter_depth
        # Device-time events down to this depth (rollout/chunk/pass/layer/op/sub-op); deeper stages (a
        # quantizer's residual steps: 260k of them in a 42-frame PRQ rollout) keep their host time only.
        self.timer_depth = timer_depth
        self.drain_at_checkpoints = drain_at_checkpoints
        # Fine stages (a step repeated inside one step: PRQ's residual per slice of groups, 260k of them at
        # 42 frames) cost the host 10-20 us each (~3 % of a PRQ rollout, and most of its spans): recorded on request.
        self.fine_stages = fine_stages
        self.fine_stages_skipped = 0
        self.tags_opened = 0  # TagScope entries (meta `scopes`: what the traced code's instrumentation cost to run)
        self.scope_ns = [0, 0, 0]  # ns the traced thread spent in the stage and tag scopes (and the stages' marks)
        self.tracer_seconds = 0.0  # time spent draining the allocator history (tracer overhead)
        if tracker not in ("auto", "native", "allocator", "dispatch"):
            raise ValueError(f"unknown tracker {tracker!r}; one of auto, native, allocator, dispatch")
        use_history = tracker in ("native", "allocator") or (tracker == "auto" and self.device.type == "cuda")
        self.tracker_kind = "cuda-allocator-history" if use_history else "dispatch"
        # native: the C++ recorder (bounded memory, streamed parts); allocator: Python replay of _snapshot() histories
        self._recorder = "allocator" if tracker == "allocator" or os.environ.get("KVPROF_RECORDER") == "python" else "native"
        self._require_native = tracker == "native"
        self._lock = threading.RLock()
        self._next_alloc = 1
        self._next_span = 1
        self._ctx = 0
        self._ctx_order = 0
        # span and default category of each context number (index), appended as contexts open
        self._ctx_span: list[int] = [0]
        self._ctx_cat: list[str] = ["unattributed"]
        self._parts: AllocationParts | None = None  # streamed allocation rows (native recorder)
        # the two lists as arrays (categories as indices in CATEGORIES), grown per drain (tracers.alloc_rows)
        self._ctx_arrays = (np.zeros(0, np.int64), np.zeros(0, np.int32), 0)  # (spans, codes, contexts filled)
        self._span_stack: list[tuple[int, str]] = []  # (span id, path element)
        self._tag_stack: list[str] = []
        self.live_bytes = 0  # running total for budgets and progress; analyses recount from records
        self.peak_bytes = 0
        self.expandable_segments = False  # set before start() when the caller turned them on at runtime
        self.held_before_bytes = 0  # bytes of blocks live when tracking started, held by the trace (CUDA)
        self._alloc_bytes: dict[int, int] = {}
        self._log: EventLog | None = None
        self._dispatch: DispatchAllocTracker | None = None
        self._cuda: CudaHistoryTracker | NativeCudaTracker | None = None
        self._native = False  # counters through the native library (decided once: read at every shallow boundary)
        self._timer = StageTimer(self.device)
        self._sampler: DeviceSampler | None = None
        self.max_other_gpu_processes = 0  # most other compute processes NVML saw on this GPU at once
        self.notes: list[str] = []
        self.status = "running"
        self._t0_perf = 0
        self._t0_unix_ns = 0
        self.failure_stage: str | None = None
        self._armed = False
        self.host_activity = HostActivity(self._current_span_id)  # host syncs, op and tracer time per span
        self._close_hooks: list[Callable[["TraceSession"], None]] = []
        self.stage_end_hooks: list[Callable[[], None]] = []  # api.watch: re-tag swapped tensors before a stage ends

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
            host=socket.gethostname(),  # with pid: readers tell a killed writer from a running one
        )
        write_json_atomic(self.folder / META_FILE, self.meta)
        self._log = EventLog(self.folder / EVENTS_FILE)
        context._set_active(self)
        if self.tracker_kind == "cuda-allocator-history":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.meta["allocated_before_bytes"] = torch.cuda.memory_allocated(self.device)
            self._cuda = self._cuda_tracker()
            self._native = isinstance(self._cuda, NativeCudaTracker)
            self._cuda.start()
            self._hold_blocks_from_before()
            if isinstance(self._cuda, NativeCudaTracker):  # streamed parts, followed live or not: bounded memory
                self._parts = AllocationParts(self.folder)
                self._cuda.stream(self._next_alloc)
                self._timer.use_native(self._cuda.quick_lib)
                self._log.deferred = True  # the drain thread (and checkpoints) write the lines
        else:
            importlib.import_module("torch._dynamo")  # torch loads it at a mode's first op: 1-2 s, not the first stage's
            self._dispatch = DispatchAllocTracker(self)
            self._dispatch.__enter__()
        if self.device.type == "cuda":
            self._sampler = DeviceSampler(self.device.index or 0, self._emit_sample, self.sample_interval_s,
                                          uuid=nvml_uuid(self.device.index or 0), native=self._cuda.lib if self._native else None)
            self._sampler.start(self._t0_perf)
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
        self.close(status_of(exc), exc)

    def close(self, status: str = "complete", error: BaseException | str | None = None) -> None:
        """Stop tracking, resolve device times, write Parquet tables and final meta."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"bad final status {status!r}")
        if self.status != "running":
            return
        # the host memory the recording itself needed (what follows: writing tables, summaries)
        self.meta["host_max_rss_recording_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        steps = CloseSteps()
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
                if self._log is not None:
                    self._log.span_end(span_id, t_end, self._q(), float("nan"), self.host_activity.end_span(span_id, parent))
        self.host_activity.uninstall()
        if self._sampler is not None:
            self._sampler.stop()
            if self._sampler.reason:  # off (no NVML), on a Python thread, or stopped by a failing read
                self.notes.append(self._sampler.reason)
            if self._sampler.host_pids:
                self.notes.append("NVML lists host PIDs (a container's PID namespace): this process's own GPU memory "
                                  "is not identified in the samples (process_used_bytes = -1)")
            if self.max_other_gpu_processes:
                # Bytes stay this process's own; times do not: another process's kernels share the GPU.
                self.notes.append(f"GPU shared: up to {self.max_other_gpu_processes} other process(es) ran on it "
                                  "during the trace; memory figures are this process's, times include their load")
        if self._dispatch is not None:
            self._dispatch.__exit__(None, None, None)
        steps.lap("hooks")
        if self._cuda is not None:
            assert self._log is not None
            self._log.memory_only = not self.drain_at_checkpoints
            try:
                self._cuda.stop()
            except OSError as exc:  # a streamed part could not be written (a full disk)
                self._log._failed(exc)
            self._log.memory_only = False
            self.meta["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            self.meta["memory_allocated_end_bytes"] = torch.cuda.memory_allocated(self.device)
            self.meta["allocator_layout"] = self._cuda.meta()
            if self._parts is not None:  # the streamed parts' bytes on disk, removed once merged
                self.meta["allocator_layout"]["parts_bytes"] = self._parts.bytes
            self.meta["held_before_bytes"] = self.held_before_bytes
            if self._cuda.oom_events:
                self.meta["allocator_oom_events"] = self._cuda.oom_events
        steps.lap("recorder")
        for span_id, ms in self._timer.resolve().items():
            self._write({"k": "x", "id": span_id, "dms": ms})
        steps.lap("device_times")
        context._set_active(None)
        assert self._log is not None
        self._log.close()
        self.status = status
        self.meta["status"] = status
        self.meta["error"] = None if error is None else f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.meta["ended_unix_ns"] = time.time_ns()
        self.meta["wall_s"] = (time.perf_counter_ns() - self._t0_perf) / 1e9
        self.meta["fine_stages"] = {"recorded": self.fine_stages, "skipped": self.fine_stages_skipped}
        self.meta["scopes"] = {"stages": self._next_span - 1, "tags": self.tags_opened, "contexts": self._ctx,
                               "stages_s": round(self.scope_ns[0] / 1e9, 6), "tags_s": round(self.scope_ns[1] / 1e9, 6),
                               "marks_s": round(self.scope_ns[2] / 1e9, 6)}
        if self.fine_stages_skipped:
            self.notes.append(f"{self.fine_stages_skipped:,} fine stages (steps repeated inside a step, e.g. per slice) "
                              "not recorded: their allocations belong to the enclosing stage (--fine-stages records them)")
        self.meta["notes"] = self.notes
        self.meta["other_gpu_processes_max"] = self.max_other_gpu_processes
        self.meta["tracer_drain_s"] = self.tracer_seconds
        self.meta["host_activity"] = {**self.host_activity.describe(), "op_time": self._dispatch is not None}
        tables, pending = tables_from_records(self._log.records, self._log.alloc_columns, with_pending=True,
                                              folder=self._log.folder)
        alloc_rows.note_blocks_from_before(self, tables["allocations"])
        steps.lap("tables")
        if self._parts is not None and self._parts.count:  # streamed rows: merged one part at a time
            tables["allocations"] = merge_parts(self.folder, tables["allocations"], pending)
        steps.lap("merge_parts")
        self.meta["tracer_close_s"] = steps.seconds  # the write below is the one step it cannot hold
        write_closed_trace(self.folder, self._log, tables, self.meta)  # a full disk: status failed, said in meta
        if self.meta["status"] != "failed":
            remove_parts(self.folder)
        self.status = self.meta["status"]

    # ----------------------------------------------------------------- clocks and order
    def _now(self) -> int:
        return time.perf_counter_ns() - self._t0_perf

    def now_ns(self) -> int:
        """The trace clock: ns since the session started (`t` of every record)."""
        return self._now()

    @property
    def t0_perf_ns(self) -> int:
        """`time.perf_counter_ns()` when the trace started (the trace clock's zero)."""
        return self._t0_perf

    @property
    def t0_unix_ns(self) -> int:
        """`time.time_ns()` when the trace started."""
        return self._t0_unix_ns

    def _cuda_tracker(self) -> CudaHistoryTracker | NativeCudaTracker:
        return cuda_tracker(self, self._recorder, self._require_native)

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
        self._ctx_span.append(span_id)
        self._ctx_cat.append(category)
        if self._cuda is not None:
            self._cuda.set_context(self._ctx)

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(record)

    def _emit_sample(self, sample: dict) -> None:
        self.max_other_gpu_processes = max(self.max_other_gpu_processes, sample.get("others", 0))
        self._write({"k": "d", **sample})

    # ----------------------------------------------------------------- stages and tags
    def stage_path(self) -> str:
        """Path of the innermost open stage, e.g. 'rollout/chunk[2]/refresh/layer[1]/kv_write'."""
        return "/".join(elem for _, elem in self._span_stack)

    def stage(self, name: str, index: int | None = None, fine: bool = False) -> StageScope | AbstractContextManager[None]:
        """A scope that opens a span on enter; nested spans build the stage path. A `fine` stage (a step
        repeated inside one step) is a no-op unless the session records fine stages: its allocations
        belong to the enclosing stage, and `meta.json` counts the stages left out."""
        if fine and not self.fine_stages:
            self.fine_stages_skipped += 1
            return NO_SCOPE
        return StageScope(self, name, index)

    def _counter(self, span_id: int) -> None:
        if self._cuda is None:
            return
        if self.counter_depth is not None and len(self._span_stack) > self.counter_depth:
            return
        if self._native:
            alloc, reserved = self._cuda.counters()
        else:  # the nested form: memory_stats() flattens and sorts every key, several times the cost
            stats = torch.cuda.memory_stats_as_nested_dict(self.device)
            alloc, reserved = stats["allocated_bytes"]["all"]["current"], stats["reserved_bytes"]["all"]["current"]
        if self._log is not None:
            self._log.counter(self._now(), self._q(), span_id, alloc, reserved)

    def tag(self, category: str) -> TagScope:
        """A scope in which allocations get `category`."""
        if category not in _CATEGORY_SET:
            raise ValueError(f"unknown memory category {category!r}; categories: {', '.join(CATEGORIES)}")
        return TagScope(self, category)

    # ----------------------------------------------------------------- allocations
    def record_alloc(self, nbytes: int, category: str | None, name: str | None, root: bool = False) -> int:
        """Record one allocation made now (dispatch tracker, registrations); `root`: outside any stage."""
        with self._lock:
            if self._armed and self.budget_bytes is not None and self.live_bytes + nbytes > self.budget_bytes:
                raise SimulatedOOM(nbytes, self.live_bytes, self.budget_bytes)
            alloc_id = self._next_alloc
            self._next_alloc += 1
            span_id, default_cat = (0, "unattributed") if root else (self._ctx_span[self._ctx], self._ctx_cat[self._ctx])
            self._alloc_bytes[alloc_id] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            record = {"k": "a", "id": alloc_id, "t": self._now(), "q": self._q(), "b": nbytes, "c": category or default_cat,
                      "s": span_id}
            if name:
                record["n"] = name
            self._write(record)
            return alloc_id

    def record_free(self, alloc_id: int) -> None:
        """Record the free, now, of allocation `alloc_id` (bytes are known from its allocation)."""
        with self._lock:
            self._write({"k": "f", "id": alloc_id, "t": self._now(), "q": self._q()})
            self.live_bytes -= self._alloc_bytes.pop(alloc_id, 0)

    def reserve_alloc_ids(self, n: int) -> int:
        """Reserve `n` consecutive allocation ids (for a batch of allocator events); the first one."""
        with self._lock:
            first = self._next_alloc
            self._next_alloc += n
            return first

    def record_history_batch(self, batch: HistoryBatch) -> None:
        """Record one drain of the CUDA allocator's history (allocations in allocator order)."""
        alloc_rows.record_history_batch(self, batch)

    def record_stream_batch(self, batch: Any, retags: list[tuple[str, str | None]],
                            rows_done: Callable[[], None] | None = None) -> None:
        """Record one drain of the native recorder: rows to the streamed parts (tracers.alloc_parts);
        `rows_done` is called between the rows and the part."""
        alloc_rows.record_stream_batch(self, batch, retags, rows_done)

    def record_size(self, alloc_id: int, nbytes: int) -> bool:
        """Correct the byte size of allocation `alloc_id` for its whole life (allocator block size);
        whether it changed."""
        with self._lock:
            old = self._alloc_bytes.get(alloc_id)
            if old is None or old == nbytes:
                return False
            self._alloc_bytes[alloc_id] = nbytes
            self.live_bytes += nbytes - old
            self._write({"k": "z", "id": alloc_id, "b": nbytes})
            return True

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
        if tensor.device.type != self.device.type:  # meta tensors, or host copies in a GPU trace: not tracked memory
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

    def _hold_blocks_from_before(self) -> None:
        """Record every block the allocator holds when tracking starts, from the start.

        The allocator counts them in every figure it reports, so the trace must too: otherwise blocks
        an earlier trace in this process left behind (cuBLAS workspaces, caches) would make the
        trace's peak fall short of `max_memory_allocated()`. They are `unattributed` until
        `register()` says what one is (weights, inputs)."""
        assert self._cuda is not None
        for address, size in self._cuda.blocks_at_start():
            alloc_id = self.record_alloc(size, "unattributed", LIVE_BEFORE_TRACING)
            self._cuda.adopt(address, alloc_id)
            self.held_before_bytes += size

    def register(self, tensor: torch.Tensor, category: str, name: str | None = None) -> None:
        """Account for a tensor allocated before tracing (weights, inputs). The same as `tag_tensor`:
        the dispatch tracker adopts an untracked tensor, and on CUDA every block from before tracking
        is held from the start (`_hold_blocks_from_before`), so only its tag is new."""
        self.tag_tensor(tensor, category, name)

    def checkpoint(self, force: bool = False) -> None:
        """Make everything so far visible to followers (drains the CUDA allocator history when
        `drain_at_checkpoints` or `force`; a drain also learns the true block sizes of live blocks)."""
        if isinstance(self._cuda, NativeCudaTracker):
            self._raise_drain_error()
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
            if force or self.drain_at_checkpoints or not self._log.deferred:
                self._log.flush()  # else the drain thread's next flush writes it (nobody follows at chunk ends)
            if self._log.error is not None:  # a full disk: stop the run, the trace closes as failed
                raise TraceWriteError(self.folder, self._log.unwritten_bytes, self._log.error)

    def flush_log(self) -> None:
        """Write the records queued so far, the device samples first (the drain thread's duty on a streamed trace)."""
        if self._sampler is not None:
            self._sampler.collect()
        if self._log is not None:
            self._log.flush()

    def _raise_drain_error(self) -> None:
        try:
            self._cuda.raise_error()  # type: ignore[union-attr]
        except OSError as exc:  # a part could not be written (a full disk): the trace closes as failed
            assert self._log is not None
            self._log._failed(exc)

    def record_kv_bytes(self, chunk: int, logical: int, stored: int, resident: int) -> None:
        """KV byte accounting of the cache after a chunk."""
        with self._lock:
            self._write({"k": "kv", "t": self._now(), "q": self._q(), "chunk": chunk, "logical": logical,
                         "stored": stored, "resident": resident})
