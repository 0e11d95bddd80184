"""The live view of a sweep on the terminal: cells done / running / failed, one line per worker
(its GPU and the cell it traces), and an ETA from the costs of cells finished so far (and of earlier sweeps'
cells, `--costs-from`), which also order a sweep's cells longest first."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kvprof.read.manifest import DONE


CostKey = tuple[str, str, Any, Any]


def cost_key(cell: dict[str, Any]) -> CostKey:
    """What a cell's cost depends on: its method, integration, frames and rolling window (not its seed)."""
    return cell["method"], cell.get("integration") or "", cell.get("frames"), cell.get("rolling")


def expected_cost(cell: dict[str, Any], costs: dict[CostKey, list[float]], default: float | None) -> float | None:
    """Seconds a cell is expected to take: the median of the finished cells of its kind (`cost_key`), else `default`."""
    mine = costs.get(cost_key(cell))
    return statistics.median(mine) if mine else default


def cell_costs(cells: list[dict[str, Any]]) -> dict[CostKey, list[float]]:
    """Seconds of each finished cell (complete or oom), per `cost_key`."""
    out: dict[CostKey, list[float]] = {}
    for c in cells:
        if c.get("status") in DONE and c.get("seconds"):
            out.setdefault(cost_key(c), []).append(float(c["seconds"]))
    return out


def eta_s(cells: list[dict[str, Any]], pending: list[dict[str, Any]], workers: int,
          earlier: Sequence[dict[str, Any]] = ()) -> float | None:
    """Seconds until the pending cells are done, spread over the workers, from the costs of this sweep's finished
    cells and of `earlier` sweeps' (`--costs-from`); None before any cost is known."""
    costs = cell_costs([*earlier, *cells])
    every = [s for v in costs.values() for s in v]
    if not every or not pending:
        return None
    default = statistics.median(every)
    total = sum(expected_cost(c, costs, default) or default for c in pending)
    return total / max(1, workers)


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{sec:02d}s"


class SweepProgress:
    """A rich Live table on stderr, redrawn by `update`; disabled (prints nothing) when quiet."""

    def __init__(self, total: int, disable: bool, earlier: Sequence[dict[str, Any]] = ()) -> None:
        self.total = total
        self.disable = disable
        self.earlier = earlier  # cells of the --costs-from sweeps: their times feed the ETA
        self.console = Console(stderr=True)
        self.live = None if disable else Live(console=self.console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "SweepProgress":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            if not self.console.is_terminal:
                self.console.line()  # Live leaves its last frame without a line end where it cannot redraw

    def update(self, cells: list[dict[str, Any]], running: dict[str, list[str]], workers: dict[str, dict[str, Any]],
               elapsed_s: float) -> None:
        """Redraw: `running` maps worker address to the ids of the cells it traces; `workers`
        maps address to {name, gpu, done, failed}."""
        if self.live is None:
            return
        self.live.update(render(cells, running, workers, elapsed_s, self.earlier))

    def log(self, text: str) -> None:
        """A line above the live view (a cell that failed, a worker lost)."""
        if not self.disable:
            self.console.print(text, markup=False, highlight=False)


def render(cells: list[dict[str, Any]], running: dict[str, list[str]], workers: dict[str, dict[str, Any]],
           elapsed_s: float, earlier: Sequence[dict[str, Any]] = ()) -> Group:
    """The view: a header line of counts and ETA, then one row per worker."""
    by: dict[str, int] = {}
    for c in cells:
        by[c["status"]] = by.get(c["status"], 0) + 1
    n_running = sum(len(v) for v in running.values())
    pending = [c for c in cells if c["status"] not in (*DONE, "failed")]
    done = by.get("complete", 0) + by.get("oom", 0)
    header = Text(f"sweep: {done}/{len(cells)} done ({by.get('oom', 0)} oom) · {n_running} running · "
                  f"{by.get('failed', 0)} failed · elapsed {_fmt_s(elapsed_s)} · "
                  f"ETA {_fmt_s(eta_s(cells, pending, max(1, len(workers)), earlier))}", style="bold")
    t = Table(show_edge=False)
    for col in ("worker", "GPU", "done", "failed", "tracing"):
        t.add_column(col)
    for addr, w in sorted(workers.items(), key=lambda kv: str(kv[1].get("name"))):
        t.add_row(str(w.get("name")), str(w.get("gpu") if w.get("gpu") is not None else "-"), str(w.get("done", 0)),
                  str(w.get("failed", 0)), ", ".join(running.get(addr, [])) or "idle")
    return Group(header, t)
