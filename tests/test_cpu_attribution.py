"""On CPU every byte of the built-in rollout has a category: nothing 'live before tracing', nothing unattributed."""
from __future__ import annotations

from pathlib import Path

import torch

import kvprof.api as kv
from kvprof.read.trace import load_trace
from kvprof.runner import TraceRequest, run_trace
from tracers.trace_fold import LIVE_BEFORE_TRACING


def test_torch_tensor_made_in_a_stage_is_an_allocation_of_that_stage(tmp_path: Path) -> None:
    # torch.tensor(data) builds its storage outside dispatch and hands it to aten.lift_fresh: it was
    # taken for a storage from before tracing (outside any stage) instead of this stage's
    with kv.trace(tmp_path / "t"):
        with kv.stage("step", 0), kv.category("activations"):
            made = torch.tensor([1.0, 2.0, 3.0, 4.0]) * 2
        del made
    a = load_trace(tmp_path / "t").allocations
    assert not (a["name"] == LIVE_BEFORE_TRACING).any()
    assert set(a["category"]) == {"activations"} and (a["span_id"] > 0).all()


def test_the_built_in_rollout_leaves_no_byte_unattributed_on_cpu(tmp_path: Path) -> None:
    outcome = run_trace(TraceRequest(method="bf16", out=tmp_path, run_id="r", frames=3))
    a = load_trace(outcome.path).allocations
    assert not (a["category"] == "unattributed").any(), a[a["category"] == "unattributed"]
    assert "blocks were allocated before tracing" not in " ".join(outcome.summary.notes)
