"""kvprof diagnose on constructed traces with one known cause each (exact bytes), on an OOM trace,
and on the tiny rollout (prq_int4 --integration study vs bf16)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from kvprof.diagnose import diagnose
from methods import get_method_class
from kvprof.diagnose.bytemodel import Geometry, MethodFacts, code_bits
from kvprof.read.baseline import find_baseline
from kvprof.read.phases import OUTSIDE
from kvprof.units import fmt_bytes
from kvprof.errors import UsageError
from kvprof.read.trace import load_trace
from tracers import SimulatedOOM, TraceSession, stage, tag, tag_tensor

# A small synthetic geometry: 2 layers, 2 heads x 32, 24 tokens/frame, bf16, 6 frames.
CFG = {"name": "synthetic", "num_layers": 2, "dim": 64, "num_heads": 2, "head_dim": 32, "tokens_per_frame": 24,
       "dtype": "bfloat16"}
FRAMES = 6
TOKEN = 2 * 32 * 2  # bytes of one token of K (or V) in bf16: heads x head_dim x 2
FULL = FRAMES * 24 * TOKEN  # 18432: the whole buffer of one layer's K (or V)
CODES8 = FRAMES * 24 * 64  # 9216: int8 codes of one K (or V) of the whole buffer
SCALES = FRAMES * 24 // 16 * 64 * 2  # 1152: float16 scales per group of 16 tokens and channel
WEIGHTS, CROSS, ACT, DECODE = 100_000, 4096, 10_000, 300_000


def _rollout(**kw) -> dict:
    r = {"frames": FRAMES, "seed": 0, "batch": 1, "chunk_frames": 3, "timesteps": [1000.0], "attn_window_frames": 21,
         "rolling_frames": None, "sink_frames": 0, "integration": "study", "decode": True,
         "free_cache_before_decode": False}
    r.update(kw)
    return r


def _buf(n: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8)


Hook = Callable[[int, str, int, list], None]


def synth(folder: Path, method: str, codes: str = "int8", cache: tuple = (), kv_read: Hook | None = None,
          kv_record: tuple[int, int, int] | None = None, decode_bytes: int = DECODE, budget: int | None = None,
          integration: str = "study", outside: int = 0, **rollout) -> Path:
    """Write a trace with the rollout's stage structure and tensors of exact sizes.

    cache: (name, category, bytes) per layer, allocated in setup/cache_init and kept.
    kv_read(chunk, pass, layer, keep): called inside each layer's kv_read stage.
    outside: bytes allocated (and kept) after the rollout, outside every stage.
    """
    meta = {"run_id": folder.name, "method": method, "integration": integration, "codes": codes, "config": CFG,
            "rollout": _rollout(**rollout), "method_params": {}, "environment": {"device_type": "cpu"},
            "method_facts": get_method_class(method).facts()}  # as the runner writes them
    keep: list[torch.Tensor] = []
    with TraceSession(folder, meta, budget_bytes=budget) as s:
        with stage("setup"):
            with tag("weights"):
                keep.append(_buf(WEIGHTS))
            with stage("cache_init"):
                for layer in range(2):
                    for name, cat, n in cache:
                        with tag(cat):
                            t = _buf(n)
                        tag_tensor(t, cat, f"layer {layer} / {name}")
                        keep.append(t)
        with stage("rollout"):
            with stage("cross_kv"), tag("cross_kv"):
                keep.append(_buf(CROSS))
            for c in range(FRAMES // 3):
                with stage("chunk", c):
                    for pass_name, idx in (("denoise", 0), ("refresh", None)):
                        with stage(pass_name, idx):
                            for layer in range(2):
                                with stage("layer", layer):
                                    scratch: list = []
                                    with stage("kv_read"):
                                        if kv_read:
                                            kv_read(c, pass_name, layer, scratch)
                                    with stage("attention"), tag("activations"):
                                        act = _buf(ACT)
                                        del act
                                    keep.extend(t for t in scratch if getattr(t, "_keep", False))
                                    del scratch
                if kv_record:
                    s.record_kv_bytes(c, *kv_record)
            if rollout.get("decode", True):
                with stage("decode"), tag("decode"):
                    d = _buf(decode_bytes)
                    del d
        if outside:
            keep.append(_buf(outside))
    return folder


def _bf16(root: Path, **rollout) -> Path:
    return synth(root / "bf16", "bf16", cache=(("k", "kv_fp", FULL), ("v", "kv_fp", FULL)), **rollout)


INT8_CACHE = (("k_codes", "kv_codes", CODES8), ("v_codes", "kv_codes", CODES8),
              ("k_scale", "kv_meta", SCALES), ("v_scale", "kv_meta", SCALES))


def _cause(diag, kind):
    found = [c for c in diag.causes if c.kind == kind]
    assert found, f"no cause {kind!r} in {[c.kind for c in diag.causes]}"
    return found[0]


def _check_sums(diag):
    assert diag.by_category["trace_bytes"].sum() == diag.peak_bytes
    assert diag.by_stage["trace_bytes"].sum() == diag.peak_bytes
    if diag.baseline is not None:
        assert diag.by_category["delta_bytes"].sum() == diag.difference_bytes
        assert diag.by_stage["delta_bytes"].sum() == diag.difference_bytes


def test_retained_dequantized_buffer(tmp_path):
    _bf16(tmp_path)

    def retain(chunk, pass_name, layer, scratch):
        if chunk == 0 and pass_name == "denoise" and layer == 0:
            for side in "kv":
                with tag("kv_dequant"):
                    t = _buf(FULL)
                tag_tensor(t, "kv_dequant", f"layer 0 / {side}_full")
                t._keep = True
                scratch.append(t)

    trace = synth(tmp_path / "retained", "rtn_int4", cache=INT8_CACHE, kv_read=retain)
    diag = diagnose(trace)
    assert diag.baseline is not None and diag.baseline["found_by"] == "found by config and seed"
    cause = _cause(diag, "retained_dequant")
    assert cause.bytes == 2 * FULL
    assert {b.name for b in cause.buffers} == {"k_full", "v_full"}
    assert all(b.stage == "rollout/chunk/denoise/layer/kv_read" for b in cause.buffers)
    deltas = dict(zip(diag.by_category["category"], diag.by_category["delta_bytes"]))
    assert deltas["kv_dequant"] == 2 * FULL
    assert deltas["kv_codes"] == 4 * CODES8 and deltas["kv_fp"] == -4 * FULL
    assert diag.difference_bytes == 2 * FULL + 4 * CODES8 + 4 * SCALES - 4 * FULL
    _check_sums(diag)
    text = diag.to_text()
    assert "retained dequantized K/V: 36.00 KiB (36,864 B)" in text
    assert "k_full" in text


def test_int16_codes_plus_scales(tmp_path):
    _bf16(tmp_path)
    cache = (("k_codes", "kv_codes", 2 * CODES8), ("v_codes", "kv_codes", 2 * CODES8),
             ("k_scale", "kv_meta", SCALES), ("v_scale", "kv_meta", SCALES))
    diag = diagnose(synth(tmp_path / "int16", "rtn_int4", codes="int16", cache=cache))
    codes = 4 * 2 * CODES8
    wide = _cause(diag, "wide_codes")
    assert wide.bytes == codes
    assert wide.saving_bytes == codes - codes * 4 // 16  # bit-packed at rtn_int4's 4 bits
    assert "as int8 they would take 36.00 KiB" in wide.detail
    assert _cause(diag, "metadata").bytes == 4 * SCALES
    proj = {p.scenario: p for p in diag.projections}
    assert proj["codes int8 instead of int16"].delta_bytes == -codes // 2
    assert proj["codes bit-packed instead of int16 (study)"].delta_bytes == -(codes - codes // 4)
    _check_sums(diag)


def test_two_code_tensors(tmp_path):
    _bf16(tmp_path)
    cache = (("k_codes", "kv_codes", CODES8), ("k_res_codes", "kv_codes", CODES8),
             ("v_codes", "kv_codes", CODES8), ("v_res_codes", "kv_codes", CODES8),
             ("k_scale", "kv_meta", SCALES), ("k_res_scale", "kv_meta", SCALES),
             ("v_scale", "kv_meta", SCALES), ("v_res_scale", "kv_meta", SCALES))
    diag = diagnose(synth(tmp_path / "prq", "prq_int4", cache=cache))
    dup = _cause(diag, "duplicate_codes")
    assert dup.bytes == 4 * CODES8  # the residual code tensors of both layers
    assert {b.name for b in dup.buffers} == {"k_res_codes", "v_res_codes"}
    assert "k_codes + k_res_codes" in dup.detail
    assert _cause(diag, "wide_codes").saving_bytes == 8 * CODES8 // 2  # 4+4 bits at int8: half
    _check_sums(diag)


def test_bf16_recent_window(tmp_path):
    _bf16(tmp_path)
    recent = 3 * 24 * TOKEN  # the last chunk of one K (or V), bf16
    cache = (("k_codes", "kv_codes", CODES8), ("v_codes", "kv_codes", CODES8),
             ("k_scale", "kv_meta", SCALES), ("v_scale", "kv_meta", SCALES),
             ("k_recent", "kv_fp", recent), ("v_recent", "kv_fp", recent))
    codes, meta_b, fp = 4 * CODES8, 4 * SCALES, 4 * recent
    # kv table: stored counts the 4-bit codes packed (half the int8 bytes), resident the int8 ones.
    record = (4 * FULL, codes // 2 + meta_b + fp, codes + meta_b + fp)
    diag = diagnose(synth(tmp_path / "recent", "rtn_int4_recent2", cache=cache, kv_record=record))
    window = _cause(diag, "fp_window")
    assert window.title == "BF16 recent window"
    assert window.bytes == fp
    assert {b.name for b in window.buffers} == {"k_recent", "v_recent"}
    wide = _cause(diag, "wide_codes")  # mixed widths (4/16): bits from the kv table's stored vs resident
    assert wide.saving_bytes == codes // 2
    assert "kv table" in wide.source
    _check_sums(diag)


def test_decode_peak_over_live_cache(tmp_path):
    _bf16(tmp_path)
    diag = diagnose(synth(tmp_path / "decode", "rtn_int4", cache=INT8_CACHE))
    assert diag.peak_phase == "decode" and diag.peak_stage.startswith("rollout/decode")
    cause = _cause(diag, "decode_over_cache")
    cache = 4 * CODES8 + 4 * SCALES + CROSS
    assert cause.bytes == cache
    assert cause.saving_bytes == cache  # the decode stays the largest phase without the cache
    proj = {p.scenario: p for p in diag.projections}["cache freed before decode"]
    assert proj.peak_bytes == diag.peak_bytes - cache and proj.phase == "decode" and not proj.estimate
    assert "--free-cache-before-decode" in proj.command
    # the projection is what the real run gives: the same trace with the cache freed first
    assert "VAE decode over a live KV cache" in diag.to_text()


def test_full_buffer_dequant_and_staged_projection(tmp_path):
    _bf16(tmp_path, decode=False)

    def whole(chunk, pass_name, layer, scratch):
        with stage("dequantize_buffer"), tag("kv_dequant"):
            scratch += [_buf(FULL), _buf(FULL)]

    diag = diagnose(synth(tmp_path / "study", "rtn_int4", cache=INT8_CACHE, kv_read=whole, decode=False))
    assert diag.peak_phase in ("denoise", "refresh")
    cause = _cause(diag, "full_buffer_dequant")
    assert cause.bytes == 2 * FULL
    staged = {p.scenario: p for p in diag.projections}["staged integration (packed codes)"]
    assert staged.estimate and "--integration staged" in staged.command
    # the measured whole-buffer dequantization leaves; staging (2 layers x K,V x 72 tokens) and
    # two copies of the attended window (K,V x 144 tokens) come in; codes are packed at 4 bits
    expected = diag.peak_bytes - 2 * FULL - 2 * CODES8 + 2 * 2 * 72 * TOKEN + 2 * 2 * 144 * TOKEN
    assert staged.peak_bytes == expected


def test_oom_trace_is_explained(tmp_path):
    _bf16(tmp_path)
    with pytest.raises(SimulatedOOM):
        synth(tmp_path / "oom", "rtn_int4", cache=INT8_CACHE, budget=WEIGHTS + 100_000)
    diag = diagnose(tmp_path / "oom")
    assert diag.status == "oom"
    assert diag.causes[0].kind == "oom"
    assert "out of memory" in diag.to_text()
    json.loads(diag.to_json())
    _check_sums(diag)


def test_renders_and_baseline_errors(tmp_path):
    base = _bf16(tmp_path)
    trace = synth(tmp_path / "r", "rtn_int4", cache=INT8_CACHE)
    diag = diagnose(trace, baseline=base)
    assert diag.baseline["found_by"] == "given"
    data = json.loads(diag.render("json"))
    assert data["peak"]["bytes"] == diag.peak_bytes and data["difference_bytes"] == diag.difference_bytes
    assert {c["kind"] for c in data["causes"]} >= {"decode_over_cache", "wide_codes"}
    md = diag.render("md")
    assert "| category | trace_bytes | baseline_bytes | delta_bytes |" in md
    with pytest.raises(UsageError, match="unknown diagnose format"):
        diag.render("yaml")
    with pytest.raises(UsageError, match="not a trace folder"):
        diagnose(tmp_path / "missing")
    # a baseline of another frame count is used but flagged
    other = synth(tmp_path / "bf16-3f", "bf16", cache=(("k", "kv_fp", FULL),), frames=3)
    flagged = diagnose(trace, baseline=other)
    assert any("rollout frames differs" in n for n in flagged.notes)
    # without any bf16 trace of the same config, diagnose still explains and says how to compare
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copytree(trace, lonely / "r")
    alone = diagnose(lonely / "r", traces_root=lonely)
    assert alone.baseline is None and any("--run-baseline" in n for n in alone.notes)
    assert find_baseline(load_trace(trace)).path.name == "bf16"


def test_excess_over_bf16_is_explained_before_shared_causes(tmp_path):
    """int16 codes are as wide as BF16: the whole excess is the scales, although the decode over
    the live cache (which bf16 has too) is the largest cause."""
    base = _bf16(tmp_path)
    cache = (("k_codes", "kv_codes", 2 * CODES8), ("v_codes", "kv_codes", 2 * CODES8),
             ("k_scale", "kv_meta", SCALES), ("v_scale", "kv_meta", SCALES))
    diag = diagnose(synth(tmp_path / "int16", "rtn_int4", codes="int16", cache=cache), baseline=base)
    assert diag.difference_bytes == 4 * SCALES
    first = diag.causes[0]
    assert first.kind == "metadata" and first.excess_bytes == 4 * SCALES and first.in_baseline is False
    dec = _cause(diag, "decode_over_cache")
    assert dec.in_baseline is True and dec.bytes > first.bytes
    assert _cause(diag, "wide_codes").excess_bytes == 0  # codes stand for bf16's K/V, byte for byte
    assert "the excess is first explained by quantization metadata (+4.50 KiB that bf16 does not hold" in diag.headline()
    assert "largest cause" not in diag.headline()
    text = diag.to_text()
    assert "1. quantization metadata: 4.50 KiB (4,608 B); +4.50 KiB over bf16" in text
    assert "+4.50 KiB over bf16, a cause bf16 has too" in text
    alone = diagnose(tmp_path / "int16", baseline=None, traces_root=tmp_path / "nowhere")
    assert alone.causes[0].kind == "decode_over_cache"  # no baseline: by size, as before


def test_tiny_rollout_int16_codes_vs_bf16_excess_is_the_scales(trace_factory):
    """The same on the CPU tiny config in bfloat16, where int16 codes are exactly as wide as bf16's K/V
    (6 frames: 144 tokens, whole groups of 16, so no padded codes)."""
    base = trace_factory(method="bf16", dtype="bfloat16", frames=6, decode=True)
    trace = trace_factory(method="rtn_int4", codes="int16", dtype="bfloat16", frames=6, decode=True)
    diag = diagnose(trace, baseline=base)
    cats = diag.by_category.set_index("category")
    scales = int(cats.loc["kv_meta", "trace_bytes"])
    assert cats.loc["kv_codes", "trace_bytes"] == cats.loc["kv_fp", "baseline_bytes"]
    assert diag.peak_phase == "decode" and 0 < diag.difference_bytes <= scales
    assert diag.causes[0].kind == "metadata" and diag.causes[0].excess_bytes == scales
    assert _cause(diag, "decode_over_cache").in_baseline
    assert "the excess is first explained by quantization metadata" in diag.headline()


def test_buffer_lists_end_with_what_is_not_listed(tmp_path):
    names = [f"{side}_codes{i}" for side in "kv" for i in range(4)]  # 8 groups of codes
    cache = tuple((n, "kv_codes", 1000 + 10 * i) for i, n in enumerate(names))
    diag = diagnose(synth(tmp_path / "many", "rtn_int4", cache=cache), baseline=None, traces_root=tmp_path / "nowhere")
    wide = _cause(diag, "wide_codes")
    assert len(wide.buffers) == 8
    rest = sum(b.bytes for b in wide.buffers[6:])
    assert sum(b.bytes for b in wide.buffers[:6]) + rest == wide.bytes
    text = diag.to_text()
    assert f"- and 2 more ({fmt_bytes(rest)})" in text
    assert f"- and 2 more ({fmt_bytes(rest)})" in diag.to_markdown()


def test_phase_table_rows_are_explained(tmp_path):
    diag = diagnose(synth(tmp_path / "out", "rtn_int4", cache=INT8_CACHE, outside=5000), baseline=None,
                    traces_root=tmp_path / "nowhere")
    assert OUTSIDE in set(diag.phases["phase"])
    text = diag.to_text()
    assert f"{OUTSIDE}: allocations made while no kvprof stage was open" in text
    cache = 2 * (2 * CODES8 + 2 * SCALES)
    assert f"setup's cache ({cache / 1024:.2f} KiB) is the cache's first buffers" in text
    assert f"{cache / 1024:.2f} KiB of them are still live at the peak" in text


def test_geometry_from_meta_without_head_dim():
    meta = {"config": {**{k: v for k, v in CFG.items() if k != "head_dim"}}, "rollout": _rollout()}
    geo = Geometry.from_meta(meta)
    assert geo is not None and geo.token_bytes == TOKEN and geo.capacity_tokens == FRAMES * 24


def test_code_bits_from_the_method_facts_the_trace_records():
    def facts(name: str) -> MethodFacts:  # what the runner writes into meta.json at trace time
        return MethodFacts.from_meta({"method": name, "method_facts": get_method_class(name).facts()})

    assert code_bits(facts("prq_int2"), "k_codes") == 2 and code_bits(facts("prq_int2"), "k_res_codes") == 4
    assert code_bits(facts("rtn_k2_v4"), "k_codes") == 2 and code_bits(facts("rtn_k2_v4"), "v_codes") == 4
    assert code_bits(facts("age_tier_int2"), "k_codes") is None  # mixed widths: the kv table decides
    assert code_bits(MethodFacts.from_meta({"method": "rtn_int4"}), "k_codes") is None  # a trace without facts
    assert MethodFacts.from_meta({"method": "bf16"}).lossless is True  # older traces: the lossless built-ins by name


def test_tiny_rollout_prq_study_vs_bf16(trace_factory):
    base = trace_factory(method="bf16")
    prq = trace_factory(method="prq_int4", integration="study")
    diag = diagnose(prq)
    assert diag.baseline is not None and Path(diag.baseline["path"]) == base
    grown = set(diag.by_category.loc[diag.by_category["delta_bytes"] > 0, "category"])
    assert {"kv_codes", "kv_meta", "kv_dequant"} <= grown
    assert "kv_fp" in set(diag.by_category.loc[diag.by_category["delta_bytes"] < 0, "category"])
    kinds = {c.kind for c in diag.causes}
    assert {"full_buffer_dequant", "wide_codes", "duplicate_codes"} <= kinds
    # setup made the cache's first codes; the first write replaced them: the phase table says so
    setup = diag.phases.set_index("phase").loc["setup", "cache_bytes"]
    assert setup > 0 and any("none is live at the peak" in n for n in diag.phase_notes)
    _check_sums(diag)
    text = diag.to_text()
    for cat in ("kv_codes", "kv_meta", "kv_dequant"):
        assert cat in text


def test_run_baseline_on_request(trace_factory, tmp_path):
    prq = trace_factory(method="rtn_int4", frames=3)
    root = tmp_path / "only"
    root.mkdir()
    shutil.copytree(prq, root / prq.name)
    from kvprof.runner import run_baseline

    diag = diagnose(root / prq.name, traces_root=root, run_baseline=run_baseline)
    assert diag.baseline["found_by"] == "run now with --run-baseline"
    made = load_trace(diag.baseline["path"])
    assert made.meta["method"] == "bf16" and made.meta["rollout"]["frames"] == 3
    assert Path(diag.baseline["path"]).parent == root


def test_integration_projections_track_the_real_runs(trace_factory):
    """The byte-model projections land near the peak the other integration really has (tiny, no decode)."""
    study = trace_factory(method="prq_int4", integration="study")
    staged = trace_factory(method="prq_int4", integration="staged")
    real_study, real_staged = diagnose(study).peak_bytes, diagnose(staged).peak_bytes
    to_staged = {p.scenario: p for p in diagnose(study).projections}["staged integration (packed codes)"]
    to_study = {p.scenario: p for p in diagnose(staged).projections}["study integration (int8 codes)"]
    assert to_staged.estimate and to_study.estimate
    assert abs(to_staged.peak_bytes - real_staged) <= 0.15 * real_staged
    assert abs(to_study.peak_bytes - real_study) <= 0.15 * real_study


def test_blocks_from_before_tracing_are_named_in_the_notes(tmp_path):
    base = _bf16(tmp_path)
    trace = synth(tmp_path / "r", "rtn_int4", cache=INT8_CACHE)
    meta = json.loads((trace / "meta.json").read_text())
    meta["unregistered_before_bytes"] = 34_603_008  # what a second trace of a GPU process holds (see RESULTS.md)
    (trace / "meta.json").write_text(json.dumps(meta))
    notes = [n for n in diagnose(trace, baseline=base).notes if "before its tracing started" in n]
    assert notes == ["trace r: 33.00 MiB were allocated before its tracing started and not registered (tensors made "
                     "before tracing, or earlier work in its process such as cuBLAS workspaces) and count as "
                     "'unattributed'; where another trace made them itself, categories differ by that much"]
    assert not [n for n in diagnose(base, baseline=base).notes if "before its tracing started" in n]
