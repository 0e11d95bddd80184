"""GPU probes for benchmarks/upstream_speed.py: per-module CUDA-event times, SDPA backend choice,
host-sync count and a torch.profiler summary of one rollout (CUDA only; torch imported lazily).
"""
from __future__ import annotations

import time
from pathlib import Path

SDPA_NAMES = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


class Probe:
    """Per-module CUDA-event timing and SDPA backend choice, for the profile process only."""

    def __init__(self, text_len: int) -> None:
        import torch

        self.torch = torch
        self.text_len = text_len
        self.events: list[tuple[str, object, object]] = []
        self.backends: dict[str, dict] = {}
        self._orig = torch.nn.functional.scaled_dot_product_attention
        self._handles: list = []

    def install(self, model) -> None:
        """Hooks on blocks and their self_attn/cross_attn/ffn; wrap SDPA (looked up at call time)."""
        torch = self.torch
        for name, mod in model.named_modules():
            parts = name.split(".")
            if len(parts) == 2 and parts[0] == "blocks":
                key = "block"
            elif len(parts) == 3 and parts[0] == "blocks" and parts[2] in ("self_attn", "cross_attn", "ffn"):
                key = parts[2]
            else:
                continue
            self._handles.append(mod.register_forward_pre_hook(self._pre(key)))
            self._handles.append(mod.register_forward_hook(self._post(key)))

        probe = self

        def sdpa(q, k, v, *a, **kw):
            kind = "sdpa_cross" if k.shape[-2] == probe.text_len else "sdpa_self"
            if kind not in probe.backends:
                mask = kw.get("attn_mask", a[0] if a else None)
                choice = torch._fused_sdp_choice(q, k, v, mask, kw.get("dropout_p", 0.0), kw.get("is_causal", False))
                probe.backends[kind] = {
                    "backend": SDPA_NAMES.get(int(choice), str(choice)), "q_shape": list(q.shape),
                    "q_stride": list(q.stride()), "k_shape": list(k.shape), "k_stride": list(k.stride()),
                    "dtype": str(q.dtype), "k_dtype": str(k.dtype), "attn_mask": mask is not None,
                    "q_contiguous": q.is_contiguous(),
                }
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = probe._orig(q, k, v, *a, **kw)
            end.record()
            probe.events.append((kind, start, end))
            return out

        torch.nn.functional.scaled_dot_product_attention = sdpa

    def _pre(self, key: str):
        def hook(mod, args):
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            mod._probe_start = ev

        return hook

    def _post(self, key: str):
        def hook(mod, args, out):
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append((key, mod._probe_start, ev))

        return hook

    def remove(self) -> dict:
        """Undo the hooks; the summed device ms and call count per key."""
        self.torch.cuda.synchronize()
        self.torch.nn.functional.scaled_dot_product_attention = self._orig
        for h in self._handles:
            h.remove()
        out: dict[str, dict] = {}
        for key, s, e in self.events:
            row = out.setdefault(key, {"ms": 0.0, "calls": 0})
            row["ms"] += s.elapsed_time(e)
            row["calls"] += 1
        if "block" in out:
            named = sum(out.get(k, {"ms": 0.0})["ms"] for k in ("self_attn", "cross_attn", "ffn"))
            out["block_rest"] = {"ms": out["block"]["ms"] - named, "calls": out["block"]["calls"]}
        return {k: {"ms": round(v["ms"], 1), "calls": v["calls"]} for k, v in out.items()}


def count_syncs(fn) -> dict:
    """Run `fn` with torch.cuda.set_sync_debug_mode("warn"); count the host syncs it reports, by message."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    msgs: dict[str, int] = {}
    for w in caught:
        key = f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:60]}"
        msgs[key] = msgs.get(key, 0) + 1
    return {"total": sum(msgs.values()), "by_site": dict(sorted(msgs.items(), key=lambda kv: -kv[1])[:10])}


def profile_rollout(fn) -> dict:
    """Run `fn` under torch.profiler; top kernels/ops by device time, launch count, busy fraction."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    avgs = prof.key_averages()
    from torch.autograd import DeviceType

    def dev(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    def dev_total(e) -> float:
        return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)

    kernels = [e for e in avgs if e.device_type == DeviceType.CUDA]
    ops = [e for e in avgs if e.device_type != DeviceType.CUDA and e.key.startswith("aten::")]
    launch_names = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
    return {
        "profiled_wall_s": round(wall, 3),
        "kernel_ms_total": round(sum(dev(e) for e in kernels) / 1e3, 1),
        "kernel_launches": sum(e.count for e in avgs if e.key in launch_names),
        "top_device": [{"name": e.key[:100], "device_ms": round(dev(e) / 1e3, 1), "count": e.count}
                       for e in sorted(kernels, key=dev, reverse=True)[:15]],
        "top_ops": [{"name": e.key, "device_ms": round(dev_total(e) / 1e3, 1), "cpu_ms": round(e.cpu_time_total / 1e3, 1),
                     "count": e.count} for e in sorted(ops, key=dev_total, reverse=True)[:15]],
        "top_cpu": [{"name": e.key[:90], "cpu_ms": round(e.self_cpu_time_total / 1e3, 1), "count": e.count}
                    for e in sorted(avgs, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]],
    }
