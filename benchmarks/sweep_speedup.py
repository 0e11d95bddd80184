"""Issue 17's speed-up: a sweep on one GPU against the same cells as one sweep over N GPUs.

    python3 benchmarks/sweep_speedup.py compare --one SWEEP [SWEEP ...] --many SWEEP [--json]
    python3 benchmarks/sweep_speedup.py split N --costs-from SWEEP [SWEEP ...] [--methods all|M1,M2]

`--one`: one or more one-GPU sweeps (one Dask worker each) that together hold the cells once, e.g. four quarters
run at once on the four GPUs of a machine; their wall times added are the one-GPU sweep's. `--many`: the sweep of
the same cells over several GPUs. Wall times are the manifests' `runs[].seconds` (every run of a resumed sweep).
Prints the table of RESULTS.md (or JSON): cells, wall seconds, cell seconds, cells per hour, the speed-up, how busy
the many-GPU sweep kept its workers, where the cells' seconds went (start-up before the trace opened, the trace,
after it closed: the manifest's `phases`), the cells whose trace was not exact (peak gap or a boundary gap; or not
reconciled at all, as on CPU), and whether
both sides found the same peak for each cell (they should, byte for byte).

`split N` prints N comma lists of methods whose cells, by the `--costs-from` sweeps' cell seconds (median of a
method's cells; the median of all for a method they lack; a .jsonl of the former sweep script counts its rows'
`process_s`), take about the same time (longest first, each to the lightest list): the `--one` side's sweeps, one a
GPU, in one device call. `split 1` is the methods longest first (a fresh sweep submits its cells in that order).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from kvprof.read.manifest import DONE, phase_seconds, read_manifest, sweep_seconds  # noqa: E402
from results_table import read_rows  # noqa: E402


def side(folders: list[Path]) -> dict[str, Any]:
    """Totals of one side (one or several sweep folders)."""
    cells: dict[str, dict[str, Any]] = {}
    wall = 0.0
    workers = 0
    for folder in folders:
        m = read_manifest(folder)
        wall += sweep_seconds(m)
        workers = max(workers, (m.get("cluster") or {}).get("workers") or 0)
        for c in m["cells"]:
            if c["status"] in DONE:
                cells[c["id"]] = c
    inexact = sorted(cid for cid, c in cells.items() if _gaps(c) != (0, 0))
    cell_s = sum(c.get("seconds") or 0.0 for c in cells.values())
    phases = phase_seconds(list(cells.values()))  # cells of sweeps before session 9 have none
    return {"sweeps": [str(f) for f in folders], "cells": len(cells), "wall_s": round(wall, 1), "cell_s": round(cell_s, 1),
            "phases": phases,
            "cells_per_h": round(3600 * len(cells) / wall, 1) if wall else None, "workers": workers, "inexact": inexact,
            "_cells": cells}


def _gaps(cell: dict[str, Any]) -> tuple[Any, Any]:
    rec = (cell.get("result") or {}).get("reconciliation") or {}
    return rec.get("peak_gap_bytes"), rec.get("max_abs_gap_bytes")


def compare(one: list[Path], many: list[Path]) -> dict[str, Any]:
    """The speed-up of `many` over `one`, with the checks described in the module docstring."""
    a, b = side(one), side(many)
    ca, cb = a.pop("_cells"), b.pop("_cells")
    shared = sorted(set(ca) & set(cb))
    def peak(c: dict[str, Any]) -> Any:
        return (c.get("result") or {}).get("peak_bytes")

    peaks_differ = [cid for cid in shared if peak(ca[cid]) != peak(cb[cid])]
    same_cell_s = [sum(c[cid].get("seconds") or 0.0 for cid in shared) for c in (ca, cb)]
    out = {"one": a, "many": b, "same_cells": len(shared) == len(ca) == len(cb), "peaks_differ": peaks_differ,
           "speedup": round(a["wall_s"] / b["wall_s"], 3) if a["wall_s"] and b["wall_s"] else None,
           # how busy the many-GPU sweep kept its workers, and how much slower its cells ran than the one-GPU side's
           "busy": round(b["cell_s"] / (b["workers"] * b["wall_s"]), 3) if b["workers"] and b["wall_s"] else None,
           "cell_time_ratio": round(same_cell_s[1] / same_cell_s[0], 3) if same_cell_s[0] else None}
    return out


def markdown(r: dict[str, Any]) -> str:
    """The RESULTS.md table."""
    rows = ["| sweep | cells | wall s | cell seconds | cells / h | workers | not exact or not reconciled |",
            "|---|---|---|---|---|---|---|"]
    for name in ("one", "many"):
        s = r[name]
        rows.append(f"| {name}: {', '.join(s['sweeps'])} | {s['cells']} | {s['wall_s']} | {s['cell_s']} | {s['cells_per_h']} | "
                    f"{s['workers']} | {len(s['inexact'])} |")
    rows.append("")
    for name in ("one", "many"):
        if r[name]["phases"]:
            rows.append(f"{name}: cell seconds in start-up / trace / after it: " +
                        " / ".join(str(v) for v in r[name]["phases"].values()))
    rows.append(f"speed-up {r['speedup']}x; many-GPU workers busy {r['busy']}; its cells took {r['cell_time_ratio']}x the "
                f"one-GPU side's; same cells on both sides: {r['same_cells']}; peaks that differ: {len(r['peaks_differ'])}")
    return "\n".join(rows)


def split(n: int, methods: list[str], earlier: list[Path]) -> list[list[str]]:
    """`methods` in `n` lists of about equal cost (see the module docstring)."""
    costs: dict[str, list[float]] = {}
    for path in earlier:  # a sweep (folder or manifest) or the former sweep script's .jsonl rows
        for r in read_rows(str(path)):
            if r.get("status") in DONE and r.get("process_s"):
                costs.setdefault(r["method"], []).append(float(r["process_s"]))
    every = sorted(s for v in costs.values() for s in v)
    default = statistics.median(every) if every else 1.0
    cost = {m: statistics.median(costs[m]) if m in costs else default for m in methods}
    bins: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(n)]
    for m in sorted(methods, key=lambda m: -cost[m]):
        i = min(range(n), key=lambda i: bins[i][0])
        bins[i] = (bins[i][0] + cost[m], bins[i][1] + [m])
    return [b for _, b in bins]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="the speed-up of --many over --one")
    c.add_argument("--one", type=Path, nargs="+", required=True, help="the one-GPU sweep(s)")
    c.add_argument("--many", type=Path, nargs="+", required=True, help="the many-GPU sweep")
    c.add_argument("--json", action="store_true")
    s = sub.add_parser("split", help="methods in N lists of about equal cost")
    s.add_argument("n", type=int)
    s.add_argument("--costs-from", type=Path, nargs="+", default=[], metavar="SWEEP")
    s.add_argument("--methods", default="all", help="all, or a comma list")
    args = p.parse_args(argv)
    try:
        if args.cmd == "split":
            from methods import method_names

            names = method_names() if args.methods == "all" else args.methods.split(",")
            print("\n".join(",".join(b) for b in split(max(1, args.n), names, args.costs_from)))
            return 0
        r = compare(args.one, args.many)
    except ValueError as exc:  # read_manifest names the file
        p.error(str(exc))
    print(json.dumps(r, indent=1) if args.json else markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
