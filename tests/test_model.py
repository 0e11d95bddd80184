"""The causal Wan DiT: configs, exact parameter layout, chunked forward, RoPE, checkpoints."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from kvprof.workload.checkpoint import CheckpointError, diffusers_to_wan_key, load_checkpoint
from kvprof.workload.config import CONFIG_NAMES, ModelConfig
from kvprof.workload.model import CausalWanModel, ForwardCall, LayerCall, build_model, model_num_params
from kvprof.workload.rope import apply_rope, axis_dims, rope_tables
from tracers import context as tracer_context

WAN_13B_PARAMS = 1_418_996_800
TINY = ModelConfig.from_name("tiny")


class FullCache:
    """Reference cache: full-precision K/V of every written token, attention over all of them.

    A call writes its chunk at the chunk's token offset (the refresh pass overwrites the
    denoising K/V) and attends to everything up to the end of the chunk: bidirectional within
    the chunk, causal across chunks.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.calls: list[LayerCall] = []

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: LayerCall) -> torch.Tensor:
        self.calls.append(call)
        start, end = call.token_start, call.token_start + call.num_tokens
        if self.k is None or self.k.shape[1] < end:
            grow = lambda old, new: new if old is None else torch.cat([old[:, :start], new], dim=1)
            self.k, self.v = grow(self.k, k), grow(self.v, v)
        else:
            self.k[:, start:end], self.v[:, start:end] = k, v
        kk, vv = self.k[:, :end], self.v[:, :end]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2))
        return out.transpose(1, 2)


def caches(config: ModelConfig) -> list[FullCache]:
    return [FullCache() for _ in range(config.num_layers)]


def make_call(chunk: int = 0, frames: int = 3, pass_name: str = "denoise", step: int | None = 0,
              config: ModelConfig = TINY) -> ForwardCall:
    return ForwardCall(chunk=chunk, pass_name=pass_name, step=step, frame_start=chunk * frames,
                       num_frames=frames, tokens_per_frame=config.tokens_per_frame)


def inputs(seed: int = 0, frames: int = 3, config: ModelConfig = TINY):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, config.in_dim, frames, config.latent_height, config.latent_width, generator=g)
    ctx = torch.randn(1, config.text_len, config.text_dim, generator=g)
    t = torch.full((1, frames), 937.5)
    return x, t, ctx


def run(model: CausalWanModel, x, t, ctx, cs=None, call=None) -> torch.Tensor:
    with torch.no_grad():
        return model(x, t, model.compute_cross_kv(ctx), cs or caches(model.config), call or make_call())


# ---------------------------------------------------------------- configs


def test_presets() -> None:
    assert CONFIG_NAMES == ("tiny", "wan-1.3b")
    assert (TINY.head_dim, TINY.tokens_per_frame, TINY.torch_dtype) == (32, 24, torch.float32)
    wan = ModelConfig.from_name("wan-1.3b")
    assert (wan.num_layers, wan.dim, wan.num_heads, wan.head_dim, wan.ffn_dim) == (30, 1536, 12, 128, 8960)
    assert (wan.tokens_per_frame, wan.text_len, wan.text_dim, wan.torch_dtype) == (1560, 512, 4096, torch.bfloat16)
    assert TINY.with_dtype(torch.bfloat16).dtype == "bfloat16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.dim = 3  # type: ignore[misc]


def test_unknown_config_names_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'wan-1.3b'.*valid names: tiny, wan-1.3b"):
        ModelConfig.from_name("wan-13b")


# ---------------------------------------------------------------- parameter layout


def test_wan_13b_parameter_count_on_meta() -> None:
    model = build_model("wan-1.3b", device="meta")
    assert model_num_params(model) == WAN_13B_PARAMS
    assert model.dtype == torch.bfloat16 and model.device.type == "meta"


def test_state_dict_matches_diffusers_oracle() -> None:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        ref = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        )
    # Same architecture, renamed: with image_dim=None diffusers builds no image embedder and its
    # RoPE tables are non-persistent buffers, so counts are equal, and every tensor maps 1:1.
    assert sum(p.numel() for p in ref.parameters()) == WAN_13B_PARAMS
    ours = {k: tuple(v.shape) for k, v in build_model("wan-1.3b", device="meta").state_dict().items()}
    theirs = {diffusers_to_wan_key(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    assert theirs == ours


def test_wan_parameter_names() -> None:
    keys = set(build_model("tiny", device="meta").state_dict())
    for k in [
        "patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias",
        "time_embedding.0.weight", "time_embedding.2.weight", "time_projection.1.weight",
        "blocks.1.self_attn.q.bias", "blocks.1.self_attn.norm_k.weight", "blocks.1.norm3.weight",
        "blocks.1.norm3.bias", "blocks.1.cross_attn.o.weight", "blocks.1.ffn.0.weight",
        "blocks.1.ffn.2.bias", "blocks.1.modulation", "head.head.weight", "head.modulation",
    ]:
        assert k in keys, k
    assert not any("freqs" in k or k.endswith(("norm1.weight", "norm2.weight")) for k in keys)


# ---------------------------------------------------------------- init


def test_init_is_seeded_and_nothing_is_zero() -> None:
    a, b, c = build_model(TINY, seed=1), build_model(TINY, seed=1), build_model(TINY, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" not in name:
            assert not torch.equal(pa, pc), name
            assert pa.abs().max() > 0, name
    assert a.head.head.weight.std() == pytest.approx(0.02, rel=0.2)
    assert a.blocks[0].modulation.std() == pytest.approx(TINY.dim**-0.5, rel=0.2)


def test_bfloat16_is_the_rounded_float32_model() -> None:
    f32, bf16 = build_model(TINY, seed=3), build_model(TINY, seed=3, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    for p32, p16 in zip(f32.parameters(), bf16.parameters()):
        assert torch.equal(p32.to(torch.bfloat16), p16)


# ---------------------------------------------------------------- forward


def test_forward_shape_and_determinism() -> None:
    x, t, ctx = inputs()
    out1 = run(build_model(TINY, seed=0), x, t, ctx)
    out2 = run(build_model(TINY, seed=0), x, t, ctx)
    out3 = run(build_model(TINY, seed=1), x, t, ctx)
    assert out1.shape == (1, 16, 3, 8, 12) and out1.dtype == torch.float32
    assert torch.isfinite(out1).all()
    assert torch.equal(out1, out2)
    assert not torch.allclose(out1, out3)


def test_output_depends_on_cache_content() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    # Chunk 0 then chunk 1; then chunk 1 again after corrupting chunk 0's cached K/V.
    cs = caches(TINY)
    run(model, x, torch.zeros_like(t), ctx, cs, make_call(0, pass_name="refresh", step=None))
    out = run(model, x, t, ctx, cs, make_call(1))
    for c in cs:
        c.v[:, : 3 * TINY.tokens_per_frame] += 1.0
    out_changed = run(model, x, t, ctx, cs, make_call(1))
    assert (out - out_changed).abs().max() > 1e-4


class RecordingCache(FullCache):
    """Keeps only the current chunk (no history) and remembers the q/k/v it was given."""

    def attend(self, q, k, v, call):
        self.seen = (q.clone(), k.clone(), v.clone())
        self.calls.append(call)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


def test_frame_offset_rotates_q_and_k_only() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    c0, c3 = [RecordingCache() for _ in range(2)], [RecordingCache() for _ in range(2)]
    out0 = run(model, x, t, ctx, c0, make_call(0))
    out3 = run(model, x, t, ctx, c3, make_call(1))  # same content, frame_start 3
    (q0, k0, v0), (q3, k3, v3) = c0[0].seen, c3[0].seen
    assert torch.equal(v0, v3)
    assert not torch.allclose(q0, q3, atol=1e-3) and not torch.allclose(k0, k3, atol=1e-3)
    # RoPE is relative: with attention confined to the chunk, a shift of all positions cancels.
    assert torch.allclose(out0, out3, atol=1e-4)


def test_per_frame_timesteps_matter() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    t2 = t.clone()
    t2[:, 2] = 0.0
    a, b = run(model, x, t, ctx), run(model, x, t2, ctx)
    assert not torch.allclose(a, b)


def test_layer_calls_reach_the_cache() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    cs = caches(TINY)
    run(model, x, t, ctx, cs, make_call(0, step=2))
    for layer, c in enumerate(cs):
        assert c.calls == [LayerCall(chunk=0, pass_name="denoise", step=2, frame_start=0, num_frames=3,
                                     tokens_per_frame=24, layer=layer, num_layers=2)]
    assert c.calls[0].num_tokens == 72 and make_call(2).for_layer(1, 2).token_start == 144


def test_forward_call_validation() -> None:
    with pytest.raises(ValueError, match="pass_name"):
        ForwardCall(chunk=0, pass_name="noise", step=0, frame_start=0, num_frames=3, tokens_per_frame=24)
    with pytest.raises(ValueError, match="num_layers"):
        make_call().for_layer(0)
    assert make_call().for_layer(1, 2).layer == 1


def test_forward_rejects_mismatched_call() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    bad = dataclasses.replace(make_call(), num_frames=2)
    with pytest.raises(ValueError, match="call says 2 frames"):
        run(model, x, t, ctx, call=bad)


def test_bfloat16_forward_tracks_float32() -> None:
    x, t, ctx = inputs()
    ref = run(build_model(TINY, seed=0), x, t, ctx)
    out = run(build_model(TINY, seed=0, dtype=torch.bfloat16), x, t, ctx)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_cross_kv_pads_short_context_like_wan() -> None:
    model = build_model(TINY, seed=0)
    _, _, ctx = inputs()
    short = ctx[:, :5]
    padded = torch.cat([short, torch.zeros(1, TINY.text_len - 5, TINY.text_dim)], dim=1)
    with torch.inference_mode():
        a, b = model.compute_cross_kv(short), model.compute_cross_kv(padded)
    assert len(a) == TINY.num_layers
    assert a[0][0].shape == (1, TINY.text_len, TINY.num_heads, TINY.head_dim)
    assert all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a, b))
    with pytest.raises(ValueError, match="text context"):
        model.compute_cross_kv(torch.zeros(1, TINY.text_len + 1, TINY.text_dim))


def test_wan_13b_forward_shapes_on_meta() -> None:
    cfg = ModelConfig.from_name("wan-1.3b")
    model = build_model(cfg, device="meta")

    class MetaCache:
        def attend(self, q, k, v, call):
            return torch.empty_like(q)

    x = torch.empty(1, 16, 3, 60, 104, device="meta")
    t = torch.empty(1, 3, device="meta")
    kv = model.compute_cross_kv(torch.empty(1, 512, 4096, device="meta"))
    out = model(x, t, kv, [MetaCache() for _ in range(30)], make_call(4, config=cfg))
    assert out.shape == (1, 16, 3, 60, 104) and out.dtype == torch.bfloat16


# ---------------------------------------------------------------- stages and tags


class RecordingSession:
    def __init__(self) -> None:
        self.path: list[str] = []
        self.tags: list[str] = []
        self.stages: list[str] = []
        self.tagged: list[tuple[str, str | None]] = []

    @contextlib.contextmanager
    def stage(self, name: str, index: int | None = None, fine: bool = False) -> Iterator[None]:
        self.path.append(name if index is None else f"{name}[{index}]")
        self.stages.append("/".join(self.path))
        try:
            yield
        finally:
            self.path.pop()

    @contextlib.contextmanager
    def tag(self, category: str) -> Iterator[None]:
        self.tags.append(category)
        yield

    def tag_tensor(self, tensor, category, name=None) -> None:
        self.tagged.append((category, name))


def test_stages_and_tags() -> None:
    model = build_model(TINY, seed=0)
    x, t, ctx = inputs()
    session = RecordingSession()
    tracer_context._set_active(session)  # type: ignore[arg-type]
    try:
        run(model, x, t, ctx)
    finally:
        tracer_context._set_active(None)
    assert session.stages == [
        "text_embed", "cross_kv",
        "layer[0]", "layer[0]/cross_attn", "layer[0]/ffn",
        "layer[1]", "layer[1]/cross_attn", "layer[1]/ffn",
    ]
    assert set(session.tags) == {"activations"}
    assert session.tagged == [("cross_kv", f"cross_{kv}[{i}]") for i in range(2) for kv in "kv"]


# ---------------------------------------------------------------- rope


def wan_complex_rope(x: torch.Tensor, grid: tuple[int, int, int], frame_start: int) -> torch.Tensor:
    """Wan / Self-Forcing's complex-number RoPE (rope_params + causal_rope_apply), as a reference."""
    d = x.shape[-1]
    c = d // 2

    def params(n: int, dim: int) -> torch.Tensor:
        ang = torch.outer(torch.arange(n), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).double() / dim))
        return torch.polar(torch.ones_like(ang), ang)

    freqs = torch.cat([params(1024, d - 4 * (d // 6)), params(1024, 2 * (d // 6)), params(1024, 2 * (d // 6))], dim=1)
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    table = torch.cat([
        ft[frame_start:frame_start + f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * table).flatten(3).to(x.dtype)


@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("frame_start", [0, 3, 39])
def test_rope_matches_wan(head_dim: int, frame_start: int) -> None:
    grid = (3, 4, 6)
    x = torch.randn(2, math.prod(grid), 2, head_dim, generator=torch.Generator().manual_seed(0))
    ours = apply_rope(x, rope_tables(head_dim, frame_start, grid, "cpu"))
    assert torch.allclose(ours, wan_complex_rope(x, grid, frame_start), atol=1e-5)
    assert sum(axis_dims(head_dim)) == head_dim


def test_rope_bfloat16_and_norm_preserving() -> None:
    x = torch.randn(1, 24, 2, 32)
    tables = rope_tables(32, 3, (1, 4, 6), "cpu")
    out = apply_rope(x.bfloat16(), tables)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(apply_rope(x, tables).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_plain_and_self_forcing_layout(tmp_path) -> None:
    src = build_model(TINY, seed=5)
    x, t, ctx = inputs()
    want = run(src, x, t, ctx)
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    nested = tmp_path / "self_forcing.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in src.state_dict().items()}, "step": 7}, nested)
    for path, source in [(plain, "<root>"), (nested, "generator/model")]:
        dst = build_model(TINY, seed=6)
        assert not torch.equal(run(dst, x, t, ctx), want)
        info = load_checkpoint(dst, path)
        assert (info.source, info.num_tensors) == (source, len(src.state_dict()))
        assert torch.equal(run(dst, x, t, ctx), want)


def test_checkpoint_prefers_ema_and_reads_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    ema, raw = build_model(TINY, seed=7), build_model(TINY, seed=8)
    path = tmp_path / "sf.pt"
    torch.save({"generator": raw.state_dict(), "generator_ema": ema.state_dict()}, path)
    dst = build_model(TINY, seed=0)
    assert load_checkpoint(dst, path).source == "generator_ema"
    assert torch.equal(dst.head.head.weight, ema.head.head.weight)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in raw.state_dict().items()}, str(st))
    load_checkpoint(dst, st)
    assert torch.equal(dst.head.head.weight, raw.head.head.weight)


def test_checkpoint_errors_name_the_file(tmp_path) -> None:
    model = build_model(TINY, seed=0)
    sd = model.state_dict()
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_checkpoint(model, tmp_path / "missing.pt")

    good = tmp_path / "good.pt"
    torch.save(sd, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: unreadable"):
        load_checkpoint(model, truncated)

    wrong = tmp_path / "wrong.pt"
    torch.save({**sd, "head.head.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pt: shape mismatch for head\.head\.weight: "
                                              r"checkpoint has \(3, 3\), model expects \(64, 64\)"):
        load_checkpoint(model, wrong)

    missing_keys = tmp_path / "partial.pt"
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, missing_keys)
    with pytest.raises(CheckpointError, match=r"partial\.pt: \d+ missing keys: blocks\.1\..* more"):
        load_checkpoint(model, missing_keys)

    extra = tmp_path / "extra.pt"
    torch.save({**sd, "img_emb.proj.0.weight": torch.zeros(2)}, extra)
    with pytest.raises(CheckpointError, match=r"extra\.pt: 1 unexpected keys: img_emb\.proj\.0\.weight"):
        load_checkpoint(model, extra)

    other = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "epoch": 3}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: no state dict found"):
        load_checkpoint(model, other)
