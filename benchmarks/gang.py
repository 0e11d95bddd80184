"""Several of overhead.py's modes at the same moment, one a GPU, rotated round by round (issue 15).

    python3 benchmarks/gang.py --gpus 0,1,2,3 --pins 0-15/16-31/32-47/48-63 \\
        --modes untraced,kvprof,kvprof:quiet,kvprof:lean --rounds 8 [--budget-s 480] [--rows-log rows.jsonl] \\
        --method prq_int4 --frames 21 --no-decode

overhead.py's pairs set one traced mode beside untraced at a time. Sessions 12-16 found that a shared
host moves whole stretches of time and that machines differ by more than the few percent at stake, so
two modes measured in different pairs, or different calls, cannot be told apart. Here every mode runs
in every round, all at once, each on its own GPU and its own cores: round r puts mode i on slot
(i + r) mod N, so over N rounds each mode has used every slot (GPU and cores). Each mode's rollout is
read against untraced's in the same round; per mode the median and spread of those ratios (and, round by round, its
CPU probe over untraced's: host_times' fixed loop on each rollout thread's CPU), and per slot its mean rollout time
over the round's mean (how much the slots themselves differ).

A mode may be given more than once (`untraced,kvprof,untraced,kvprof` on four GPUs: two pairs a round): its k-th copy
is read against untraced's k-th (its first where untraced has fewer), and two copies of untraced give, each round,
the noise floor at the same moment (`untraced_a_a`: the second over the first).

`--budget-s`: no round starts unless the longest round so far still fits (a device call has a limit);
`--rows-log` keeps each round's rows on disk as they come. Prints JSON: rows, ratios, slots.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (beside this script)

BASE = "untraced"


def slot_of(mode_index: int, round_index: int, slots: int) -> int:
    """The slot (GPU and cores) of the `mode_index`-th mode in round `round_index`."""
    return (mode_index + round_index) % slots


def _probe_ratio(row: dict[str, Any], base: dict[str, Any]) -> float | None:
    """`row`'s mean CPU probe ms over `base`'s (host_times' `cpu_probe_ms`); None where either lacks it."""
    a, b = row.get("cpu_probe_ms"), base.get("cpu_probe_ms")
    if not a or not b or not all(a) or not all(b):
        return None
    return round(statistics.fmean(a) / statistics.fmean(b), 4)


def copies(modes: list[str]) -> list[int]:
    """Each entry's copy number among the entries of its mode (`untraced,kvprof,untraced` -> 0, 0, 1)."""
    return [modes[:i].count(m) for i, m in enumerate(modes)]


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per mode, its rollouts over untraced's of the same round and copy (median, spread, pairs; `pooled`: the sum of
    its rollouts over the sum of theirs); untraced's copies against each other (the noise floor); per slot, its mean
    rollout over the mean of its round (1.0: a slot no faster or slower than the others)."""
    by_round: dict[int, dict[tuple[str, int], dict[str, Any]]] = {}
    for r in rows:
        if r.get("rollout_wall_s"):
            by_round.setdefault(r["round"], {})[(r["mode"], r.get("copy", 0))] = r
    bases = modes.count(BASE)
    ratios: dict[str, Any] = {}
    for mode in dict.fromkeys(modes):
        if mode == BASE:
            continue
        keys = [((mode, c), (BASE, min(c, bases - 1))) for c in range(modes.count(mode))]  # copy c beside untraced's
        pairs = [(rnd[a], rnd[b]) for rnd in by_round.values() for a, b in keys if a in rnd and b in rnd]
        vals = [a["rollout_wall_s"] / b["rollout_wall_s"] for a, b in pairs]
        ratios[mode] = {"median": statistics.median(vals) if vals else None, "min": min(vals, default=None),
                        "max": max(vals, default=None), "rounds": len(vals), "each": [round(v, 4) for v in vals],
                        "pooled": round(sum(a["rollout_wall_s"] for a, _ in pairs) /
                                        sum(b["rollout_wall_s"] for _, b in pairs), 4) if pairs else None,
                        # the same rounds' CPU probes (a fixed loop on the rollout thread's CPU, before and after):
                        # near 1 where both ran on equally fast CPUs, so a slow ratio beside a probe of ~1 is the process
                        "probe_each": [_probe_ratio(a, b) for a, b in pairs]}
    a_a = [rnd[(BASE, 1)]["rollout_wall_s"] / rnd[(BASE, 0)]["rollout_wall_s"] for rnd in by_round.values()
           if (BASE, 0) in rnd and (BASE, 1) in rnd]
    rel: dict[int, list[float]] = {}
    for rnd in by_round.values():
        mean = statistics.fmean(r["rollout_wall_s"] for r in rnd.values())
        for r in rnd.values():
            rel.setdefault(r["slot"], []).append(r["rollout_wall_s"] / mean)
    slots = {str(s): round(statistics.fmean(v), 4) for s, v in sorted(rel.items())}
    out = {"over_untraced": ratios, "slot_speed": slots, "rounds": len(by_round)}
    if bases > 1:
        out["untraced_a_a"] = [round(v, 4) for v in a_a]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    overhead.add_workload_options(p)
    p.add_argument("--gpus", required=True, metavar="A,B,...", help="one mode a GPU each round")
    p.add_argument("--pins", default=None, metavar="A/B/...",
                   help="each GPU's CPU list, in --gpus' order (taskset's notation)")
    p.add_argument("--modes", required=True, help=f"as many as --gpus, {BASE} among them; a mode may repeat")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--budget-s", type=float, default=None, help="start no round the longest so far would not fit in")
    p.add_argument("--mode-timeout", type=float, default=600.0)
    p.add_argument("--rows-log", type=Path, default=None, metavar="FILE")
    args = p.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if len(set(gpus)) != len(gpus) or len(gpus) < 2:
        p.error(f"--gpus: two or more different GPU indices (got {args.gpus!r})")
    if len(modes) != len(gpus) or BASE not in modes:
        p.error(f"--modes: {len(gpus)} modes, one a GPU, {BASE} among them (got {args.modes!r})")
    bad = [m for m in modes if not overhead._mode_ok(m)]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)} (overhead.py's modes and kvprof:PIECE)")
    pins: list[set[int] | None] = [None] * len(gpus)
    if args.pins:
        try:
            pins = list(overhead.parse_cpus(args.pins, len(gpus), "--pins"))
        except ValueError as exc:
            p.error(str(exc))
    shared = overhead.child_args(args)
    rows: list[dict[str, Any]] = []
    t_start, longest = time.monotonic(), 0.0
    for rnd in range(args.rounds):
        if args.budget_s is not None and rnd and time.monotonic() - t_start + longest > args.budget_s:
            print(f"gang: round {rnd} would not fit in --budget-s {args.budget_s:g}; stopping", file=sys.stderr)
            break
        t0 = time.monotonic()
        procs = []
        for i, (mode, copy) in enumerate(zip(modes, copies(modes))):
            s = slot_of(i, rnd, len(gpus))
            procs.append((mode, copy, s, overhead._run_one(mode, shared, gpus[s], pins[s])))
        got = [overhead._row(proc, mode, args.mode_timeout, gpu=gpus[s], slot=s, round=rnd, copy=copy)
               for mode, copy, s, proc in procs]
        rows += got
        overhead._log_rows(args.rows_log, got)
        longest = max(longest, time.monotonic() - t0)
    print(json.dumps({"rows": rows, "summary": summarize(rows, modes)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
