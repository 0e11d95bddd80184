"""What keeps the built-in rollout at Self-Forcing's speed (issue 19), checked on CPU.

On the GPU the model was ~15 % slower in kernel time than the upstream pipeline at the same shape:
its residual stream stayed a transposed view of the patch embedding through all 30 layers (every
add a strided kernel, every layer norm a contiguous() copy), and the norms, modulation, gates and
RoPE made float32 round trips of the whole hidden state that Self-Forcing's bf16 pipeline does
not. These tests pin the layout, the dtypes and the attention call the upstream pipeline uses.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kvprof.workload.config import ModelConfig
from kvprof.workload.model import ForwardCall, WanRMSNorm, build_model
from kvprof.workload.rollout import RolloutSpec, build_caches, make_method_factory, run_rollout
from methods.base import get_method_class

TINY = ModelConfig.from_name("tiny")
BF16 = TINY.with_dtype("bfloat16")


class OpLog(TorchDispatchMode):
    """Every aten op run while active, with its outputs and whether a q/k RMSNorm was running it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[torch._ops.OpOverload, list[torch.Tensor], bool, bool]] = []
        self.in_block = False
        self.in_rms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        self.ops.append((func, outs, self.in_block, self.in_rms > 0))
        return out


def _hooked(model, log: OpLog) -> list[torch.Tensor]:
    """Mark block and RMSNorm extents in `log`; return the list that collects each block's input."""
    inputs: list[torch.Tensor] = []

    def block_pre(mod, args):
        inputs.append(args[0])
        log.in_block = True

    def block_post(mod, args, out):
        log.in_block = False

    def rms_pre(mod, args):
        log.in_rms += 1

    def rms_post(mod, args, out):
        log.in_rms -= 1

    for block in model.blocks:
        block.register_forward_pre_hook(block_pre)
        block.register_forward_hook(block_post)
    for mod in model.modules():
        if isinstance(mod, WanRMSNorm):
            mod.register_forward_pre_hook(rms_pre)
            mod.register_forward_hook(rms_post)
    return inputs


def _forward(cfg: ModelConfig, log: OpLog | None = None):
    model = build_model(cfg, seed=0)
    spec = RolloutSpec(frames=6, decode=False)
    caches = build_caches(cfg, spec, make_method_factory(get_method_class("bf16"), "int8", {}), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 3, cfg.latent_height, cfg.latent_width, generator=g)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    call = ForwardCall(0, "denoise", 0, 0, 3, cfg.tokens_per_frame, cfg.num_layers)
    inputs = _hooked(model, log) if log is not None else []
    with torch.inference_mode():
        kv = model.compute_cross_kv(ctx)
        if log is None:
            model(x, torch.full((1, 3), 937.5), kv, caches, call)
        else:
            with log:
                model(x, torch.full((1, 3), 937.5), kv, caches, call)
    return model, inputs


def test_residual_stream_is_contiguous_in_every_layer() -> None:
    # Self-Forcing's torch.cat hands the blocks a contiguous [B, L, D]; a transposed view would
    # propagate through every residual add.
    _, inputs = _forward(TINY, OpLog())
    assert len(inputs) == TINY.num_layers
    for i, x in enumerate(inputs):
        assert x.is_contiguous(), f"block {i} got a non-contiguous hidden state, strides {x.stride()}"


def test_block_allocates_only_contiguous_tensors() -> None:
    # A non-contiguous fresh tensor means a strided kernel (or a later contiguous() copy). The
    # attention kernels choose their own output layout ([B, L, H, D] underneath, which suits us).
    log = OpLog()
    _forward(BF16, log)
    bad = {str(f) for f, outs, in_block, _ in log.ops if in_block and not f.is_view and not f._schema.is_mutable
           and "scaled_dot_product" not in str(f) and any(o.dim() and not o.is_contiguous() for o in outs)}
    assert not bad, f"ops in a block that allocate non-contiguous tensors: {sorted(bad)}"


def test_bf16_block_makes_no_float32_round_trip_of_the_hidden_state() -> None:
    # Self-Forcing's bf16 pipeline runs layer norms, modulation and gates in bf16; only the q/k
    # RMSNorm (one fused kernel on CUDA) and RoPE (complex64 on [.., head_dim / 2]) upcast.
    log = OpLog()
    _forward(BF16, log)
    wide = {(str(f), o.dtype) for f, outs, in_block, in_rms in log.ops if in_block and not in_rms
            for o in outs if o.dtype == torch.float32 and o.shape[-1] == BF16.dim}
    assert not wide, f"float32 copies of the [.., {BF16.dim}] hidden state in a bf16 block: {sorted(wide)}"
    f64 = {(str(f), o.dtype) for f, outs, in_block, _ in log.ops if in_block
           for o in outs if o.dtype in (torch.float64, torch.complex128)}
    assert not f64, f"float64 work in a block (Wan's complex128 RoPE is not needed): {sorted(f64)}"


def test_attention_gets_what_upstream_gives_sdpa(monkeypatch) -> None:
    # Same call as Self-Forcing's attention(): [B, H, L, D] views with unit last stride, the model
    # dtype, no mask and not causal, so SDPA may pick the flash / cuDNN kernels.
    seen: list[dict] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append({"q": q, "k": k, "v": v, "args": args, "kwargs": kwargs})
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    _forward(BF16)
    kinds = {"self": 0, "cross": 0}
    for call in seen:
        q, k, v = call["q"], call["k"], call["v"]
        assert not call["args"] and not call["kwargs"], "an explicit mask / flag forces a slower SDPA backend"
        for t in (q, k, v):
            assert t.dim() == 4 and t.dtype == torch.bfloat16 and t.stride(-1) == 1
        assert q.shape[1] == BF16.num_heads and q.shape[-1] == BF16.head_dim
        kinds["cross" if k.shape[2] == BF16.text_len else "self"] += 1
    assert kinds == {"self": BF16.num_layers, "cross": BF16.num_layers}


@pytest.mark.parametrize("cfg", [TINY, BF16], ids=["float32", "bfloat16"])
def test_rollout_has_no_host_sync(cfg: ModelConfig) -> None:
    # .item(), bool(tensor), nonzero() stall the CPU on the GPU every layer (upstream does 2 a layer).
    log = OpLog()
    model = build_model(cfg, seed=0)
    spec = RolloutSpec(frames=6, decode=False)
    caches = build_caches(cfg, spec, make_method_factory(get_method_class("bf16"), "int8", {}), torch.device("cpu"))
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim)
    with torch.inference_mode(), log:
        run_rollout(model, ctx, spec, caches)
    syncing = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal"}
    hit = sorted({f.name() for f, *_ in log.ops} & syncing)
    assert not hit, f"host syncs in the rollout: {hit}"
    assert len(log.ops) > 100


def test_rope_is_three_contiguous_kernels() -> None:
    # Upcast, one complex multiply, downcast: the strided unbind/stack version took nine.
    from kvprof.workload.rope import apply_rope, rope_tables

    x = torch.randn(1, 24, 2, 32).bfloat16()
    tables = rope_tables(32, 3, (1, 4, 6), "cpu")
    log = OpLog()
    with log:
        out = apply_rope(x, tables)
    work = [str(f) for f, *_ in log.ops if not f.is_view]
    assert len(work) <= 3, work
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
