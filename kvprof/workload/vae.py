"""The Wan VAE decoder (diffusers' `AutoencoderKLWan`): random seeded weights or a local directory.

Nothing is downloaded: presets are built from config, and a real VAE is read only from a local
diffusers-format directory (`--vae DIR`, with `config.json` and weights, or its parent with a
`vae/` subfolder as in `Wan2.1-T2V-1.3B-Diffusers`).
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from kvprof.errors import VaeError  # noqa: F401  (raised here, defined apart: see there)
from tracers import stage, tag, tag_tensor
from tracers.vocabulary import DECODE

VAE_PRESETS: dict[str, dict[str, Any]] = {
    # Smallest width that keeps Wan's structure (3 spatial x2 stages, 2 temporal x2 stages,
    # causal 3D convs, mid-block attention): decodes [1,16,3,8,12] in ~0.15 s on one CPU core.
    "tiny": {
        "base_dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
    },
    # Wan2.1's VAE (diffusers' defaults), 127M parameters.
    "wan": {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "temperal_downsample": [False, True, True],
    },
}
VAE_NAMES: tuple[str, ...] = tuple(VAE_PRESETS)


def _local_vae_dir(path: str | Path) -> Path:
    root = Path(path)
    for cand in (root, root / "vae"):
        if (cand / "config.json").is_file():
            return cand
    if root.is_file():
        raise VaeError(
            f"VAE {root}: is a file; expected a diffusers-format directory with config.json "
            "(e.g. the 'vae' folder of Wan2.1-T2V-1.3B-Diffusers)"
        )
    raise VaeError(f"VAE {root}: no config.json in {root} or {root / 'vae'}")


def check_vae_dir(path: str | Path) -> Path:
    """The VAE folder a run will load, checked far enough to know it loads (config.json parses, each
    safetensors file has a whole header and data), without reading the weights; VaeError otherwise."""
    vae_dir = _local_vae_dir(path)
    try:
        json.loads((vae_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise VaeError(f"VAE {vae_dir / 'config.json'}: unreadable ({exc})") from None
    weights = sorted(vae_dir.glob("*.safetensors"))
    if not weights and not list(vae_dir.glob("*.bin")):
        raise VaeError(f"VAE {vae_dir}: no weights file (diffusion_pytorch_model.safetensors)")
    from safetensors import safe_open

    for f in weights:
        try:
            with safe_open(str(f), "pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
            raise VaeError(f"VAE {f}: not a readable safetensors file ({exc})") from None
    return vae_dir


def build_vae(
    preset: str = "tiny",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
) -> AutoencoderKLWan:
    """A Wan VAE in eval mode on `device` in `dtype`.

    With `path`, real weights from that local directory (the preset is ignored). Otherwise the
    preset's architecture with PyTorch's default init drawn from `seed` (the global RNG state is
    restored afterwards); built on `device` directly, so the weights never go through host memory
    on CUDA. The same seed gives the same weights on the same device type.
    """
    device = torch.device(device)
    if path is not None:
        vae_dir = _local_vae_dir(path)
        try:
            vae = AutoencoderKLWan.from_pretrained(vae_dir, local_files_only=True, torch_dtype=dtype)
        except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError variously
            raise VaeError(f"VAE {vae_dir}: could not load ({type(exc).__name__}: {exc})") from exc
        return vae.to(device).eval().requires_grad_(False)
    if preset not in VAE_PRESETS:
        close = difflib.get_close_matches(preset, VAE_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise VaeError(f"unknown VAE preset {preset!r}; {hint}valid names: {', '.join(VAE_NAMES)}")
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), device:
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**VAE_PRESETS[preset])
    if dtype != torch.float32:
        if vae._keep_in_fp32_modules:
            vae.to(dtype=dtype)
        else:
            # ModelMixin.to warns about fp32-pinned modules on every dtype cast even when there
            # are none (AutoencoderKLWan pins none); the plain cast is then the same thing.
            nn.Module.to(vae, dtype=dtype)
    return vae.eval().requires_grad_(False)


def decoded_shape(vae: AutoencoderKLWan, latent_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """Shape of `decode_latents` output for latents of `latent_shape` [B, z, F, H, W]."""
    b, _, f, h, w = latent_shape
    cfg = vae.config
    st, ss = cfg.scale_factor_temporal or 4, cfg.scale_factor_spatial or 8
    return (b, cfg.out_channels, 1 + st * (f - 1), h * ss, w * ss)


def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Decode normalised latents [B, 16, F, H, W] to video [B, 3, 1+4(F-1), 8H, 8W] in [-1, 1].

    Un-normalises with the VAE config's latents_mean / latents_std exactly as diffusers'
    WanPipeline does. Runs as stage `decode` with temporaries tagged `decode`; the returned
    video is tagged `latents`.
    """
    cfg = vae.config
    if latents.dim() != 5 or latents.shape[1] != cfg.z_dim:
        raise ValueError(f"latents must be [B, {cfg.z_dim}, F, H, W], got {tuple(latents.shape)}")
    with stage(DECODE), tag("decode"):
        z = latents.to(device=vae.device, dtype=vae.dtype)
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        z = z / inv_std + mean
        video = vae.decode(z, return_dict=False)[0]
    tag_tensor(video, "latents", "video")
    return video
