"""Upstream Self-Forcing's CausalInferencePipeline (1.3B config, seeded random weights, 21 latent frames)
traced with `instrument` alone; stubbed: the UMT5 text encoder (random [1, 512, 4096] embeddings) and
the weight files (random weights). `python3 self_forcing_upstream.py REPO TRACE`; without TRACE it runs
untraced, for `kvprof run --instrument self-forcing -- python3 self_forcing_upstream.py REPO`."""
import contextlib, sys, types, torch, upstream_env  # noqa: E401
upstream_env.setup(sys.argv[1])
from pipeline.causal_inference import CausalInferencePipeline  # noqa: E402
from wan.modules import causal_model, vae  # noqa: E402
WAN_13B = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
               text_dim=4096, out_dim=16, num_heads=12, num_layers=30, eps=1e-6)
causal_model.CausalWanModel.from_pretrained = classmethod(lambda cls, path, **kw: cls(**WAN_13B, **kw))
vae.WanVAE_.load_state_dict = lambda self, sd, assign: [p.data.normal_(0, .02) for p in self.to_empty(device="cpu").parameters()]
class TextEncoder(torch.nn.Module):  # noqa: E302
    def forward(self, text_prompts):
        return {"prompt_embeds": torch.randn(len(text_prompts), 512, 4096, device="cuda", dtype=torch.bfloat16)}
args = types.SimpleNamespace(denoising_step_list=[1000, 750, 500, 250], warp_denoising_step=True, num_frame_per_block=3,
                             independent_first_frame=False, context_noise=0, model_kwargs={"timestep_shift": 5.0})
torch.manual_seed(0); torch.set_grad_enabled(False)  # as upstream's inference.py does
load, torch.load = torch.load, lambda *a, **k: None  # the VAE's weight file (random weights above)
pipe = CausalInferencePipeline(args, device="cuda", text_encoder=TextEncoder()).to(device="cuda", dtype=torch.bfloat16)
torch.load = load
noise = torch.randn([1, 21, 16, 60, 104], device="cuda", dtype=torch.bfloat16)
if len(sys.argv) > 2:
    import kvprof.api as kv
    from kvprof.integrations.self_forcing import instrument
    instrument(pipe)
with kv.trace(sys.argv[2]) if len(sys.argv) > 2 else contextlib.nullcontext():
    video = pipe.inference(noise, text_prompts=["a red fox running through fresh snow"])
print("video", tuple(video.shape), "max_memory_allocated", torch.cuda.max_memory_allocated())
