"""Spatial mixed precision: a foreground / background split of the spatial positions, from V
only, repeated over every complete frame; foreground and background are gathered, quantized in
groups of 16 in gather order and scattered back (#22-#25)."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from methods.base import KVCall, MethodError, Param, register_method
from methods.partition import Part, PartitionMethod, Plan, TokenSet, fraction, with_default
from methods.schemes import KIVIScheme, QuaRotScheme, RTNScheme, Scheme

MODES = ("hybrid", "topk")


def spatial_scores(v: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """score[s] = variance over complete frames f of m[f, s] = mean |V| over batch, heads and
    channels (float32). Unbiased variance; all zeros with fewer than two frames."""
    b, n, h, d = v.shape
    frames = n // tokens_per_frame
    vf = v[:, : frames * tokens_per_frame].reshape(b, frames, tokens_per_frame, h, d)
    m = vf.abs().mean(dim=(0, 3, 4), dtype=torch.float32)  # [F, S]
    if frames < 2:
        return torch.zeros(tokens_per_frame, dtype=torch.float32, device=v.device)
    return m.var(dim=0)


def foreground_positions(
    score: torch.Tensor, mode: str, threshold: float, min_share: float, max_share: float, target_share: float
) -> tuple[torch.Tensor, int, str]:
    """(bool mask over spatial positions, foreground count, mode used).

    `topk`: exactly round(target * S) highest scores. `hybrid`: score > threshold if that share
    lies in [min, max], else `topk` (one host sync reads the share).
    """
    s = score.numel()
    if mode == "hybrid":
        above = score > threshold
        count = int(above.sum().item())  # host decision of the hybrid rule
        if min_share <= count / s <= max_share:
            return above, count, "threshold"
    count = min(s, round(target_share * s))
    mask = torch.zeros(s, dtype=torch.bool, device=score.device)
    mask[score.topk(count).indices] = True
    return mask, count, "topk"


def spatial_split(
    num_tokens: int, tokens_per_frame: int, fg: torch.Tensor, fg_count: int
) -> tuple[int, dict[str, torch.Tensor]]:
    """Token index lists of foreground and background (ascending) and the per-token mask.

    The spatial mask repeats over every complete frame; tokens of an incomplete frame are
    foreground. Returns the foreground token count and the state tensors.
    """
    s, device = tokens_per_frame, fg.device
    frames = num_tokens // s
    order = torch.argsort(fg.to(torch.uint8), stable=True)  # background first, both ascending
    bg_pos, fg_pos = order[: s - fg_count], order[s - fg_count :]
    starts = torch.arange(frames, device=device)[:, None] * s
    tail = torch.arange(frames * s, num_tokens, device=device)
    idx_fg = torch.cat([(starts + fg_pos[None]).reshape(-1), tail])
    idx_bg = (starts + bg_pos[None]).reshape(-1)
    mask = torch.cat([fg.to(torch.uint8).repeat(frames), torch.ones(num_tokens - frames * s, dtype=torch.uint8, device=device)])
    return frames * fg_count + (num_tokens - frames * s), {"mask": mask, "idx_fg": idx_fg, "idx_bg": idx_bg}


def _params(mode: str, min_share: float, max_share: float, target_share: float) -> dict[str, Param]:
    return {
        "mode": Param(mode, "foreground rule: hybrid (threshold, else topk) or topk", str,
                      lambda v: v in MODES, f"one of {', '.join(MODES)}"),
        "score_threshold": Param(0.02, "hybrid: positions with score > this are foreground", float,
                                 lambda v: v >= 0, "a number >= 0"),
        "min_share": with_default(fraction("min_share", "hybrid: smallest accepted foreground share"), min_share),
        "max_share": with_default(fraction("max_share", "hybrid: largest accepted foreground share"), max_share),
        "target_share": with_default(fraction("target_share", "topk: foreground share"), target_share),
    }


HYBRID = _params("hybrid", 0.45, 0.85, 0.65)
TOPK = _params("topk", 0.6, 0.9, 0.8)


class Spatial(PartitionMethod):
    """Foreground and background schemes over a mask computed from V."""

    family = "spatial"
    position_dependent = True
    fg_scheme: ClassVar[Callable[[], Scheme]]
    bg_scheme: ClassVar[Callable[[], Scheme]]

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> None:
        """The hybrid rule accepts shares in [min_share, max_share]: an empty range is refused."""
        if values["min_share"] > values["max_share"]:
            raise MethodError(f"parameters of {cls.name!r}: min_share {values['min_share']} is above max_share "
                              f"{values['max_share']}; pick min_share <= max_share")

    def plan(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> Plan:
        n, s = k.shape[1], call.tokens_per_frame
        with self.marks.category("kv_scratch"):
            score = spatial_scores(v, s)
            fg, count, used = foreground_positions(
                score, self["mode"], self["score_threshold"], self["min_share"], self["max_share"], self["target_share"]
            )
        with self.marks.category("kv_meta"):
            n_fg, meta = spatial_split(n, s, fg, count)
        fg_pair = (type(self).fg_scheme(), type(self).fg_scheme())
        bg_pair = (type(self).bg_scheme(), type(self).bg_scheme())
        parts = [Part("fg", TokenSet(n_fg, index="idx_fg"), *fg_pair), Part("bg", TokenSet(n - n_fg, index="idx_bg"), *bg_pair)]
        facts: dict[str, Any] = {"fg_positions": count, "fg_rule": used}
        return Plan(parts, meta, facts)


@register_method
class SpatialRTN4RTN2(Spatial):
    name = "spatial_mixed_fg_rtn_int4_bg_rtn_int2"
    key_bits = value_bits = "4/2"
    policy = "spatial mask [hybrid 0.45/0.85/0.65]"
    summary = "foreground rtn 4-bit, background rtn 2-bit; mask from V (hybrid rule)"
    params = HYBRID
    fg_scheme = staticmethod(lambda: RTNScheme(4))
    bg_scheme = staticmethod(lambda: RTNScheme(2))


@register_method
class SpatialRTN4RTN4(Spatial):
    name = "spatial_mixed_fg_rtn_int4_bg_rtn_int4"
    key_bits = value_bits = "4/4"
    policy = "spatial mask [hybrid 0.45/0.85/0.65]"
    summary = "foreground rtn 4-bit, background rtn 4-bit; mask from V (hybrid rule)"
    params = HYBRID
    fg_scheme = staticmethod(lambda: RTNScheme(4))
    bg_scheme = staticmethod(lambda: RTNScheme(4))


@register_method
class SpatialKIVI4KIVI2(Spatial):
    name = "spatial_mixed_fg_kivi_int4_bg_kivi_int2"
    key_bits = value_bits = "4/2"
    policy = "spatial mask [topk 0.6/0.9/0.8]"
    summary = "foreground kivi 4-bit, background kivi 2-bit; mask from V (topk rule)"
    params = TOPK
    fg_scheme = staticmethod(lambda: KIVIScheme(4))
    bg_scheme = staticmethod(lambda: KIVIScheme(2))


@register_method
class SpatialQuaRot4RTN2(Spatial):
    name = "spatial_mixed_fg_quarot_kv_int4_bg_rtn_int2"
    key_bits = value_bits = "4/2"
    policy = "spatial mask [topk 0.6/0.9/0.8]"
    summary = "foreground quarot 4-bit, background rtn 2-bit; mask from V (topk rule)"
    params = TOPK
    fg_scheme = staticmethod(lambda: QuaRotScheme(4))
    bg_scheme = staticmethod(lambda: RTNScheme(2))
