"""The Wan2.1 text-to-video DiT as Self-Forcing runs it causally, chunk by chunk, in plain torch.

Parameter names are Wan's own (`wan/modules/model.py`, Self-Forcing's
`wan/modules/causal_model.py`), so a real Wan / Self-Forcing state dict loads with strict=True.
Self-attention hands its roped q/k/v to a KV cache object (`attend`), which owns the write,
the read and the attention kernel; everything else happens here. Weights are random and seeded
by default, with Wan's zero-initialised projections drawn from a small normal instead, so the
output depends on what the cache returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kvprof.workload.config import ModelConfig
from kvprof.workload.rope import RopeTables, apply_rope, rope_tables
from tracers import stage, tag, tag_tensor
from tracers.vocabulary import CROSS_ATTN, CROSS_KV, FFN, LAYER, PASS_NAMES, TEXT_EMBED

INIT_STD = 0.02


@dataclass(frozen=True)
class LayerCall:
    """What one self-attention call is: the forward call's fields plus the layer."""

    chunk: int
    pass_name: str
    step: int | None
    frame_start: int
    num_frames: int
    tokens_per_frame: int
    layer: int
    num_layers: int

    @property
    def num_tokens(self) -> int:
        """Tokens of the current chunk (the rows of q, k and v)."""
        return self.num_frames * self.tokens_per_frame

    @property
    def token_start(self) -> int:
        """Index of the chunk's first token in the whole video's token sequence."""
        return self.frame_start * self.tokens_per_frame


@dataclass(frozen=True)
class ForwardCall:
    """One forward pass of the DiT over one chunk: which chunk, pass and step, and where it sits.

    `num_layers` is filled in by the model when it builds the per-layer calls; callers may leave it.
    """

    chunk: int
    pass_name: str
    step: int | None
    frame_start: int
    num_frames: int
    tokens_per_frame: int
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if self.pass_name not in PASS_NAMES:
            raise ValueError(f"pass_name must be one of {PASS_NAMES}, got {self.pass_name!r}")
        if self.frame_start < 0 or self.num_frames <= 0 or self.tokens_per_frame <= 0:
            raise ValueError(
                f"bad chunk geometry: frame_start={self.frame_start}, num_frames={self.num_frames}, "
                f"tokens_per_frame={self.tokens_per_frame}"
            )

    @property
    def num_tokens(self) -> int:
        """Tokens of the current chunk."""
        return self.num_frames * self.tokens_per_frame

    def for_layer(self, layer: int, num_layers: int | None = None) -> LayerCall:
        """The call as seen by layer `layer`'s self-attention."""
        n = num_layers if num_layers is not None else self.num_layers
        if n is None:
            raise ValueError("num_layers is unknown: pass it or set ForwardCall.num_layers")
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range for {n} layers")
        return LayerCall(
            chunk=self.chunk,
            pass_name=self.pass_name,
            step=self.step,
            frame_start=self.frame_start,
            num_frames=self.num_frames,
            tokens_per_frame=self.tokens_per_frame,
            layer=layer,
            num_layers=n,
        )


class AttentionCache(Protocol):
    """What the model needs from a layer's KV cache."""

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: LayerCall
    ) -> torch.Tensor:
        """Store k/v [B, L, heads, head_dim] for this call and return attention output, same shape."""
        ...


CrossKV = tuple[torch.Tensor, torch.Tensor]


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of position * 10000**(-i/half); float32 result."""
    half = dim // 2
    # float64 like Wan, so t near 1000 keeps full precision before the float32 cast.
    pos = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    sinusoid = torch.outer(pos, freqs)
    return torch.cat([sinusoid.cos(), sinusoid.sin()], dim=1).float()


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim with a weight (Wan's `WanRMSNorm`): normalised in float32, rounded to
    the input dtype, then scaled by the weight, in one fused kernel plus the scale."""

    def __init__(self, dim: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm upcasts internally and rounds once: the rounding points of Wan's
        # `_norm(x.float()).type_as(x) * weight`, without a float32 copy of x in memory.
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm in the input dtype (Wan's `WanLayerNorm`; the kernel accumulates in float32)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False, device=None, dtype=None):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).type_as(x)


# Modulation and gates run in the model dtype, as Self-Forcing's bf16 pipeline runs them (its e0 comes
# out of bf16 linears and its modulation parameters are bf16); addcmul makes each one kernel with a
# single rounding instead of a float32 round trip of the whole hidden state.
def _modulate(xn: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """xn [B, F*S, D] * (1 + scale) + shift, with per-frame shift/scale [B, F, 1, D]."""
    frames = shift.shape[1]
    return torch.addcmul(shift, xn.unflatten(1, (frames, -1)), 1 + scale).flatten(1, 2)


def _gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate with a per-frame gate [B, F, 1, D]."""
    frames = gate.shape[1]
    return torch.addcmul(x.unflatten(1, (frames, -1)), y.unflatten(1, (frames, -1)), gate).flatten(1, 2)


class _WanAttentionProjections(nn.Module):
    """q/k/v/o projections and q/k RMSNorms shared by Wan's self- and cross-attention (same names)."""

    def __init__(self, dim: int, num_heads: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, **dd)
        self.k = nn.Linear(dim, dim, **dd)
        self.v = nn.Linear(dim, dim, **dd)
        self.o = nn.Linear(dim, dim, **dd)
        self.norm_q = WanRMSNorm(dim, eps, **dd)
        self.norm_k = WanRMSNorm(dim, eps, **dd)


class WanSelfAttention(_WanAttentionProjections):
    """Self-attention projections; the attention itself is the KV cache's `attend`."""

    def forward(self, x: torch.Tensor, rope: RopeTables, cache: AttentionCache, call: LayerCall) -> torch.Tensor:
        b, length, _ = x.shape
        shape = (b, length, self.num_heads, self.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).view(shape), rope)
        k = apply_rope(self.norm_k(self.k(x)).view(shape), rope)
        v = self.v(x).view(shape)
        out = cache.attend(q, k, v, call)
        if out.shape != shape:
            raise ValueError(f"cache.attend returned shape {tuple(out.shape)}, expected {shape}")
        return self.o(out.flatten(2))


class WanCrossAttention(_WanAttentionProjections):
    """Text cross-attention; K/V come precomputed from `project_context`."""

    def project_context(self, context: torch.Tensor) -> CrossKV:
        """K and V [B, text_len, heads, head_dim] of the embedded text context [B, text_len, dim]."""
        b, length, _ = context.shape
        shape = (b, length, self.num_heads, self.head_dim)
        return self.norm_k(self.k(context)).view(shape), self.v(context).view(shape)

    def forward(self, x: torch.Tensor, kv: CrossKV) -> torch.Tensor:
        b, length, _ = x.shape
        k, v = kv
        q = self.norm_q(self.q(x)).view(b, length, self.num_heads, self.head_dim)
        if k.shape[0] != b:
            k, v = k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:])
        # Self-Forcing passes context_lens=None: all text_len tokens (padding included) are attended.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2))


class CausalWanBlock(nn.Module):
    """One DiT block (Wan's `WanAttentionBlock` with cross_attn_norm=True), per-frame modulation."""

    def __init__(self, config: ModelConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        dim, eps = config.dim, config.eps
        self.norm1 = WanLayerNorm(dim, eps, **dd)
        self.self_attn = WanSelfAttention(dim, config.num_heads, eps, **dd)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True, **dd)
        self.cross_attn = WanCrossAttention(dim, config.num_heads, eps, **dd)
        self.norm2 = WanLayerNorm(dim, eps, **dd)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim, **dd),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim, **dd),
        )
        self.modulation = nn.Parameter(torch.empty(1, 6, dim, **dd))

    def modulated_input(self, x: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
        """The self-attention input norm1(x) * (1 + scale) + shift (FlowCache native's change signal)."""
        e = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        return _modulate(self.norm1(x), e[0], e[1])

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        rope: RopeTables,
        cross_kv: CrossKV,
        cache: AttentionCache,
        call: LayerCall,
    ) -> torch.Tensor:
        """x [B, L, D] contiguous and e0 [B, F, 6, D], both in the model dtype."""
        # [1, 6, D] -> [1, 1, 6, D] so each frame gets its own six shift/scale/gate vectors.
        e = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        y = self.self_attn(_modulate(self.norm1(x), e[0], e[1]), rope, cache, call)
        x = _gated_add(x, y, e[2])
        with stage(CROSS_ATTN):
            x = x + self.cross_attn(self.norm3(x), cross_kv)
        with stage(FFN):
            y = self.ffn(_modulate(self.norm2(x), e[3], e[4]))
            x = _gated_add(x, y, e[5])
        return x


class CausalWanHead(nn.Module):
    """Output head: modulated norm then a linear to patch pixels (Wan's `Head`, per frame)."""

    def __init__(self, config: ModelConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = WanLayerNorm(config.dim, config.eps, **dd)
        self.head = nn.Linear(config.dim, config.out_dim * math.prod(config.patch_size), **dd)
        self.modulation = nn.Parameter(torch.empty(1, 2, config.dim, **dd))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, D]; e [B, F, 1, D] (the time embedding, not its projection), model dtype."""
        shift, scale = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        return self.head(_modulate(self.norm(x), shift, scale))


class CausalWanModel(nn.Module):
    """Wan2.1 T2V DiT for Self-Forcing's chunked causal inference.

    Built on `device` in `dtype` directly (parameters are allocated empty there and filled by
    `init_weights`), so the 1.3B model never exists as a float32 CPU copy. On the meta device
    nothing is initialised.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        dtype = dtype if dtype is not None else config.torch_dtype
        # Build on meta first: nn.Linear's own init would be wasted work on 1.4B parameters.
        dd = {"device": "meta", "dtype": dtype}
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size, **dd
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim, **dd), nn.GELU(approximate="tanh"), nn.Linear(dim, dim, **dd)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(config.freq_dim, dim, **dd), nn.SiLU(), nn.Linear(dim, dim, **dd)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6, **dd))
        self.blocks = nn.ModuleList(CausalWanBlock(config, **dd) for _ in range(config.num_layers))
        self.head = CausalWanHead(config, **dd)
        device = torch.device(device)
        if device.type != "meta":
            self.to_empty(device=device)
            init_weights(self, seed)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters."""
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return self.patch_embedding.weight.device

    def compute_cross_kv(self, context: torch.Tensor) -> list[CrossKV]:
        """Per-layer cross-attention K/V [B, text_len, heads, head_dim] of raw text embeddings.

        `context` is [B, n, text_dim] (or [n, text_dim]) with n <= text_len; like Wan it is
        zero-padded to text_len before the text embedding. Marks the `text_embed` and
        `cross_kv` stages and tags the kept K/V as `cross_kv`.
        """
        cfg = self.config
        if context.dim() == 2:
            context = context.unsqueeze(0)
        if context.dim() != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
            raise ValueError(
                f"text context must be [B, n<={cfg.text_len}, {cfg.text_dim}], got {tuple(context.shape)}"
            )
        with tag("activations"):
            with stage(TEXT_EMBED):
                pad = cfg.text_len - context.shape[1]
                ctx = context.to(device=self.device, dtype=self.dtype)
                if pad:
                    ctx = F.pad(ctx, (0, 0, 0, pad))
                ctx = self.text_embedding(ctx)
            kvs: list[CrossKV] = []
            with stage(CROSS_KV):
                for i, block in enumerate(self.blocks):
                    k, v = block.cross_attn.project_context(ctx)
                    tag_tensor(k, "cross_kv", f"cross_k[{i}]")
                    tag_tensor(v, "cross_kv", f"cross_v[{i}]")
                    kvs.append((k, v))
        return kvs

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context_kv: Sequence[CrossKV],
        caches: Sequence[AttentionCache],
        call: ForwardCall,
        reuse: Any = None,
    ) -> torch.Tensor:
        """Flow prediction v [B, out_dim, F, H, W] (model dtype) for latent chunk x [B, in_dim, F, H, W].

        t [B, F] holds each frame's timestep; `call.frame_start` offsets the temporal RoPE.
        `reuse` (FlowCache native's `ResidualReuse`) may skip the block stack and reuse its
        cached residual; skipped passes write no K/V.
        """
        cfg = self.config
        n_layers = cfg.num_layers
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be [B, {cfg.in_dim}, F, H, W], got {tuple(x.shape)}")
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent {tuple(x.shape[2:])} is not divisible by patch {cfg.patch_size}")
        if tuple(t.shape) != (b, frames):
            raise ValueError(f"t must be [B, F] = [{b}, {frames}], got {tuple(t.shape)}")
        grid = (frames // pt, height // ph, width // pw)
        if call.num_frames != grid[0] or call.tokens_per_frame != grid[1] * grid[2]:
            raise ValueError(
                f"call says {call.num_frames} frames x {call.tokens_per_frame} tokens, "
                f"input has {grid[0]} x {grid[1] * grid[2]}"
            )
        if len(caches) != n_layers or len(context_kv) != n_layers:
            raise ValueError(
                f"need {n_layers} caches and cross K/V pairs, got {len(caches)} and {len(context_kv)}"
            )

        with tag("activations"):
            # Contiguous [B, L, D], as Self-Forcing's torch.cat makes it: a transposed view here would
            # make every residual add in every layer keep that layout (strided copies, and a
            # contiguous() inside each layer norm).
            h = self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2).contiguous()

            # Self-Forcing runs the time embedding and all modulation math in the model dtype.
            sin_t = sinusoidal_embedding_1d(cfg.freq_dim, t.flatten()).to(self.dtype)
            e = self.time_embedding(sin_t)
            e0 = self.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (b, frames))
            e = e.unflatten(0, (b, frames)).unsqueeze(2)  # [B, F, 1, D]

            rope = rope_tables(cfg.head_dim, call.frame_start, grid, h.device)
            skip = False
            if reuse is not None:
                with stage("reuse_check"):
                    skip = reuse.should_skip(self.blocks[0].modulated_input(h, e0), call.pass_name, call.step)
            if skip:
                with stage("reuse"):
                    h = reuse.reuse(h)
            else:
                h_in = h
                for i, block in enumerate(self.blocks):
                    with stage(LAYER, i):
                        h = block(h, e0, rope, context_kv[i], caches[i], call.for_layer(i, n_layers))
                if reuse is not None:
                    reuse.store(h_in, h)
                    tag_tensor(reuse.residual, "activations", "flowcache residual")

            out = self.head(h, e)
            return self.unpatchify(out, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, out_dim * prod(patch)] -> [B, out_dim, F, H, W]."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, c)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)


@torch.no_grad()
def init_weights(model: CausalWanModel, seed: int) -> None:
    """Fill every parameter from a generator seeded with `seed` on the model's device.

    Projections (including Wan's zero-initialised output head) and biases get N(0, 0.02);
    modulations randn / sqrt(dim) like Wan; norm weights 1 and norm biases 0. Values are drawn
    in float32 and rounded to the parameter dtype, so a bfloat16 model is the rounded float32
    model of the same seed (on the same device type). A meta model is left as is.
    """
    device = model.device
    if device.type == "meta":
        return
    gen = torch.Generator(device=device).manual_seed(seed)
    dim = model.config.dim
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        # One draw per parameter, scaled in place, named in the trace after the parameter it fills.
        if leaf == "modulation":
            vals = torch.randn(p.shape, generator=gen, device=device).div_(dim**0.5)
        elif isinstance(owner, (WanRMSNorm, nn.LayerNorm)):
            vals = torch.ones(p.shape, device=device) if leaf == "weight" else torch.zeros(p.shape, device=device)
        else:
            vals = torch.randn(p.shape, generator=gen, device=device).mul_(INIT_STD)
        tag_tensor(vals, "weights", f"init draw of {name}")
        p.copy_(vals)


def build_model(
    config: ModelConfig | str,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> CausalWanModel:
    """A seeded random CausalWanModel on `device` in `dtype` (default: the config's), in eval mode."""
    if isinstance(config, str):
        config = ModelConfig.from_name(config)
    return CausalWanModel(config, seed=seed, device=device, dtype=dtype).eval().requires_grad_(False)


def model_num_params(model: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
