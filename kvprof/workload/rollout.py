"""The Self-Forcing causal rollout, one plain function per phase (DESIGN section 3).

Latent frames are generated in chunks of 3: four flow-matching denoising steps per chunk at
t = 1000, 937.5, 833.3, 625 (shift 5 already applied; x0 = x_t - sigma * v, re-noised with fresh
noise between steps), then one refresh pass at t = 0 on the clean chunk whose only job is to
rewrite that chunk's K/V in every layer. The VAE decodes the latents at the end while the KV
cache is still alive, as Self-Forcing does, unless asked otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from kvprof.workload.cache import CacheGeometry, LayerKVCache, TracerMarks
from kvprof.workload.config import ModelConfig
from kvprof.workload.model import CausalWanModel, ForwardCall
from methods.base import KVMethod
from tracers import stage, tag, tag_tensor
from tracers.vocabulary import CHUNK, DENOISE, REFRESH, ROLLOUT

CHUNK_FRAMES = 3
DENOISING_TIMESTEPS: tuple[float, ...] = (1000.0, 937.5, 833.3, 625.0)
ATTN_WINDOW_FRAMES = 21
NUM_TRAIN_TIMESTEPS = 1000.0


@dataclass(frozen=True)
class RolloutSpec:
    """Everything that decides the rollout's work (and so its memory and time)."""

    frames: int
    seed: int = 0
    batch: int = 1
    chunk_frames: int = CHUNK_FRAMES
    timesteps: tuple[float, ...] = DENOISING_TIMESTEPS
    attn_window_frames: int = ATTN_WINDOW_FRAMES
    rolling_frames: int | None = None  # None: cache capacity = all frames
    sink_frames: int = 0
    integration: str = "study"
    decode: bool = True
    free_cache_before_decode: bool = False

    def __post_init__(self) -> None:
        if self.frames <= 0 or self.frames % self.chunk_frames:
            raise ValueError(f"frames must be a positive multiple of the chunk size {self.chunk_frames}, got {self.frames}")
        if self.rolling_frames is not None:
            if self.rolling_frames % self.chunk_frames or self.rolling_frames <= self.sink_frames:
                raise ValueError(
                    f"rolling window must be a multiple of {self.chunk_frames} frames larger than the sink "
                    f"({self.sink_frames}), got {self.rolling_frames}"
                )
            if self.sink_frames % self.chunk_frames:
                raise ValueError(f"sink must be a multiple of {self.chunk_frames} frames, got {self.sink_frames}")

    @property
    def num_chunks(self) -> int:
        return self.frames // self.chunk_frames

    @property
    def capacity_frames(self) -> int:
        return self.frames if self.rolling_frames is None else min(self.rolling_frames, self.frames)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sigma(t: float) -> float:
    """Flow-matching noise level of timestep t."""
    return t / NUM_TRAIN_TIMESTEPS


@dataclass
class Progress:
    """What the rollout is doing now, for progress displays."""

    chunk: int
    num_chunks: int
    pass_name: str  # "denoise[s]", "refresh", "decode", "done"


@dataclass
class RolloutResult:
    """Outputs of a rollout: clean latents, decoded video (or None), and the caches."""

    latents: torch.Tensor
    video: torch.Tensor | None
    caches: list[LayerKVCache] = field(default_factory=list)


def build_caches(
    model_cfg: ModelConfig, spec: RolloutSpec, method_factory: Callable[[], KVMethod], device: torch.device
) -> list[LayerKVCache]:
    """One cache per layer; each layer gets its own method instance (methods keep per-layer history)."""
    geo = CacheGeometry(
        batch=spec.batch,
        heads=model_cfg.num_heads,
        head_dim=model_cfg.head_dim,
        tokens_per_frame=model_cfg.tokens_per_frame,
        capacity_frames=spec.capacity_frames,
        attn_window_frames=spec.attn_window_frames,
        sink_frames=spec.sink_frames,
        rolling=spec.rolling_frames is not None,
    )
    with stage("cache_init"):
        return [
            LayerKVCache(l, model_cfg.num_layers, method_factory(), spec.integration, geo, model_cfg.torch_dtype, device)
            for l in range(model_cfg.num_layers)
        ]


def cache_bytes(caches: Sequence[LayerKVCache]) -> tuple[int, int, int]:
    """(logical, stored, resident) bytes of all layers."""
    totals = [0, 0, 0]
    for c in caches:
        for i, n in enumerate(c.byte_counts()):
            totals[i] += n
    return totals[0], totals[1], totals[2]


def generate_chunk(
    model: CausalWanModel,
    chunk: int,
    spec: RolloutSpec,
    context_kv,
    caches: Sequence[LayerKVCache],
    generator: torch.Generator,
    on_progress: Callable[[Progress], None] | None = None,
    reuse=None,
) -> torch.Tensor:
    """Denoise one chunk in `len(spec.timesteps)` steps, then refresh its K/V; returns clean x0."""
    cfg = model.config
    shape = (spec.batch, cfg.in_dim, spec.chunk_frames, cfg.latent_height, cfg.latent_width)
    device, dtype = model.device, model.dtype
    frame_start = chunk * spec.chunk_frames
    with tag("latents"):
        x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
    x0 = x
    for step, t in enumerate(spec.timesteps):
        if on_progress:
            on_progress(Progress(chunk, spec.num_chunks, f"denoise[{step}]"))
        with stage(DENOISE, step):
            call = ForwardCall(chunk, DENOISE, step, frame_start, spec.chunk_frames, cfg.tokens_per_frame, cfg.num_layers)
            with tag("activations"):  # the step's timestep per frame: an input of the forward pass
                t_frames = torch.full((spec.batch, spec.chunk_frames), t, device=device)
            v = model(x, t_frames, context_kv, caches, call, reuse)
            with tag("latents"):
                x0 = (x.float() - sigma(t) * v.float()).to(dtype)
                del v
                if step + 1 < len(spec.timesteps):
                    s_next = sigma(spec.timesteps[step + 1])
                    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
                    x = ((1 - s_next) * x0.float() + s_next * noise).to(dtype)
                    del noise
    if on_progress:
        on_progress(Progress(chunk, spec.num_chunks, "refresh"))
    with stage(REFRESH):
        call = ForwardCall(chunk, REFRESH, None, frame_start, spec.chunk_frames, cfg.tokens_per_frame, cfg.num_layers)
        with tag("activations"):
            t_frames = torch.zeros((spec.batch, spec.chunk_frames), device=device)
        model(x0, t_frames, context_kv, caches, call, reuse)  # only the K/V it writes matter
    return x0


def run_rollout(
    model: CausalWanModel,
    text_embeddings: torch.Tensor,
    spec: RolloutSpec,
    caches: list[LayerKVCache],
    vae=None,
    on_progress: Callable[[Progress], None] | None = None,
    on_chunk_end: Callable[[int, list[LayerKVCache]], None] | None = None,
) -> RolloutResult:
    """Generate `spec.frames` latent frames chunk by chunk, then decode (optional)."""
    cfg = model.config
    device = model.device
    gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    with stage(ROLLOUT):
        context_kv = model.compute_cross_kv(text_embeddings)
        with tag("latents"):
            latents = torch.zeros(
                (spec.batch, cfg.out_dim, spec.frames, cfg.latent_height, cfg.latent_width), device=device, dtype=model.dtype
            )
        tag_tensor(latents, "latents", "latents")
        method = caches[0].method if caches else None
        reuse = method.residual_reuse() if method is not None and method.reuses_residuals else None
        for c in range(spec.num_chunks):
            if reuse is not None:
                reuse.start_chunk()
            with stage(CHUNK, c):
                x0 = generate_chunk(model, c, spec, context_kv, caches, gen, on_progress, reuse)
                latents[:, :, c * spec.chunk_frames : (c + 1) * spec.chunk_frames] = x0
                del x0
            if on_chunk_end:
                on_chunk_end(c, caches)
        video = None
        if spec.decode and vae is not None:
            if on_progress:
                on_progress(Progress(spec.num_chunks - 1, spec.num_chunks, "decode"))
            if spec.free_cache_before_decode:
                caches.clear()
                del context_kv
            from kvprof.workload.vae import decode_latents

            video = decode_latents(vae, latents)
    if on_progress:
        on_progress(Progress(spec.num_chunks - 1, spec.num_chunks, "done"))
    return RolloutResult(latents, video, caches)


def make_method_factory(method_cls: type[KVMethod], storage: str, params: dict) -> Callable[[], KVMethod]:
    """A factory of method instances wired to kvprof's tracers."""
    marks = TracerMarks()
    return lambda: method_cls(storage=storage, marks=marks, **params)
