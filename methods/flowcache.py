"""FlowCache: chunk-level cache policies (#26-#31) and residual reuse (#32-#33).

A chunk here is one latent frame (`call.tokens_per_frame` tokens); C = chunks present: those
holding the tensor's written data [0, min(call.written, L)) (the last one may be partial), so C
grows as the rollout writes chunks even when the whole preallocated buffer is passed. Tokens
past the written data hold no data: they are not stored and read back as zeros. Layer budget b_l runs linearly from
`budget_first` at the first layer to `budget_last` at the last. The last
max(1, round(min(r * b_l, 1) * C)) chunks are recent (4-bit); the older chunks are classed by
the policy: `hybrid` (all 2-bit), `adaptive` (important 4-bit, rest 2-bit), `prune` (important
4-bit, retained at the variant's bits, the rest evicted: read back as zeros) and `soft_prune`
(evicted chunks keep one pooled BF16 token). Plans are cached per layer and recomputed only
when C changes; chunk scores keep the previous call's per-layer values as state (the latest
scores, [C, H] float32, are also in the encoded state as `chunk_scores`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from methods.base import KVCall, Param, register_method
from methods.partition import Part, PartitionMethod, Plan, TokenSet, fraction, with_default
from methods.reference import BF16
from methods.schemes import PooledScheme, RTNScheme

# Chunk classes in the stored `chunk_plan` (uint8 per chunk); sorting by class groups them.
EVICTED, LOW, HIGH = 0, 1, 2
HIGH_BITS = 4
DELTA_FLOOR = 1e-8  # floor of mean|s'| in the relative change of chunk scores


def layer_budget(layer: int, num_layers: int, first: float, last: float) -> float:
    """b_l, linear from `first` at layer 0 to `last` at the last layer."""
    if num_layers <= 1:
        return first
    return first + (last - first) * layer / (num_layers - 1)


def recent_count(num_chunks: int, recent_ratio: float, budget: float) -> int:
    """max(1, round(min(r * b_l, 1) * C)) recent chunks (0 when there is no chunk)."""
    if num_chunks == 0:
        return 0
    return min(num_chunks, max(1, round(min(recent_ratio * budget, 1.0) * num_chunks)))


def adaptive_counts(num_old: int, important_ratio: float, budget: float) -> tuple[int, int, int]:
    """(important, low, evicted) old chunks of the adaptive policy."""
    n_imp = min(num_old, max(1, round(important_ratio * budget * num_old))) if num_old else 0
    return n_imp, num_old - n_imp, 0


def prune_counts(num_old: int, rho_imp: float, rho_ret: float, budget: float) -> tuple[int, int, int]:
    """(important, retained, evicted) old chunks of the prune policies."""
    n_imp = min(num_old, round(rho_imp * budget * num_old))
    rest = num_old - n_imp
    n_ret = min(rest, round(rho_ret * budget * rest))
    return n_imp, n_ret, rest - n_ret


def chunk_mean_abs(x: torch.Tensor, tokens_per_chunk: int) -> torch.Tensor:
    """mean|x| per chunk and head over the chunk's tokens, batch and channels: [C, H] float32."""
    b, n, h, d = x.shape
    full = n // tokens_per_chunk
    parts = [
        x[:, : full * tokens_per_chunk].reshape(b, full, tokens_per_chunk, h, d)
        .abs().mean(dim=(0, 2, 4), dtype=torch.float32)
    ]
    if n > full * tokens_per_chunk:  # the partial last chunk
        parts.append(x[:, full * tokens_per_chunk :].abs().mean(dim=(0, 1, 3), dtype=torch.float32)[None])
    return torch.cat(parts, 0)


def score_change(s: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """delta_c = mean_h |s_c - s'_c| / mean_h |s'_c|, s' aligned from the newest chunk;
    1 for chunks without history."""
    c = s.shape[0]
    delta = torch.ones(c, dtype=torch.float32, device=s.device)
    if previous is None or previous.shape[1:] != s.shape[1:] or previous.device != s.device:
        return delta
    m = min(c, previous.shape[0])
    if m == 0:
        return delta
    cur, prev = s[c - m :], previous[previous.shape[0] - m :]
    delta[c - m :] = (cur - prev).abs().mean(1) / prev.abs().mean(1).clamp_min(DELTA_FLOOR)
    return delta


def chunk_tokens(chunks: torch.Tensor, tokens_per_chunk: int, count: int) -> torch.Tensor:
    """Token indices of the given (ascending) chunks, the first `count` of them (int64)."""
    offsets = torch.arange(tokens_per_chunk, device=chunks.device)
    tokens = (chunks[:, None] * tokens_per_chunk + offsets).reshape(-1)
    return tokens if tokens.numel() == count else tokens[:count].clone()


@dataclass
class _CachedPlan:
    key: tuple[Any, ...]
    plan: Plan


class FlowCache(PartitionMethod):
    """Recent chunks 4-bit; older chunks classed by `policy_kind`; RTN per part."""

    family = "flowcache"
    position_dependent = True
    policy_kind: ClassVar[str] = "hybrid"  # hybrid | adaptive | prune | soft_prune
    low_bits: ClassVar[int] = 2  # old chunks (hybrid, adaptive) or retained chunks (prune)
    params: ClassVar[dict[str, Param]] = {
        "budget_first": Param(0.75, "layer budget b_l at the first layer", float, lambda v: 0 < v <= 100, "a number in (0, 100]"),
        "budget_last": Param(1.25, "layer budget b_l at the last layer", float, lambda v: 0 < v <= 100, "a number in (0, 100]"),
        "recent_ratio": with_default(fraction("recent_ratio", "r: recent chunks = max(1, round(min(r*b_l, 1)*C))"), 0.25),
    }
    score_params: ClassVar[dict[str, Param]] = {
        "delta_weight": with_default(fraction("delta_weight", "weight of the score change delta"), 0.7),
        "recency_weight": with_default(fraction("recency_weight", "weight of recency (linspace over old chunks)"), 0.3),
    }

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._history: dict[int, torch.Tensor] = {}  # layer -> previous call's chunk scores [C', H]
        self._plans: dict[int, _CachedPlan] = {}  # layer -> plan, recomputed when C changes

    def reset(self) -> None:
        """Forget score history and cached plans (a new rollout)."""
        self._history.clear()
        self._plans.clear()

    @property
    def uses_scores(self) -> bool:
        return self.policy_kind != "hybrid"

    def plan(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> Plan:
        tpc = call.tokens_per_frame
        n = min(max(call.written, 0), k.shape[1])  # the written data; the rest is not stored
        c = -(-n // tpc)
        budget = layer_budget(call.layer, call.num_layers, self["budget_first"], self["budget_last"])
        scores = None
        if self.uses_scores:
            with self.marks.category("kv_scratch"):
                mean_k, mean_v = chunk_mean_abs(k[:, :n], tpc), chunk_mean_abs(v[:, :n], tpc)
            with self.marks.category("kv_meta"):
                scores = mean_k + mean_v  # s[c, h] = mean|K| + mean|V|
            del mean_k, mean_v
        key = (c, n, k.shape[1], tpc, k.device)
        cached = self._plans.get(call.layer)
        if cached is None or cached.key != key:
            with self.marks.category("kv_meta"):
                plan = self._new_plan(n, tpc, c, budget, scores, self._history.get(call.layer), k.device)
            cached = self._plans[call.layer] = _CachedPlan(key, plan)
        if scores is None:
            return cached.plan
        # The scores are the next call's history: they live on as state of this layer, so the
        # state carries them (kv_meta) and resident bytes account for them.
        self._history[call.layer] = scores
        plan = cached.plan
        return Plan(plan.parts, {**plan.meta, "chunk_scores": scores}, plan.facts)

    def _old_classes(self, n_old: int, budget: float, change: torch.Tensor | None, device) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Class of every old chunk and the (high, low, evicted) counts among them."""
        if self.policy_kind == "hybrid":
            return torch.full((n_old,), LOW, dtype=torch.uint8, device=device), (0, n_old, 0)
        if self.policy_kind == "adaptive":
            counts = adaptive_counts(n_old, self["important_ratio"], budget)
        else:
            counts = prune_counts(n_old, self["rho_imp"], self["rho_ret"], budget)
        recency = torch.linspace(0, 1, n_old, device=device)
        score = self["delta_weight"] * change[:n_old] + self["recency_weight"] * recency
        order = torch.argsort(score, descending=True, stable=True)
        n_hi, n_lo, _ = counts
        classes = torch.empty(n_old, dtype=torch.uint8, device=device)
        classes[order[:n_hi]] = HIGH
        classes[order[n_hi : n_hi + n_lo]] = LOW
        classes[order[n_hi + n_lo :]] = EVICTED
        return classes, counts

    def _new_plan(self, n, tpc, c, budget, scores, previous, device) -> Plan:
        n_recent = recent_count(c, self["recent_ratio"], budget)
        n_old = c - n_recent
        change = score_change(scores, previous) if scores is not None else None
        old_classes, (n_imp, n_low, n_ev) = self._old_classes(n_old, budget, change, device)
        plan_t = torch.cat([old_classes, torch.full((n_recent,), HIGH, dtype=torch.uint8, device=device)])
        by_class = torch.argsort(plan_t, stable=True)  # evicted, low, high; ascending chunks within each
        n_high = n_imp + n_recent
        ev, low, high = by_class[:n_ev], by_class[n_ev : n_ev + n_low], by_class[n_ev + n_low :]
        high_tokens = n_high * tpc - (c * tpc - n)  # the partial last chunk is always recent
        meta = {
            "chunk_plan": plan_t,
            "idx_high": chunk_tokens(high, tpc, high_tokens),
            "idx_low": chunk_tokens(low, tpc, n_low * tpc),
        }
        rtn_hi, rtn_lo = RTNScheme(HIGH_BITS), RTNScheme(self.low_bits)
        parts = [
            Part("high", TokenSet(high_tokens, index="idx_high"), rtn_hi, rtn_hi),
            Part("low", TokenSet(n_low * tpc, index="idx_low"), rtn_lo, rtn_lo),
        ]
        if self.policy_kind == "soft_prune":
            meta["idx_pooled"] = chunk_tokens(ev, tpc, n_ev * tpc)
            pooled = PooledScheme(tpc)
            parts.append(Part("pooled", TokenSet(n_ev * tpc, index="idx_pooled"), pooled, pooled))
        facts = {
            "written_tokens": n,
            "chunks": c,
            "budget": budget,
            "recent_chunks": n_recent,
            "important_chunks": n_imp,
            "low_chunks": n_low,
            "evicted_chunks": n_ev,
        }
        return Plan(parts, meta, facts)


ADAPTIVE_PARAMS = {
    **FlowCache.params,
    **FlowCache.score_params,
    "important_ratio": with_default(fraction("important_ratio", "important old chunks ~ round(ratio * b_l * #old)"), 0.2),
}


def prune_params(rho_ret: float) -> dict[str, Param]:
    return {
        **FlowCache.params,
        **FlowCache.score_params,
        "rho_imp": with_default(fraction("rho_imp", "important old chunks = round(rho_imp * b_l * #old)"), 0.1),
        "rho_ret": with_default(fraction("rho_ret", "retained = round(rho_ret * b_l * #rest)"), rho_ret),
    }


@register_method
class FlowCacheHybridInt2(FlowCache):
    name = "flowcache_hybrid_int2"
    key_bits = value_bits = "4/2"
    policy = "layer budgets"
    summary = "recent chunks rtn 4-bit, other chunks rtn 2-bit; recent share from per-layer budgets"


@register_method
class FlowCacheAdaptiveInt2(FlowCache):
    name = "flowcache_adaptive_int2"
    key_bits = value_bits = "4/2"
    policy = "importance scores"
    policy_kind = "adaptive"
    params = ADAPTIVE_PARAMS
    summary = "recent and important chunks rtn 4-bit, the rest rtn 2-bit"


@register_method
class FlowCachePruneInt4(FlowCache):
    name = "flowcache_prune_int4"
    key_bits = value_bits = "4/evict"
    policy = "[rho_imp 0.1, rho_ret 0.45]"
    policy_kind = "prune"
    low_bits = 4
    params = prune_params(0.45)
    summary = "recent + important chunks 4-bit, retained 4-bit, the rest evicted"


@register_method
class FlowCachePruneInt2(FlowCache):
    name = "flowcache_prune_int2"
    key_bits = value_bits = "4/2/evict"
    policy = "[rho_imp 0.1, rho_ret 0.30]"
    policy_kind = "prune"
    params = prune_params(0.30)
    summary = "recent + important chunks 4-bit, retained 2-bit, the rest evicted"


@register_method
class FlowCacheSoftPruneInt4(FlowCache):
    name = "flowcache_soft_prune_int4"
    key_bits = value_bits = "4/pooled"
    policy = "[0.1, 0.45]"
    policy_kind = "soft_prune"
    low_bits = 4
    params = prune_params(0.45)
    summary = "as flowcache_prune_int4; evicted chunks keep one pooled BF16 token"


@register_method
class FlowCacheSoftPruneInt2(FlowCache):
    name = "flowcache_soft_prune_int2"
    key_bits = value_bits = "4/2/pooled"
    policy = "[0.1, 0.45]"
    policy_kind = "soft_prune"
    params = prune_params(0.45)
    summary = "as flowcache_prune_int2; evicted chunks keep one pooled BF16 token"


# ---------------------------------------------------------------- residual reuse (native)
class ResidualReuse:
    """FlowCache native's skip decision for the transformer block stack, per chunk.

    From the second denoising step on, the relative L1 change of the first block's modulated
    input against the previous step is accumulated since the last full computation; while
    the sum stays below `threshold` the blocks are skipped and the cached residual (output
    minus input of the block stack) is reused. The first `warmup_steps` steps after the first
    always compute; the refresh pass always computes. Pure logic: the rollout owns the call
    sites and asks `should_skip` once per pass (one host sync reads the change).
    """

    def __init__(self, threshold: float = 1.5, warmup_steps: int = 0):
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self.start_chunk()

    def start_chunk(self) -> None:
        """Forget everything: a new chunk starts from a full computation."""
        self.accumulated = 0.0
        self.previous: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.last_change: float | None = None

    def should_skip(self, modulated: torch.Tensor, pass_name: str, step: int | None = None) -> bool:
        """True to skip the blocks this pass and reuse the residual; False to compute.

        `modulated` is the first block's modulated input; `step` the denoising step index.
        """
        if pass_name == "refresh":
            return False
        previous, self.previous = self.previous, modulated.detach()
        if previous is None or (step is not None and step <= self.warmup_steps):
            self.accumulated = 0.0
            return False
        change = ((modulated - previous).abs().mean() / previous.abs().mean().clamp_min(DELTA_FLOOR)).item()
        self.last_change = change
        self.accumulated += change
        if self.accumulated < self.threshold and self.residual is not None:
            return True
        self.accumulated = 0.0
        return False

    def store(self, block_input: torch.Tensor, block_output: torch.Tensor) -> None:
        """Keep the residual of a full computation (output minus input of the block stack)."""
        self.residual = block_output - block_input

    def reuse(self, block_input: torch.Tensor) -> torch.Tensor:
        """The block stack's output from the cached residual."""
        if self.residual is None:
            raise RuntimeError("no residual stored yet: the blocks must run once per chunk first")
        return block_input + self.residual


REUSE_PARAMS = {
    "reuse_threshold": Param(1.5, "skip while the accumulated relative L1 change stays below this", float,
                             lambda v: v >= 0, "a number >= 0"),
    "reuse_warmup": Param(0, "denoising steps after the first that always compute", int,
                          lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0"),
}


class ReusesResiduals:
    """Mixin of the two native methods: the rollout asks `residual_reuse()` when
    `reuses_residuals` is set."""

    reuses_residuals = True

    def reuse_params(self) -> dict[str, Any]:
        return {"threshold": self["reuse_threshold"], "warmup_steps": self["reuse_warmup"]}

    def residual_reuse(self) -> ResidualReuse:
        """A fresh decision object for one rollout."""
        return ResidualReuse(**self.reuse_params())


@register_method
class FlowCacheNative(ReusesResiduals, BF16):
    name = "flowcache_native"
    family = "flowcache"
    key_bits = value_bits = "16"
    policy = "residual reuse"
    summary = "BF16 cache; denoising steps reuse the block-stack residual while inputs barely change"
    lossless = True
    params = REUSE_PARAMS


@register_method
class FlowCacheNativeSoftPruneInt4(ReusesResiduals, FlowCacheSoftPruneInt4):
    name = "flowcache_native_soft_prune_int4"
    policy = "[0.1, 0.45] + residual reuse"
    params = {**prune_params(0.45), **REUSE_PARAMS}
    summary = "flowcache_soft_prune_int4's cache plus flowcache_native's residual reuse"
