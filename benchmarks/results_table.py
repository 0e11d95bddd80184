"""Turn sweeps (`kvprof sweep` folders, or the JSON lines of the former benchmarks/sweep.py) into
the markdown table of RESULTS.md.

rollout s is the rollout stage's wall time, trace s the whole trace (its process: start-up, setup, rollout, writing the
trace); * marks rows traced beside other traces on the same GPU (`--workers-per-gpu` > 1, formerly
`--lanes`), whose times include theirs.
peak is the allocator's own (`max_memory_allocated()`, which the trace's peak equals): sweep rows
written before traces held the blocks live when tracking started have a smaller `peak_bytes` when
an earlier trace of the same process left blocks allocated, and their reconciliation has the
allocator's figure.

    python3 benchmarks/results_table.py SWEEP [benchmarks/results/sweep_study_h100.jsonl ...]
    python3 benchmarks/results_table.py --throughput SWEEP [SWEEP ...]   # cells per hour of each sweep
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvprof.read.manifest import DONE, read_manifest, sweep_seconds  # noqa: E402
from kvprof.units import fmt_bytes  # noqa: E402


def shared(r: dict) -> bool:
    """The row's trace ran beside other sweep processes on the GPU (its times include their load)."""
    return (r.get("lanes") or 1) > 1


def peak(r: dict) -> int:
    """The allocator's peak of the row's process during the trace (see the module docstring)."""
    return int((r.get("reconciliation") or {}).get("max_memory_allocated_bytes") or r["peak_bytes"])


def sweep_rows(folder: Path) -> list[dict]:
    """The rows of a `kvprof sweep` folder, one per cell, from its manifest."""
    m = read_manifest(folder)
    lanes = (m.get("cluster") or {}).get("workers_per_gpu") or 1
    out = []
    for c in m["cells"]:
        res = c.get("result") or {}
        out.append({"method": c["method"], "integration": c.get("integration"), "status": c["status"],
                    "peak_bytes": res.get("peak_bytes"), "peak_stage": res.get("peak_stage"), "kv": res.get("kv"),
                    "rollout_s": res.get("rollout_s"), "process_s": c.get("seconds"),
                    "reconciliation": res.get("reconciliation"), "lanes": lanes})
    return out


def read_rows(path: str) -> list[dict]:
    """Rows of a sweep folder (or its manifest.json), or of a .jsonl file of the former sweep script."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":  # a sweep folder, or its manifest (also a copy kept under another name)
        return sweep_rows(p)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def throughput(folder: Path) -> str:
    """One line: cells finished per hour of the sweep's runs (all runs of a resumed sweep together)."""
    m = read_manifest(folder)
    done = sum(1 for c in m["cells"] if c["status"] in DONE)
    seconds = sweep_seconds(m)
    c = m.get("cluster") or {}
    rate = 3600 * done / seconds if seconds else float("nan")
    return (f"{folder}: {done}/{len(m['cells'])} cells in {seconds:.0f} s over {len(m.get('runs', []))} run(s), "
            f"{c.get('workers')} workers ({c.get('gpus')} GPU workers, {c.get('workers_per_gpu')} per GPU): {rate:.1f} cells/h")


def rows(paths: list[str]) -> list[dict]:
    """Last complete row per (method, integration), in file order; a row traced alone on the GPU is
    not replaced by one traced beside other processes (bytes are exact in both, times only alone)."""
    best: dict[tuple[str, str], dict] = {}
    for p in paths:
        for r in read_rows(p):
            key = (r["method"], r["integration"])
            old = best.get(key)
            keep_old = old is not None and (
                r.get("status") != "complete"
                or (old.get("status") == "complete" and shared(r) and not shared(old)))
            if not keep_old:
                best[key] = r
    return list(best.values())


def table(rs: list[dict], bf16_peak: int | None) -> str:
    """The markdown table; `bf16_peak` None (no complete bf16 row yet, e.g. a sweep stopped early): no comparison."""
    out = ["| method | integration | status | peak | vs bf16 | peak stage | resident KV | stored KV | logical/stored | logical/resident | rollout s | trace s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        if r.get("status") != "complete":
            out.append(f"| {r['method']} | {r['integration']} | {r.get('status')} | | | | | | | | | |")
            continue
        kv = r["kv"]
        over = ("reference" if r["method"] == "bf16" else "no bf16 row" if bf16_peak is None else
                "**exceeds**" if peak(r) > bf16_peak else "below")
        pct = f" ({100 * (peak(r) / bf16_peak - 1):+.1f}%)" if bf16_peak else ""
        star = " *" if shared(r) else ""  # times under a shared GPU
        out.append(
            f"| {r['method']} | {r['integration']} | complete | {fmt_bytes(peak(r))} | {over}{pct} "
            f"| `{r['peak_stage']}` | {fmt_bytes(kv['resident_bytes'])} | "
            f"{fmt_bytes(kv['stored_bytes'])} | {kv['ratio_stored']:.2f}x | {kv['ratio_resident']:.2f}x | "
            f"{r['rollout_s']:.1f}{star} | {r['process_s']:.0f}{star} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--throughput"]:
        print("\n".join(throughput(Path(p)) for p in sys.argv[2:]))
        sys.exit(0)
    rs = rows(sys.argv[1:])
    bf16 = next((peak(r) for r in rs if r["method"] == "bf16" and r.get("status") == "complete"), None)
    print(table(rs, bf16))
