"""Your own KV-cache method as a kvprof plugin: per-token INT4 with a BF16 attention sink.

    kvprof trace --method examples.my_method:TokenInt4Sink          (from the repository root)
    kvprof trace --method examples/my_method.py:TokenInt4Sink       (from anywhere)
    kvprof methods examples.my_method:TokenInt4Sink

Built from kvprof's scheme blocks: KIVI's asymmetric quantizer applied per token to keys too,
and the full-precision scheme for the sink, over a partition of the token axis.
"""
from __future__ import annotations

from methods.base import Param
from methods.partition import Part, PartitionMethod, Plan, TokenSet
from methods.schemes import FullPrecisionScheme, KIVIScheme


class PerToken(KIVIScheme):
    """Asymmetric b-bit codes with one scale and zero point per token, for keys as for values."""

    def encode(self, x, role, sb, stem):
        super().encode(x, "v", sb, stem)

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        return super().decode(t, "v", stem, codec, num_tokens, dtype, category, start, end)


class TokenInt4Sink(PartitionMethod):
    """The first `sink_frames` latent frames stay BF16; every later token is per-token INT4."""

    name = "token_int4_sink"
    family = "example"
    key_bits = value_bits = "4/16"
    policy = "sink frames BF16"
    summary = "per-token asymmetric INT4 of K and V, the first frame(s) kept in BF16 (an attention sink)"
    position_dependent = True  # the sink is the buffer's first tokens: the staged cache re-encodes from 0
    params = {"sink_frames": Param(1, "leading latent frames kept in BF16", int, lambda v: v >= 0, "a whole number >= 0")}

    def plan(self, k, v, call):
        n = k.shape[1]
        sink = min(n, self["sink_frames"] * call.tokens_per_frame)
        q, fp = PerToken(4), FullPrecisionScheme()
        return Plan([Part("", TokenSet(n - sink, ranges=((sink, n),)), q, q),
                     Part("sink", TokenSet(sink, ranges=((0, sink),)), fp, fp)])
