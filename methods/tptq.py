"""TPTQ: three zones. Recent tier rtn 4-bit; old tier residual 2+2-bit; old keys' outliers in
a float16 side table that overwrites the reconstruction on read (#21)."""
from __future__ import annotations

import torch

from methods.base import KVCall, Param, register_method
from methods.partition import PartitionMethod, Plan, fraction, with_default
from methods.schemes import ResidualScheme, RTNScheme
from methods.tiers import tier_parts, tier_split


@register_method
class TPTQInt2(PartitionMethod):
    """Zones: recent tier (last 15% of positions), old tier, old-key outliers."""

    name = "tptq_int2"
    family = "tptq"
    key_bits = "4/2+2"
    value_bits = "4/2+2"
    policy = "three zones"
    summary = "recent tier rtn 4-bit; old tier residual 2+2-bit; old-key outliers (> 6 sigma, top 0.1%) kept"
    position_dependent = True
    params = {
        "recent_fraction": with_default(fraction("recent_fraction", "share of positions in the recent tier"), 0.15),
        "outlier_sigma": Param(6.0, "old keys with |k| > outlier_sigma * std(old keys) are outliers", float,
                               lambda v: v > 0, "a positive number"),
        "outlier_fraction": with_default(
            fraction("outlier_fraction", "at most this share of old-key elements kept as outliers"), 0.001
        ),
    }

    def plan(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> Plan:
        n = k.shape[1]
        with self.marks.category("kv_meta"):
            n_recent, meta = tier_split(n, self["recent_fraction"], k.device)
        recent = (RTNScheme(4), RTNScheme(4))
        old_k = ResidualScheme(2, 2, outlier_sigma=self["outlier_sigma"], outlier_fraction=self["outlier_fraction"])
        old = (old_k, ResidualScheme(2, 2))
        return Plan(tier_parts(n, n_recent, recent, old), meta, {"recent_count": n_recent})
