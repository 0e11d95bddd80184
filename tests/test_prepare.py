"""Issue 14, deliverable 5: `prepare(req)` checks a request once and claims its folder, for the plain
and the `--tui` paths alike; api.py split by concern; one workload recipe."""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import kvprof.api as kv
from kvprof.cli import EXIT_USAGE, _trace_with_tui, main
from kvprof.errors import UsageError
from kvprof.read.trace import load_trace
from kvprof.runner import PreparedRun, TraceRequest, prepare, resolve, run_trace
from kvprof.tagging import tensors_of
from kvprof.workload.config import ModelConfig

SMALL = dict(device="cpu", config="tiny", frames=3, decode=False)
FLAGS = ["--device", "cpu", "--config", "tiny", "--frames", "3", "--no-decode", "--quiet"]
STAMP = len("20260101-120000-")  # default run ids start with the time


# ---------------------------------------------------------------------------------------- prepare
@pytest.mark.parametrize("bad", [dict(method="nope"), dict(frames=4), dict(codes="int3"), dict(prompt_embeds="EMBEDS")])
def test_prepare_refuses_bad_input_before_any_folder_exists(bad: dict[str, Any], tmp_path: Path) -> None:
    if bad.get("prompt_embeds") == "EMBEDS":  # a readable file of the wrong width: found only by reading it
        path = tmp_path / "embeds.pt"
        torch.save(torch.zeros(4, ModelConfig.from_name("tiny").text_dim + 1), path)
        bad = dict(prompt_embeds=path)
    out = tmp_path / "traces"
    with pytest.raises(UsageError):
        prepare(TraceRequest(**{**SMALL, **bad}, out=out))
    assert not out.exists()


def test_prepare_claims_the_folder_and_leaves_the_request_alone(tmp_path: Path) -> None:
    req = TraceRequest(**SMALL, method="rtn_int4", out=tmp_path)
    before = dataclasses.replace(req)
    prep = prepare(req)
    assert req == before and prep.request is req
    assert prep.folder.parent == tmp_path and prep.folder.is_dir() and not any(prep.folder.iterdir())
    assert prep.run_id == prep.folder.name and prep.run_id.endswith("-rtn_int4-study-tiny-3f-s0")
    meta = prep.meta()
    assert meta["run_id"] == prep.run_id and meta["method"] == "rtn_int4" and meta["codes"] == "int8"
    assert meta["rollout"]["frames"] == 3 and meta["config"]["name"] == "tiny"
    assert prepare(req).folder.name == prep.run_id + "-2"  # the same request again: its own folder
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.folder = tmp_path  # type: ignore[misc]
    r = resolve(req)
    assert (r.device, r.cfg, r.spec, r.method_cls, r.storage, r.params) == (
        prep.device, prep.cfg, prep.spec, prep.method_cls, prep.storage, prep.params)


def test_run_trace_runs_a_prepared_run_in_its_folder(tmp_path: Path) -> None:
    prep = prepare(TraceRequest(**SMALL, out=tmp_path, run_id="mine"))
    assert isinstance(prep, PreparedRun) and not prep.folder.exists()  # a chosen run id is checked, not claimed
    outcome = run_trace(prep)
    assert outcome.path == prep.folder == tmp_path / "mine" and outcome.status == "complete"
    assert load_trace(outcome.path).meta["run_id"] == "mine"


# ---------------------------------------------------------------------------------------- --tui
@pytest.fixture
def fake_tui(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`run_live` without a terminal: run the rollout at once, note the folder and the live flag."""
    seen: dict[str, Any] = {}
    real_trace = kv.trace

    def trace(folder: Path, **kw: Any) -> kv.TraceRun:
        seen["live"] = kw["live"]
        return real_trace(folder, **kw)

    def run_live(folder: Path, run: Callable[[], Any], **_: Any) -> Any:
        seen["folder"] = folder
        return run()

    monkeypatch.setattr("tui.app.run_live", run_live)
    monkeypatch.setattr(kv, "trace", trace)
    return seen


def test_tui_and_plain_paths_give_the_same_folder(fake_tui: dict[str, Any], tmp_path: Path) -> None:
    assert main(["trace", *FLAGS, "--out", str(tmp_path / "plain"), "--run-id", "r"]) == 0
    assert fake_tui.pop("live") is False
    assert main(["trace", *FLAGS, "--out", str(tmp_path / "tui"), "--run-id", "r", "--tui"]) == 0
    assert fake_tui["folder"] == tmp_path / "tui" / "r" and fake_tui["live"] is True  # followed: drained per chunk
    assert load_trace(tmp_path / "tui" / "r").status == load_trace(tmp_path / "plain" / "r").status == "complete"


def test_tui_path_claims_one_folder_and_does_not_change_the_request(fake_tui: dict[str, Any], tmp_path: Path) -> None:
    req = TraceRequest(**SMALL, method="rtn_int4", out=tmp_path)
    before = dataclasses.replace(req)
    outcome = _trace_with_tui(req)
    assert req == before  # the old path set req.live and req.run_id
    assert outcome.path == fake_tui["folder"] and outcome.status == "complete"
    plain = run_trace(req)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([outcome.path.name, plain.path.name])  # nothing else claimed
    assert outcome.path.name[STAMP:] == plain.path.name[STAMP:].removesuffix("-2") == "rtn_int4-study-tiny-3f-s0"


def test_tui_path_refuses_bad_input_before_the_app_opens(fake_tui: dict[str, Any], tmp_path: Path) -> None:
    assert main(["trace", *FLAGS, "--out", str(tmp_path / "t"), "--method", "nope", "--tui"]) == EXIT_USAGE
    assert "folder" not in fake_tui and not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------------- api split
def test_api_keeps_the_tracing_api_and_its_concerns_live_beside_it() -> None:
    from kvprof import allocator, environment, oomfacts, signals

    for name in ("trace", "TraceRun", "stage", "category", "tag_tensor", "register", "watch", "instrument_module"):
        assert callable(getattr(kv, name)), name
    assert signals.InterruptGuard.__module__ == "kvprof.signals" and signals.EXIT_INTERRUPTED == 130
    assert allocator.BudgetCap.__module__ == "kvprof.allocator"
    env = environment.environment(torch.device("cpu"))
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__ and "git_revision" in env
    # only the tracing API is defined in api.py (signals, environment, OOM facts, allocator: elsewhere)
    tree = ast.parse(inspect.getsource(kv))
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert defined <= {"tag_tensor", "register", "TraceRun", "trace", "_check_meta", "failure_state", "_failure_q"}, defined
    assert not any(isinstance(n, ast.Import) and any(a.name in ("re", "signal", "ctypes", "platform", "subprocess")
                                                     for a in n.names) for n in tree.body)
    refused = RuntimeError("[enforce fail] DefaultCPUAllocator: not enough memory: you tried to allocate 123 bytes")
    assert isinstance(oomfacts.as_oom(refused), torch.OutOfMemoryError)
    other = RuntimeError("shape mismatch")
    assert oomfacts.as_oom(other) is other and oomfacts.as_oom(None) is None


# ---------------------------------------------------------------------------------------- workload
def test_one_workload_recipe_traced_or_not(tmp_path: Path) -> None:
    from kvprof.workload.build import build_workload

    r = resolve(TraceRequest(**SMALL, method="rtn_int4"))
    embeds = lambda: torch.zeros(1, r.cfg.text_len, r.cfg.text_dim)  # noqa: E731
    plain = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device, embeds)
    assert len(plain.caches) == r.cfg.num_layers and plain.vae is None
    assert tuple(plain.embeddings.shape) == (1, r.cfg.text_len, r.cfg.text_dim)
    with kv.trace(tmp_path / "t", device="cpu") as t:
        work = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device, embeds)
    weights = sum(x.numel() * x.element_size() for x, _ in tensors_of(work.model, "dit"))
    assert t.summary.peak.by_category["weights"] == weights
    assert t.summary.peak.by_category["activations"] == work.embeddings.numel() * 4
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), work.model.state_dict().values()))
