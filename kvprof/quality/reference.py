"""The bf16 reference: the bf16 rollout of the same config, seed, frames, window and embeddings.

Found among saved outputs first (`traces/*/quality/` of bf16 traces run with --quality, and
`traces/.kvprof-reference/*/`, where references run here are kept), run otherwise. Runs here are
untraced: they happen after the candidate's trace is closed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvprof.read.baseline import REFERENCE_METHOD
from kvprof.quality.capture import (
    KEY_FILE,
    MAX_ELEMENTS,
    QUALITY_DIR,
    QualityCapture,
    RolloutOutputs,
    RolloutRecipe,
    UnreadableOutputs,
    load_outputs,
    read_key,
    save_outputs,
)

REFERENCE_CACHE = ".kvprof-reference"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def candidate_folders(traces_root: Path) -> list[Path]:
    """Folders that may hold saved outputs: every trace under the root, then the reference cache."""
    root = Path(traces_root)
    found: list[Path] = []
    for base in (root, root / REFERENCE_CACHE):
        if base.is_dir():
            found += sorted(p for p in base.iterdir() if p.is_dir() and p.name != REFERENCE_CACHE)
    return found


def find_reference(traces_root: Path, key: dict[str, Any], exclude: Path | None = None) -> Path | None:
    """The newest folder whose saved bf16 outputs match `key` exactly, or None."""
    excluded = Path(exclude).resolve() if exclude is not None else None
    matches = []
    for folder in candidate_folders(traces_root):
        if excluded is not None and folder.resolve() == excluded:
            continue
        info = read_key(folder)
        if info and info.get("method") == REFERENCE_METHOD and info.get("key") == key:
            matches.append(folder)
    if not matches:
        return None
    return max(matches, key=lambda p: (p / QUALITY_DIR / KEY_FILE).stat().st_mtime)


def run_outputs(recipe: RolloutRecipe, method: str = REFERENCE_METHOD, *, storage: str = "int8",
                params: dict | None = None, integration: str = "study", layers: tuple[int, ...] | None = None,
                max_elements: int = MAX_ELEMENTS) -> RolloutOutputs:
    """Run the recipe's rollout untraced with `method` and capture its outputs."""
    from kvprof.workload.build import build_workload
    from kvprof.workload.rollout import run_rollout
    from methods import get_method_class

    cfg, device = recipe.config, torch.device(recipe.device)
    spec = dataclasses.replace(recipe.spec, integration=integration, free_cache_before_decode=False)
    method_cls = get_method_class(method)
    work = build_workload(cfg, spec, method_cls, storage, params or {}, device, lambda: recipe.embeddings.to(device),
                          checkpoint=recipe.checkpoint, vae_path=recipe.vae)
    with QualityCapture(work.model, spec, recipe.embeddings, method=method_cls.name, checkpoint=recipe.checkpoint,
                        vae=recipe.vae, layers=layers, max_elements=max_elements) as cap:
        with torch.inference_mode():
            result = run_rollout(work.model, work.embeddings, spec, work.caches, work.vae)
        outputs = cap.finish(result)
    outputs.recipe = recipe
    return outputs


def decode_reference(recipe: RolloutRecipe, latents: torch.Tensor) -> torch.Tensor:
    """Decode saved reference latents with the recipe's VAE (host copy of the video)."""
    from kvprof.workload.build import workload_vae
    from kvprof.workload.vae import decode_latents

    vae = workload_vae(recipe.config, recipe.spec.seed, recipe.device, recipe.vae)  # the one the run built
    with torch.inference_mode():
        video = decode_latents(vae, latents.to(recipe.device))
    return video.to("cpu")


@dataclass
class Reference:
    outputs: RolloutOutputs
    source: dict[str, Any]  # kind: trace | cache | self | run, and the folder where there is one


def get_reference(candidate: RolloutOutputs, traces_root: Path, *, exclude: Path | None = None,
                  save_runs: bool = True) -> Reference:
    """Find the candidate's bf16 reference, else (a bf16 candidate) take the candidate itself,
    else run it (and keep it under `traces_root/.kvprof-reference/` when `save_runs`)."""
    found = find_reference(traces_root, candidate.key, exclude)
    if found is not None:
        kind = "cache" if found.parent.name == REFERENCE_CACHE else "trace"
        try:
            return Reference(load_outputs(found), {"kind": kind, "path": str(found)})
        except UnreadableOutputs as exc:  # quality is then missing, naming the file; the trace stands
            raise UnreadableOutputs(f"the bf16 reference {exc}") from None
    if candidate.method == REFERENCE_METHOD:
        return Reference(candidate, {"kind": "self", "path": None})
    if candidate.recipe is None:
        raise LookupError("no saved bf16 reference matches and the candidate has no recipe to run one")
    outputs = run_outputs(candidate.recipe, layers=candidate.layers or None, max_elements=candidate.max_elements)
    path = None
    if save_runs:
        folder = Path(traces_root) / REFERENCE_CACHE / key_digest(candidate.key)
        save_outputs(folder, outputs)
        path = str(folder)
    return Reference(outputs, {"kind": "run", "path": path})
