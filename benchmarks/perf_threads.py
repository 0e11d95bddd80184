"""Is kvprof's traced model thread doing more work, or the same work slower? Hardware counters of each thread of a
traced and an untraced process over the same window, from `perf stat -x, --per-thread` (issue 15).

    python3 benchmarks/perf_threads.py UNTRACED.csv TRACED.csv

Each file is what `perf stat -x, --per-thread -e cycles,instructions,cache-misses,dTLB-load-misses -p PID -o FILE --
sleep S` wrote while that process's rollout ran (`gpu_session.sh perfpair:METHOD:FRAMES` takes both at once, mid-rollout).
The model's thread is the process's busiest thread (most cycles: it runs the rollout at 100 % of a core). Prints JSON:
per file, the model thread's cycles, instructions, IPC and misses per thousand instructions, the other threads' cycles;
then traced over untraced for each. Read it as: IPC lower traced -> the same code runs slower (caches, TLB, the other
threads); IPC the same but the traced thread needs more instructions for the same work -> work kvprof adds to it (the
window is fixed, so compare IPC and miss rates, not counts).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MISSES = ("cache-misses", "dTLB-load-misses")  # read as a rate: misses per thousand instructions
EVENTS = ("cycles", "instructions", *MISSES)


def read_counts(path: Path) -> dict[str, dict[str, int]]:
    """Thread ("comm-tid") -> event -> count, from perf's CSV (comment lines and uncounted events left out).
    ValueError naming the file when no thread has a counted cycle."""
    threads: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split(",")
        if len(cells) < 4:
            continue
        thread, value, event = cells[0].strip(), cells[1].strip(), cells[3].strip()
        event = event.split(":")[0]  # cycles:u -> cycles
        if not value.isdigit():  # <not counted>, <not supported>
            continue
        threads.setdefault(thread, {})[event] = int(value)
    if not any("cycles" in c for c in threads.values()):
        raise ValueError(f"{path}: no thread with a counted 'cycles' (is this `perf stat -x, --per-thread` output? "
                         "perf may lack permission: see /proc/sys/kernel/perf_event_paranoid)")
    return threads


def thread_summary(threads: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The busiest thread's counters and rates, and the cycles of every other thread."""
    main = max(threads, key=lambda t: threads[t].get("cycles", 0))
    c = threads[main]
    cycles, instr = c.get("cycles", 0), c.get("instructions", 0)
    out: dict[str, Any] = {"thread": main, "cycles": cycles, "instructions": instr,
                           "ipc": instr / cycles if cycles and instr else None}
    for event in MISSES:
        out[f"{event}_per_kinstr"] = 1000 * c[event] / instr if instr and event in c else None
    out["other_threads_cycles"] = {t: v.get("cycles", 0) for t, v in threads.items() if t != main}
    return out


def compare(untraced: Path, traced: Path) -> dict[str, Any]:
    """Both files' model threads and traced / untraced for each rate."""
    a, b = thread_summary(read_counts(untraced)), thread_summary(read_counts(traced))
    ratio = {k: (b[k] / a[k] if isinstance(a[k], (int, float)) and a[k] and isinstance(b[k], (int, float)) else None)
             for k in ("cycles", "instructions", "ipc", *(f"{e}_per_kinstr" for e in MISSES))}
    return {"untraced": a, "traced": b, "traced_over_untraced": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("untraced", type=Path)
    p.add_argument("traced", type=Path)
    args = p.parse_args(argv)
    try:
        print(json.dumps(compare(args.untraced, args.traced), indent=1))
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
