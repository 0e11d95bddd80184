"""`kvprof sweep`: check the matrix, start (or join) the cluster, run each cell as a task, keep the
manifest up to date as each cell finishes.

    kvprof sweep --methods all --integrations staged --frames 42 --out sweeps/staged
    kvprof sweep --out sweeps/staged --resume            # only cells missing, failed or torn
    kvprof sweep ... --scheduler tcp://host:8786         # a running Dask cluster
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from kvprof.errors import UsageError
from kvprof.read import manifest as mf
from kvprof.sweep.matrix import AXES, PASS_THROUGH, Matrix, build_cells, parse_matrix

EXIT_CELLS_FAILED = 1
EXIT_INTERRUPTED = 130
MARKER = ".kvprof-sweep-marker"


def add_arguments(p: argparse.ArgumentParser, param_type: Any) -> None:
    """The flags of `kvprof sweep` (the matrix, what every trace gets, the cluster, the view)."""
    a = p.add_argument_group("matrix (every combination is a cell)")
    a.add_argument("--methods", default="all", help="all, or a comma list (see 'kvprof methods'); default all")
    a.add_argument("--skip", default=None, metavar="M1,M2", help="methods to leave out")
    a.add_argument("--integrations", default="study", metavar="I1,I2", help="study, staged or study,staged; default study")
    a.add_argument("--codes", default=None, metavar="C1,C2", help="code storages (each integration's default when not given)")
    a.add_argument("--frames", default=None, metavar="F1,F2", help="latent frames, e.g. 42,126 (default 42 on GPU, 12 on CPU)")
    a.add_argument("--rolling", default=None, metavar="W1,W2", help="rolling cache windows (default: all frames kept)")
    a.add_argument("--seeds", default=None, metavar="S1,S2", help="seeds (default 0)")
    a.add_argument("--prompt-embeds", type=Path, nargs="+", default=None, metavar="FILE", help="UMT5 embedding files, one axis value each")
    a.add_argument("--param", action="append", type=param_type, default=[], metavar="NAME=VALUE",
                   help="a method parameter, for the methods that have it")
    t = p.add_argument_group("given to every trace")
    t.add_argument("--config", default=None, help="model config (default wan-1.3b on GPU workers, tiny on CPU)")
    t.add_argument("--dtype", default=None)
    t.add_argument("--sink", type=int, default=0, metavar="S", help="sink frames of a rolling cache")
    t.add_argument("--no-decode", dest="decode", action="store_false", help="skip the VAE decode")
    t.add_argument("--free-cache-before-decode", action="store_true")
    t.add_argument("--checkpoint", type=Path, default=None)
    t.add_argument("--vae", type=Path, default=None)
    t.add_argument("--budget", default=None, help="memory budget of every trace, e.g. 24GiB")
    c = p.add_argument_group("cluster")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    c.add_argument("--workers-per-gpu", type=int, default=1, metavar="N", help="local workers per GPU (traces sharing a GPU)")
    c.add_argument("--workers", type=int, default=2, metavar="N", help="local CPU workers on a machine without GPU (default 2)")
    c.add_argument("--retries", type=int, default=1, metavar="N", help="retries of a cell whose trace process died (default 1)")
    c.add_argument("--costs-from", type=Path, nargs="+", default=[], metavar="SWEEP",
                   help="earlier sweep folders (or their manifest files): their cells' times order this sweep's "
                        "cells longest first and feed the ETA")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, metavar="SWEEP", help="the sweep folder (manifest.json, traces/)")
    o.add_argument("--resume", action="store_true", help="run only the cells of SWEEP that are not complete or oom")
    o.add_argument("--json", action="store_true", help="print the manifest's cells as JSON at the end (no live view)")
    o.add_argument("--quiet", action="store_true", help="no live view")


def _check_flags(args: argparse.Namespace) -> None:
    for flag in ("workers_per_gpu", "workers"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be 1 or more")
    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: must be 0 or more")


def _given_cell_flags(args: argparse.Namespace) -> list[str]:
    """The matrix and per-trace flags given on the command line (those not at their default)."""
    p = argparse.ArgumentParser()
    add_arguments(p, str)
    defaults = vars(p.parse_args(["--out", "."]))
    return [a for a in (*AXES, *PASS_THROUGH) if getattr(args, a, None) != defaults.get(a)]


def earlier_cells(folders: list[Path]) -> list[dict[str, Any]]:
    """The cells of the `--costs-from` sweeps (their times: `progress.cell_costs`)."""
    cells: list[dict[str, Any]] = []
    for folder in folders:
        try:
            cells += mf.read_manifest(folder)["cells"]
        except ValueError as exc:
            raise UsageError(f"--costs-from: {exc}; pass folders written by 'kvprof sweep'") from None
    return cells


def prepare(args: argparse.Namespace, gpus: int) -> tuple[dict[str, Any], Matrix | None]:
    """The manifest to run (a new one from the matrix flags, or SWEEP's own with --resume), and the
    matrix when the cells wait for a remote cluster to say GPU or CPU. Usage errors of the matrix and --out are raised
    here, before any cluster starts."""
    _check_flags(args)
    out: Path = args.out
    if args.resume:
        if not mf.is_sweep(out):
            raise UsageError(f"--resume: {out} holds no sweep (no {mf.MANIFEST_FILE}); drop --resume to start one there")
        given = _given_cell_flags(args)
        if given:
            flags = ", ".join("--" + {"decode": "no-decode"}.get(g, g.replace("_", "-")) for g in given)
            raise UsageError(f"--resume runs the cells of {out / mf.MANIFEST_FILE} as they are; drop {flags} "
                             "(or start a new --out)")
        return mf.read_manifest(out), None
    if out.exists() and (out / mf.MANIFEST_FILE).exists():
        raise UsageError(f"--out {out}: holds a sweep already; add --resume to finish it, or pick another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; pick a folder")
    matrix = parse_matrix(args)
    if args.scheduler is not None:  # the remote workers' GPUs are known once connected: cells built then
        return mf.new_manifest(matrix.to_dict(), [], ["kvprof", *sys.argv[1:]]), matrix
    cells = build_cells(matrix, gpu=gpus > 0)
    return mf.new_manifest(matrix.to_dict(), [c.to_dict() for c in cells], ["kvprof", *sys.argv[1:]]), None


def run(args: argparse.Namespace) -> int:
    """`kvprof sweep`: returns the exit code (0 when every cell is complete or oom)."""
    from kvprof.sweep import cluster as cl

    gpus = cl.visible_gpus() if args.scheduler is None else 0
    manifest, matrix = prepare(args, gpus)
    earlier = earlier_cells(args.costs_from)  # read once; a bad folder fails here, before anything is written
    out: Path = args.out
    try:
        mf.sweep_trace_root(out).mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        (out / MARKER).write_text(token)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); pick a writable folder") from None
    quiet = args.quiet or args.json
    if matrix is None and all(c["status"] in mf.DONE for c in manifest["cells"]):  # --resume of a finished sweep
        if args.json:
            _print_json(out, manifest)
        elif not quiet:
            print(f"kvprof sweep: every cell of {out} is complete or oom; nothing to run", file=sys.stderr)
        return 0
    client, cluster, info = cl.start(args.scheduler, gpus, args.workers_per_gpu, args.workers)
    t_start, code = time.time(), EXIT_INTERRUPTED
    this_run = {"started": mf.now(), "command": ["kvprof", *sys.argv[1:]], "cluster": info.to_dict()}
    try:
        if matrix is not None:  # --scheduler: the workers say GPU or CPU
            manifest["cells"] = mf.new_manifest({}, [c.to_dict() for c in build_cells(matrix, gpu=info.gpus > 0)], [])["cells"]
        manifest["cluster"] = info.to_dict()
        manifest["runs"].append(this_run)
        mf.write_manifest(out, manifest)
        if not quiet:
            print(f"kvprof sweep: {len(manifest['cells'])} cells, {info.workers} workers"
                  f"{f' on {info.gpus // max(1, info.workers_per_gpu)} GPUs' if info.gpus else ' (CPU)'}; "
                  f"dashboard: {info.dashboard or 'none'}{_bokeh_note()}", file=sys.stderr)
        code = _run_cells(client, info, manifest, out, token, args.retries, quiet, earlier)
    except KeyboardInterrupt:
        print(f"kvprof sweep: interrupted; finished cells are in {out / mf.MANIFEST_FILE} ('--resume' runs the rest)",
              file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        if any(r is this_run for r in manifest["runs"]):  # not when the cells of a remote cluster were refused
            this_run.update(finished=mf.now(), seconds=round(time.time() - t_start, 1), exit_code=code)
            mf.write_manifest(out, manifest)
        cl.close(client, cluster)
    if args.json:
        _print_json(out, manifest)
    elif not quiet or code:
        print(f"kvprof sweep: {', '.join(f'{n} {s}' for s, n in mf.counts(manifest).items())}; {out}", file=sys.stderr)
        if not quiet and (where := where_time_went(manifest)):
            print(where, file=sys.stderr)
    return code


def where_time_went(manifest: dict[str, Any]) -> str | None:
    """One line: the finished cells' seconds in their traces and outside them (a fresh process per trace costs its
    start-up and exit), or None when no cell recorded its phases."""
    ph = mf.phase_seconds([c for c in manifest["cells"] if c["status"] in mf.DONE])
    total = sum(ph.values()) if ph else 0.0
    if not ph or total <= 0:
        return None
    outside = ph["startup_s"] + ph["after_s"]
    return (f"kvprof sweep: cells ran {total:,.0f} s: {ph['trace_s']:,.0f} s in their traces, {outside:,.0f} s "
            f"({100 * outside / total:.0f} %) in their processes' start-up ({ph['startup_s']:,.0f} s: interpreter, "
            f"imports, CUDA) and exit ({ph['after_s']:,.0f} s: tables, summary)")


def _print_json(out: Path, manifest: dict[str, Any]) -> None:
    """`--json`: the sweep's counts and cells on stdout."""
    print(json.dumps({"sweep": str(out), "counts": mf.counts(manifest), "cells": manifest["cells"]}, indent=2, default=str))


def cell_priorities(todo: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[int]:
    """Dask priorities of the cells to run: their expected milliseconds (from `done` cells of the same kind, this
    sweep's and earlier sweeps'), so the longest start first and the sweep ends with short cells; 0 when unknown."""
    from kvprof.sweep.progress import cell_costs, expected_cost

    costs = cell_costs(done)
    return [int(1000 * (expected_cost(c, costs, 0.0) or 0.0)) for c in todo]


def submission_order(todo: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """The cells to run with their priorities, highest first (ties keep the matrix order). Priorities alone are not
    enough: each `submit` reaches the scheduler at once, and the first cells submitted took the idle workers before
    the longer ones behind them arrived (session 10's 4-GPU sweep began with bf16 and three rtn cells, prq at 22 s)."""
    return sorted(zip(todo, cell_priorities(todo, done)), key=lambda cp: -cp[1])


def _run_cells(client: Any, info: Any, manifest: dict[str, Any], out: Path, token: str, retries: int, quiet: bool,
               earlier: list[dict[str, Any]]) -> int:
    """Submit the cells not done (longest expected first), record each as it finishes."""
    from distributed import as_completed

    from kvprof.sweep.progress import SweepProgress
    from kvprof.sweep.run import run_cell

    cells = manifest["cells"]
    todo = [c for c in cells if c["status"] not in mf.DONE]
    futures = {}
    for c, prio in submission_order(todo, [*earlier, *cells]):
        c["status"] = "pending"
        fut = client.submit(run_cell, {"id": c["id"], "args": c["args"]}, str(out.resolve()), str((out / MARKER).resolve()),
                            token, key=f"cell-{c['id']}-{token}", retries=retries, pure=False, priority=prio,
                            resources={"GPU": 1} if info.gpus else None)
        futures[fut.key] = (fut, c)
    workers: dict[str, dict[str, Any]] = {}
    failed = 0
    t0 = time.time()
    with SweepProgress(len(cells), disable=quiet, earlier=earlier) as view:
        ac = as_completed([f for f, _ in futures.values()])
        while not ac.is_empty():
            for fut in ac.next_batch(block=False) if ac.has_ready() else []:
                cell = futures[fut.key][1]
                failed += _record(cell, fut, out, workers, view)
                mf.write_manifest(out, manifest)
            running = _running(client, futures)
            for addr, w in client.scheduler_info().get("workers", {}).items():
                workers.setdefault(addr, {"name": w.get("name"), "gpu": _gpu_of(w), "done": 0, "failed": 0})
            view.update(cells, running, workers, time.time() - t0)
            if not ac.has_ready():
                time.sleep(0.5)  # polling the scheduler for the live view, not waiting on a result
    return EXIT_CELLS_FAILED if failed else 0


def _bokeh_note() -> str:
    """The dashboard page only says 'install bokeh' without it: say so here."""
    import importlib.util

    return "" if importlib.util.find_spec("bokeh") else " (its pages need bokeh>=3.1: pip install bokeh)"


def _gpu_of(w: dict[str, Any]) -> str | None:
    name = str(w.get("name"))
    return name[3:].split("-")[0] if name.startswith("gpu") else None


def _running(client: Any, futures: dict[str, Any]) -> dict[str, list[str]]:
    """Worker address -> ids of the cells it is tracing now."""
    try:
        processing = client.processing()
    except Exception:  # the scheduler busy or going: the view skips a beat
        return {}
    return {addr: [futures[k][1]["id"] for k in keys if k in futures] for addr, keys in processing.items()}


def _record(cell: dict[str, Any], fut: Any, out: Path, workers: dict[str, dict[str, Any]], view: Any) -> int:
    """Write a finished task into its cell (1 when it failed for good, else 0)."""
    from kvprof.sweep.run import unpack

    root = mf.sweep_trace_root(out)
    if fut.status == "cancelled":  # the cluster went away under the sweep: the cell stays pending for --resume
        return 0
    if fut.status == "finished":
        res = fut.result()
        tar = res.pop("tar", None)
        if tar is not None:  # the worker did not see the sweep folder: its trace came back as bytes
            run_id = res["run_id"] if not (root / res["run_id"]).exists() else mf.next_attempt(root, cell["id"])
            unpack(tar, root, run_id)
            res["run_id"] = run_id
        cell.update(res, error=None)
        w = workers.setdefault(res.get("worker") or "?", {"name": res.get("worker_name"), "gpu": res.get("gpu"), "done": 0, "failed": 0})
        w["done"] += 1
        bad = 0
    else:
        exc = fut.exception()
        cell.update(status="failed", run_id=None, error=f"{type(exc).__name__}: {exc}"[:1000])
        view.log(f"failed: {cell['id']}: {cell['error'][:300]}")
        bad = 1
    cell["torn"] = mf.torn_attempts(root, cell["id"], cell.get("run_id"))
    return bad
