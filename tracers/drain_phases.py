"""What each drain of the native recorder takes from the model's thread, measured inside the traced process.

The recorder counts the allocator events it records (`kvp_recorded`, read in place: no foreign call, the GIL kept).
The model's thread makes those events as it progresses, so its event rate while one phase of a drain runs beside it,
over its rate in the interval just before that drain, says what the phase takes from it: in the same process, the
same run and the same second, where a pair of processes on one shared host differ by more than the few percent at
stake (benchmarks/RESULTS.md, sessions 12-15). Phases, in the order a drain runs them: `replay` (the C++ replay and
the copy into numpy, GIL released), `rows` (the rows built and accounted: numpy and Python under the GIL), `part`
(the streamed part written: Parquet, GIL mostly released), `log` (the queued stage records written).

Read the result as a lower bound of the drain's cost: work that slows the model after a drain has ended (its caches
refilled, say) lands in the next interval's rate, the reference itself.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable

PHASES = ("replay", "rows", "part", "log")
BETWEEN = "between"


def _thread_switches() -> int:
    """The calling thread's voluntary context switches (Linux); 0 where the platform does not count them per thread."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    return resource.getrusage(who).ru_nvcsw if who is not None else 0


class DrainPhases:
    """Per drain, the wall ns, model events and drain-thread voluntary context switches (each one a wait, mostly for
    the GIL) of the interval before it and of each of its phases. `mark` is called on the drain thread only."""

    def __init__(self, recorded: Callable[[], int], clock: Callable[[], int] = time.perf_counter_ns):
        self._recorded = recorded
        self._clock = clock
        self._at: tuple[int, int, int] | None = None
        self._current: dict[str, tuple[int, int, int]] = {}
        self.drains: list[dict[str, tuple[int, int, int]]] = []

    def _now(self) -> tuple[int, int, int]:
        return self._clock(), self._recorded(), _thread_switches()

    def start(self) -> None:
        """The reference point of the first interval (recording has started; called on the drain thread)."""
        self._at = self._now()

    def restart(self) -> None:
        """Begin the next interval now: after a drain this does not time (one at a checkpoint, on the model's own
        thread, while the model makes no events), so the next drain is compared with the model at work."""
        if self._at is not None:
            self._at = (self._clock(), self._recorded(), self._at[2])  # switches stay the drain thread's count

    def mark(self, phase: str) -> None:
        """Close `phase` (BETWEEN or one of PHASES) now; the last phase, `log`, closes the drain."""
        if self._at is None:
            return
        now = self._now()
        self._current[phase] = (now[0] - self._at[0], now[1] - self._at[1], now[2] - self._at[2])
        self._at = now
        if phase == PHASES[-1]:
            self.drains.append(self._current)
            self._current = {}

    def meta(self) -> dict[str, Any]:
        """Totals per phase (s, model events, drain-thread switches) and, per phase, the model's event rate during it
        over its rate in the interval before the same drain (median over drains, and pooled), for drains whose interval
        before had the model recording (a drain while the model sat idle, before its first step, says nothing)."""
        active = [d for d in self.drains if len(d) == len(PHASES) + 1 and d[BETWEEN][0] > 0 and d[BETWEEN][1] > 0]
        out: dict[str, Any] = {"drains": len(self.drains), "drains_compared": len(active), "phases": {}}
        if not active:
            return out
        total_s = sum(d[p][0] for d in active for p in (BETWEEN, *PHASES)) / 1e9
        between = sum(d[BETWEEN][1] for d in active) / sum(d[BETWEEN][0] for d in active)  # pooled events a ns
        share = 0.0
        for p in (BETWEEN, *PHASES):
            ns, events, switches = (sum(d[p][i] for d in active) for i in range(3))
            row: dict[str, Any] = {"s": round(ns / 1e9, 4), "events": events, "drain_switches": switches}
            if p != BETWEEN:
                ratios = [(d[p][1] / d[p][0]) / (d[BETWEEN][1] / d[BETWEEN][0]) for d in active if d[p][0] > 0]
                pooled = (events / ns) / between if ns else None
                row["rate_over_between"] = {"median": round(statistics.median(ratios), 4) if ratios else None,
                                            "pooled": round(pooled, 4) if pooled is not None else None}
                if pooled is not None:
                    share += (ns / 1e9) * (1 - pooled)
            out["phases"][p] = row
        # the model's time the drains took, as a share of the compared wall time (negative: it went faster)
        out["model_time_share"] = round(share / total_s, 5) if total_s else None
        return out
