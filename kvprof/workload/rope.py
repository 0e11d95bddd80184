"""Wan's 3-axis rotary position embedding, with a temporal offset for causal chunks.

Wan (`rope_params` / `rope_apply`) treats each head vector as complex pairs
(x[2i], x[2i+1]) and multiplies them by unit phasors. Pairs are split between the time,
height and width axes as c - 2*(c//3), c//3, c//3 (c = head_dim // 2), each axis using
frequencies theta**(-2j / axis_dims). Self-Forcing's `causal_rope_apply` shifts the time
positions by the chunk's first latent frame. This module does the same rotation as one complex64
multiply (Wan uses complex128; float32 is far below the bf16 rounding of the result): three
contiguous elementwise kernels per call, on CPU, CUDA and the meta device alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head given to the (time, height, width) axes, as in Wan."""
    d = head_dim
    return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)


def _axis_angles(positions: torch.Tensor, dims: int, theta: float) -> torch.Tensor:
    # float64 like Wan's rope_params, so large frame offsets keep their phase accuracy.
    exponents = torch.arange(0, dims, 2, dtype=torch.float64, device=positions.device) / dims
    return torch.outer(positions.to(torch.float64), theta**-exponents)


@dataclass(frozen=True)
class RopeTables:
    """Unit phasors of every token's rotation angles, [L, 1, head_dim // 2] complex64."""

    phasors: torch.Tensor


def rope_tables(
    head_dim: int,
    frame_start: int,
    grid: tuple[int, int, int],
    device: torch.device | str,
    theta: float = 10000.0,
) -> RopeTables:
    """Angles for a chunk of `grid` = (frames, height, width) patches starting at `frame_start`.

    Tokens are ordered frame-major then row then column, as the patch embedding flattens them.
    """
    f, h, w = grid
    dt, dh, dw = axis_dims(head_dim)
    device = torch.device(device)
    at = _axis_angles(torch.arange(frame_start, frame_start + f, device=device), dt, theta)
    ah = _axis_angles(torch.arange(h, device=device), dh, theta)
    aw = _axis_angles(torch.arange(w, device=device), dw, theta)
    angles = torch.cat(
        [
            at.view(f, 1, 1, -1).expand(f, h, w, -1),
            ah.view(1, h, 1, -1).expand(f, h, w, -1),
            aw.view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, head_dim // 2)
    return RopeTables(phasors=torch.complex(angles.cos().float(), angles.sin().float()))


def apply_rope(x: torch.Tensor, tables: RopeTables) -> torch.Tensor:
    """Rotate x [B, L, heads, head_dim] by the tables; computed in float32, returned in x's dtype."""
    _, length, _, d = x.shape
    table = tables.phasors
    if table.shape[0] != length or table.shape[-1] * 2 != d:
        raise ValueError(
            f"rope tables for {table.shape[0]} tokens x {table.shape[-1] * 2} dims "
            f"do not match input of {length} tokens x {d} dims"
        )
    # (x[2i], x[2i+1]) as one complex number: no strided unbind/stack, each step a contiguous kernel.
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (d // 2, 2)))
    return torch.view_as_real(pairs * table).flatten(3).to(x.dtype)
