"""Shared by the TUI tests: driving the app with a pilot, a private trace copy, a small real trace."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import tracers
from tracers import TraceSession
from tui.app import KvprofApp
from tui.widgets.status import StatusLine
from tui.widgets.table import FrameTable

SIZE = (140, 45)
asyncio_test = pytest.mark.asyncio


async def wait_for(pilot, cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    """Let the app run until `cond()` holds (then one more redraw period)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
    await pilot.pause(0.15)


async def opened(pilot, app: KvprofApp) -> None:
    await wait_for(pilot, lambda: app.current_view() is not None and app.screen.is_mounted, what="the trace view")


def table(app: KvprofApp, table_id: str) -> FrameTable:
    return app.screen.query_one(f"#{table_id}", FrameTable)


def status(app: KvprofApp) -> str:
    return app.screen.query_one(StatusLine).text


@pytest.fixture
def trace_copy(bf16_trace: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bf16 trace (exports and summary edits go there)."""
    dst = tmp_path / "traces" / bf16_trace.name
    shutil.copytree(bf16_trace, dst)
    return dst


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # exports that fall back to cwd land in the test's folder


def write_small_trace(folder: Path, chunks: int = 3, gate: Callable[[int], None] | None = None) -> None:
    """A real trace from TraceSession: setup weights, a growing kv_fp cache, freed activations."""
    with TraceSession(folder, {"run_id": folder.name, "method": "bf16", "integration": "study"}) as s:
        with tracers.stage("setup"), tracers.tag("weights"):
            weights = torch.zeros(4096)
        keep = [weights]
        with tracers.stage("rollout"):
            for c in range(chunks):
                with tracers.stage("chunk", c):
                    for step in range(2):
                        with tracers.stage("denoise", step):
                            with tracers.tag("activations"):
                                tmp = torch.ones(8192 * (c + 1))
                                del tmp
                    with tracers.stage("refresh"), tracers.tag("kv_fp"):
                        keep.append(torch.zeros(2048))
                s.record_kv_bytes(c, 8192 * (c + 1), 8192 * (c + 1), 8192 * (c + 1))
                s.checkpoint()
                if gate is not None:
                    gate(c)
