"""Methods as a partition of the token axis: each part of the tokens gets its own schemes.

Every quantizing method of METHODS.md is a `PartitionMethod`: its `plan` splits a layer's
tokens into parts (the whole tensor; old tokens and a recent window; age tiers; TPTQ zones;
spatial foreground / background; FlowCache chunk classes), each part is gathered, encoded with
its key and value scheme, and on read decoded and scattered back into a zero buffer. Tokens
in no part read back as zeros (FlowCache's evicted chunks).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from methods.base import EncodedKV, KVCall, KVMethod, Param
from methods.quant import gather_tokens, scatter_tokens
from methods.schemes import Codec, FullPrecisionScheme, Scheme, StateBuilder, Tensors


@dataclass(frozen=True)
class TokenSet:
    """Which tokens a part holds: an int64 index list stored in the state (`index`, its name),
    or host-side ranges [a, b) (no index tensor). `count` tokens either way, in gather order."""

    count: int
    index: str | None = None
    ranges: tuple[tuple[int, int], ...] = ()

    def covers_all(self, num_tokens: int) -> bool:
        return self.index is None and self.ranges == ((0, num_tokens),)

    def gather(self, x: torch.Tensor, tensors: Tensors) -> torch.Tensor:
        """The part's tokens of x ([B, count, H, D]); a view for a single range."""
        if self.index is not None:
            return gather_tokens(x, tensors[self.index])
        if len(self.ranges) == 1:
            a, b = self.ranges[0]
            return x[:, a:b]
        return torch.cat([x[:, a:b] for a, b in self.ranges], 1)

    def scatter(self, out: torch.Tensor, values: torch.Tensor, tensors: Tensors) -> None:
        """out[:, tokens] = values."""
        if self.index is not None:
            scatter_tokens(out, tensors[self.index], values)
            return
        offset = 0
        for a, b in self.ranges:
            out[:, a:b].copy_(values[:, offset : offset + b - a])
            offset += b - a


@dataclass(frozen=True)
class Part:
    """A set of tokens and the schemes that encode its keys and values."""

    name: str  # "" for the main part: tensors are then `k_codes`, else `k_{name}_codes`
    tokens: TokenSet
    k: Scheme
    v: Scheme

    def stem(self, role: str) -> str:
        return f"{role}_{self.name}" if self.name else role

    def scheme(self, role: str) -> Scheme:
        return self.k if role == "k" else self.v


@dataclass
class Plan:
    """A method's split of one call's tokens; `meta` tensors (masks, index lists, chunk plans)
    are stored as `kv_meta`; `facts` are host-side facts kept in `EncodedKV.extra`."""

    parts: list[Part]
    meta: dict[str, torch.Tensor] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def fraction(key: str, text: str) -> Param:
    """A parameter in [0, 1]."""
    return Param(None, text, float, lambda v: 0.0 <= v <= 1.0, f"{key} must lie in [0, 1]")


def with_default(p: Param, default: Any) -> Param:
    return Param(default, p.help, p.parse, p.check, p.rule)


def positive_int(text: str) -> Param:
    return Param(None, text, int, lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1")


class PartitionMethod(KVMethod):
    """Base of the quantizing methods: `plan` splits the tokens, schemes encode each part."""

    @abstractmethod
    def plan(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> Plan:
        """Split the tokens of this call (runs inside the `plan` stage)."""

    def codec(self, head_dim: int) -> Codec:
        return Codec(self.storage, self.marks, head_dim)

    def encode(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> EncodedKV:
        b, n, h, d = k.shape
        with self.marks.stage("plan"):
            plan = self.plan(k, v, call)
        sb = StateBuilder(self.codec(d))
        for name, t in plan.meta.items():
            sb.add(name, t, "kv_meta")
        parts = [p for p in plan.parts if p.tokens.count > 0]
        for part in parts:
            for role, x in (("k", k), ("v", v)):
                if part.tokens.index is not None:
                    with self.marks.stage("gather"), self.marks.category("kv_scratch"):
                        xs = part.tokens.gather(x, plan.meta)
                else:
                    with self.marks.category("kv_scratch"):
                        xs = part.tokens.gather(x, plan.meta)
                part.scheme(role).encode(xs, role, sb, part.stem(role))
                del xs
        return sb.build(
            n, h, d, dtype=k.dtype, batch=b, device=k.device, storage=self.storage, parts=parts, **plan.facts
        )

    @staticmethod
    def _single(state: EncodedKV) -> Part | None:
        parts = state.extra["parts"]
        if len(parts) == 1 and parts[0].tokens.covers_all(state.num_tokens):
            return parts[0]
        return None

    def decode(self, state: EncodedKV, call: KVCall) -> tuple[torch.Tensor, torch.Tensor]:
        single = self._single(state)
        if single is not None:
            return self.decode_range(state, call, 0, state.num_tokens)
        codec = self.codec(state.head_dim)
        dtype, n = state.extra["dtype"], state.num_tokens
        shape = (state.extra["batch"], n, state.heads, state.head_dim)
        out = []
        for role in ("k", "v"):
            with self.marks.stage("scatter"), self.marks.category("kv_dequant"):
                buf = torch.zeros(shape, dtype=dtype, device=state.extra["device"])
            for part in state.extra["parts"]:
                scheme = part.scheme(role)
                vals = scheme.decode(state.tensors, role, part.stem(role), codec, part.tokens.count, dtype, "kv_scratch")
                with self.marks.stage("scatter"):
                    part.tokens.scatter(buf, vals, state.tensors)
                del vals
            out.append(buf)
        return out[0], out[1]

    def decode_range(self, state: EncodedKV, call: KVCall, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        codec = self.codec(state.head_dim)
        dtype, n = state.extra["dtype"], state.num_tokens
        single = self._single(state)
        if single is not None:
            k, v = (
                single.scheme(role).decode(state.tensors, role, single.stem(role), codec, n, dtype, "kv_dequant", start, end)
                for role in ("k", "v")
            )
            return k, v
        parts = state.extra["parts"]
        if any(p.tokens.index is not None for p in parts):  # index lists: decode all, then slice
            return super().decode_range(state, call, start, end)
        # Host ranges only (recent windows): decode just the overlap of each range with [start, end).
        shape = (state.extra["batch"], end - start, state.heads, state.head_dim)
        out = []
        for role in ("k", "v"):
            with self.marks.stage("scatter"), self.marks.category("kv_dequant"):
                buf = torch.zeros(shape, dtype=dtype, device=state.extra["device"])
            for part in parts:
                offset = 0  # position of the range's first token in the part's gather order
                for a, b in part.tokens.ranges:
                    lo, hi = max(a, start), min(b, end)
                    if lo < hi:
                        vals = part.scheme(role).decode(
                            state.tensors, role, part.stem(role), codec, part.tokens.count, dtype, "kv_scratch",
                            offset + lo - a, offset + hi - a,
                        )
                        with self.marks.stage("scatter"):
                            buf[:, lo - start : hi - start].copy_(vals)
                        del vals
                    offset += b - a
            out.append(buf)
        return out[0], out[1]


class UniformMethod(PartitionMethod):
    """One key scheme and one value scheme over the whole tensor; with `recent_window`, the last
    `recent_chunks` chunks of the rollout (a chunk = `frames_per_chunk` latent frames, counted
    back from `call.written`, the real data end) stay in the input dtype (`k_recent`)."""

    recent_window: ClassVar[bool] = False
    recent_params: ClassVar[dict[str, Param]] = {
        "recent_chunks": with_default(positive_int("chunks of the rollout kept full precision"), 2),
        "frames_per_chunk": with_default(positive_int("latent frames per rollout chunk"), 3),
    }

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.recent_window and "recent_chunks" not in cls.params:
            cls.params = {**cls.params, **cls.recent_params}
            cls.position_dependent = True

    @abstractmethod
    def schemes(self) -> tuple[Scheme, Scheme]:
        """(key scheme, value scheme)."""

    def plan(self, k, v, call):
        ks, vs = self.schemes()
        n = k.shape[1]
        if not self.recent_window:
            return Plan([Part("", TokenSet(n, ranges=((0, n),)), ks, vs)])
        window = self["recent_chunks"] * self["frames_per_chunk"] * call.tokens_per_frame
        end = min(max(call.written, 0), n)
        first = max(0, end - window)
        old = tuple((a, b) for a, b in ((0, first), (end, n)) if b > a)
        fp = FullPrecisionScheme()
        parts = [
            Part("", TokenSet(n - (end - first), ranges=old), ks, vs),
            Part("recent", TokenSet(end - first, ranges=((first, end),)), fp, fp),
        ]
        return Plan(parts, facts={"recent_tokens": (first, end)})
