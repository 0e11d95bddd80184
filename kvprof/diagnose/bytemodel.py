"""The byte model: sizes from meta.json and the method's facts (written at trace time).

`Geometry` gives bytes per K (or V) tensor of one layer; `MethodFacts` what the method declared
(bit widths, lossless, cadence, parameter defaults); `code_bits` the bits of one code tensor.
Traces written before `method_facts` existed have none: then bit widths are unknown (None) and
only the two lossless built-ins are known by name.
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kvprof.read.compare import LOSSLESS_METHODS
from tracers.vocabulary import split_layer_buffer

__all__ = ["DTYPE_BYTES", "STORAGE_BITS", "Geometry", "MethodFacts", "split_name", "code_bits"]

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
STORAGE_BITS = {"int8": 8, "int16": 16}


@dataclass
class Geometry:
    """Sizes from meta.json, in bytes per K (or V) tensor of one layer."""

    num_layers: int
    token_bytes: int  # heads * head_dim * element size * batch
    capacity_tokens: int
    window_tokens: int
    chunk_tokens: int

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Geometry | None":
        cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
        try:
            elem = DTYPE_BYTES[str(cfg["dtype"]).replace("torch.", "")]
            tpf = int(cfg["tokens_per_frame"])
            heads = int(cfg["num_heads"])
            hd = int(cfg.get("head_dim") or int(cfg["dim"]) // heads)
            frames = int(r["frames"])
            cap_frames = min(int(r["rolling_frames"]), frames) if r.get("rolling_frames") else frames
            window = min(int(r.get("attn_window_frames") or frames), cap_frames)
            return cls(int(cfg["num_layers"]), heads * hd * elem * int(r.get("batch") or 1), cap_frames * tpf,
                       window * tpf, int(r.get("chunk_frames") or 3) * tpf)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class MethodFacts:
    """The method's own description, from meta.json's `method_facts` (None fields: not recorded)."""

    key_bits: str | None = None
    value_bits: str | None = None
    lossless: bool | None = None
    position_dependent: bool = False
    cadence: str | None = None
    param_defaults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "MethodFacts":
        f = meta.get("method_facts") or {}
        lossless = f.get("lossless")
        if lossless is None and meta.get("method") in LOSSLESS_METHODS:
            lossless = True  # traces from before method_facts: the two lossless built-ins by name
        return cls(key_bits=f.get("key_bits"), value_bits=f.get("value_bits"), lossless=lossless,
                   position_dependent=bool(f.get("position_dependent", False)), cadence=f.get("cadence"),
                   param_defaults=dict(f.get("param_defaults") or {}))


def split_name(name: Any) -> tuple[int | None, str]:
    """(layer, buffer) of an allocation name; (None, the name) when it is not a cache buffer."""
    if name is None or name is pd.NA or (isinstance(name, float) and math.isnan(name)):
        return None, "(unnamed)"
    return _split_text(str(name))


@lru_cache(maxsize=65536)
def _split_text(name: str) -> tuple[int | None, str]:
    # names repeat (the same buffer of every layer and chunk): a live set of 10^5 rows has a few thousand
    layer, buffer = split_layer_buffer(name)
    return (layer, buffer) if buffer is not None else (None, name)


def code_bits(facts: MethodFacts, buffer: str) -> int | None:
    """Bits of one code in code tensor `buffer` ('k_codes', 'v_res_codes'): the method's key/value
    bits when they are a single width ('4') or base+residual ('4+4'); None for mixed widths ('4/2')
    or when the trace does not record them."""
    side = buffer.split("_", 1)[0]
    spec = facts.key_bits if side == "k" else facts.value_bits if side == "v" else None
    if spec is None:
        return None
    parts = str(spec).split("+")
    if not all(p.isdigit() for p in parts) or len(parts) > 2:
        return None
    if len(parts) == 2 and "res" in buffer:
        return int(parts[1])
    return int(parts[0])
