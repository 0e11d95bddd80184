"""The Wan VAE wrapper: tiny preset decode on CPU, seeding, normalisation, errors."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from kvprof.workload.vae import VAE_NAMES, VAE_PRESETS, VaeError, build_vae, decode_latents, decoded_shape
from tracers import context as tracer_context


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(seed))


def test_presets() -> None:
    assert VAE_NAMES == ("tiny", "wan")
    assert VAE_PRESETS["wan"] == {
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "temperal_downsample": [False, True, True],
    }


def test_tiny_decode_shape_finite_and_seeded() -> None:
    z = latents()
    a = decode_latents(build_vae("tiny", seed=0), z)
    # 1 + 4*(3-1) frames, 8x spatial upsampling, RGB in [-1, 1].
    assert a.shape == (1, 3, 9, 64, 96) == decoded_shape(build_vae("tiny"), tuple(z.shape))
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert a.std() > 0.05  # random weights still give a non-degenerate video
    assert torch.equal(a, decode_latents(build_vae("tiny", seed=0), z))
    assert not torch.allclose(a, decode_latents(build_vae("tiny", seed=1), z))


def test_seeding_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_vae("tiny", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_decode_unnormalises_like_wan_pipeline() -> None:
    vae = build_vae("tiny", seed=0)
    z = latents()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        want = vae.decode(z * std + mean, return_dict=False)[0]
    assert torch.allclose(decode_latents(vae, z), want, atol=1e-5)


def test_bfloat16_decode() -> None:
    vae = build_vae("tiny", seed=0, dtype=torch.bfloat16)
    out = decode_latents(vae, latents())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 9, 64, 96)


class _Session:
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.tags: list[str] = []
        self.tagged: list[tuple[str, str | None, tuple[int, ...]]] = []

    @contextlib.contextmanager
    def stage(self, name: str, index: int | None = None, fine: bool = False) -> Iterator[None]:
        self.stages.append(name)
        yield

    @contextlib.contextmanager
    def tag(self, category: str) -> Iterator[None]:
        self.tags.append(category)
        yield

    def tag_tensor(self, tensor, category, name=None) -> None:
        self.tagged.append((category, name, tuple(tensor.shape)))


def test_decode_marks_stage_and_tags_video() -> None:
    vae = build_vae("tiny", seed=0)
    session = _Session()
    tracer_context._set_active(session)  # type: ignore[arg-type]
    try:
        decode_latents(vae, latents())
    finally:
        tracer_context._set_active(None)
    assert session.stages == ["decode"] and session.tags == ["decode"]
    assert session.tagged == [("latents", "video", (1, 3, 9, 64, 96))]


def test_errors(tmp_path) -> None:
    with pytest.raises(VaeError, match="unknown VAE preset 'tiyn'; did you mean 'tiny'"):
        build_vae("tiyn")
    with pytest.raises(VaeError, match="no config.json"):
        build_vae(path=tmp_path)
    weights = tmp_path / "Wan2.1_VAE.pth"
    weights.write_bytes(b"x")
    with pytest.raises(VaeError, match="is a file; expected a diffusers-format directory"):
        build_vae(path=weights)
    with pytest.raises(ValueError, match=r"latents must be \[B, 16, F, H, W\]"):
        decode_latents(build_vae("tiny"), torch.zeros(1, 4, 3, 8, 12))


def test_loads_local_directory(tmp_path) -> None:
    src = build_vae("tiny", seed=4)
    src.save_pretrained(tmp_path / "vae")
    loaded = build_vae("wan", path=tmp_path)  # finds the vae/ subfolder; the preset is ignored
    z = latents()
    assert torch.equal(decode_latents(loaded, z), decode_latents(src, z))
