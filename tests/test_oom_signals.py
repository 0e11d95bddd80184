"""Issue 6: out of memory as a result (--budget), Ctrl-C / SIGTERM / SIGKILL of a running trace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch

from kvprof.oomfacts import oom_facts
from kvprof.signals import InterruptGuard
from kvprof.cli import EXIT_OOM, main
from kvprof.diagnose import diagnose
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace
from tracers.trace_io import EVENTS_FILE, read_event_lines

REPO = Path(__file__).resolve().parents[1]


def _peak(trace: Path) -> int:
    return int(json.loads((trace / "summary.json").read_text())["peak"]["bytes"])


# ---------------------------------------------------------------------- --budget on CPU
SMALL = dict(method="bf16", frames=6, decode=False)  # the tiny rollout, two chunks, no decode (fast)


def test_budget_below_the_bf16_peak_ends_in_oom_with_what_was_live(trace_factory, tmp_path: Path) -> None:
    budget = int(_peak(trace_factory(**SMALL)) * 0.9)
    outcome = run_trace(TraceRequest(out=tmp_path, run_id="oom", budget_bytes=budget, **SMALL))
    assert outcome.status == "oom" and isinstance(outcome.error, torch.OutOfMemoryError)
    trace = load_trace(outcome.path)
    oom = trace.meta["oom"]
    assert trace.status == "oom" and oom["stage"].startswith("rollout/chunk[")
    assert oom["budget_bytes"] == budget and oom["requested_bytes"] > 0
    # the live bytes at the failure are counted from the allocation table and agree with the tracker
    assert oom["live_bytes"] == oom["tracker_live_bytes"] == sum(oom["live_by_category"].values())
    assert sum(oom["live_by_stage"].values()) == oom["live_bytes"]
    assert oom["live_bytes"] + oom["requested_bytes"] > budget >= oom["live_bytes"]
    assert oom["live_by_category"]["weights"] > 0 and oom["live_by_category"]["kv_fp"] > 0
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["status"] == "oom" and summary["oom"]["live_by_category"] == oom["live_by_category"]
    assert summary["failure"]["stage"] == oom["stage"]
    diag = diagnose(outcome.path)
    text = diag.to_text()
    assert diag.causes[0].kind == "oom"
    assert "out of memory" in text and "memory budget" in text and oom["stage"] in text


def test_budget_above_the_peak_completes(trace_factory, tmp_path: Path) -> None:
    peak = _peak(trace_factory(**SMALL))
    budget = peak + (64 << 10)
    outcome = run_trace(TraceRequest(out=tmp_path, run_id="fits", budget_bytes=budget, **SMALL))
    assert outcome.status == "complete" and outcome.error is None
    assert abs(outcome.summary.peak.bytes - peak) < 0.01 * peak
    assert load_trace(outcome.path).meta["budget_bytes"] == budget


def test_cli_oom_exits_3_with_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--method", "bf16", "--frames", "3", "--no-decode", "--budget", "700KiB", "--quiet",
                 "--out", str(tmp_path), "--run-id", "small"])
    err = capsys.readouterr().err
    assert code == EXIT_OOM
    paragraph = [line for line in err.splitlines() if line.startswith("kvprof: out of memory in ")]
    assert len(paragraph) == 1, err
    text = paragraph[0]
    for part in ("asked for", "live", "over the budget of 700.00 KiB", "Live at that moment: weights",
                 f"kvprof diagnose {tmp_path / 'small'}"):
        assert part in text, (part, text)
    assert "Traceback" not in err


def test_cuda_oom_request_is_read_from_the_allocator_or_the_message() -> None:
    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.19 GiB")
    facts = oom_facts(exc, 24 << 30, {})
    assert facts["requested_bytes"] == int(2.5 * (1 << 30)) and facts["requested_bytes_rounded"]
    assert facts["budget_bytes"] == 24 << 30
    exact = oom_facts(exc, None, {"allocator_oom_events": [{"size": 2684354560, "device_free": 1 << 20, "ctx": 7}]})
    assert exact["requested_bytes"] == 2684354560 and exact["device_free_bytes"] == 1 << 20
    assert oom_facts(torch.OutOfMemoryError("out of memory"), None, {})["requested_bytes"] is None


# ---------------------------------------------------------------------- signals
def test_interrupt_dropped_in_a_finalizer_is_raised_again(capsys: pytest.CaptureFixture[str]) -> None:
    """A signal handled inside a weakref finalizer (the CPU tracker's frees) loses its exception;
    the guard raises it again in the main thread."""
    old_handler, old_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    guard = InterruptGuard()
    assert guard.install()
    try:
        class Box:
            pass

        def finalizer() -> None:
            signal.raise_signal(signal.SIGINT)
            sum(range(10))  # the handler runs here, inside the finalizer: its exception is dropped

        box = Box()
        weakref.finalize(box, finalizer)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            del box
            while time.monotonic() - started < 5:
                sum(range(100))
        assert guard.signal_name == "SIGINT"
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGINT) is old_handler and sys.unraisablehook is old_hook  # given back
    assert "Traceback" not in capsys.readouterr().err  # the dropped copy is not printed as an error


def _start(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    cmd = [sys.executable, "-m", "kvprof.cli", "trace", "--method", "bf16", "--frames", "30", "--no-decode",
           "--out", str(tmp_path), "--run-id", "r", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    events = tmp_path / "r" / EVENTS_FILE
    if not _wait_for(lambda: events.is_file() and b'"n":"chunk"' in events.read_bytes(), proc):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the rollout never reached a chunk: {err.decode()[-2000:]}")
    return proc, tmp_path / "r"


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 60) -> bool:
    """Poll `condition` until it holds (True), the process ends or the generous timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_closes_the_trace_as_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    proc, folder = _start(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # closing writes tables and the summary: slow on a loaded CI box
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert "interrupted in rollout/" in err.decode()
    trace = load_trace(folder)
    assert trace.status == "interrupted" and not trace.raw.live
    assert trace.meta["interrupted_by"] == sig.name and trace.meta["interrupted_stage"].startswith("rollout/chunk[")
    assert (trace.spans["name"] == "chunk").sum() >= 1
    assert len(trace.allocations) > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["failure"]["live_bytes"] > 0


def test_second_interrupt_exits_at_once(tmp_path: Path) -> None:
    """The second signal lands while the first is being handled: the test hook holds the close
    open (and says so in a file), so no race decides which message is printed."""
    marker = tmp_path / "closing"
    proc, folder = _start(tmp_path, {"KVPROF_TEST_HOLD_CLOSE": str(marker)})
    proc.send_signal(signal.SIGINT)
    assert _wait_for(marker.is_file, proc), "the first interrupt never reached the close"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # the hold lasts 60 s: only the second signal ends it sooner
    assert proc.returncode == 130, err.decode()
    assert "second interrupt: exiting now" in err.decode()
    assert "Traceback" not in err.decode()
    trace = load_trace(folder)  # whatever the close had reached, the folder reads
    assert trace.raw.live and trace.status == "killed"  # its writer is gone: not `running` forever


def test_sigkill_leaves_a_live_trace_that_loads_to_its_last_whole_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc, folder = _start(tmp_path)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=10)
    trace = load_trace(folder)
    assert trace.status == "killed" and trace.raw.live  # meta says running; its writer is gone
    assert trace.meta["status"] == "running" and trace.meta["pid"] == proc.pid
    assert main(["summary", str(folder)]) == 0
    assert "status killed" in " ".join(capsys.readouterr().out.split())
    assert main(["compare", "--json", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "killed"
    assert (trace.spans["name"] == "chunk").sum() >= 1 and len(trace.allocations) > 0
    # cut the log inside its last line, as a crash in the middle of a write would: the reader keeps
    # every whole record before it and says the tail was torn
    events = folder / EVENTS_FILE
    data = events.read_bytes().rstrip(b"\n")
    cut = data.rfind(b"\n") + 5
    events.write_bytes(data[:cut])
    records, torn = read_event_lines(events)
    assert torn and len(records) == data[:cut].count(b"\n")
    torn_trace = load_trace(folder)
    assert torn_trace.raw.torn_tail and torn_trace.status == "killed"


def test_cuda_oom_reads_the_allocators_own_account_of_reserved_memory() -> None:
    """A GPU budget caps reserved memory; the message's allocated and reserved-but-unused bytes say
    how much of the failure was fragmentation (numbers from an H100 run, RESULTS.md)."""
    msg = ("CUDA out of memory. Tried to allocate 586.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 58.73 GiB "
           "is free. Including non-PyTorch memory, this process has 20.44 GiB memory in use. 20.00 GiB allowed; Of the "
           "allocated memory 17.54 GiB is allocated by PyTorch, and 2.23 GiB is reserved by PyTorch but unallocated.")
    facts = oom_facts(torch.OutOfMemoryError(msg), 20 << 30, {})
    assert facts["allocated_bytes_at_failure"] == int(17.54 * (1 << 30))
    assert facts["reserved_unallocated_bytes"] == int(2.23 * (1 << 30))
    assert facts["requested_bytes"] == 586 << 20
