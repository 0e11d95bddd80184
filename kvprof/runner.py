"""`kvprof trace`: validate the request, build the workload, run it inside `kvprof.api.trace`.

    TraceRequest --resolve--> Resolved --prepare (input files read, trace folder claimed)--> PreparedRun --run_trace--> TraceOutcome

`kvprof trace` and `kvprof trace --tui` both go through `prepare` once, so a bad request fails with
one clear error before any folder exists, and both paths name the folder the same way.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kvprof import api
from kvprof.workload.config import DTYPES, ModelConfig
from kvprof.errors import UsageError, VaeError
from kvprof.read.summary import Summary, write_summary
from kvprof.read.trace import Trace, load_trace
from kvprof.workload.rollout import CHUNK_FRAMES, Progress, RolloutSpec, cache_bytes, run_rollout
from methods import get_method_class
from methods.base import KVMethod, MethodError

INTEGRATIONS: tuple[str, ...] = ("study", "staged")
MAX_SEED = 2**62  # torch generators take 64 bits; the rollout adds small offsets per use
MAX_RUN_ID = 128  # characters: the folder name, and export file names built from it, stay far below 255 bytes


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
    quality: bool = False  # compare with the bf16 rollout of the same config/seed/embeddings
    lpips_backbone: Path | None = None
    vbench_dims: tuple[str, ...] = ()
    vbench_python: Path | None = None
    host_profile: bool = False  # py-spy record of this process, joined to the stages
    host_rate: int = 100
    host_native: bool = False
    fine_stages: bool = False  # record stages marked fine (PRQ's residual per slice): 10-20 us of host time each
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class TraceOutcome:
    """Where the trace went and what it says."""

    path: Path
    status: str
    summary: Summary
    error: BaseException | None = None


@dataclass(frozen=True)
class Resolved:
    """A request validated into concrete objects; nothing read or written yet."""

    device: torch.device
    cfg: ModelConfig
    spec: RolloutSpec
    method_cls: type[KVMethod]
    storage: str  # the code storage asked for (or the integration's default)
    params: dict[str, Any]  # the method parameters given, validated

    @property
    def codes(self) -> str | None:
        """The code storage the trace records (None: a lossless method stores no codes)."""
        return trace_codes(self.method_cls, self.storage)


@dataclass(frozen=True)
class PreparedRun(Resolved):
    """A request checked (flags and input files) with its trace folder claimed: what `run_trace` runs."""

    request: TraceRequest
    folder: Path  # claimed: it exists (empty) or can be made

    @property
    def run_id(self) -> str:
        return self.folder.name

    def meta(self) -> dict[str, Any]:
        """The run's fields of meta.json (kvprof.api adds the environment and the trace's own facts)."""
        cls, cfg, req = self.method_cls, self.cfg, self.request
        return {
            "run_id": self.run_id,
            "command": req.command,
            "method": cls.name,
            "method_params": {**{k: p.default for k, p in cls.params.items()}, **self.params},
            # a plugin is named by what the user typed (module:Class): the name alone would not find it again
            "method_facts": {**cls.facts(), "spec": req.method},
            "integration": self.spec.integration,
            "codes": self.codes,
            "config": {**dataclasses.asdict(cfg), "tokens_per_frame": cfg.tokens_per_frame, "head_dim": cfg.head_dim},
            "rollout": self.spec.to_dict(),
            "budget_bytes": req.budget_bytes,
            "checkpoint": str(req.checkpoint) if req.checkpoint else None,
        }


_DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str | None) -> torch.device:
    """The device to run on: explicit, else CUDA when present, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        raise UsageError(f"--device {name!r}: unknown device; use 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name!r}: no CUDA GPU is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


def _closest(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_shape(req: TraceRequest, chunk: int) -> None:
    """--frames / --rolling / --sink / --seed: the errors RolloutSpec would raise, said per flag."""
    if req.frames is not None and (req.frames <= 0 or req.frames % chunk):
        near = max(chunk, round(req.frames / chunk) * chunk)
        raise UsageError(f"--frames {req.frames}: must be a positive multiple of the chunk size ({chunk} latent frames); "
                         f"try --frames {near}")
    if req.sink < 0 or req.sink % chunk:
        raise UsageError(f"--sink {req.sink}: must be a multiple of {chunk} frames, 0 or more; try --sink {chunk}")
    if req.rolling is None:
        if req.sink:
            raise UsageError(f"--sink {req.sink}: sink frames belong to a rolling cache; add --rolling W (e.g. --rolling 21)")
    elif req.rolling <= 0 or req.rolling % chunk or req.rolling <= req.sink:
        raise UsageError(f"--rolling {req.rolling}: must be a multiple of {chunk} frames larger than --sink ({req.sink}); "
                         f"try --rolling {max(chunk, req.sink + chunk)}")
    if req.seed < 0:
        raise UsageError(f"--seed {req.seed}: must be 0 or more")
    if req.seed > MAX_SEED:
        raise UsageError(f"--seed {req.seed}: too large; at most 2**62 = {MAX_SEED} (a generator seed; offsets are added to it)")


def _check_input(flag: str, path: Path | None, want_dir: bool = False) -> None:
    """A file (or folder) named on the command line exists and can be read; UsageError otherwise."""
    if path is None:
        return
    path = Path(path)
    kind = "folder" if want_dir else "file"
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such {kind}; check the path")
    if want_dir and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file; pass the folder that holds config.json")
    if not want_dir and path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; pass the file itself")
    try:
        if want_dir:
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read ({exc.strerror}); check its permissions") from None


def resolve(req: TraceRequest) -> Resolved:
    """Validate the request into concrete objects; UsageError (naming the flag, with a hint) on bad input."""
    device = resolve_device(req.device)
    if (req.lpips_backbone or req.vbench_dims or req.vbench_python) and not req.quality:
        raise UsageError("--lpips-backbone/--vbench-dims/--vbench-python need --quality; add --quality")
    if req.host_native and not req.host_profile:
        raise UsageError("--native adds C/C++ frames to the host profile; add --host-profile")
    if req.free_cache_before_decode and not req.decode:
        raise UsageError("--free-cache-before-decode frees the cache before a decode that --no-decode skips; drop one of them")
    if req.host_profile and not 1 <= req.host_rate <= 10000:
        raise UsageError(f"--host-rate {req.host_rate}: must be 1..10000 samples per second")
    if req.vbench_dims:
        from kvprof.quality.vbench import parse_dims

        parse_dims(req.vbench_dims)
    config_name = req.config or ("wan-1.3b" if device.type == "cuda" else "tiny")
    try:
        cfg = ModelConfig.from_name(config_name)
    except ValueError as exc:
        raise UsageError(f"--config: {exc}") from None
    if req.dtype:
        if req.dtype not in DTYPES:
            raise UsageError(f"--dtype {req.dtype!r}: unknown dtype; {_closest(req.dtype, list(DTYPES))}choose {' or '.join(DTYPES)}")
        cfg = cfg.with_dtype(req.dtype)
    try:
        method_cls = get_method_class(req.method)
        params = method_cls.validate_params(req.params)
    except (ValueError, MethodError) as exc:
        raise UsageError(str(exc)) from None
    if req.integration not in INTEGRATIONS:
        raise UsageError(f"--integration {req.integration!r}: unknown integration; {_closest(req.integration, INTEGRATIONS)}"
                         f"choose {' or '.join(INTEGRATIONS)}")
    storage = req.codes or default_codes(req.integration)
    allowed = ("int8", "int16") if req.integration == "study" else ("packed", "int8", "int16")
    if storage not in allowed:
        raise UsageError(f"--codes {storage!r}: not a code storage of integration {req.integration!r}; "
                         f"{_closest(storage, allowed)}choose {', '.join(allowed)}")
    _check_shape(req, CHUNK_FRAMES)
    frames = req.frames if req.frames is not None else (42 if device.type == "cuda" else 12)
    try:
        spec = RolloutSpec(
            frames=frames, seed=req.seed, rolling_frames=req.rolling, sink_frames=req.sink,
            integration=req.integration, decode=req.decode, free_cache_before_decode=req.free_cache_before_decode,
        )
    except ValueError as exc:
        raise UsageError(f"--frames/--rolling/--sink: {exc}") from None
    _check_input("--checkpoint", req.checkpoint)
    _check_input("--prompt-embeds", req.prompt_embeds)
    _check_input("--vae", req.vae, want_dir=True)
    if req.budget_bytes is not None and req.budget_bytes <= 0:
        raise UsageError(f"--budget {req.budget_bytes}: must be a positive size, e.g. 24GiB")
    return Resolved(device, cfg, spec, method_cls, storage, params)


def prepare(req: TraceRequest) -> PreparedRun:
    """Check the request and its input files, then claim its trace folder: every refusal (exit 2,
    naming the flag) comes before any folder is made. The request is not changed."""
    r = resolve(req)
    check_inputs(req, r.cfg)
    folder = check_output(req.out, req.run_id or default_run_id(r.method_cls.name, r.spec.integration, r.cfg, r.spec, r.codes),
                          claim=req.run_id is None)
    return PreparedRun(**{f.name: getattr(r, f.name) for f in dataclasses.fields(Resolved)}, request=req, folder=folder)


def check_inputs(req: TraceRequest, cfg: ModelConfig) -> None:
    """Read the input files far enough to know they will load (before any trace is written)."""
    if req.checkpoint is not None:
        import warnings

        from kvprof.workload.checkpoint import CheckpointError, load_checkpoint
        from kvprof.workload.model import build_model

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, as intended here
                load_checkpoint(build_model(cfg, device="meta"), req.checkpoint)
        except CheckpointError as exc:
            raise UsageError(f"--checkpoint {exc.path}: {exc.reason}; it must be a Wan / Self-Forcing DiT state dict "
                             f"for config {cfg.name!r}") from None
    if req.prompt_embeds is not None:
        load_prompt_embeds(req.prompt_embeds, cfg)
    if req.vae is not None and req.decode:
        from kvprof.workload.vae import check_vae_dir

        try:
            check_vae_dir(req.vae)
        except VaeError as exc:
            raise UsageError(f"--vae: {exc}; pass a diffusers Wan VAE folder") from None


def check_output(out: Path, run_id: str, claim: bool = False) -> Path:
    """The trace folder `out/run_id`, after checking it can be written and holds no trace yet.
    `claim` (a default run id): the folder is made at once, with a suffix -2, -3... when another
    run took the name, so two runs started in the same second never collide."""
    if not run_id or run_id in (".", "..") or "/" in run_id or os.sep in run_id:
        raise UsageError(f"--run-id {run_id!r}: must be a plain folder name (no '/'); e.g. --run-id my-run")
    if len(run_id) > MAX_RUN_ID:
        raise UsageError(f"--run-id: {len(run_id)} characters; at most {MAX_RUN_ID} (it names the trace folder)")
    if any(not ch.isprintable() for ch in run_id):
        raise UsageError(f"--run-id {run_id!r}: holds a control character (newline, tab...); use letters, digits, '-' or '_'")
    out = Path(out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would only say "File exists"
        raise UsageError(f"--out {out}: {blocker} is a file, not a folder; pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".kvprof-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); pick a writable folder") from None
    if claim:
        for n in range(1, 1000):
            folder = out / (run_id if n == 1 else f"{run_id}-{n}")
            try:
                folder.mkdir()  # atomic: of two runs asking for one name, one gets it
                return folder
            except FileExistsError:
                continue
    folder = out / run_id
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):  # an empty folder (claimed) is fine
        raise UsageError(f"{folder}: a trace with this run id exists; pick another --run-id")
    return folder


def default_codes(integration: str) -> str:
    """The code storage an integration uses when --codes is not given."""
    return "int8" if integration == "study" else "packed"


def trace_codes(method_cls: type[KVMethod], storage: str) -> str | None:
    """The code storage a trace records and shows: None for lossless methods, which keep a plain
    buffer and store no codes."""
    return None if method_cls.lossless else storage


def default_run_id(method: str, integration: str, cfg: ModelConfig, spec: RolloutSpec, codes: str | None = None) -> str:
    """`<time>-<method>-<integration>[-<codes>]-<config>-<frames>f-s<seed>`: the code storage is named
    when it is not the integration's default (None: the method stores no codes)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    storage = f"-{codes}" if codes and codes != default_codes(integration) else ""
    return f"{stamp}-{method}-{integration}{storage}-{cfg.name}-{spec.frames}f-s{spec.seed}"


def load_prompt_embeds(path: Path, cfg: ModelConfig) -> torch.Tensor:
    """UMT5 embeddings [n, text_dim] from a torch.save file (a tensor, or a dict holding one), on CPU."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise UsageError(f"--prompt-embeds {path}: cannot read a tensor ({type(exc).__name__}: {str(exc)[:200]}); "
                         "save one with torch.save") from None
    if isinstance(t, dict):
        t = next((v for v in t.values() if isinstance(v, torch.Tensor)), None)
    if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[-1] != cfg.text_dim or t.numel() == 0:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise UsageError(f"--prompt-embeds {path}: expected a tensor [n, {cfg.text_dim}] for config {cfg.name!r}, got {got}")
    return t


def text_embeddings(cfg: ModelConfig, seed: int, path: Path | None, device: torch.device) -> torch.Tensor:
    """Seeded random embeddings [1, text_len, text_dim] (UMT5 is not run), or a file's tensor."""
    if path is not None:
        t = load_prompt_embeds(path, cfg)
        return t.reshape(1, -1, cfg.text_dim)[:, : cfg.text_len].to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    return torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen).to(device)


def run_trace(run: TraceRequest | PreparedRun, on_progress: Callable[[Progress], None] | None = None,
              on_start: Callable[[Path], None] | None = None) -> TraceOutcome:
    """Run the traced rollout through `kvprof.api.trace` (a request is prepared first); always leaves
    a readable trace, whatever the outcome. OOM and interrupts are outcomes (status `oom` /
    `interrupted`); other failures close the trace as `failed` and are re-raised."""
    prep = run if isinstance(run, PreparedRun) else prepare(run)
    req, folder = prep.request, prep.folder
    # diffusers makes small constant tensors when its modules load: loaded before the trace opens,
    # they are not the run's allocations. A run that decodes nothing never loads it (2 s a process).
    from kvprof.workload import build  # noqa: F401

    if req.decode or req.quality:
        from kvprof.workload import vae  # noqa: F401

    traced = api.trace(folder, meta=prep.meta(), device=prep.device, budget=req.budget_bytes, live=req.live,
                        fine_stages=req.fine_stages)
    outputs = None
    try:
        with traced:
            if req.host_profile:
                from tracers.host_profile import HostProfileOptions, start_host_profile

                # stopped by the session's close hook on every outcome path
                start_host_profile(traced.session, HostProfileOptions(rate_hz=req.host_rate, native=req.host_native))
            if on_start:
                on_start(folder)
            outputs = _traced_body(traced, prep, on_progress)
    except (torch.OutOfMemoryError, KeyboardInterrupt):
        pass  # an outcome: the trace says so (status oom / interrupted)
    except RuntimeError:
        if traced.status != "oom":  # the CPU allocator's refusal closed the trace as oom (kvprof.api)
            raise
    summary = traced.summary or Summary(status=traced.status)
    if req.host_profile:
        from kvprof.read.hostprof import host_profile_summary

        summary = summary.with_host_profile(host_profile_summary(load_trace(folder)))
        write_summary(folder, summary)
    if req.quality:
        from kvprof.quality.compute import QualityOptions, write_quality

        summary = write_quality(folder, summary, outputs, QualityOptions(
            traces_root=Path(req.out), lpips_backbone=req.lpips_backbone, vbench_dims=tuple(req.vbench_dims),
            vbench_python=req.vbench_python, device=str(prep.device)), traced.status)
    return TraceOutcome(folder, traced.status, summary, traced.error)


def _traced_body(run: api.TraceRun, prep: PreparedRun, on_progress: Callable[[Progress], None] | None) -> Any:
    """Build the workload inside the trace and run it; returns the quality capture's outputs (or None)."""
    from kvprof.workload.build import build_workload
    from kvprof.workload.checkpoint import CheckpointError

    req, spec, device = prep.request, prep.spec, prep.device
    try:
        work = build_workload(prep.cfg, spec, prep.method_cls, prep.storage, prep.params, device,
                              lambda: text_embeddings(prep.cfg, spec.seed, req.prompt_embeds, device),
                              checkpoint=req.checkpoint, vae_path=req.vae)
    except (CheckpointError, VaeError) as exc:
        raise UsageError(str(exc)) from None
    capture = None
    if req.quality:
        from kvprof.quality.capture import QualityCapture

        capture = QualityCapture(work.model, spec, work.embeddings, method=prep.method_cls.name, checkpoint=req.checkpoint,
                                 vae=req.vae)

    def chunk_end(chunk: int, caches_now) -> None:
        logical, stored, resident = cache_bytes(caches_now)
        run.record_kv_bytes(chunk, logical, stored, resident)
        run.checkpoint()

    with torch.inference_mode():
        result = run_rollout(work.model, work.embeddings, spec, work.caches, work.vae, on_progress, chunk_end)
    if result.caches:
        logical, stored, resident = cache_bytes(result.caches)
        run.record_kv_bytes(spec.num_chunks, logical, stored, resident)
    run.checkpoint(force=True)  # while weights and cache are alive: learn their true block sizes
    return capture.finish(result) if capture is not None else None


def run_baseline(trace: Trace, out: Path) -> Path:
    """Run the bf16 rollout of `trace`'s shape (config, rollout, device) into `out`; its folder.
    `kvprof diagnose --run-baseline` hands this to the (reading-only) diagnosis."""
    meta = trace.meta
    cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
    if not cfg.get("name") or not r.get("frames"):
        raise UsageError(f"{trace.path}/meta.json: fields 'config.name' and 'rollout.frames' are needed to run a "
                         "bf16 baseline; pass --baseline TRACE instead")
    device = (meta.get("environment") or {}).get("device_type") or None
    req = TraceRequest(
        method="bf16", integration=meta.get("integration") or "study", config=cfg["name"], dtype=cfg.get("dtype"),
        frames=int(r["frames"]), seed=int(r.get("seed", 0)), device=device, out=Path(out),
        rolling=r.get("rolling_frames"), sink=int(r.get("sink_frames") or 0), decode=bool(r.get("decode", True)),
        free_cache_before_decode=bool(r.get("free_cache_before_decode", False)),
        command=["kvprof", "diagnose", str(trace.path), "--run-baseline"],
    )
    return run_trace(req).path
