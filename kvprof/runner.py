"""`kvprof trace`: build the workload, run it inside a TraceSession, write the summary."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kvprof.analysis import summarize
from kvprof.config import ModelConfig
from kvprof.errors import UsageError
from kvprof.rollout import Progress, RolloutSpec, build_caches, cache_bytes, make_method_factory, run_rollout
from kvprof.trace import load_trace
from methods import get_method_class
from methods.base import KVMethod, MethodError
from tracers import TraceSession, stage, tag, tag_tensor
from tracers.trace_io import SUMMARY_FILE, write_json_atomic


@dataclass
class TraceRequest:
    """A `kvprof trace` invocation, validated."""

    method: str = "bf16"
    integration: str = "study"
    codes: str | None = None  # study: int8 (default) or int16; staged: packed
    params: dict[str, str] = field(default_factory=dict)
    config: str | None = None  # None: by device
    frames: int | None = None  # None: 42 on GPU, 12 on CPU
    seed: int = 0
    device: str | None = None
    out: Path = Path("traces")
    run_id: str | None = None
    rolling: int | None = None
    sink: int = 0
    decode: bool = True
    free_cache_before_decode: bool = False
    checkpoint: Path | None = None
    vae: Path | None = None
    prompt_embeds: Path | None = None
    budget_bytes: int | None = None
    dtype: str | None = None
    live: bool = False  # a follower (TUI) reads the trace while it runs: drain allocations per chunk
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class TraceOutcome:
    """Where the trace went and what it says."""

    path: Path
    status: str
    summary: dict[str, Any]
    error: BaseException | None = None


def resolve_device(name: str | None) -> torch.device:
    """The device to run on: explicit, else CUDA when present, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
    return dev


def resolve(req: TraceRequest) -> tuple[torch.device, ModelConfig, RolloutSpec, type[KVMethod], str, dict]:
    """Validate the request into concrete objects; UsageError on bad input."""
    device = resolve_device(req.device)
    config_name = req.config or ("wan-1.3b" if device.type == "cuda" else "tiny")
    try:
        cfg = ModelConfig.from_name(config_name)
        if req.dtype:
            cfg = cfg.with_dtype(req.dtype)
        method_cls = get_method_class(req.method)
        params = {k: method_cls.validate_param(k, v) for k, v in req.params.items()}
    except (ValueError, MethodError) as exc:
        raise UsageError(str(exc)) from None
    if req.integration not in ("study", "staged"):
        raise UsageError(f"unknown integration {req.integration!r}; choose 'study' or 'staged'")
    storage = req.codes or ("int8" if req.integration == "study" else "packed")
    allowed = ("int8", "int16") if req.integration == "study" else ("packed", "int8", "int16")
    if storage not in allowed:
        raise UsageError(f"--codes {storage} is not a code storage of integration {req.integration!r}; choose {', '.join(allowed)}")
    frames = req.frames if req.frames is not None else (42 if device.type == "cuda" else 12)
    try:
        spec = RolloutSpec(
            frames=frames, seed=req.seed, rolling_frames=req.rolling, sink_frames=req.sink,
            integration=req.integration, decode=req.decode, free_cache_before_decode=req.free_cache_before_decode,
        )
    except ValueError as exc:
        raise UsageError(f"--frames/--rolling/--sink: {exc}") from None
    for flag, path in (("--checkpoint", req.checkpoint), ("--prompt-embeds", req.prompt_embeds), ("--vae", req.vae)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such file or directory")
    return device, cfg, spec, method_cls, storage, params


def default_run_id(method: str, integration: str, cfg: ModelConfig, spec: RolloutSpec) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{integration}-{cfg.name}-{spec.frames}f-s{spec.seed}"


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device facts for meta.json."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "device_type": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_total_bytes=props.total_memory)
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:  # NVML missing or not permitted: say so in the trace
            env["driver"] = f"unknown ({type(exc).__name__})"
    else:
        env["device_name"] = platform.processor() or "cpu"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        env["git_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_revision"] = None
    return env


def text_embeddings(cfg: ModelConfig, seed: int, path: Path | None, device: torch.device) -> torch.Tensor:
    """Seeded random embeddings [1, text_len, text_dim] (UMT5 is not run), or a file's tensor."""
    if path is not None:
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for a bad file
            raise UsageError(f"--prompt-embeds {path}: cannot read a tensor ({type(exc).__name__}: {exc})") from None
        if isinstance(t, dict):
            t = next((v for v in t.values() if isinstance(v, torch.Tensor)), None)
        if not isinstance(t, torch.Tensor) or t.shape[-1] != cfg.text_dim:
            raise UsageError(f"--prompt-embeds {path}: expected a tensor [n, {cfg.text_dim}]")
        return t.reshape(1, -1, cfg.text_dim)[:, : cfg.text_len].to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    return torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen).to(device)


class _TermAsInterrupt:
    """SIGTERM ends the run like Ctrl-C: the trace closes as `interrupted`; a second signal exits."""

    def __enter__(self):
        self._count = 0
        self._old = {}

        def handler(signum, frame):
            self._count += 1
            if self._count > 1:
                os._exit(130)
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_trace(req: TraceRequest, on_progress: Callable[[Progress], None] | None = None, on_start: Callable[[Path], None] | None = None) -> TraceOutcome:
    """Run the traced rollout; always leaves a readable trace, whatever the outcome."""
    device, cfg, spec, method_cls, storage, params = resolve(req)
    run_id = req.run_id or default_run_id(method_cls.name, spec.integration, cfg, spec)
    folder = Path(req.out) / run_id
    try:
        Path(req.out).mkdir(parents=True, exist_ok=True)
        probe = Path(req.out) / ".kvprof-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {req.out}: cannot write there ({exc.strerror})") from None
    if folder.exists():
        raise UsageError(f"{folder}: a trace with this run id exists; pick another --run-id")
    meta = {
        "run_id": run_id,
        "command": req.command,
        "method": method_cls.name,
        "method_params": {**{k: p.default for k, p in method_cls.params.items()}, **params},
        "integration": spec.integration,
        "codes": storage,
        "config": {**dataclasses.asdict(cfg), "tokens_per_frame": cfg.tokens_per_frame, "head_dim": cfg.head_dim},
        "rollout": spec.to_dict(),
        "budget_bytes": req.budget_bytes,
        "checkpoint": str(req.checkpoint) if req.checkpoint else None,
        "environment": environment(device),
    }
    if req.budget_bytes is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, req.budget_bytes / total), device)
    session = TraceSession(folder, meta, device, budget_bytes=req.budget_bytes if device.type == "cpu" else None,
                           drain_at_checkpoints=req.live)
    error: BaseException | None = None
    with _TermAsInterrupt():
        session.start()
        if on_start:
            on_start(folder)
        try:
            _traced_body(session, req, device, cfg, spec, method_cls, storage, params, on_progress)
            session.close("complete")
        except torch.OutOfMemoryError as exc:
            error = exc
            session.meta["oom"] = {"stage": session.failure_stage or session.stage_path(), "message": str(exc).splitlines()[0][:500],
                                   "requested_bytes": getattr(exc, "requested", None)}
            session.close("oom", exc)
        except KeyboardInterrupt as exc:
            error = exc
            session.meta["interrupted_stage"] = session.failure_stage
            session.close("interrupted", exc)
        except Exception as exc:  # any failure still closes the trace, marked failed, then re-raises
            error = exc
            session.meta["failed_stage"] = session.failure_stage or session.stage_path()
            session.close("failed", exc)
    trace = load_trace(folder)
    summary = summarize(trace)
    summary["notes"] = trace.meta.get("notes", [])
    write_json_atomic(folder / SUMMARY_FILE, summary)
    if error is not None and not isinstance(error, (torch.OutOfMemoryError, KeyboardInterrupt)):
        raise error
    return TraceOutcome(folder, trace.status, summary, error)


def _traced_body(session, req, device, cfg, spec, method_cls, storage, params, on_progress) -> None:
    from kvprof.model import build_model

    with stage("setup"):
        with tag("weights"):
            model = build_model(cfg, seed=req.seed, device=device)
        if req.checkpoint is not None:
            from kvprof.checkpoint import CheckpointError, load_checkpoint

            try:
                load_checkpoint(model, req.checkpoint)
            except CheckpointError as exc:
                raise UsageError(str(exc)) from None
        for name, p in model.named_parameters():
            tag_tensor(p, "weights", f"dit.{name}")
        vae = None
        if spec.decode:
            from kvprof.vae import build_vae

            from kvprof.vae import VaeError

            try:
                with tag("weights"):
                    vae = build_vae(cfg.vae, seed=req.seed, device=device, dtype=cfg.torch_dtype, path=req.vae)
            except VaeError as exc:
                raise UsageError(str(exc)) from None
        with tag("activations"):
            embeds = text_embeddings(cfg, req.seed, req.prompt_embeds, device)
        caches = build_caches(cfg, spec, make_method_factory(method_cls, storage, params), device)

    def chunk_end(chunk: int, caches_now) -> None:
        logical, stored, resident = cache_bytes(caches_now)
        session.record_kv_bytes(chunk, logical, stored, resident)
        session.checkpoint()

    with torch.inference_mode():
        result = run_rollout(model, embeds, spec, caches, vae, on_progress, chunk_end)
    if result.caches:
        logical, stored, resident = cache_bytes(result.caches)
        session.record_kv_bytes(spec.num_chunks, logical, stored, resident)
    session.checkpoint(force=True)  # while weights and cache are alive: learn their true block sizes
