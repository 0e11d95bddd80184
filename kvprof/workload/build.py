"""Building a rollout's workload (weights, VAE, text embeddings, KV caches): one recipe for the
traced run (`kvprof trace`) and the untraced bf16 reference of `--quality`.

Inside an open trace everything lands in stage `setup`, weights and the embeddings in their
categories and each weight tensor named; with no trace open the marks are no-ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from kvprof.tagging import tensors_of
from kvprof.workload.cache import LayerKVCache
from kvprof.workload.config import ModelConfig
from kvprof.workload.model import CausalWanModel, build_model
from kvprof.workload.rollout import RolloutSpec, build_caches, make_method_factory
from methods.base import KVMethod
from tracers import stage, tag, tag_tensor
from tracers.vocabulary import SETUP


@dataclass
class Workload:
    """What `run_rollout` needs: the model, the VAE (None without decode), embeddings, one cache per layer."""

    model: CausalWanModel
    vae: Any | None
    embeddings: torch.Tensor
    caches: list[LayerKVCache]


def build_workload(cfg: ModelConfig, spec: RolloutSpec, method_cls: type[KVMethod], storage: str, params: dict,
                   device: torch.device, embeddings: Callable[[], torch.Tensor], *,
                   checkpoint: Path | None = None, vae_path: Path | None = None) -> Workload:
    """Build the workload of `spec` with `method_cls` caches; `embeddings()` makes the text
    embeddings on `device`. Raises CheckpointError / VaeError for files that do not load."""
    with stage(SETUP):
        with tag("weights"):
            model = build_model(cfg, seed=spec.seed, device=device)
        if checkpoint is not None:
            from kvprof.workload.checkpoint import load_checkpoint

            load_checkpoint(model, checkpoint)
        _tag_all(model, "dit")  # parameters and buffers, each by its own name
        vae = None
        if spec.decode:
            with tag("weights"):
                vae = workload_vae(cfg, spec.seed, device, vae_path)
            _tag_all(vae, "vae")
        with tag("activations"):
            embeds = embeddings()
        caches = build_caches(cfg, spec, make_method_factory(method_cls, storage, params), device)
    return Workload(model, vae, embeds, caches)


def workload_vae(cfg: ModelConfig, seed: int, device: torch.device | str, path: Path | None = None) -> Any:
    """The config's VAE preset in its dtype (seeded random weights, or the diffusers folder `path`)."""
    from kvprof.workload.vae import build_vae

    return build_vae(cfg.vae, seed=seed, device=device, dtype=cfg.torch_dtype, path=path)


def _tag_all(module: torch.nn.Module, name: str) -> None:
    for t, n in tensors_of(module, name):
        tag_tensor(t, "weights", n)
