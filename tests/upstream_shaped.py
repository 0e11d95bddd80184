"""A tiny pipeline with the *shape* of Self-Forcing's CausalInferencePipeline, for CPU tests of
kvprof.integrations.self_forcing. Written for these tests (no upstream code): the attribute names
and the structure of `inference()` are what the adapter relies on:

- `kv_cache1`: a list of per-layer dicts {"k", "v", "global_end_index", "local_end_index"};
- `crossattn_cache`: per-layer dicts {"k", "v", "is_init"} whose tensors the first use replaces;
- `generator.model.freqs`: a RoPE-like table as a plain attribute, replaced on the first forward;
- `denoising_step_list`: warped timesteps; one generator call per step, then a timestep-0 pass.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

DIM, HEADS, LAYERS, TEXT_LEN, TEXT_DIM, CH = 32, 2, 2, 8, 16, 4
H = W = 4  # latent grid: 16 tokens a frame (patch 1x1)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.ck, self.cv = nn.Linear(TEXT_DIM, DIM), nn.Linear(TEXT_DIM, DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x, context, freqs, kv_cache, crossattn_cache, current_start):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).unbind(2)
        k = k * freqs[current_start:current_start + n, None, :]
        end = current_start + n
        kv_cache["k"][:, current_start:end] = k
        kv_cache["v"][:, current_start:end] = v
        kv_cache["global_end_index"].fill_(end)
        kv_cache["local_end_index"].fill_(end)
        att = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), kv_cache["k"][:, :end].transpose(1, 2), kv_cache["v"][:, :end].transpose(1, 2))
        x = x + att.transpose(1, 2).reshape(b, n, DIM)
        if not crossattn_cache["is_init"]:
            crossattn_cache["is_init"] = True
            crossattn_cache["k"] = self.ck(context).view(b, -1, HEADS, DIM // HEADS)
            crossattn_cache["v"] = self.cv(context).view(b, -1, HEADS, DIM // HEADS)
        cross = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), crossattn_cache["k"].transpose(1, 2), crossattn_cache["v"].transpose(1, 2))
        return x + self.out(cross.transpose(1, 2).reshape(b, n, DIM))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dim, self.num_heads, self.num_layers, self.patch_size = DIM, HEADS, LAYERS, (1, 1, 1)
        self.local_attn_size = -1
        self.embed = nn.Linear(CH, DIM)
        self.head = nn.Linear(DIM, CH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.freqs = torch.linspace(0.5, 1.5, 256 * (DIM // HEADS), dtype=torch.float64).view(256, DIM // HEADS)

    def forward(self, x, t, context, kv_cache, crossattn_cache, current_start):
        if self.freqs.dtype != x.dtype:  # like upstream's move to the device: a new tensor on first use
            self.freqs = self.freqs.to(x.dtype)
        b, c, f, h, w = x.shape
        tokens = self.embed(x.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c)) * (1 + t.float().mean() / 1000)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, context, self.freqs, kv_cache[i], crossattn_cache[i], current_start)
        return self.head(tokens).view(b, f, h, w, c).permute(0, 4, 1, 2, 3)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()

    def forward(self, noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                current_start=None):
        flow = self.model(noisy_image_or_video.permute(0, 2, 1, 3, 4), t=timestep, context=conditional_dict["prompt_embeds"],
                          kv_cache=kv_cache, crossattn_cache=crossattn_cache, current_start=current_start).permute(0, 2, 1, 3, 4)
        sigma = (timestep.float() / 1000)[:, :, None, None, None]
        return flow, noisy_image_or_video - sigma * flow


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(TEXT_DIM, TEXT_DIM)

    def forward(self, text_prompts):
        g = torch.Generator().manual_seed(len(text_prompts[0]))
        return {"prompt_embeds": self.proj(torch.randn(len(text_prompts), TEXT_LEN, TEXT_DIM, generator=g))}


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(CH, 3 * 4)

    def decode_to_pixel(self, latent, use_cache=False):
        b, f, c, h, w = latent.shape
        return self.up(latent.permute(0, 1, 3, 4, 2)).view(b, f, h, w, 3, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(
            b, f, 3, 2 * h, 2 * w)


class Pipeline(nn.Module):
    """The toy CausalInferencePipeline: same attribute names, same loop structure."""

    def __init__(self, args=None) -> None:
        super().__init__()
        args = args or SimpleNamespace(denoising_step_list=[1000, 750, 500, 250], warp_denoising_step=True,
                                       num_frame_per_block=3, context_noise=0)
        self.generator, self.text_encoder, self.vae = Generator(), TextEncoder(), VAE()
        self.denoising_step_list = torch.tensor(args.denoising_step_list, dtype=torch.long)
        if args.warp_denoising_step:
            table = torch.cat((torch.linspace(1000, 1, 1000), torch.tensor([0.0])))
            self.denoising_step_list = table[1000 - self.denoising_step_list]
        self.num_transformer_blocks, self.frame_seq_length = LAYERS, H * W
        self.kv_cache1 = None
        self.args = args
        self.num_frame_per_block = args.num_frame_per_block

    def inference(self, noise, text_prompts, return_latents=False):
        batch_size, num_frames, num_channels, height, width = noise.shape
        conditional_dict = self.text_encoder(text_prompts=text_prompts)
        output = torch.zeros([batch_size, num_frames, num_channels, height, width], dtype=noise.dtype)
        if self.kv_cache1 is None:
            self._initialize_kv_cache(batch_size=batch_size, dtype=noise.dtype, device=noise.device)
            self._initialize_crossattn_cache(batch_size=batch_size, dtype=noise.dtype, device=noise.device)
        else:
            for block_index in range(self.num_transformer_blocks):
                self.crossattn_cache[block_index]["is_init"] = False
            for block_index in range(len(self.kv_cache1)):
                self.kv_cache1[block_index]["global_end_index"] = torch.tensor([0], dtype=torch.long)
                self.kv_cache1[block_index]["local_end_index"] = torch.tensor([0], dtype=torch.long)
        current_start_frame = 0
        for current_num_frames in [self.num_frame_per_block] * (num_frames // self.num_frame_per_block):
            noisy_input = noise[:, current_start_frame:current_start_frame + current_num_frames]
            for index, current_timestep in enumerate(self.denoising_step_list):
                timestep = torch.ones([batch_size, current_num_frames], dtype=torch.int64) * current_timestep
                _, denoised_pred = self.generator(
                    noisy_image_or_video=noisy_input, conditional_dict=conditional_dict, timestep=timestep,
                    kv_cache=self.kv_cache1, crossattn_cache=self.crossattn_cache,
                    current_start=current_start_frame * self.frame_seq_length)
                if index < len(self.denoising_step_list) - 1:
                    s = float(self.denoising_step_list[index + 1]) / 1000
                    noisy_input = (1 - s) * denoised_pred + s * torch.randn_like(denoised_pred)
            output[:, current_start_frame:current_start_frame + current_num_frames] = denoised_pred
            context_timestep = torch.ones_like(timestep) * self.args.context_noise
            self.generator(
                noisy_image_or_video=denoised_pred, conditional_dict=conditional_dict, timestep=context_timestep,
                kv_cache=self.kv_cache1, crossattn_cache=self.crossattn_cache,
                current_start=current_start_frame * self.frame_seq_length)
            current_start_frame += current_num_frames
        video = self.vae.decode_to_pixel(output, use_cache=False)
        video = (video * 0.5 + 0.5).clamp(0, 1)
        return (video, output) if return_latents else video

    def _initialize_kv_cache(self, batch_size, dtype, device):
        size = 4 * self.num_frame_per_block * self.frame_seq_length  # room for 12 frames
        self.kv_cache1 = [{
            "k": torch.zeros([batch_size, size, HEADS, DIM // HEADS], dtype=dtype, device=device),
            "v": torch.zeros([batch_size, size, HEADS, DIM // HEADS], dtype=dtype, device=device),
            "global_end_index": torch.tensor([0], dtype=torch.long, device=device),
            "local_end_index": torch.tensor([0], dtype=torch.long, device=device),
        } for _ in range(self.num_transformer_blocks)]

    def _initialize_crossattn_cache(self, batch_size, dtype, device):
        self.crossattn_cache = [{
            "k": torch.zeros([batch_size, TEXT_LEN, HEADS, DIM // HEADS], dtype=dtype, device=device),
            "v": torch.zeros([batch_size, TEXT_LEN, HEADS, DIM // HEADS], dtype=dtype, device=device),
            "is_init": False,
        } for _ in range(self.num_transformer_blocks)]


def make(seed: int = 0) -> tuple[Pipeline, torch.Tensor]:
    """A seeded toy pipeline and its noise (1 x 6 frames: two chunks of three)."""
    torch.manual_seed(seed)
    pipe = Pipeline()
    noise = torch.randn(1, 6, CH, H, W)
    return pipe, noise
