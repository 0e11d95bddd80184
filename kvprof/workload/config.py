"""Model presets for the causal Wan DiT (DESIGN section 3), looked up by name."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import ClassVar

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Wan2.1 text-to-video DiT plus the latent grid it runs on.

    `dtype` is a name ("float32" / "bfloat16") so the config stays JSON-friendly for trace
    metadata; `torch_dtype` gives the torch object. `vae` names a preset in `kvprof.workload.vae`.
    """

    name: str
    num_layers: int
    dim: int
    num_heads: int
    ffn_dim: int
    text_dim: int
    text_len: int
    latent_height: int
    latent_width: int
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    dtype: str = "float32"
    vae: str = "tiny"

    _presets: ClassVar[dict[str, "ModelConfig"]]

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        # Wan's 3-axis RoPE splits head_dim into complex pairs: t gets d - 4*(d//6), h and w 2*(d//6).
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 6 for 3-axis RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        _, ph, pw = self.patch_size
        if self.latent_height % ph or self.latent_width % pw:
            raise ValueError(
                f"latent {self.latent_height}x{self.latent_width} is not divisible by patch {self.patch_size}"
            )

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one latent frame becomes after patchifying."""
        _, ph, pw = self.patch_size
        return (self.latent_height // ph) * (self.latent_width // pw)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype the model runs in."""
        return DTYPES[self.dtype]

    def with_dtype(self, dtype: str | torch.dtype) -> "ModelConfig":
        """A copy of this config running in another dtype (name or torch dtype)."""
        if isinstance(dtype, torch.dtype):
            names = {v: k for k, v in DTYPES.items()}
            if dtype not in names:
                raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")
            dtype = names[dtype]
        return dataclasses.replace(self, dtype=dtype)

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        """The preset called `name`; a ValueError listing the valid names otherwise."""
        try:
            return cls._presets[name]
        except KeyError:
            close = difflib.get_close_matches(name, CONFIG_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown model config {name!r}; {hint}valid names: {', '.join(CONFIG_NAMES)}"
            ) from None


ModelConfig._presets = {
    # CPU default: small enough that a whole rollout runs in seconds in tests.
    "tiny": ModelConfig(
        name="tiny",
        num_layers=2,
        dim=64,
        num_heads=2,
        ffn_dim=128,
        text_dim=32,
        text_len=16,
        latent_height=8,
        latent_width=12,
        freq_dim=32,
        dtype="float32",
        vae="tiny",
    ),
    # Wan2.1-T2V-1.3B at 480x832 px (VAE stride 8): the shape Self-Forcing ships.
    "wan-1.3b": ModelConfig(
        name="wan-1.3b",
        num_layers=30,
        dim=1536,
        num_heads=12,
        ffn_dim=8960,
        text_dim=4096,
        text_len=512,
        latent_height=60,
        latent_width=104,
        freq_dim=256,
        dtype="bfloat16",
        vae="wan",
    ),
}

CONFIG_NAMES: tuple[str, ...] = tuple(ModelConfig._presets)
