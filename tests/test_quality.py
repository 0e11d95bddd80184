"""Quality alongside memory (issue 5): pixel metrics against values computed by hand, LPIPS without
torchvision, missing-file messages word for word, and drift of the tiny rollout against its bf16 reference
(the VBench adapter: test_quality_vbench.py)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kvprof.quality.lpips as lp
import kvprof.runner as runner
from kvprof.read.compare import _quality as compare_quality_columns
from kvprof.read.summary import Summary, load_summary
from kvprof.workload.config import ModelConfig
from kvprof.quality import metrics
from kvprof.quality.capture import (
    QUALITY_DIR,
    QualityCapture,
    RolloutRecipe,
    default_layers,
    load_outputs,
    read_key,
    save_outputs,
)
from kvprof.quality.compute import (
    QualityOptions,
    compute_quality,
    json_safe,
    pixel_metrics,
    quality_after_rollout,
    write_quality,
)
from kvprof.quality.reference import REFERENCE_CACHE, find_reference, run_outputs
from kvprof.quality.tables import drift_table, quality_table
from kvprof.workload.rollout import RolloutSpec
from kvprof.runner import TraceRequest, run_trace

C1, C2 = (0.01) ** 2, (0.03) ** 2


# ----------------------------------------------------------------------------- PSNR / SSIM / flicker
def _gauss(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def test_identical_frames_psnr_inf_ssim_one():
    a = torch.rand(3, 3, 32, 40)
    assert torch.isinf(metrics.psnr(a, a.clone())).all()
    assert torch.equal(metrics.ssim(a, a.clone()), torch.ones(3))
    assert metrics.video_psnr(a, a.clone()) == math.inf


def test_known_shift_psnr_and_ssim_by_hand():
    mu, delta = 0.4, 0.1
    a = torch.full((2, 3, 24, 30), mu)
    b = a + delta
    # MSE = delta^2 -> PSNR = -20 log10(delta) = 20 dB
    assert metrics.psnr(a, b).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    # constant images: no variance, no covariance: only the luminance term remains
    expected = (2 * mu * (mu + delta) + C1) / (mu**2 + (mu + delta) ** 2 + C1)
    assert metrics.ssim(b, a).tolist() == pytest.approx([expected] * 2, abs=1e-6)
    # a textured image shifted by delta: contrast-structure term is exactly 1; PSNR still 20 dB
    tex = 0.3 + 0.2 * torch.rand(1, 3, 24, 30)
    assert metrics.psnr(tex + delta, tex).item() == pytest.approx(20.0, abs=1e-3)


def test_noise_of_known_variance_psnr_and_ssim_by_hand():
    """Constant mu plus a +-sigma column pattern: mean 0, variance sigma^2 in every frame."""
    mu, sigma, h, w = 0.5, 0.05, 21, 32
    sign = torch.tensor([(-1.0) ** x for x in range(w)])
    a = torch.full((1, 1, h, w), mu)
    b = a + sigma * sign.view(1, 1, 1, w)
    assert metrics.psnr(b, a).item() == pytest.approx(-20 * math.log10(sigma), abs=1e-4)
    # every window: weighted mean mu +- sigma*A (A = alternating sum of the Gaussian taps),
    # weighted variance sigma^2 (1 - A^2), no covariance with the constant image
    g = _gauss()
    alt = float(sum(gi * (-1.0) ** i for i, gi in enumerate(g)))
    contrast = C2 / (sigma**2 * (1 - alt**2) + C2)
    lum = [(2 * mu * (mu + s * sigma * alt) + C1) / (mu**2 + (mu + s * sigma * alt) ** 2 + C1) for s in (1, -1)]
    expected = 0.5 * (lum[0] + lum[1]) * contrast  # valid width 22: as many + as - windows
    assert metrics.ssim(b, a).item() == pytest.approx(expected, abs=1e-5)
    assert metrics.ssim(b, a).item() == pytest.approx(0.2647, abs=1e-3)


def test_ssim_equals_direct_windowed_formula():
    """Against a loop over every valid 11x11 window with Gaussian weights, in float64."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((2, 3, 14, 17), generator=gen)
    b = (a + 0.2 * torch.randn((2, 3, 14, 17), generator=gen)).clamp(0, 1)
    w2 = np.outer(_gauss(), _gauss())
    an, bn = a.double().numpy(), b.double().numpy()
    expected = []
    for n in range(2):
        vals = []
        for c in range(3):
            for i in range(14 - 10):
                for j in range(17 - 10):
                    x, y = an[n, c, i : i + 11, j : j + 11], bn[n, c, i : i + 11, j : j + 11]
                    mx, my = (w2 * x).sum(), (w2 * y).sum()
                    vx, vy = (w2 * x * x).sum() - mx**2, (w2 * y * y).sum() - my**2
                    cxy = (w2 * x * y).sum() - mx * my
                    vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
        expected.append(np.mean(vals))
    assert metrics.ssim(a, b).tolist() == pytest.approx(expected, abs=1e-5)


def test_flicker_on_constructed_clips():
    levels = [0.0, 0.5, 0.25, 1.0]  # in [0, 1]: consecutive differences 0.5, 0.25, 0.75
    clip = torch.stack([torch.full((3, 8, 8), v) for v in levels], dim=1).unsqueeze(0)
    assert metrics.flicker(clip) == pytest.approx(0.5)
    assert metrics.flicker(metrics.to_unit_range(clip * 2 - 1)) == pytest.approx(0.5)  # from VAE range
    still = torch.rand(1, 3, 1, 8, 8).expand(1, 3, 20, 8, 8)
    assert metrics.flicker(still) == 0.0
    tex = torch.rand(1, 3, 1, 8, 8) * 0.8
    alternating = torch.cat([tex, tex + 0.1] * 10, dim=2)  # 20 frames, |diff| 0.1 everywhere
    assert metrics.flicker(alternating) == pytest.approx(0.1, abs=1e-6)


def test_relative_l2_and_chunk_drift():
    ref = torch.ones(1, 2, 6, 2, 2)
    lat = ref.clone()
    lat[:, :, 3:] *= 1.5
    assert metrics.chunk_drift(lat, ref, 3) == pytest.approx([0.0, 0.5])
    assert metrics.relative_l2(torch.zeros(3), torch.zeros(3)) == 0.0
    assert metrics.relative_l2(torch.ones(3), torch.zeros(3)) == math.inf


def test_json_safe_keeps_inf_as_string():
    assert json_safe({"a": math.inf, "b": [1.0, math.nan], "c": (1, 2)}) == {"a": "inf", "b": [1.0, "nan"], "c": [1, 2]}


# ----------------------------------------------------------------------------- LPIPS
TORCHVISION_FEATURE_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
}


@pytest.fixture()
def random_backbone(tmp_path) -> Path:
    """A random AlexNet saved as torchvision saves it (features.* plus classifier.*)."""
    torch.manual_seed(123)
    state = dict(lp.AlexNetFeatures().state_dict())
    state["classifier.1.weight"] = torch.randn(8, 4)  # ignored, as in a full torchvision checkpoint
    path = tmp_path / "random-alexnet.pth"
    torch.save(state, path)
    return path


@pytest.fixture()
def random_heads(tmp_path) -> Path:
    """Linear heads in the lpips package's format (lin{k}.model.1.weight, non-negative)."""
    gen = torch.Generator().manual_seed(7)
    state = {f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=gen) for k, c in enumerate(lp.LPIPS_CHANNELS)}
    path = tmp_path / "alex.pth"
    torch.save(state, path)
    return path


def test_alexnet_features_match_torchvision_layout():
    state = lp.AlexNetFeatures().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == TORCHVISION_FEATURE_SHAPES
    taps = lp.AlexNetFeatures()(torch.zeros(1, 3, 64, 64))
    assert [t.shape[1] for t in taps] == list(lp.LPIPS_CHANNELS)


def test_lpips_deterministic_and_zero_for_identical(random_backbone, random_heads):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((5, 3, 64, 96), generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn((5, 3, 64, 96), generator=gen)).clamp(-1, 1)
    m1 = lp.load_lpips(random_backbone, random_heads)
    m2 = lp.load_lpips(random_backbone, random_heads)
    d1, d2 = lp.lpips_frames(m1, x, y), lp.lpips_frames(m2, x, y, batch=2)
    assert torch.allclose(d1, d2, rtol=0, atol=1e-7) and (d1 > 0).all()
    assert torch.equal(lp.lpips_frames(m1, x, x.clone()), torch.zeros(5))


def test_lpips_matches_formula_written_out(random_backbone, random_heads):
    """The distance is sum_k mean_hw(w_k . (unit(f0_k) - unit(f1_k))^2) on scaled inputs."""
    m = lp.load_lpips(random_backbone, random_heads)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand((2, 3, 48, 48), generator=gen) * 2 - 1, torch.rand((2, 3, 48, 48), generator=gen) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    heads = torch.load(random_heads)
    fx, fy = m.net((x - shift) / scale), m.net((y - shift) / scale)
    total = torch.zeros(2)
    for k, (a, b) in enumerate(zip(fx, fy)):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * w).sum(1).mean((1, 2))
    assert torch.allclose(m(x, y), total, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                    reason="the optional 'lpips' package is not installed (pip install --no-deps lpips)")
def test_lpips_heads_found_in_installed_package_without_importing_it(random_backbone):
    was_imported = "lpips" in sys.modules
    heads = lp.find_linear_heads()
    assert heads.name == "alex.pth" and heads.parent.name == "v0.1" and heads.is_file()
    assert ("lpips" in sys.modules) == was_imported
    m = lp.load_lpips(random_backbone, heads)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    d = lp.lpips_frames(m, x, x.flip(-1))
    assert torch.equal(d, lp.lpips_frames(lp.load_lpips(random_backbone, heads), x, x.flip(-1))) and (d > 0).all()


def test_backbone_missing_messages_word_for_word(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    hub = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(lp.LpipsUnavailable) as exc:
        lp.find_backbone(None, env={})
    assert str(exc.value) == (
        "LPIPS backbone alexnet-owt-7be5be79.pth not found; looked in: --lpips-backbone (not given); "
        f"$KVPROF_LPIPS_BACKBONE (not set); {hub} (no such file). Pass --lpips-backbone FILE or set "
        "KVPROF_LPIPS_BACKBONE (torchvision's ImageNet AlexNet weights)"
    )
    with pytest.raises(lp.LpipsUnavailable) as exc:
        lp.find_backbone(None, env={"KVPROF_LPIPS_BACKBONE": "/nowhere/alex.pth"})
    assert str(exc.value) == (
        "LPIPS backbone alexnet-owt-7be5be79.pth not found; looked in: --lpips-backbone (not given); "
        f"$KVPROF_LPIPS_BACKBONE=/nowhere/alex.pth (no such file); {hub} (no such file). Pass --lpips-backbone "
        "FILE or set KVPROF_LPIPS_BACKBONE (torchvision's ImageNet AlexNet weights)"
    )
    with pytest.raises(lp.LpipsUnavailable) as exc:
        lp.find_backbone(tmp_path / "typo.pth", env={})
    assert str(exc.value) == (
        f"LPIPS backbone alexnet-owt-7be5be79.pth not found; looked in: --lpips-backbone {tmp_path / 'typo.pth'} "
        "(no such file). --lpips-backbone is used alone when given; pass the ImageNet AlexNet checkpoint "
        "alexnet-owt-7be5be79.pth"
    )
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"")
    assert lp.find_backbone(None, env={}) == hub
    assert lp.find_backbone(None, env={"KVPROF_LPIPS_BACKBONE": str(hub)}) == hub


def test_heads_missing_message_word_for_word(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else real(name, *a))
    with pytest.raises(lp.LpipsUnavailable) as exc:
        lp.find_linear_heads()
    assert str(exc.value) == (
        "LPIPS linear heads not found: the 'lpips' package is not installed (install it with "
        "'pip install --no-deps lpips'; it must not pull in torchvision)"
    )


def test_bad_backbone_file_is_named(tmp_path, random_heads):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, bad)
    with pytest.raises(lp.LpipsUnavailable, match=r"bad.pth: not a torchvision AlexNet state dict \(missing features.0.bias"):
        lp.load_lpips(bad, random_heads)


def test_missing_backbone_leaves_other_pixel_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("KVPROF_LPIPS_BACKBONE", raising=False)
    video = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    out = pixel_metrics(video, video * 0.9, torch.device("cpu"), None)
    assert out["lpips"]["missing"].startswith("LPIPS backbone alexnet-owt-7be5be79.pth not found; looked in:")
    assert isinstance(out["psnr_db"], float) and isinstance(out["ssim"], float) and len(out["per_frame"]["ssim"]) == 4
    assert "lpips" not in out["per_frame"]


# ----------------------------------------------------------------------------- drift on the tiny rollout
FRAMES = 9  # three chunks


def _recipe(frames: int = FRAMES, decode: bool = False) -> RolloutRecipe:
    """The runner's defaults on CPU: tiny config, seed 0, its seeded random embeddings."""
    cfg = ModelConfig.from_name("tiny")
    spec = RolloutSpec(frames=frames, seed=0, decode=decode)
    return RolloutRecipe(cfg, spec, runner.text_embeddings(cfg, 0, None, torch.device("cpu")), "cpu")


@pytest.fixture(scope="module")
def traced_bf16(tmp_path_factory):
    """`kvprof trace --method bf16 --no-decode --quality` as the runner will wire it: capture hooks
    around the traced rollout, quality computed after the trace closes."""
    root = tmp_path_factory.mktemp("quality_traces")
    captured = []
    real = runner.run_rollout

    def capturing(model, embeds, spec, caches, vae=None, *args, **kwargs):
        cap = QualityCapture(model, spec, embeds, method=caches[0].method.name)
        result = real(model, embeds, spec, caches, vae, *args, **kwargs)
        captured.append(cap.finish(result))
        return result

    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "run_rollout", capturing)
    try:
        outcome = run_trace(TraceRequest(method="bf16", out=root, run_id="bf16-q", frames=FRAMES, decode=False))
    finally:
        mp.undo()
    assert outcome.status == "complete" and len(captured) == 1
    summary = write_quality(outcome.path, outcome.summary, captured[0], QualityOptions(traces_root=root),
                            outcome.status)
    assert json.loads((outcome.path / "summary.json").read_text()) == summary.to_dict()
    assert load_summary(outcome.path) == summary and summary.peak == outcome.summary.peak
    return root, outcome.path, captured[0], summary.quality


def test_bf16_quality_reports_zero_drift(traced_bf16):
    root, path, outputs, q = traced_bf16
    assert q["reference"] == {"kind": "self", "path": None, "method": "bf16"}
    assert q["latent_drift"] == 0.0 and q["attention_drift"] == 0.0
    assert q["drift"]["latents"] == [0.0, 0.0, 0.0]
    assert q["drift"]["attention"] == {"layer 0": [0.0, 0.0, 0.0], "layer 1": [0.0, 0.0, 0.0]}
    for name in ("psnr_db", "ssim", "lpips", "flicker"):
        assert q[name] == {"missing": "no decoded video: the run used --no-decode"}
    info = read_key(path)
    assert info["method"] == "bf16" and info["layers"] == [0, 1] and not info["video_saved"]
    assert sorted(p.name for p in (path / QUALITY_DIR).iterdir()) == ["attention.pt", "key.json", "latents.pt"]
    # 2 layers x 3 chunks x 5 passes (4 denoising steps + refresh), every token on the tiny config
    assert len(outputs.attention) == 30 and outputs.attention["c2/l1/refresh"].shape == (1, 72, 64)
    cols = compare_quality_columns(q)
    assert cols["quality_latent_drift"] == 0.0 and "quality_psnr_db" not in cols
    assert set(drift_table(q)["series"]) == {"latents", "attention layer 0", "attention layer 1"}


def test_incomplete_rollout_has_quality_missing(tmp_path):
    summary = write_quality(tmp_path, Summary(status="oom"), None, QualityOptions(traces_root=tmp_path), "oom")
    assert summary.quality == {"missing": "the rollout did not complete (trace status oom)"}
    assert json.loads((tmp_path / "summary.json").read_text())["quality"] == summary.quality


def test_untraced_bf16_finds_the_traced_one_and_matches_it_exactly(traced_bf16):
    root, path, _, _ = traced_bf16
    outputs = run_outputs(_recipe())
    assert find_reference(root, outputs.key) == path
    q = compute_quality(None, outputs, load_outputs(path))
    assert q["latent_drift"] == 0.0 and q["attention_drift"] == 0.0  # tracing changes no number


def test_drift_orders_methods(traced_bf16, tmp_path):
    root, path, _, _ = traced_bf16
    q = {}
    for method in ("rtn_int4", "rtn_int2", "prq_int4"):
        outputs = run_outputs(_recipe(), method)
        q[method] = quality_after_rollout(tmp_path / method, outputs, QualityOptions(traces_root=root))
        assert q[method]["reference"] == {"kind": "trace", "path": str(path), "method": "bf16"}
        assert q[method]["drift"]["latents"][0] == 0.0  # the first chunk attends only to itself
        assert all(v > 0 for v in q[method]["drift"]["latents"][1:])
    for key in ("latent_drift", "attention_drift"):
        assert q["rtn_int2"][key] > q["rtn_int4"][key] > q["prq_int4"][key] > 0
    for layer in ("layer 0", "layer 1"):
        assert q["rtn_int2"]["drift"]["attention"][layer][-1] > q["rtn_int4"]["drift"]["attention"][layer][-1]
        assert q["prq_int4"]["drift"]["attention"][layer][-1] < q["rtn_int4"]["drift"]["attention"][layer][-1]


def test_reference_is_run_and_kept_when_none_is_saved(tmp_path):
    outputs = run_outputs(_recipe(frames=6), "rtn_int2")
    q = quality_after_rollout(tmp_path / "cand", outputs, QualityOptions(traces_root=tmp_path))
    assert q["reference"]["kind"] == "run" and Path(q["reference"]["path"]).parent.name == REFERENCE_CACHE
    again = quality_after_rollout(tmp_path / "cand2", outputs, QualityOptions(traces_root=tmp_path))
    assert again["reference"]["kind"] == "cache" and again["reference"]["path"] == q["reference"]["path"]
    assert again["latent_drift"] == q["latent_drift"] > 0
    assert read_key(tmp_path / "cand")["method"] == "rtn_int2"  # saved, but never a reference


def test_reference_must_match_seed_and_embeddings(traced_bf16):
    root = traced_bf16[0]
    r = _recipe()
    other_seed = RolloutRecipe(r.config, RolloutSpec(frames=FRAMES, seed=1, decode=False), r.embeddings, "cpu")
    other_embeds = RolloutRecipe(r.config, r.spec, r.embeddings + 1e-3, "cpu")
    assert find_reference(root, r.key()) is not None
    assert find_reference(root, other_seed.key()) is None and find_reference(root, other_embeds.key()) is None


def test_default_layers():
    assert default_layers(30) == (0, 14, 29) and default_layers(2) == (0, 1) and default_layers(1) == (0,)


def test_pixel_metrics_on_decoded_tiny_rollout(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("KVPROF_LPIPS_BACKBONE", raising=False)
    cand = run_outputs(_recipe(frames=6, decode=True), "rtn_int2")
    ref = run_outputs(_recipe(frames=6, decode=False))  # no video: decoded again from its latents
    assert cand.video.shape == (1, 3, 21, 64, 96) and ref.video is None and ref.key == cand.key
    q = json_safe(compute_quality(None, cand, ref))
    # video frames 0-8 come from the first chunk's latents, identical to the reference's: the
    # rollout's decode and the reference's re-decode agree exactly
    assert q["per_frame"]["psnr_db"][:9] == ["inf"] * 9 and q["psnr_db_mean"] == "inf"
    assert all(isinstance(v, float) for v in q["per_frame"]["psnr_db"][9:])
    assert isinstance(q["psnr_db"], float) and q["psnr_db"] > 0
    assert q["per_frame"]["ssim"][:9] == [1.0] * 9 and q["ssim"] <= 1.0
    assert q["flicker"] > 0 and q["flicker_reference"] > 0
    assert q["lpips"]["missing"].startswith("LPIPS backbone alexnet-owt-7be5be79.pth not found")
    same = json_safe(compute_quality(None, cand, cand))
    assert same["psnr_db"] == "inf" and same["ssim"] == 1.0 and same["flicker"] == same["flicker_reference"]
    save_outputs(tmp_path / "cand", cand)
    assert torch.equal(load_outputs(tmp_path / "cand").video, cand.video)  # small videos are kept
    table = quality_table(q)
    assert table.set_index("metric").loc["lpips", "note"].startswith("missing: LPIPS backbone")


def test_attention_capture_keeps_a_strided_token_subset():
    outputs = run_outputs(_recipe(frames=6), "rtn_int4", max_elements=1000)
    # 72 tokens x 64 channels = 4608 values > 1000: every 5th token is kept (15 of 72)
    assert outputs.attention["c1/l0/denoise3"].shape == (1, 15, 64)
    assert set(outputs.attention) == {f"c{c}/l{l}/{p}" for c in range(2) for l in range(2)
                                      for p in ("denoise0", "denoise1", "denoise2", "denoise3", "refresh")}
