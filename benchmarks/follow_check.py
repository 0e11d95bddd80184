"""Does the live view (what `kvprof tui --follow` shows) agree with the closed trace? (GPU check)

    python3 benchmarks/follow_check.py --method bf16 --integration staged --out /tmp/kv/follow

Runs a trace with live draining (as `kvprof trace --tui` does) in a thread while the TUI's own
source (`tui.source.TraceSource`) follows the folder. Prints JSON: per allocation seen live, whether
its bytes equal the closed table's (the allocator's block sizes arrive as `z` records: the
follower once dropped them), the peak of the last live view, and the peak of the closed view and
of summary.json (the TUI's view after close must equal the summary).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvprof.read.trace import load_trace  # noqa: E402
from kvprof.runner import TraceRequest, prepare, run_trace  # noqa: E402
from tui.source import TraceSource  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="bf16")
    p.add_argument("--integration", default="staged")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/kv/follow"))
    args = p.parse_args()
    prep = prepare(TraceRequest(method=args.method, integration=args.integration, frames=args.frames, out=args.out,
                                live=True))
    done: dict[str, object] = {}
    worker = threading.Thread(target=lambda: done.setdefault("outcome", run_trace(prep)), daemon=True)
    worker.start()
    source, live_allocs, live_peak, polls = TraceSource(prep.folder, wait_for_start=True), None, None, 0
    while worker.is_alive() or not source.finished:
        if source.refresh() and source.follower.phase == "live" and source.view is not None:
            live_allocs = source.view.trace.allocations[["id", "bytes"]].copy()
            live_peak = None if source.view.peak is None else source.view.peak.bytes
            polls += 1
        time.sleep(0.2)
    closed = load_trace(prep.folder)
    merged = live_allocs.merge(closed.allocations[["id", "bytes"]], on="id", suffixes=("_live", "_closed"))
    differ = merged[merged["bytes_live"] != merged["bytes_closed"]]
    print(json.dumps({
        "trace": str(prep.folder), "status": closed.status, "live_polls": polls,
        "allocations_seen_live": len(merged), "bytes_differ_live_vs_closed": len(differ),
        "last_live_view_peak_bytes": live_peak,
        "closed_view_peak_bytes": None if source.view is None or source.view.peak is None else source.view.peak.bytes,
        "summary_peak_bytes": closed.summary.peak.bytes if closed.summary is not None else None,
        "max_memory_allocated_bytes": closed.meta.get("max_memory_allocated_bytes"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
