"""Stage, pass and buffer names: the words writer and readers share (as `tracers.categories` is for
categories). The workload marks stages with these constants and names cache buffers through
`layer_buffer_name`; readers group by the same constants and split names with
`split_layer_buffer`, so neither side parses the other's f-strings.
"""
from __future__ import annotations

import re

# Stage names (DESIGN's tree: setup, rollout/chunk[c]/denoise[s]|refresh/layer[l]/..., decode).
SETUP = "setup"
ROLLOUT = "rollout"
TEXT_EMBED = "text_embed"
CROSS_KV = "cross_kv"
CHUNK = "chunk"
DENOISE = "denoise"
REFRESH = "refresh"
LAYER = "layer"
KV_WRITE = "kv_write"
KV_READ = "kv_read"
ATTENTION = "attention"
CROSS_ATTN = "cross_attn"
FFN = "ffn"
DECODE = "decode"
DEQUANTIZE_BUFFER = "dequantize_buffer"  # a read that rebuilds the layer's whole buffer (study)

PASS_NAMES: tuple[str, ...] = (DENOISE, REFRESH)  # the two passes of a chunk
# Phases of a rollout, in order: where readers file an allocation by the stage that made it.
PHASE_NAMES: tuple[str, ...] = (SETUP, TEXT_EMBED, CROSS_KV, DENOISE, REFRESH, DECODE)

_LAYER_BUFFER = re.compile(r"^layer (\d+) / (.+)$")


def layer_buffer_name(layer: int, buffer: str) -> str:
    """The allocation name of cache buffer `buffer` ('k_codes', 'v') of layer `layer`."""
    return f"layer {layer} / {buffer}"


def split_layer_buffer(name: object) -> tuple[int | None, str | None]:
    """(layer, buffer) of a name made by `layer_buffer_name`; (None, None) for any other name."""
    m = _LAYER_BUFFER.match(name) if isinstance(name, str) else None
    return (int(m.group(1)), m.group(2)) if m else (None, None)
