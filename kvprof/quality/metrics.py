"""Divergence and pixel metrics in torch, computed on whatever device the tensors live on.

Videos are the VAE's output, [B, 3, T, H, W] in [-1, 1]; pixel metrics map them to [0, 1]
(clamped) first, so PSNR uses a data range of 1 and flicker is a fraction of full scale.
Per-frame metrics run over batches of `FRAME_BATCH` frames to bound the device memory they take.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
FRAME_BATCH = 8


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] in float32, clamped (the VAE may overshoot)."""
    return ((video.float().clamp(-1.0, 1.0) + 1.0) * 0.5)


def video_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] (a view where possible)."""
    if video.dim() != 5:
        raise ValueError(f"video must be [B, C, T, H, W], got {tuple(video.shape)}")
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def relative_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float32; 0 when both are zero, inf when only ref is."""
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(ref.shape)}")
    diff = torch.linalg.vector_norm((a.float() - ref.float()).flatten()).item()
    norm = torch.linalg.vector_norm(ref.float().flatten()).item()
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def chunk_drift(latents: torch.Tensor, ref: torch.Tensor, chunk_frames: int) -> list[float]:
    """Relative L2 of each chunk's latent frames [B, C, F, H, W] against the reference's."""
    if latents.shape != ref.shape:
        raise ValueError(f"latent shapes differ: {tuple(latents.shape)} vs {tuple(ref.shape)}")
    frames = latents.shape[2]
    return [
        relative_l2(latents[:, :, s : s + chunk_frames], ref[:, :, s : s + chunk_frames])
        for s in range(0, frames, chunk_frames)
    ]


def frame_mse(frames: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each frame [N, C, H, W] (float32 [N])."""
    _check_pair(frames, ref)
    out = []
    for s in range(0, frames.shape[0], FRAME_BATCH):
        a, b = frames[s : s + FRAME_BATCH].float(), ref[s : s + FRAME_BATCH].float()
        out.append((a - b).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """10 log10(range^2 / mse) in dB; inf where mse is 0."""
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(frames: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each frame [N, C, H, W] (float32 [N]); inf for identical frames."""
    return psnr_from_mse(frame_mse(frames, ref), data_range)


def video_psnr(frames: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR of the mean squared error pooled over all frames (finite unless all are identical)."""
    return float(psnr_from_mse(frame_mse(frames, ref).double().mean(), data_range))


def _gaussian_window(size: int, sigma: float, device, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of x [N, C, H, W], per channel."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(frames: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each frame [N, C, H, W] (float32 [N]), averaged over channels and positions.

    Frames smaller than the 11-pixel window use the largest odd window that fits.
    """
    _check_pair(frames, ref)
    size = min(SSIM_WINDOW, frames.shape[-1], frames.shape[-2])
    size -= 1 - size % 2
    g = _gaussian_window(size, SSIM_SIGMA, frames.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = []
    for s in range(0, frames.shape[0], FRAME_BATCH):
        a, b = frames[s : s + FRAME_BATCH].float(), ref[s : s + FRAME_BATCH].float()
        mu_a, mu_b = _filter(a, g), _filter(b, g)
        var_a = _filter(a * a, g) - mu_a * mu_a
        var_b = _filter(b * b, g) - mu_b * mu_b
        cov = _filter(a * b, g) - mu_a * mu_b
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
        # SSIM <= 1 exactly, but float32 rounding of num / den lands a hair above it (1 + 1.2e-7)
        # on near-identical windows; the bound is part of the metric's meaning, so keep it
        out.append((num / den).clamp(max=1.0).flatten(1).mean(1))
    return torch.cat(out)


def flicker(video_unit: torch.Tensor) -> float:
    """Mean absolute difference of consecutive frames of a [0, 1] video [B, C, T, H, W]."""
    if video_unit.dim() != 5:
        raise ValueError(f"video must be [B, C, T, H, W], got {tuple(video_unit.shape)}")
    t = video_unit.shape[2]
    if t < 2:
        return math.nan
    total = 0.0
    for s in range(0, t - 1, FRAME_BATCH):
        e = min(s + FRAME_BATCH, t - 1)
        total += (video_unit[:, :, s + 1 : e + 1].float() - video_unit[:, :, s:e].float()).abs().sum().item()
    b, c, _, h, w = video_unit.shape
    return total / (b * c * (t - 1) * h * w)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (inf if any value is inf, nan for none)."""
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else math.nan


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"frames must be two [N, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
