"""The uncompressed reference: K/V kept in BF16 (the config dtype), written in place."""
from __future__ import annotations

import torch

from methods.base import EncodedKV, KVCall, KVMethod, register_method


@register_method
class BF16(KVMethod):
    """No quantization; the cache keeps one full-precision buffer per layer."""

    name = "bf16"
    family = "reference"
    key_bits = "16"
    value_bits = "16"
    policy = "-"
    summary = "the uncompressed reference: K and V stored in BF16"
    lossless = True

    def encode(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> EncodedKV:
        return EncodedKV(
            tensors={"k": k, "v": v},
            categories={"k": "kv_fp", "v": "kv_fp"},
            bits={},
            num_tokens=k.shape[1],
            heads=k.shape[2],
            head_dim=k.shape[3],
        )

    def decode(self, state: EncodedKV, call: KVCall) -> tuple[torch.Tensor, torch.Tensor]:
        return state.tensors["k"], state.tensors["v"]
