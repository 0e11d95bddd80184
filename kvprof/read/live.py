"""Following a trace while it is written: read only what was appended since the last poll.

`TraceFollower(folder).poll()` parses the whole lines that `events.jsonl` gained since the byte
offset it reached last time, folds them into columnar tables (the same tables, columns and
dtypes as a closed trace: both go through `tracers.trace_fold.TableFolder`), and re-reads `meta.json` only when it
changed. Once the trace closes (events log gone, Parquet tables written) the follower loads the
final tables once and afterwards only watches for `summary.json`. A partial last line is left
for the next poll; a folder that does not exist yet, or has no meta.json yet, is "waiting".
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from kvprof.read.trace import Trace, load_trace
from tracers.trace_fold import TableFolder, TraceFoldError
from tracers.trace_io import (EVENTS_FILE, META_FILE, SUMMARY_FILE, TABLES, RawTrace, TraceError, check_tables, part_files,
                              read_meta, read_part)
from tracers.liveness import shown_status
from tracers.summary_schema import read_summary_file

__all__ = ["TraceFollower", "FollowState"]

def _parse_lines(chunk: bytes, path: Path, first_line: int) -> list[dict[str, Any]]:
    """Whole JSON lines -> records; one json.loads for the lot, line by line only to name a bad one."""
    body = chunk.strip().replace(b"\n", b",")
    if not body:
        return []
    try:
        records = json.loads(b"[" + body + b"]")
    except ValueError:
        records = []
        for n, line in enumerate(chunk.split(b"\n")):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise TraceError(f"{path}: line {first_line + n} is not a JSON record (corrupted trace)") from None
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or "k" not in rec:
            raise TraceError(f"{path}: record {first_line + n} is not an event record (no field 'k')")
    return records


@dataclass(frozen=True)
class FollowState:
    """What a poll saw: `waiting` (no meta.json yet), `live` (events log), `closed` (Parquet)."""

    phase: str
    status: str | None
    records: int  # event records parsed from the log (0 once the trace was loaded from Parquet)
    torn_tail: bool
    last_event_unix: float | None  # wall-clock time of the newest event seen (file time of the log)


class TraceFollower:
    """Incremental reader of one trace folder, live or closed (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.offset = 0
        self.torn_tail = False
        self.phase = "waiting"
        self._folder = TableFolder()
        self._lines = 0
        self._parts = 0  # streamed allocation parts folded (a CUDA trace's rows: tracers.alloc_parts)
        self._meta_mtime: int | None = None
        self._summary_mtime: int | None = None
        self._closed: Trace | None = None
        self._snapshot: Trace | None = None
        self.last_event_unix: float | None = None

    # ------------------------------------------------------------------ polling
    def poll(self) -> bool:
        """Read what changed since the last poll; True when the trace's content changed.

        Raises TraceError for a folder that is damaged (bad meta, corrupt log, empty closed trace).
        """
        if self.phase == "closed":
            return self._poll_summary()
        meta_path = self.folder / META_FILE
        try:
            mtime = meta_path.stat().st_mtime_ns
        except FileNotFoundError:
            return False  # not started yet
        changed = False
        if mtime != self._meta_mtime:
            self.meta = read_meta(self.folder)
            self._meta_mtime = mtime
            changed = True
        events = self.folder / EVENTS_FILE
        if events.is_file():
            self.phase = "live"
            changed |= self._read_new(events)
            changed |= self._read_new_parts()
            changed |= self._poll_summary()
            return changed
        closed = self.meta is not None and self.meta.get("status") != "running"
        if closed or all((self.folder / f"{t}.parquet").is_file() for t in TABLES):
            self._closed = load_trace(self.folder)  # TraceError for an empty or damaged folder
            self.meta = self._closed.meta
            self.summary = self._closed.raw.summary
            self._summary_mtime = self._stat(self.folder / SUMMARY_FILE)
            self.phase = "closed"
            self.torn_tail = False
            self._snapshot = None
            ended = self.meta.get("ended_unix_ns")
            if isinstance(ended, int):
                self.last_event_unix = ended / 1e9
            return True
        return changed  # running, log not created yet

    def _read_new(self, events: Path) -> bool:
        try:
            with open(events, "rb") as f:
                size = f.seek(0, 2)
                if size < self.offset:  # the log was replaced: start over
                    self._restart()
                f.seek(self.offset)
                data = f.read()
                file_time = events.stat().st_mtime
        except FileNotFoundError:
            return False  # closed between the check and the read; the next poll loads Parquet
        cut = data.rfind(b"\n")
        whole, rest = (data[: cut + 1], data[cut + 1 :]) if cut >= 0 else (b"", data)
        self.torn_tail = bool(rest.strip())
        if not whole:
            return False
        records = _parse_lines(whole, events, self._lines + 1)
        self._lines += whole.count(b"\n")
        self.offset += len(whole)
        try:
            self._folder.fold(records)
        except TraceFoldError as exc:
            raise TraceError(f"{events}: {exc}") from None
        if records:
            self.last_event_unix = file_time
            self._snapshot = None
        return bool(records)

    def _read_new_parts(self) -> bool:
        """Fold the allocation parts written since the last poll (whole files: written by rename)."""
        new = part_files(self.folder)[self._parts:]
        for path in new:
            try:
                columns = read_part(path)
            except FileNotFoundError:
                return False  # merged and removed at close: the next poll loads Parquet
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise TraceError(f"{path}: cannot read a streamed allocation part ({exc})") from None
            try:
                self._folder.add_bulk(columns)
            except (TraceFoldError, TypeError, ValueError) as exc:
                raise TraceError(f"{path}: {exc}") from None
            self._parts += 1
            self._snapshot = None
        return bool(new)

    def _restart(self) -> None:
        self.offset, self._lines, self._parts = 0, 0, 0
        self._folder = TableFolder()
        self._snapshot = None

    @staticmethod
    def _stat(path: Path) -> int | None:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _poll_summary(self) -> bool:
        path = self.folder / SUMMARY_FILE
        mtime = self._stat(path)
        if mtime is None or mtime == self._summary_mtime:
            return False
        try:
            self.summary = read_summary_file(path)
        except TraceError:
            return False  # written by another process right now; read it next time
        self._summary_mtime = mtime
        if self._closed is not None:
            self._closed.raw.summary = self.summary
        self._snapshot = None
        return True

    # ------------------------------------------------------------------ results
    @property
    def state(self) -> FollowState:
        status = None if self.meta is None else shown_status(self.meta)  # `killed`: the writer is gone
        records = self._folder.records if self._closed is None else 0
        return FollowState(self.phase, status, records, self.torn_tail, self.last_event_unix)

    @property
    def finished(self) -> bool:
        """Closed and its summary read (nothing more will change)."""
        return self.phase == "closed" and self.summary is not None

    def trace(self) -> Trace | None:
        """The trace as read so far (None while waiting); the same object until something changes."""
        if self._closed is not None:
            return self._closed
        if self.meta is None or self.phase != "live":
            return None
        if self._snapshot is None:
            try:
                tables = check_tables(self._folder.tables(), self.folder / EVENTS_FILE)
            except TraceFoldError as exc:
                raise TraceError(f"{self.folder / EVENTS_FILE}: {exc}") from None
            raw = RawTrace(self.folder, dict(self.meta), tables, self.summary, live=True, torn_tail=self.torn_tail)
            self._snapshot = Trace(raw)
        return self._snapshot

    def last_event_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the newest event seen (None before any)."""
        if self.last_event_unix is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_event_unix)
