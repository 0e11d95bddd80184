"""The profiler's own cost: the same rollout untraced, under kvprof, under the allocator's raw
history (events only, no stacks), and under `torch.profiler` with `export_memory_timeline` (the tool
a user would pick instead).

    python3 benchmarks/overhead.py --method bf16 [--config wan-1.3b] [--frames 42] [--repeat 3]
        [--modes untraced,kvprof,history,profiler] [--mode-timeout 600] [--out /tmp/kv/overhead]

Every run is its own process (fresh allocator statistics and RSS), the modes alternated `--repeat`
times. Per mode: rollout wall seconds, seconds until the result is usable (rollout plus closing the
trace / taking the snapshot / exporting the timeline), bytes of what it leaves on disk and the
process's max RSS; then medians, spreads and each mode's rollout time over untraced. A run past
`--mode-timeout` counts as timed out (the profiler's export has run for minutes). `history` needs a
GPU. Prints JSON; `--mode NAME` runs one mode in this process (what the alternation calls).

`kvprof:PIECE` is kvprof with one piece of its bookkeeping switched off (this process only): `notags` (category
tags are no-ops), `nostages` (stages but `rollout`, and tags, are no-ops), `notimer` (no device-time marks or NVTX ranges),
`nocounters` (no allocator counters at stage boundaries), `drainN` (the recorder drained every N s, e.g. `drain10`),
`rawparts` (streamed parts written uncompressed, and so are the tables at close: compare its rollout time, not its
bytes; both CUDA only), `nosync` (no host-sync counting: on CUDA torch's sync-debug mode stays off), `nosampler`
(no NVML sampler thread), `nodrain` (the recorder drained once, at the end: nothing runs beside the model's thread but
the sampler; its buffer grows to every event, ~1.3 GB at prq_int4 42 f, regrown by the recording thread), `bare`
(`nostages`, `notimer`, `nocounters`, `nosync` and `nosampler` at once: the recorder and its drain alone), `nowrite`
(`bare`, and each drain replays in C++ and drops its rows, no Python accounting or parts: timing only, the trace has
no allocations), `noparts` (`bare`, each drain building and accounting its rows but writing no part: timing
only), `quiet` (`nodrain` and `nosampler`: no thread of kvprof's runs beside the model's during the rollout), `lean`
(`nostages`, `notimer`, `nocounters` and `nosync`: nothing of kvprof's on the model's thread but the per-event record,
its threads kept), `pysampler` (the NVML sampler on a Python thread, not the native library's); the ladder `tracker`,
`kvprof:nowrite`, `kvprof:noparts`, `kvprof:bare`, `kvprof` adds one part at a time;
`kvprof:fine` records fine stages too. `twin` is the untraced rollout under another name: paired with untraced, its
`paired_ratio` is what the pairs read when nothing differs (an A/A test of the method). `tracker` (CUDA) is the
untraced rollout with c10's trace tracker attached and kvprof's recording off: the allocator builds each event and
calls the tracker, which returns at once. They find where
kvprof's time goes in fresh processes (in one process, a rollout after a traced one ran 10-20 % slower: session 8).

`--pair-gpus A,B` (a shared host's noise moves whole stretches of time): each traced mode runs on GPU A while
untraced runs on GPU B at the same moment, then the two swap; each mode's ratio is the median over those
simultaneous pairs (`paired_ratio`). `--pin-cpus A/B` keeps each GPU's processes on their own cores (prq_int4's
host-bound untraced rollouts beside a traced one were bimodal, 10.5 or 12-13.6 s: session 9).

Each run also says what the host's CPUs did during its rollout (`HostTimes`): `rollout_cpu_s` (the process, every
thread), `rollout_thread_cpu_s` (the rollout's own thread) and `steal_s` (CPU seconds the hypervisor gave other
guests, the whole machine), and what Python's cyclic collector did in it (`gc_s`, `gc_collections`: per generation);
`cpu_over_untraced` is the CPU-seconds counterpart of `rollout_over_untraced`. A kvprof row's `measured_share` is
kvprof's cost as the traced run measured it (its scopes' seconds and its drains' share of the model's time, over the
rollout, and its record path's share, timed in place): the in-process figure that the pairs' noise (an A/A test with `twin`) cannot resolve.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_times import HostTimes  # noqa: E402  (beside this script)

MODES = ("untraced", "kvprof", "history", "profiler", "tracker", "twin")
PIECES = ("notags", "nostages", "notimer", "nocounters", "rawparts", "fine", "nosync", "nosampler", "nodrain", "bare",
          "nowrite", "noparts", "quiet", "lean", "pysampler")
# `kvprof:bare`: every piece of bookkeeping on the model's side off at once, so the recorder and its drain are what is left
BARE = ("nostages", "notimer", "nocounters", "nosync", "nosampler")
# pieces made of others: `quiet` takes kvprof's threads away from the rollout, `lean` its work on the model's thread
COMPOSED = {"bare": BARE, "nowrite": BARE, "noparts": BARE, "quiet": ("nodrain", "nosampler"),
            "lean": ("nostages", "notimer", "nocounters", "nosync")}


def _mode_ok(mode: str) -> bool:
    base, _, piece = mode.partition(":")
    return base in MODES and (not piece or (base == "kvprof" and (piece in PIECES or _drain_every(piece) is not None)))


def _drain_every(piece: str) -> int | None:
    """N of the piece `drainN` (seconds between the recorder's drains); None for any other piece."""
    n = piece[len("drain"):]
    return int(n) if piece.startswith("drain") and n.isdigit() and int(n) > 0 else None


def _with_options(cls: type, **options: Any) -> None:
    """Construct `cls` with `options` in this process, whatever its callers pass (`kvprof trace` builds the
    session and its tracker itself)."""
    init = cls.__init__
    cls.__init__ = lambda self, *a, **k: init(self, *a, **{**k, **options})  # type: ignore[method-assign]


def _switch_off(piece: str) -> None:
    """Make this process's trace sessions skip one piece of their bookkeeping (the `kvprof:PIECE` modes):
    through the session's and the tracker's own options where they have one (as overhead_parts.py does)."""
    from tracers.alloc_native import NativeCudaTracker
    from tracers.scopes import NO_SCOPE
    from tracers.session import TraceSession

    for each in COMPOSED.get(piece, ()):
        _switch_off(each)
    if piece in ("bare", "quiet", "lean"):
        return
    if piece in ("notags", "nostages"):  # no option turns tags or stages off: the scopes become no-ops
        TraceSession.tag = lambda self, category: NO_SCOPE  # type: ignore[method-assign]
    if piece == "nostages":  # all but the `rollout` stage itself, which times the rollout
        stage = TraceSession.stage
        TraceSession.stage = lambda self, name, index=None, fine=False: (  # type: ignore[method-assign]
            stage(self, name, index, fine) if name == "rollout" else NO_SCOPE)
    if piece == "notimer":
        _with_options(TraceSession, timer_depth=-1)
    if piece == "nocounters":
        _with_options(TraceSession, counter_depth=0)
    if piece == "nosync":  # no host-sync counting (on CUDA: torch's sync-debug warnings and the synchronize wrapper)
        from tracers.host_sync import HostActivity

        HostActivity.install = lambda self, device_type: None  # type: ignore[method-assign]
    if piece == "nosampler":  # no NVML sampler thread (its reads take the GIL ten times a second)
        from tracers.sampler import DeviceSampler

        DeviceSampler.start = lambda self, t0_perf_ns: None  # type: ignore[method-assign]
    if piece == "pysampler":  # the NVML sampler on a Python thread (as before session 17), not the native library's
        from tracers.sampler import DeviceSampler

        _with_options(DeviceSampler, native=None)
    if piece == "nodrain":  # the recorder drained once, when recording stops: no drain thread work beside the model
        _with_options(NativeCudaTracker, interval_s=1e6)
    if piece == "nowrite":  # each drain replays in C++ and drops its rows (the ids stay in step): timing only, the trace
        # has no allocations; what is left of the drain is its C++ replay and its hand-offs of the GIL
        TraceSession.record_stream_batch = (  # type: ignore[method-assign]
            lambda self, batch, retags, rows_done=None: self.reserve_alloc_ids(len(batch.a_q)) and None)
    if piece == "noparts":  # each drain builds and accounts its rows but writes no part: timing only (no allocations)
        from tracers.alloc_parts import AllocationParts

        AllocationParts.append = lambda self, columns: None  # type: ignore[method-assign]
    if (every := _drain_every(piece)) is not None:
        _with_options(NativeCudaTracker, interval_s=float(every))
    if piece == "rawparts":
        import pyarrow.parquet as pq

        write = pq.write_table
        pq.write_table = lambda table, where, **k: write(table, where, **{**k, "compression": "none"})  # type: ignore[assignment]


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _timed_rollouts(clock: HostTimes) -> None:
    """Measure `clock` around the rollout that `kvprof.runner.run_trace` runs (this process only)."""
    import kvprof.runner as runner

    inner = runner.run_rollout

    def timed(*args: Any, **kwargs: Any) -> Any:
        with clock:
            return inner(*args, **kwargs)

    runner.run_rollout = timed


def _workload(args: argparse.Namespace) -> tuple[Any, Any]:
    from kvprof.runner import TraceRequest, resolve, text_embeddings
    from kvprof.workload.build import build_workload

    r = resolve(TraceRequest(method=args.method, integration=args.integration, config=args.config, frames=args.frames,
                             rolling=args.rolling,
                             decode=not args.no_decode))
    work = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device,
                          lambda: text_embeddings(r.cfg, 0, None, r.device))
    return r, work


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process; the row the alternation collects."""
    if mode == "twin":  # untraced under another name: paired with untraced, its ratio is the pairs' own noise
        return {**run_mode("untraced", args), "mode": "twin"}
    out: dict[str, Any] = {"mode": mode}
    base, _, piece = mode.partition(":")
    if base == "kvprof":
        from kvprof.runner import TraceRequest, run_trace

        if piece and piece != "fine":
            _switch_off(piece)
        clock = HostTimes()
        _timed_rollouts(clock)
        t0 = time.perf_counter()
        outcome = run_trace(TraceRequest(method=args.method, integration=args.integration, config=args.config,
                                         rolling=args.rolling,
                                         frames=args.frames, decode=not args.no_decode, out=Path(args.out),
                                         fine_stages=piece == "fine"))
        s = outcome.summary
        rollout = next((r for r in s.stage_times if r.stage == "rollout"), None)
        done = time.time()
        meta = json.loads((outcome.path / "meta.json").read_text())
        spans = pd.read_parquet(outcome.path / "spans.parquet", columns=["name", "t_end_ns"])
        ends = spans.loc[spans["name"] == "rollout", "t_end_ns"]
        layout = meta.get("allocator_layout") or {}
        rollout_s = rollout.host_ms / 1e3 if rollout else None
        # from the rollout's end to a closed trace with its summary written
        close_s = done - (meta["started_unix_ns"] + int(ends.iloc[0])) / 1e9 if len(ends) else None
        out.update(rollout_wall_s=rollout_s, close_s=close_s,
                   # the rollout and its close, as untraced's is its rollout (building the workload is in neither;
                   # whole_s is the whole `run_trace`, setup included)
                   usable_s=rollout_s + close_s if rollout_s is not None and close_s is not None else None,
                   whole_s=time.perf_counter() - t0,
                   disk_bytes=_bytes_under(outcome.path), events=s.allocation_events,
                   peak_bytes=s.peak.bytes if s.peak else None, max_memory_allocated=meta.get("max_memory_allocated_bytes"),
                   peak_gap_bytes=s.reconciliation.peak_gap_bytes if s.reconciliation else None,
                   max_abs_gap_bytes=s.reconciliation.max_abs_gap_bytes if s.reconciliation else None,
                   recorder=layout.get("recorder", "python"), drains=layout.get("drains"), parts_bytes=layout.get("parts_bytes"),
                   drain_phases=layout.get("drain_phases"),
                   path=str(outcome.path),
                   # the close's steps up to its tables (meta), and from there to the summary (tables, write, views)
                   close_steps_s=meta.get("tracer_close_s"), after_end_s=done - meta["ended_unix_ns"] / 1e9,
                   scopes=meta.get("scopes"), **clock.row)
        if s.allocation_events:
            out["disk_bytes_per_event"] = out["disk_bytes"] / s.allocation_events
        out["measured_share"] = measured_share(meta.get("scopes"), layout.get("drain_phases"), rollout_s,
                                               layout.get("record_cost"))
        return {**out, "max_rss_bytes": _max_rss_bytes()}
    from kvprof.workload.rollout import run_rollout

    r, work = _workload(args)
    if mode in ("history", "tracker") and r.device.type != "cuda":
        return {**out, "skipped": f"the allocator {mode} is CUDA's"}
    folder = Path(args.out) / f"{mode}-{time.strftime('%H%M%S')}-{id(out)}"
    folder.mkdir(parents=True, exist_ok=True)
    _sync(r.device)
    prof = None
    if mode == "history":  # the events alone, as kvprof's Python fallback records them: the defaults would also
        # capture a Python and C++ stack per event (session 6 measured that as the "floor": 1.28 on prq_int4)
        torch.cuda.memory._record_memory_history("all", context=None, stacks="python", max_entries=50_000_000)
    elif mode == "tracker":  # c10 builds a TraceEntry per event and calls kvprof's tracker, which returns at once:
        # the part of the event path any tool on the allocator's events pays, without kvprof's recording
        from tracers import native

        lib = native.load(cuda=True)
        lib.kvp_set_recording(0)
        lib.kvp_attach()
    elif mode == "profiler":
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if r.device.type == "cuda" else [])
        prof = torch.profiler.profile(activities=acts, profile_memory=True, record_shapes=True, with_stack=True)
        prof.__enter__()
    with torch.inference_mode(), HostTimes() as clock:  # (its CPU probes before and after: outside the rollout's time)
        t0 = time.perf_counter()
        run_rollout(work.model, work.embeddings, r.spec, work.caches, work.vae)
        _sync(r.device)
        out["rollout_wall_s"] = time.perf_counter() - t0
    out.update(clock.row)
    if mode == "history":
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        (folder / "snapshot.pickle").write_bytes(pickle.dumps(snap))
    elif prof is not None:
        prof.__exit__(None, None, None)
        prof.export_memory_timeline(str(folder / "memory.json.gz"), device=str(r.device))
    out["usable_s"] = time.perf_counter() - t0
    if r.device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated(r.device)
    return {**out, "disk_bytes": _bytes_under(folder) if mode != "untraced" else 0, "max_rss_bytes": _max_rss_bytes()}


def measured_share(scopes: Any, drains: Any, rollout_s: float | None, recording: Any = None) -> dict[str, float | None]:
    """kvprof's cost as the traced run measured it, in shares of the rollout: the traced thread's seconds in the stage
    and tag scopes (meta `scopes`), the model's time the recorder's drains took (meta `drain_phases`), its record path
    timed in place (meta `record_cost`), and their sum (`kvprof.read.analysis.tracer_cost_shares`, as `kvprof summary`
    adds them). Free of the pairs' noise; c10's own per-event cost is not in it (`tracker_floor.py`)."""
    from kvprof.read.analysis import tracer_cost_shares

    timed_scopes = isinstance(scopes, dict) and isinstance(scopes.get("stages_s"), (int, float))
    shares = tracer_cost_shares({"scopes": scopes if timed_scopes else None, "drains": drains, "recording": recording},
                                rollout_s)
    return {"scopes": shares["thread"], "drains": shares["drains"], "recording": shares["recording"], "sum": shares["sum"]}


def _spread(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads per mode, and each mode's median rollout time over untraced's."""
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode and not r.get("skipped") and not r.get("timed_out")]
        out[mode] = {k: _spread([r.get(k) for r in mine])
                     for k in ("rollout_wall_s", "usable_s", "close_s", "disk_bytes", "max_rss_bytes", "rollout_cpu_s",
                               "rollout_thread_cpu_s", "steal_s")}
        # each piece's spread and their sum's (a piece a run did not measure is left out of its spread)
        out[mode]["measured_share"] = {piece: _spread([(r.get("measured_share") or {}).get(piece) for r in mine])
                                       for piece in ("scopes", "drains", "recording", "sum")}
        out[mode]["runs"] = len(mine)
        out[mode]["timed_out"] = sum(bool(r.get("timed_out")) for r in rows if r["mode"] == mode)
    untraced = out.get("untraced") or {}
    for key, ratio in (("rollout_wall_s", "rollout_over_untraced"), ("rollout_cpu_s", "cpu_over_untraced")):
        base = untraced.get(key, {}).get("median")
        for mode, s in out.items():  # cpu: the CPU seconds kvprof's threads add, whatever the machine's noise
            med = s[key]["median"]
            s[ratio] = med / base if base and med else None
    pairs: dict[int, dict[str, float]] = {}
    for r in rows:  # --pair-gpus: a traced run and the untraced run that ran beside it
        if r.get("pair") is not None and r.get("rollout_wall_s"):
            pairs.setdefault(r["pair"], {})[r["mode"]] = r["rollout_wall_s"]
    for mode, s in out.items():
        ratios = [p[mode] / p["untraced"] for p in pairs.values() if mode in p and "untraced" in p and mode != "untraced"]
        if ratios:
            s["paired_ratio"] = {**_spread(ratios), "pairs": len(ratios)}
    return out


def _run_one(mode: str, shared: list[str], gpu: str | None = None, cpus: set[int] | None = None) -> subprocess.Popen:
    """Start `--mode mode` in its own process (on GPU `gpu` alone when given; its threads on `cpus` when given)."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen([sys.executable, __file__, "--mode", mode, *shared], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=pin)


def cpu_list(text: str, what: str) -> set[int]:
    """One CPU list as taskset writes it ("0-7,16-23"); ValueError naming `what` (the flag or the file) otherwise."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{what}: {part!r} is not a CPU number or range")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    if not cpus:
        raise ValueError(f"{what}: an empty CPU list")
    return cpus


def parse_cpus(text: str, count: int = 2, flag: str = "--pin-cpus") -> list[set[int]]:
    """`--pin-cpus A/B`: `count` CPU lists as taskset writes them ("0-7,16-23/8-15,24-31"), one a GPU's runs, never
    sharing a CPU (gang.py's `--pins` gives one a GPU)."""
    sides = text.split("/")
    if len(sides) != count:
        hint = ", e.g. 0-7/8-15, or auto" if flag == "--pin-cpus" else ", one a GPU"
        raise ValueError(f"{flag} {text!r}: {'two' if count == 2 else count} CPU lists split by '/'{hint}")
    out = [cpu_list(side, f"{flag} {text!r}") for side in sides]
    shared = {c for i, a in enumerate(out) for b in out[i + 1:] for c in a & b}
    if shared:
        raise ValueError(f"{flag} {text!r}: the {'two ' if count == 2 else ''}lists share CPUs {sorted(shared)}")
    return out


def _topology() -> str:
    """`nvidia-smi topo -m`'s text, or "" where it cannot run."""
    try:
        return subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def topology_pins(topo: str, gpus: list[str], usable: set[int]) -> list[set[int]]:
    """`--pin-cpus auto`: each of the two GPUs' usable NUMA-local cores (the "CPU Affinity" column of `nvidia-smi
    topo -m`, columns split by tabs) where the two sets are disjoint; else (one NUMA node, as on session 10's 2-GPU
    host, or a topology that does not say) the usable cores split in two halves."""
    lines = [ln for ln in topo.splitlines() if ln.strip()]
    header = next((ln.split("\t") for ln in lines if "CPU Affinity" in ln), None)
    found: dict[str, set[int]] = {}
    if header is not None:
        col = [h.strip() for h in header].index("CPU Affinity")
        for ln in lines:
            cells = [c.strip() for c in ln.split("\t")]
            if cells[0].startswith("GPU") and len(cells) > col:
                try:
                    found[cells[0][3:]] = cpu_list(cells[col], "nvidia-smi topo -m") & usable
                except ValueError:
                    continue
    a, b = (found.get(g, set()) for g in gpus)
    if a and b and not (a & b):
        return [a, b]
    cores = sorted(usable)
    return [set(cores[: len(cores) // 2]), set(cores[len(cores) // 2:])]


def _row(proc: subprocess.Popen, mode: str, timeout: float, **extra: Any) -> dict[str, Any]:
    """The JSON row a `--mode` process printed (or what went wrong), with `extra` (gpu, pair) added."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"mode": mode, "timed_out": True, **extra}
    sys.stderr.write(stderr[-2000:])
    if proc.returncode != 0:
        return {"mode": mode, "failed": stderr.strip().splitlines()[-1:] or ["?"], **extra}
    return {**json.loads(stdout.strip().splitlines()[-1]), **extra}


def _log_rows(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is not None:
        with path.open("a") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in rows)


def add_workload_options(p: argparse.ArgumentParser) -> None:
    """The rollout every mode runs (method, integration, config, frames, rolling window, decode) and where traces go."""
    p.add_argument("--method", default="bf16")
    p.add_argument("--integration", default="study")
    p.add_argument("--config", default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--rolling", type=int, default=None, metavar="FRAMES",
                   help="a rolling KV window of FRAMES frames (long horizons: 126 or 252 frames with --rolling 21)")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--out", default="/tmp/kv/overhead")


def child_args(args: argparse.Namespace) -> list[str]:
    """`add_workload_options`' values as a `--mode` process is given them."""
    return ["--method", args.method, "--integration", args.integration, "--out", args.out] + \
        (["--config", args.config] if args.config else []) + (["--frames", str(args.frames)] if args.frames else []) + \
        (["--rolling", str(args.rolling)] if args.rolling else []) + (["--no-decode"] if args.no_decode else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_options(p)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--mode", help="run one mode in this process")
    p.add_argument("--mode-timeout", type=float, default=600.0)
    p.add_argument("--pair-gpus", default=None, metavar="A,B", help="each traced mode on GPU A beside untraced on B, then swapped")
    p.add_argument("--pin-cpus", default=None, metavar="A/B|auto",
                   help="with --pair-gpus: run GPU A's processes on CPU list A and GPU B's on B (taskset's notation, "
                        "e.g. 0-7/8-15), so the two never share a core; auto: each GPU's NUMA-local cores from "
                        "`nvidia-smi topo -m`, or this process's cores in halves where both GPUs share a node")
    p.add_argument("--rows-log", type=Path, default=None, metavar="FILE",
                   help="also append each row to FILE as a JSON line when it is in (a call cut off keeps them)")
    p.add_argument("--pairs", type=int, default=None, metavar="N",
                   help="with --pair-gpus: at most N pairs a mode (--repeat R gives 2R; an odd count that fits a call)")
    args = p.parse_args(argv)
    choices = f"{', '.join(MODES)}, or kvprof:PIECE with PIECE one of {', '.join(PIECES)} or drainN (N seconds)"
    if args.mode:
        if not _mode_ok(args.mode):
            p.error(f"--mode: unknown {args.mode}; choose from {choices}")
        print(json.dumps({**run_mode(args.mode, args), "cpus_allowed": len(os.sched_getaffinity(0))}))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if not _mode_ok(m)]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)}; choose from {choices}")
    gpus = [g.strip() for g in args.pair_gpus.split(",")] if args.pair_gpus else None
    if gpus is not None and (len(gpus) != 2 or len(set(gpus)) != 2):
        p.error(f"--pair-gpus: two different GPU indices, e.g. 0,1 (got {args.pair_gpus!r})")
    pins: dict[str, set[int]] = {}
    if args.pin_cpus:
        if gpus is None:
            p.error("--pin-cpus: only with --pair-gpus")
        try:
            sides = topology_pins(_topology(), gpus, set(os.sched_getaffinity(0))) if args.pin_cpus == "auto" \
                else parse_cpus(args.pin_cpus)
            pins = dict(zip(gpus, sides))
        except ValueError as exc:
            p.error(str(exc))
    shared = child_args(args)
    rows: list[dict[str, Any]] = []
    pairs = itertools.count()
    done: collections.Counter[str] = collections.Counter()  # pairs run per mode (--pairs)
    for _ in range(args.repeat):
        if gpus is None:
            for mode in modes:
                rows.append(_row(_run_one(mode, shared), mode, args.mode_timeout))
                _log_rows(args.rows_log, rows[-1:])
            continue
        for mode in (m for m in modes if m != "untraced"):
            for traced_gpu, plain_gpu in (gpus, gpus[::-1]):
                if args.pairs is not None and done[mode] >= args.pairs:
                    break
                done[mode] += 1
                pair = next(pairs)
                procs = [(mode, traced_gpu, _run_one(mode, shared, traced_gpu, pins.get(traced_gpu))),
                         ("untraced", plain_gpu, _run_one("untraced", shared, plain_gpu, pins.get(plain_gpu)))]
                rows += [_row(proc, m, args.mode_timeout, gpu=g, pair=pair) for m, g, proc in procs]
                _log_rows(args.rows_log, rows[-2:])
    print(json.dumps({"rows": rows, "summary": summarize(rows)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
