"""Shared fixtures: one tiny traced rollout per session (the README's main job), reused by tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvprof.runner import TraceRequest, run_trace


@pytest.fixture(scope="session")
def bf16_trace(tmp_path_factory) -> Path:
    """`kvprof trace --method bf16` on the tiny CPU config, with decode (the default job)."""
    out = tmp_path_factory.mktemp("traces")
    outcome = run_trace(TraceRequest(method="bf16", out=out, run_id="bf16-tiny"))
    assert outcome.status == "complete"
    return outcome.path


@pytest.fixture(scope="session")
def trace_factory(tmp_path_factory):
    """Run a tiny traced rollout with overrides (no decode by default, for speed)."""
    out = tmp_path_factory.mktemp("traces_more")
    made: dict[tuple, Path] = {}

    def make(**kw) -> Path:
        kw.setdefault("decode", False)
        key = tuple(sorted((k, str(v)) for k, v in kw.items()))
        if key not in made:
            run_id = "t" + str(len(made))
            made[key] = run_trace(TraceRequest(out=out, run_id=run_id, **kw)).path
        return made[key]

    return make


@pytest.fixture
def registry(monkeypatch):
    """Plugins loaded by a test stay out of the registry other tests list."""
    from methods import base, plugins

    reg = dict(base._REGISTRY)
    monkeypatch.setattr(base, "_REGISTRY", reg)
    monkeypatch.setattr(plugins, "_REGISTRY", reg)
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # module specs import from the current folder, as the CLI does
    return plugins


@pytest.fixture()
def recording_lib():
    """The native recorder's core library (CPU build), reset and recording; reset again after the test."""
    from tracers import native

    lib = native.load(cuda=False)
    lib.kvp_reset(0, 0, 0, 1)
    lib.kvp_set_recording(1)
    yield lib
    lib.kvp_set_recording(0)
    lib.kvp_reset(0, 0, 0, 1)
