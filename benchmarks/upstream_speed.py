"""kvprof's built-in rollout against the public Self-Forcing pipeline, side by side (issue 19).

    python3 benchmarks/upstream_speed.py --upstream DIR [--kvprof NAME=ROOT ...] [--traced] [--repeat 3]
        [--frames 21] [--config wan-1.3b] [--rollouts 1] [--profile] [--json FILE]

DIR is an unpacked checkout of github.com/guandeh17/Self-Forcing (carried, never committed). Its
`CausalInferencePipeline` runs with its own `CausalWanModel`, `WanDiffusionWrapper` and scheduler,
seeded random weights (its own init, then `.to(bfloat16)` as its inference.py does), random text
embeddings [1, 512, 4096] in place of UMT5, no VAE (the stub returns the latents), and torch SDPA:
without the flash_attn package its cross-attention's direct `flash_attention` call would fail, so
that one name is pointed at its own SDPA fallback `attention` (what its self-attention already uses).

Every pipeline runs in its own fresh process, alternated, `--repeat` times. `--kvprof NAME=ROOT`
(repeatable; default `kvprof=<this repo>`) names kvprof trees to time untraced, e.g. a copy of the
old model next to the fixed one; `--traced` also times the first tree through `kvprof trace`.
`--profile` adds one process per pipeline that records (a) per-module device time with CUDA events
around self_attn / cross_attn / ffn / each block and each SDPA call, (b) the SDPA backend of each
attention call kind (`torch._fused_sdp_choice` on the real arguments), (c) torch.profiler's top
kernels of one rollout (those probes live in benchmarks/speed_probe.py). Prints a markdown table;
writes everything to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_probe import Probe, count_syncs, profile_rollout  # noqa: E402


# ---------------------------------------------------------------------------------------- upstream
def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _package(name: str, path: Path) -> None:
    """Register `name` as a package at `path` without running its __init__ (which imports UMT5 etc.)."""
    _stub(name, __path__=[str(path)])


def load_upstream(upstream: Path):
    """Import the upstream modules the rollout needs; stub the ones that need weights or extra packages."""
    import importlib

    sys.path.insert(0, str(upstream))
    _package("wan", upstream / "wan")
    _package("wan.modules", upstream / "wan" / "modules")
    _package("pipeline", upstream / "pipeline")
    _package("utils", upstream / "utils")
    _package("demo_utils", upstream / "demo_utils")
    # Only needed for the text encoder / VAE / low-memory path, none of which runs here.
    _stub("wan.modules.tokenizers", HuggingfaceTokenizer=None)
    _stub("wan.modules.t5", umt5_xxl=None)
    _stub("wan.modules.vae", _video_vae=None)
    _stub("demo_utils.memory", gpu=None, get_cuda_free_memory_gb=None, DynamicSwapInstaller=None,
          move_model_to_device_with_memory_preservation=None)
    try:
        import einops  # noqa: F401
    except ImportError:  # CPU smoke runs only: model.py imports `repeat`, used in the i2v path alone
        _stub("einops", repeat=None, rearrange=None)
    attention = importlib.import_module("wan.modules.attention")
    model_mod = importlib.import_module("wan.modules.model")
    # No flash_attn on the device: the cross-attention's direct flash call goes to the same SDPA fallback.
    if not (attention.FLASH_ATTN_2_AVAILABLE or attention.FLASH_ATTN_3_AVAILABLE):
        model_mod.flash_attention = attention.attention
    causal = importlib.import_module("wan.modules.causal_model")
    wrapper = importlib.import_module("utils.wan_wrapper")
    pipe = importlib.import_module("pipeline.causal_inference")
    return causal, wrapper, pipe


def upstream_worker(args) -> dict:
    import torch

    from kvprof.workload.config import ModelConfig

    cfg = ModelConfig.from_name(args.config).with_dtype(args.dtype)
    causal, wrapper_mod, pipe_mod = load_upstream(Path(args.root))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = causal.CausalWanModel(
            model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
            ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
            num_heads=cfg.num_heads, num_layers=cfg.num_layers, local_attn_size=-1, sink_size=0, qk_norm=True,
            cross_attn_norm=True, eps=cfg.eps)
    model = model.to(dtype=cfg.torch_dtype).eval().requires_grad_(False)
    wrapper_mod.CausalWanModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: model)
    generator = wrapper_mod.WanDiffusionWrapper(timestep_shift=5.0, is_causal=True)
    gen = torch.Generator(device="cpu").manual_seed(2)
    embeds = torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen).to(device, cfg.torch_dtype)

    class TextEncoder(torch.nn.Module):
        def forward(self, text_prompts):
            return {"prompt_embeds": embeds}

    class NoVAE(torch.nn.Module):
        def decode_to_pixel(self, latent, use_cache=False):
            return latent

    run_args = types.SimpleNamespace(denoising_step_list=[1000, 750, 500, 250], warp_denoising_step=True,
                                     num_frame_per_block=3, independent_first_frame=False, context_noise=0,
                                     model_kwargs={"timestep_shift": 5.0})
    pipeline = pipe_mod.CausalInferencePipeline(run_args, device=device, generator=generator,
                                                text_encoder=TextEncoder(), vae=NoVAE())
    pipeline.num_transformer_blocks = cfg.num_layers
    pipeline.frame_seq_length = cfg.tokens_per_frame
    capacity = args.frames * cfg.tokens_per_frame

    def fresh_caches() -> None:
        # Upstream's own sizes (32760 tokens, 12 x 128) are the 1.3B config's; other configs get theirs.
        shape = (1, capacity, cfg.num_heads, cfg.head_dim)
        cross = (1, cfg.text_len, cfg.num_heads, cfg.head_dim)
        z = lambda s, dt=cfg.torch_dtype: torch.zeros(s, dtype=dt, device=device)  # noqa: E731
        pipeline.kv_cache1 = [{"k": z(shape), "v": z(shape), "global_end_index": z([1], torch.long),
                               "local_end_index": z([1], torch.long)} for _ in range(cfg.num_layers)]
        pipeline.crossattn_cache = [{"k": z(cross), "v": z(cross), "is_init": False} for _ in range(cfg.num_layers)]

    noise_gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn([1, args.frames, cfg.in_dim, cfg.latent_height, cfg.latent_width], generator=noise_gen,
                        device=device, dtype=cfg.torch_dtype)

    def rollout():
        with torch.no_grad():
            _stdout, sys.stdout = sys.stdout, sys.stderr  # its per-step prints must not hit our JSON line
            try:
                return pipeline.inference(noise=noise, text_prompts=["a prompt"], return_latents=True)
            finally:
                sys.stdout = _stdout

    def prepare():
        pipeline.kv_cache1 = pipeline.crossattn_cache = None
        if cfg.name == "wan-1.3b" and args.frames == 21:
            pipeline._initialize_kv_cache(batch_size=1, dtype=cfg.torch_dtype, device=device)
            pipeline._initialize_crossattn_cache(batch_size=1, dtype=cfg.torch_dtype, device=device)
        else:
            fresh_caches()

    def kv_bytes() -> int:
        return sum(c[n].numel() * c[n].element_size() for c in pipeline.kv_cache1 for n in ("k", "v"))

    return _timed_rollouts(args, model, prepare, rollout, kv_bytes, cfg.text_len)


# ---------------------------------------------------------------------------------------- kvprof
def kvprof_worker(args) -> dict:
    import torch

    from kvprof.workload.model import build_model
    from kvprof.workload.rollout import build_caches, cache_bytes, make_method_factory, run_rollout
    from kvprof.runner import TraceRequest, resolve, text_embeddings

    req = TraceRequest(method="bf16", integration="study", config=args.config, frames=args.frames, decode=False,
                       dtype=args.dtype)
    r = resolve(req)
    device, cfg, spec, method_cls, storage, params = r.device, r.cfg, r.spec, r.method_cls, r.storage, r.params
    model = build_model(cfg, seed=0, device=device)
    embeds = text_embeddings(cfg, 0, None, device)
    state: dict = {}

    def prepare():
        state.pop("caches", None)
        state["caches"] = build_caches(cfg, spec, make_method_factory(method_cls, storage, params), device)

    def rollout():
        with torch.inference_mode():
            run_rollout(model, embeds, spec, state["caches"], None)

    return _timed_rollouts(args, model, prepare, rollout, lambda: cache_bytes(state["caches"])[2], cfg.text_len)


def traced_worker(args) -> dict:
    import tempfile

    from kvprof.runner import TraceRequest, run_trace

    with tempfile.TemporaryDirectory() as tmp:
        req = TraceRequest(method="bf16", integration="study", config=args.config, frames=args.frames, decode=False,
                           dtype=args.dtype, out=Path(tmp))
        s = run_trace(req).summary.to_dict()  # the summary.json shape
    rollout_ms = next((r["host_ms"] for r in s["stage_times"] if r["stage"] == "rollout"), None)
    return {"rollout_wall_s": [rollout_ms / 1e3 if rollout_ms else None], "peak": s["peak"], "kv": s["kv"],
            "stage_times": s["stage_times"][:16]}


def _timed_rollouts(args, model, prepare, rollout, kv_bytes, text_len) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    out: dict = {"rollout_wall_s": [], "max_memory_allocated_bytes": []}
    probe = None
    for i in range(args.rollouts):
        prepare()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if args.profile and i == 0 and cuda:
            probe = Probe(text_len)
            probe.install(model)
        if args.profile and i == 1 and cuda:
            out["profiler"] = profile_rollout(rollout)
            continue
        t0 = time.perf_counter()
        if probe is not None:
            out["host_syncs"] = count_syncs(rollout)
        else:
            rollout()
        if cuda:
            torch.cuda.synchronize()
        out["rollout_wall_s"].append(round(time.perf_counter() - t0, 4))
        if cuda:
            out["max_memory_allocated_bytes"].append(torch.cuda.max_memory_allocated())
        if probe is not None:
            out["module_device_ms"] = probe.remove()
            out["sdpa"] = probe.backends
            probe = None
        out["kv_bytes"] = kv_bytes()
    return out


# ---------------------------------------------------------------------------------------- driver
def environment() -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
        env["sdp_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                              "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                              "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                              "math": torch.backends.cuda.math_sdp_enabled()}
    return env


def worker_main(args) -> None:
    sys.path.insert(0, args.kv_root)
    fn = {"upstream": upstream_worker, "kvprof": kvprof_worker, "traced": traced_worker}[args.worker]
    result = fn(args)
    result["environment"] = environment()
    print(json.dumps(result))


def spawn(args, worker: str, root: str, kv_root: str, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--root", root, "--kv-root", kv_root, "--config", args.config,
           "--frames", str(args.frames), "--dtype", args.dtype, "--rollouts", str(2 if profile else args.rollouts)]
    cmd += ["--profile"] if profile else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([kv_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.stderr.write(r.stderr[-4000:])
        return {"error": r.stderr[-2000:], "returncode": r.returncode}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = round(time.perf_counter() - t0, 1)
    return res


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    first = [r["rollout_wall_s"][0] for r in ok if r.get("rollout_wall_s")]
    later = [x for r in ok for x in r.get("rollout_wall_s", [])[1:]]
    peaks = [r["max_memory_allocated_bytes"][0] for r in ok if r.get("max_memory_allocated_bytes")]
    out = {"runs": len(ok), "failed": len(runs) - len(ok)}
    if first:
        out |= {"median_s": statistics.median(first), "min_s": min(first), "max_s": max(first), "all_s": first}
    if later:
        out["warm_median_s"] = statistics.median(later)
    if peaks:
        out["peak_bytes"] = statistics.median(peaks)
    kv = {r.get("kv_bytes") for r in ok if r.get("kv_bytes") is not None}
    if kv:
        out["kv_bytes"] = sorted(kv)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", type=Path, help="unpacked Self-Forcing checkout")
    p.add_argument("--kvprof", action="append", default=[], metavar="NAME=ROOT", help="kvprof tree to time untraced")
    p.add_argument("--traced", action="store_true", help="also time the first kvprof tree traced")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--config", default="wan-1.3b")
    p.add_argument("--dtype", default="bfloat16", help="both pipelines run in this dtype (upstream's SDPA path is bf16)")
    p.add_argument("--rollouts", type=int, default=1, help="rollouts per process (the first one is the headline)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", type=Path, default=Path("upstream_speed.json"))
    p.add_argument("--worker", choices=["upstream", "kvprof", "traced"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--kv-root", default=str(REPO), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.upstream is None or not (args.upstream / "wan" / "modules" / "causal_model.py").is_file():
        p.error(f"--upstream {args.upstream}: not a Self-Forcing checkout (no wan/modules/causal_model.py); "
                "unpack github.com/guandeh17/Self-Forcing there")
    trees = dict(kv.split("=", 1) for kv in args.kvprof) or {"kvprof": str(REPO)}
    first_root = next(iter(trees.values()))
    plan = [("upstream", "upstream", str(args.upstream.resolve()), first_root)]
    plan += [(name, "kvprof", root, root) for name, root in trees.items()]
    if args.traced:
        plan.append((f"{next(iter(trees))}_traced", "traced", first_root, first_root))
    runs: dict[str, list] = {name: [] for name, *_ in plan}
    for rep in range(args.repeat):
        for name, worker, root, kv_root in plan:
            res = spawn(args, worker, root, kv_root, profile=False)
            runs[name].append(res)
            print(f"[{rep}] {name}: {res.get('rollout_wall_s', res.get('error', '')[-200:])}", file=sys.stderr)
    profiles = {}
    if args.profile:
        for name, worker, root, kv_root in plan:
            if worker == "upstream" or (worker == "kvprof" and root == first_root):
                profiles[name] = spawn(args, worker, root, kv_root, profile=True)
    summary = {name: summarize(r) for name, r in runs.items()}
    if args.traced:
        first, traced = summary[next(iter(trees))], summary[f"{next(iter(trees))}_traced"]
        if first.get("median_s") and traced.get("median_s"):
            summary["tracer_overhead"] = {"traced_over_untraced_median": traced["median_s"] / first["median_s"]}
    if summary.get("upstream", {}).get("median_s"):
        for name in trees:
            row, up = summary[name], summary["upstream"]
            if row.get("median_s"):
                row["over_upstream"] = row["median_s"] / up["median_s"]
            if row.get("warm_median_s") and up.get("warm_median_s"):
                row["warm_over_upstream"] = row["warm_median_s"] / up["warm_median_s"]
            if row.get("peak_bytes") and up.get("peak_bytes"):
                row["peak_over_upstream"] = row["peak_bytes"] / up["peak_bytes"]
    env = next((r["environment"] for rs in runs.values() for r in rs if "environment" in r), {})
    doc = {"command": " ".join(sys.argv), "environment": env, "frames": args.frames, "config": args.config,
           "summary": summary, "runs": runs, "profiles": profiles}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    """The side-by-side table (medians over processes; spread min..max)."""
    s, prof = doc["summary"], doc["profiles"]
    lines = [f"device: {doc['environment'].get('device', 'cpu')}, torch {doc['environment'].get('torch')}",
             "", "| pipeline | rollout median s (min..max, n) | warm s | peak max_memory_allocated B | KV B | SDPA self / cross |",
             "|---|---|---|---|---|---|"]
    for name, row in s.items():
        if name not in doc["runs"]:
            continue
        runs = doc["runs"][name]
        peak = row.get("peak_bytes")
        if peak is None and runs and "peak" in runs[0]:
            peak = runs[0]["peak"].get("bytes")
        sd = prof.get(name, {}).get("sdpa", {})
        backends = f"{sd.get('sdpa_self', {}).get('backend', '?')} / {sd.get('sdpa_cross', {}).get('backend', '?')}"
        med = row.get("median_s")
        spread = f"{med:.3f} ({row['min_s']:.3f}..{row['max_s']:.3f}, {row['runs']})" if med else "failed"
        warm = f"{row['warm_median_s']:.3f}" if "warm_median_s" in row else "-"
        lines.append(f"| {name} | {spread} | {warm} | {peak} | {row.get('kv_bytes', '-')} | {backends} |")
    lines += ["", "ratios: " + json.dumps({k: {m: round(x, 4) for m, x in v.items() if "over" in m}
                                           for k, v in s.items() if any("over" in m for m in v)})]
    for name, pr in prof.items():
        if "host_syncs" in pr:
            lines += ["", f"{name} host syncs in one rollout (set_sync_debug_mode): {pr['host_syncs']['total']}"]
        mod = pr.get("module_device_ms", {})
        if mod:
            lines += ["", f"{name} per-module device ms (CUDA events, one cold rollout): "
                      + ", ".join(f"{k} {v['ms']} ({v['calls']})" for k, v in mod.items())]
        pf = pr.get("profiler")
        if pf:
            lines += ["", f"{name} torch.profiler: wall {pf['profiled_wall_s']} s, kernels {pf['kernel_ms_total']} ms, "
                      f"{pf['kernel_launches']} launches", "", "| kernel / op | device ms | count |", "|---|---|---|"]
            lines += [f"| `{r['name']}` | {r['device_ms']} | {r['count']} |" for r in pf["top_device"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
