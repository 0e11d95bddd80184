"""Quality of a rollout against its bf16 reference, as the plain dict summary.json keeps.

With random weights every metric measures divergence from the bf16 rollout of the same seed;
with `--checkpoint` they become real quality (DESIGN section 9). A metric that cannot run is
`{"missing": why}`, never a zero.

Layout (JSON-safe: inf/nan become the strings "inf"/"nan"):
  latent_drift       relative L2 of all latents vs the reference (0 = identical)
  attention_drift    relative L2 of the sampled layers' attention outputs, all chunks and passes
  psnr_db            PSNR of the whole video: mean squared error pooled over frames (frames in [0, 1]);
                     finite unless every frame is identical
  psnr_db_mean       mean of per-frame PSNR (inf as soon as one frame is identical)
  ssim               mean SSIM over frames
  lpips              mean LPIPS (AlexNet, v0.1) over frames
  flicker            mean |frame[t+1] - frame[t]| of this run (flicker_reference: the reference's)
  vbench             {dimension: score} (only when dimensions were asked for)
  drift              {"latents": [per chunk], "attention": {"layer N": [per chunk]}}
  per_frame          {"psnr_db": [...], "ssim": [...], "lpips": [...]}
  reference          {"kind": trace|cache|self|run, "path", "method": "bf16"}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvprof.quality import metrics
from kvprof.quality.capture import QUALITY_DIR, RolloutOutputs, parse_attention_key, save_outputs
from kvprof.quality.lpips import lpips_metric
from kvprof.quality.reference import REFERENCE_METHOD, Reference, decode_reference, get_reference
from kvprof.read.summary import Summary, write_summary


@dataclass(frozen=True)
class QualityOptions:
    """What `--quality` was asked to compute, and where references live."""

    traces_root: Path = Path("traces")
    lpips_backbone: Path | None = None
    vbench_dims: tuple[str, ...] = ()
    vbench_python: Path | None = None
    device: str | None = None  # where metrics run; None: where the rollout ran
    reuse_reference: bool = True  # look for a saved bf16 reference before running one
    save_reference_runs: bool = True  # keep a reference run here under traces_root/.kvprof-reference


def missing(why: str) -> dict[str, str]:
    return {"missing": why}


def drift_curves(candidate: RolloutOutputs, reference: RolloutOutputs) -> dict[str, Any]:
    """Per-chunk relative L2 of latents and of each sampled layer's attention outputs."""
    cand_lat, ref_lat = candidate.latents, reference.latents
    out: dict[str, Any] = {"latents": metrics.chunk_drift(cand_lat, ref_lat, candidate.chunk_frames)}
    by_layer: dict[int, dict[int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
    for k, v in candidate.attention.items():
        r = reference.attention.get(k)
        if r is None or r.shape != v.shape:
            continue
        chunk, layer, _ = parse_attention_key(k)
        by_layer.setdefault(layer, {}).setdefault(chunk, []).append((v, r))
    attention: dict[str, Any] = {}
    for layer in candidate.layers:
        chunks = by_layer.get(layer)
        if not chunks:
            why = "not sampled in the reference" if layer not in reference.layers else "no pass in common with the reference"
            attention[f"layer {layer}"] = missing(f"layer {layer}: {why}")
            continue
        attention[f"layer {layer}"] = [
            _pooled_relative_l2(chunks[c]) if c in chunks else None for c in range(candidate.num_chunks)
        ]
    out["attention"] = attention
    return out


def _pooled_relative_l2(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    diff = math.fsum(float((a.float() - b.float()).pow(2).sum()) for a, b in pairs)
    norm = math.fsum(float(b.float().pow(2).sum()) for _, b in pairs)
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff / norm)


def _all_attention(candidate: RolloutOutputs, reference: RolloutOutputs) -> float | dict:
    pairs = [(v, reference.attention[k]) for k, v in candidate.attention.items()
             if k in reference.attention and reference.attention[k].shape == v.shape]
    return _pooled_relative_l2(pairs) if pairs else missing("no sampled attention output in common with the reference")


def pixel_metrics(video: torch.Tensor, ref_video: torch.Tensor, device: torch.device,
                  lpips_backbone: Path | None) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS per frame and mean, and flicker of both videos ([B, 3, T, H, W] in [-1, 1])."""
    if video.shape != ref_video.shape:
        return {name: missing(f"video shape {tuple(video.shape)} differs from the reference's {tuple(ref_video.shape)}")
                for name in ("psnr_db", "ssim", "lpips", "flicker")}
    cand = video.to(device)
    ref = ref_video.to(device)
    cand_unit, ref_unit = metrics.to_unit_range(cand), metrics.to_unit_range(ref)
    f_cand, f_ref = metrics.video_frames(cand_unit), metrics.video_frames(ref_unit)
    mse = metrics.frame_mse(f_cand, f_ref).double()
    psnr = metrics.psnr_from_mse(mse).cpu().tolist()
    ssim = metrics.ssim(f_cand, f_ref).double().cpu().tolist()
    del f_cand, f_ref
    out: dict[str, Any] = {"psnr_db": float(metrics.psnr_from_mse(mse.mean())), "psnr_db_mean": metrics.mean(psnr),
                           "ssim": metrics.mean(ssim)}
    lp = lpips_metric(metrics.video_frames(cand), metrics.video_frames(ref), lpips_backbone, device)
    out["lpips"] = lp["value"] if "value" in lp else lp
    out["flicker"] = metrics.flicker(cand_unit)
    out["flicker_reference"] = metrics.flicker(ref_unit)
    out["per_frame"] = {"psnr_db": psnr, "ssim": ssim}
    if "per_frame" in lp:
        out["per_frame"]["lpips"] = lp["per_frame"]
        out["files"] = {"lpips_backbone": lp["backbone"], "lpips_heads": lp["heads"]}
    return out


def compute_quality(trace_dir: Path | None, candidate: RolloutOutputs, reference: Reference | RolloutOutputs,
                    options: QualityOptions = QualityOptions()) -> dict[str, Any]:
    """Every metric of `candidate` against `reference` (raw floats; see `json_safe`)."""
    if isinstance(reference, RolloutOutputs):
        reference = Reference(reference, {"kind": "given", "path": str(reference.folder) if reference.folder else None})
    ref = reference.outputs
    device = torch.device(options.device or (candidate.recipe.device if candidate.recipe else "cpu"))
    q: dict[str, Any] = {}
    if candidate.latents.shape != ref.latents.shape:
        raise ValueError(f"latents {tuple(candidate.latents.shape)} and reference {tuple(ref.latents.shape)} differ")
    q["latent_drift"] = metrics.relative_l2(candidate.latents.to(device), ref.latents.to(device))
    q["attention_drift"] = _all_attention(candidate, ref)
    drift = drift_curves(candidate, ref)
    pixel_names = ("psnr_db", "ssim", "lpips", "flicker")
    if candidate.video is None:
        q.update({n: missing("no decoded video: the run used --no-decode") for n in pixel_names})
    else:
        ref_video = ref.video
        if ref_video is None and candidate.recipe is not None:
            ref_video = decode_reference(candidate.recipe, ref.latents)
        if ref_video is None:
            q.update({n: missing("the reference has no saved video and no recipe to decode its latents") for n in pixel_names})
        else:
            q.update(pixel_metrics(candidate.video, ref_video, device, options.lpips_backbone))
    if options.vbench_dims:
        if candidate.video is None:
            q["vbench"] = {d: missing("no decoded video: the run used --no-decode") for d in options.vbench_dims}
        else:
            from kvprof.quality.vbench import run_vbench

            workdir = Path(trace_dir) / QUALITY_DIR / "vbench" if trace_dir is not None else Path.cwd() / "vbench-kvprof"
            q["vbench"] = run_vbench(candidate.video, options.vbench_dims, workdir, python=options.vbench_python,
                                     device="cuda" if device.type == "cuda" else "cpu")
    q["drift"] = drift
    q["reference"] = {**reference.source, "method": REFERENCE_METHOD}
    return q


def quality_after_rollout(trace_dir: Path, outputs: RolloutOutputs, options: QualityOptions = QualityOptions()) -> dict[str, Any]:
    """What the runner calls once the trace is closed: find or run the bf16 reference, save this
    run's outputs into `trace_dir/quality/`, compute every metric; a JSON-safe dict for
    Summary.quality. Never raises for a metric that cannot run."""
    try:
        if options.reuse_reference:
            reference = get_reference(outputs, options.traces_root, exclude=trace_dir,
                                      save_runs=options.save_reference_runs)
        elif outputs.method == REFERENCE_METHOD:
            reference = Reference(outputs, {"kind": "self", "path": None})
        elif outputs.recipe is None:
            raise LookupError("the candidate has no recipe to run its bf16 reference with")
        else:
            from kvprof.quality.reference import run_outputs

            reference = Reference(run_outputs(outputs.recipe, layers=outputs.layers, max_elements=outputs.max_elements),
                                  {"kind": "run", "path": None})
    except torch.OutOfMemoryError as exc:
        save_outputs(trace_dir, outputs)
        return missing(f"the bf16 reference ran out of memory: {str(exc).splitlines()[0][:300]}")
    except LookupError as exc:
        save_outputs(trace_dir, outputs)
        return missing(str(exc))
    save_outputs(trace_dir, outputs)
    return json_safe(compute_quality(trace_dir, outputs, reference, options))


def write_quality(trace_dir: Path, summary: Summary, outputs: RolloutOutputs | None,
                  options: QualityOptions, status: str) -> Summary:
    """The summary with its quality (computed for a complete rollout, missing with the status
    otherwise), written to the trace's summary.json; returns the new summary."""
    if outputs is not None and status == "complete":
        summary = summary.with_quality(quality_after_rollout(Path(trace_dir), outputs, options))
    else:
        summary = summary.with_quality(missing(f"the rollout did not complete (trace status {status})"))
    write_summary(trace_dir, summary)
    return summary


def json_safe(value: Any) -> Any:
    """Non-finite floats as strings ('inf', '-inf', 'nan'), tuples as lists, tensors as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)
