"""Issue 16 section 4: the reliability probe (full disks, killed writers, bad input, damaged traces)."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest

from kvprof.cli import EXIT_RUN_FAILED, main
from kvprof.trace import load_trace
from tracers import trace_io
from tracers.trace_io import EVENTS_FILE, META_FILE

TINY = ["trace", "--method", "bf16", "--frames", "3", "--no-decode", "--quiet"]


def _no_tmp(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], list(folder.iterdir())


# ---------------------------------------------------------------------- 1: a full disk
class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk would."""

    def __init__(self, real, room: int):
        self._real, self._room = real, room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(text)
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def close(self) -> None:
        self._real.close()


def test_disk_full_during_the_run_fails_the_trace_once_and_keeps_what_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_init = trace_io.EventLog.__init__

    def init(self, path, flush_interval_s=0.25):
        real_init(self, path, flush_interval_s)
        self._file = _FullDisk(self._file, 20_000)

    monkeypatch.setattr(trace_io.EventLog, "__init__", init)
    code = main([*TINY, "--out", str(tmp_path), "--run-id", "full"])
    err = capsys.readouterr().err
    folder = tmp_path / "full"
    assert code == EXIT_RUN_FAILED
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write the trace folder {folder}" in lines[0] and "B more were needed" in lines[0]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["status"] == "failed" and "No space left" in meta["error"]
    _no_tmp(folder)
    trace = load_trace(folder)  # the event log up to the failure reads
    assert trace.status == "failed" and len(trace.allocations) > 0


def test_disk_full_while_writing_the_tables_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = pd.DataFrame.to_parquet
    calls = []

    def to_parquet(self, path, *a, **kw):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    code = main([*TINY, "--out", str(tmp_path), "--run-id", "full"])
    err = capsys.readouterr().err
    folder = tmp_path / "full"
    assert code == EXIT_RUN_FAILED and "cannot write the trace folder" in err and "Traceback" not in err
    _no_tmp(folder)
    assert not list(folder.glob("*.parquet"))  # the event log stays the one source
    trace = load_trace(folder)
    assert trace.status == "failed" and trace.raw.live and len(trace.allocations) > 0
