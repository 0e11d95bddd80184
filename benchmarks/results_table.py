"""Turn sweep JSON lines (benchmarks/sweep.py) into the markdown table of RESULTS.md.

rollout s is the rollout stage's wall time, trace s the whole trace (setup, rollout, writing the
trace); * marks rows traced beside other sweep processes (`--lanes`), whose times include theirs.
peak is the allocator's own (`max_memory_allocated()`, which the trace's peak equals): sweep rows
written before traces held the blocks live when tracking started have a smaller `peak_bytes` when
an earlier trace of the same process left blocks allocated, and their reconciliation has the
allocator's figure.

    python3 benchmarks/results_table.py benchmarks/results/sweep_study_h100.jsonl [...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvprof.units import fmt_bytes  # noqa: E402


def shared(r: dict) -> bool:
    """The row's trace ran beside other sweep processes on the GPU (its times include their load)."""
    return (r.get("lanes") or 1) > 1


def peak(r: dict) -> int:
    """The allocator's peak of the row's process during the trace (see the module docstring)."""
    return int((r.get("reconciliation") or {}).get("max_memory_allocated_bytes") or r["peak_bytes"])


def rows(paths: list[str]) -> list[dict]:
    """Last complete row per (method, integration), in file order; a row traced alone on the GPU is
    not replaced by one traced beside other processes (bytes are exact in both, times only alone)."""
    best: dict[tuple[str, str], dict] = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            r = json.loads(line)
            key = (r["method"], r["integration"])
            old = best.get(key)
            keep_old = old is not None and (
                r.get("status") != "complete"
                or (old.get("status") == "complete" and shared(r) and not shared(old)))
            if not keep_old:
                best[key] = r
    return list(best.values())


def table(rs: list[dict], bf16_peak: int) -> str:
    out = ["| method | integration | status | peak | vs bf16 | peak stage | resident KV | stored KV | logical/stored | logical/resident | rollout s | trace s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        if r.get("status") != "complete":
            out.append(f"| {r['method']} | {r['integration']} | {r.get('status')} | | | | | | | | | |")
            continue
        kv = r["kv"]
        over = ("reference" if r["method"] == "bf16" else
                "**exceeds**" if peak(r) > bf16_peak else "below")
        star = " *" if shared(r) else ""  # times under a shared GPU
        out.append(
            f"| {r['method']} | {r['integration']} | complete | {fmt_bytes(peak(r))} | {over} "
            f"({100 * (peak(r) / bf16_peak - 1):+.1f}%) | `{r['peak_stage']}` | {fmt_bytes(kv['resident_bytes'])} | "
            f"{fmt_bytes(kv['stored_bytes'])} | {kv['ratio_stored']:.2f}x | {kv['ratio_resident']:.2f}x | "
            f"{r['rollout_s']:.1f}{star} | {r['process_s']:.0f}{star} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    rs = rows(sys.argv[1:])
    bf16 = next(peak(r) for r in rs if r["method"] == "bf16" and r.get("status") == "complete")
    print(table(rs, bf16))
