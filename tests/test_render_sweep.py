"""benchmarks/render_sweep_report.py: the GPU sweep's report, rendered here from tiny CPU traces."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "render_sweep_report.py"


def _script():
    spec = importlib.util.spec_from_file_location("render_sweep_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_renders_pngs_first_from_several_trace_folders(trace_factory, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copytree(trace_factory(method="bf16", frames=6), a / "bf16-tiny")
    shutil.copytree(trace_factory(method="rtn_int4", frames=6), b / "rtn-tiny")
    out = tmp_path / "report"
    assert _script().main([str(a), str(b), str(tmp_path / "missing"), "--include-cpu", "--out", str(out)]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [Path(p).name for p in lines] == ["bf16-tiny.png", "rtn-tiny.png", "comparison.png", "compare.csv",
                                             "sweep.md", "sweep.html"]
    for name in ("bf16-tiny.png", "rtn-tiny.png", "comparison.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_only_by_default_names_the_folders(trace_factory, tmp_path, capsys):
    shutil.copytree(trace_factory(method="bf16", frames=6), tmp_path / "bf16-tiny")
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no GPU traces found; --include-cpu renders CPU traces too" in err


def test_pngs_only_and_skip_existing_render_only_what_is_new(trace_factory, tmp_path, capsys):
    a = tmp_path / "a"
    a.mkdir()
    shutil.copytree(trace_factory(method="bf16", frames=6), a / "bf16-tiny")
    shutil.copytree(trace_factory(method="rtn_int4", frames=6), a / "rtn-tiny")
    out = tmp_path / "report"
    out.mkdir()
    (out / "bf16-tiny.png").write_bytes(b"kept")
    assert _script().main([str(a), "--include-cpu", "--out", str(out), "--pngs-only", "--skip-existing"]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [Path(p).name for p in lines] == ["rtn-tiny.png"]
    assert (out / "bf16-tiny.png").read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir()) == ["bf16-tiny.png", "rtn-tiny.png"]
