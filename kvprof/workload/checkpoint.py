"""Loading real Wan / Self-Forcing DiT weights into `CausalWanModel` (`--checkpoint`).

Accepted layouts: a bare Wan state dict (`blocks.0.self_attn.q.weight`, ...), Self-Forcing's
training checkpoints (`{"generator": ..., "generator_ema": ...}` with keys prefixed `model.`),
other common wrappers (`model`, `state_dict`, `module` keys or prefixes), and diffusers'
`WanTransformer3DModel` naming, which is renamed to Wan's. Loading is strict; every failure is a
`CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Wrapper keys tried in order. Self-Forcing's README runs inference with --use_ema, so the EMA
# generator is preferred when a checkpoint holds both.
_NEST_KEYS = ("generator_ema", "generator", "model", "state_dict", "module")
_PREFIXES = ("module.", "model.", "_orig_mod.")

# diffusers WanTransformer3DModel name -> Wan name (the renaming diffusers' conversion applies).
_DIFFUSERS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    # diffusers' norm2 is the affine cross-attention norm, Wan's norm3.
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
)

_SHOW = 5  # how many offending keys an error names


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


@dataclass(frozen=True)
class CheckpointInfo:
    """What `load_checkpoint` loaded: from which file, which nested entry, how many tensors."""

    path: str
    source: str
    num_tensors: int


def diffusers_to_wan_key(key: str) -> str:
    """Wan's name for a diffusers `WanTransformer3DModel` parameter name (unchanged if unknown)."""
    for pattern, repl in _DIFFUSERS_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    source: list[str] = []
    while not _is_tensor_dict(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointError(path, f"expected a state dict, found {type(obj).__name__}")
        key = next((k for k in _NEST_KEYS if k in obj), None)
        if key is None:
            shown = ", ".join(map(repr, list(obj)[:_SHOW]))
            raise CheckpointError(
                path, f"no state dict found: top-level keys are {shown} (looked for {', '.join(_NEST_KEYS)})"
            )
        source.append(key)
        obj = obj[key]
    sd = dict(obj)  # type: ignore[arg-type]
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            source.append(prefix.rstrip("."))
    if any(k.startswith("condition_embedder.") for k in sd):
        sd = {diffusers_to_wan_key(k): v for k, v in sd.items()}
        source.append("diffusers-names")
    return sd, "/".join(source) or "<root>"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The unwrapped Wan-named state dict in `path` and a description of where it was found."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as exc:
                raise CheckpointError(path, "reading .safetensors needs the 'safetensors' package") from exc
            obj: object = load_file(str(path), device="cpu")
        else:
            try:
                # mmap keeps a 5 GB checkpoint out of host RAM; legacy (non-zip) files cannot be mapped.
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise CheckpointError(path, f"unreadable ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, path)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def load_checkpoint(model: nn.Module, path: str | Path) -> CheckpointInfo:
    """Load a Wan / Self-Forcing state dict from `path` into `model`, strictly.

    Values are cast to the model's dtype and device by `load_state_dict`. Raises
    `CheckpointError` for a missing or unreadable file, missing or unexpected keys, and shape
    mismatches (naming the key and both shapes).
    """
    sd, source = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(path, f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        raise CheckpointError(path, f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                path,
                f"shape mismatch for {key}: checkpoint has {tuple(sd[key].shape)}, model expects {tuple(ref.shape)}",
            )
    model.load_state_dict(sd, strict=True)
    return CheckpointInfo(path=str(path), source=source, num_tensors=len(sd))
