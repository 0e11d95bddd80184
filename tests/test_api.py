"""Issue 6: kvprof.api, the Python API for your own rollout, and its runnable example."""
from __future__ import annotations

import inspect
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

import kvprof.api as kv
from kvprof import allocator
import kvprof.runner
from kvprof.diagnose import diagnose
from kvprof.errors import UsageError
from kvprof.read.report import write_report
from kvprof.read.trace import load_trace
from tui.app import KvprofApp
from tui.source import TraceSource
from tui.widgets.breakdown import BreakdownPanel
from tui.widgets.status import StatusLine

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "instrument_loop.py"


@pytest.fixture(scope="module")
def example_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "loop"
    argv = sys.argv
    sys.argv = [str(EXAMPLE), str(folder)]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv
    return folder


def test_example_instruments_its_loop_in_under_ten_lines(example_trace: Path) -> None:
    code = [line for line in EXAMPLE.read_text().split('"""', 2)[2].splitlines() if line.strip()]
    api_lines = [line for line in code if re.search(r"\b(kv|t)\.", line) or "import kvprof" in line]
    assert 0 < len(api_lines) < 10, api_lines
    trace = load_trace(example_trace)
    summary = json.loads((example_trace / "summary.json").read_text())
    assert trace.status == "complete" and summary["status"] == "complete"
    peak = summary["peak"]
    assert peak["by_category"]["weights"] == 256 * 256 * 4  # registered before tracing
    assert peak["by_category"]["kv_fp"] == 5 * 16 * 256 * 4  # five cache entries before the last step's
    assert sum(peak["by_category"].values()) == peak["bytes"]
    names = set(trace.allocations["name"].dropna())
    assert {"w", "cache / step 0", "cache / step 5"} <= names
    assert list(trace.spans["name"]) == ["step"] * 6


@pytest.mark.asyncio
async def test_example_trace_opens_in_the_tui(example_trace: Path) -> None:
    source = TraceSource(example_trace)
    source.refresh()
    assert source.error is None and source.view is not None and source.view.peak is not None
    app = KvprofApp([example_trace])
    async with app.run_test(size=(140, 45)) as pilot:
        for _ in range(100):
            if app.current_view() is not None and app.screen.is_mounted:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        assert app.current_view() is not None
        assert "complete" in app.screen.query_one(StatusLine).text
        panel = app.screen.query_one(BreakdownPanel).text
        assert "weights" in panel and "kv_fp" in panel


def test_example_trace_reports_and_diagnoses(example_trace: Path, tmp_path: Path) -> None:
    md = write_report([example_trace], tmp_path / "loop.md").read_text()
    assert "384.00 KiB" in md and "cache / step 0" in md
    assert diagnose(example_trace).peak_bytes == json.loads((example_trace / "summary.json").read_text())["peak"]["bytes"]


def test_statuses_and_the_exception_goes_on(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with kv.trace(tmp_path / "failed", device="cpu") as t:
            with t.stage("outer"), t.stage("inner", 3), t.category("activations"):
                keep = torch.zeros(1000)
                raise RuntimeError("boom")
    assert t.status == "failed" and t.meta["failed_stage"] == "outer/inner[3]"
    assert t.summary.failure.live_bytes == keep.untyped_storage().nbytes()
    assert t.summary.failure.live_by_category == {"activations": 4000}

    with pytest.raises(KeyboardInterrupt):
        with kv.trace(tmp_path / "interrupted", device="cpu") as t:
            with t.stage("loop"):
                raise KeyboardInterrupt
    assert load_trace(tmp_path / "interrupted").status == "interrupted"
    assert t.meta["interrupted_stage"] == "loop"

    with pytest.raises(torch.OutOfMemoryError):
        with kv.trace(tmp_path / "oom", device="cpu", budget="10KiB") as t:
            with t.stage("grow"), t.category("kv_fp"):
                parts = [torch.zeros(1024) for _ in range(4)]  # 4 KiB each: the third passes 10 KiB
    oom = load_trace(tmp_path / "oom").meta["oom"]
    assert oom["stage"] == "grow" and oom["budget_bytes"] == 10 << 10 and oom["requested_bytes"] == 4096
    assert oom["live_bytes"] == 8192 and oom["live_by_category"] == {"kv_fp": 8192}
    assert oom["live_by_stage"] == {"grow": 8192}
    assert "parts" not in locals()


def test_tagging_whole_caches_and_module_level_marks(tmp_path: Path) -> None:
    model = torch.nn.Linear(8, 4)
    with kv.trace(tmp_path / "t", device="cpu") as t:
        kv.register(model, "weights", "head")  # the module-level functions act on the open trace
        with kv.stage("fill"), kv.category("activations"):
            cache = {"k": [torch.zeros(16), torch.zeros(16)], "v": torch.zeros(32)}
        t.tag_tensor(cache, "kv_fp", "cache")
        with pytest.raises(TypeError, match="cannot tag a str"):
            t.tag_tensor("not a tensor", "kv_fp")
    a = load_trace(tmp_path / "t").allocations.set_index("name")
    assert set(a.loc[["cache.k[0]", "cache.k[1]", "cache.v"], "category"]) == {"kv_fp"}
    assert set(a.loc[["head.weight", "head.bias"], "category"]) == {"weights"}
    kv.tag_tensor(torch.zeros(1), "kv_fp")  # no trace open: nothing happens


def test_weights_are_named_after_their_parameters(bf16_trace: Path) -> None:
    """Every allocation of the built-in rollout's weights has a name: the DiT's and the VAE's
    parameters and buffers by their module names, the seeded init's draws after the parameter."""
    from kvprof.workload.config import ModelConfig
    from kvprof.workload.model import build_model

    a = load_trace(bf16_trace).allocations
    weights = a[a["category"] == "weights"]
    assert len(weights) and weights["name"].notna().all(), weights[weights["name"].isna()].head()
    names = set(weights["name"])
    meta = build_model(ModelConfig.from_name("tiny"), device="meta")
    assert {f"dit.{k}" for k, _ in meta.named_parameters()} <= names
    assert any(n.startswith("vae.decoder.") for n in names)


def test_refuses_an_existing_trace_and_bad_budgets(tmp_path: Path, example_trace: Path) -> None:
    with pytest.raises(UsageError, match="a trace already exists there"):
        kv.trace(example_trace)
    with pytest.raises(UsageError, match="cannot read size"):
        kv.trace(tmp_path / "x", budget="lots")
    with pytest.raises(UsageError, match="must be a positive"):
        kv.trace(tmp_path / "x", budget=0)


def test_the_builtin_rollout_uses_the_same_api() -> None:
    source = inspect.getsource(kvprof.runner)
    assert "api.trace(" in source
    assert "TraceSession" not in source and "tracers.session" not in source


def test_a_cuda_budget_caps_the_allocator_of_the_resolved_device(tmp_path, monkeypatch):
    """`--budget` on a bare "cuda" device: the memory fraction needs the device index (a GPU run
    once failed with "Expected a torch.device with a specified index"); with nothing reserved yet
    and no allocator configuration, expandable segments keep fragmentation out of the cap."""
    calls, settings = [], []

    class Props:
        total_memory = 80 << 30

    def fraction(f, device):
        if not isinstance(device, int) and getattr(device, "index", None) is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls.append((f, device))

    def stop():
        raise RuntimeError("stop before tracking starts")

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fraction)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(allocator, "set_allocator_settings", settings.append)
    monkeypatch.setattr(kv, "environment", lambda device: {})
    run = kv.TraceRun(tmp_path / "t", None, torch.device("cuda"), 20 << 30, live=False, signals=False)
    monkeypatch.setattr(run.session, "start", stop)
    with pytest.raises(RuntimeError, match="stop before tracking"):
        run.start()
    assert calls == [(0.25, torch.device("cuda", 0)), (1.0, torch.device("cuda", 0))]  # capped, then released
    assert settings == ["expandable_segments:True", "expandable_segments:False"]
    assert run.session.expandable_segments
