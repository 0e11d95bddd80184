"""How long the TUI takes to open a trace with 1,000,000 allocation events (issue 4: < 3 s).

    python benchmarks/tui_open_1m.py [--allocs 1000000] [--keep DIR] [--repeat 3] [--follow]

Builds a synthetic *closed* trace (Parquet tables with exactly the columns that
`tracers.trace_io.tables_from_records` produces) shaped like a wan-1.3b rollout: setup with
weights, 14 chunks x 5 passes x 30 layers x 5 operations, a growing KV cache, dequantized K/V
freed per layer, activations freed soon after they are made, and a VAE decode at the end.
Then it opens the app headless and measures the time from constructing the app until the
timeline view shows the peak (trace read, analyses, first draw), the pieces separately, a
cursor step and view switches; and a cold process (interpreter start and imports included).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracers.trace_io import NO_FREE, SCHEMA_VERSION, write_tables  # noqa: E402

OPS = ("kv_write", "kv_read", "attention", "cross_attn", "ffn")
PASSES = (("denoise", 0), ("denoise", 1), ("denoise", 2), ("denoise", 3), ("refresh", None))
MiB = 1 << 20


class _Builder:
    """Accumulates spans and allocations with one increasing order key `q` (1 ns per event)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.q = 0
        self.spans: list[dict] = []
        self.allocs: list[pd.DataFrame] = []
        self.next_alloc = 1

    def tick(self, n: int = 1) -> int:
        self.q += n
        return self.q

    def span_begin(self, parent: int, name: str, index: int | None) -> dict:
        q = self.tick()
        span = {"id": len(self.spans) + 1, "parent": parent, "name": name, "index": index, "q_start": q,
                "q_end": NO_FREE, "t_start_ns": q * 1000, "t_end_ns": NO_FREE, "host_ms": float("nan"),
                "device_ms": float("nan")}
        self.spans.append(span)
        return span

    def span_end(self, span: dict) -> None:
        q = self.tick()
        span["q_end"], span["t_end_ns"] = q, q * 1000
        span["host_ms"] = span["device_ms"] = (span["t_end_ns"] - span["t_start_ns"]) / 1e6

    def block(self, span_id: int, n: int, category: str, low: int, high: int, *, keep: bool = False,
              name: str | None = None) -> None:
        """n allocations in a row; each freed two events later unless `keep` (live to the end)."""
        ids = np.arange(self.next_alloc, self.next_alloc + n, dtype=np.int64)
        self.next_alloc += n
        sizes = self.rng.integers(low, high, n, dtype=np.int64) // 512 * 512 + 512
        if keep:
            q_alloc = self.q + 1 + np.arange(n, dtype=np.int64)
            q_free = np.full(n, NO_FREE, dtype=np.int64)
            self.tick(n)
        else:  # a0 a1 f0 a2 f1 ... a(n-1) f(n-2) f(n-1)
            q_alloc = self.q + 1 + np.concatenate([[0], 1 + 2 * np.arange(n - 1, dtype=np.int64)])
            q_free = np.concatenate([q_alloc[1:] + 1, [q_alloc[-1] + 1 if n == 1 else q_alloc[-1] + 2]])
            self.tick(2 * n)
        t_free = np.where(q_free == NO_FREE, NO_FREE, q_free * 1000)
        self.allocs.append(pd.DataFrame({
            "id": ids, "q_alloc": q_alloc, "q_free": q_free, "t_alloc_ns": q_alloc * 1000, "t_free_ns": t_free,
            "bytes": sizes, "category": category, "span_id": span_id, "name": name,
        }))


def build_synthetic_trace(folder: Path, n_allocs: int = 1_000_000, chunks: int = 14, layers: int = 30,
                          seed: int = 0) -> Path:
    """Write a closed synthetic trace with about `n_allocs` allocation events into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    b = _Builder(seed)
    op_spans = chunks * len(PASSES) * layers * len(OPS)
    per_op = max(2, (n_allocs - 400 - 2000) // op_spans)
    setup = b.span_begin(0, "setup", None)
    b.block(setup["id"], 400, "weights", 64 << 10, 16 * MiB, keep=True, name="dit.weight")
    b.span_end(setup)
    rollout = b.span_begin(0, "rollout", None)
    for c in range(chunks):
        chunk = b.span_begin(rollout["id"], "chunk", c)
        for pname, pidx in PASSES:
            p = b.span_begin(chunk["id"], pname, pidx)
            for l_ in range(layers):
                layer = b.span_begin(p["id"], "layer", l_)
                for op in OPS:
                    s = b.span_begin(layer["id"], op, None)
                    if op == "kv_write" and pname == "refresh":
                        b.block(s["id"], 2, "kv_fp", 8 * MiB, 9 * MiB, keep=True, name=f"layer {l_} / kv")
                        b.block(s["id"], per_op - 2, "kv_scratch", 4 << 10, MiB)
                    elif op == "kv_read":
                        b.block(s["id"], per_op, "kv_dequant", MiB, 64 * MiB)
                    else:
                        b.block(s["id"], per_op, "activations", 4 << 10, 32 * MiB)
                    b.span_end(s)
                b.span_end(layer)
            b.span_end(p)
        b.span_end(chunk)
    remaining = max(2, n_allocs - (b.next_alloc - 1))
    decode = b.span_begin(rollout["id"], "decode", None)
    b.block(decode["id"], remaining, "decode", MiB, 256 * MiB)
    b.span_end(decode)
    b.span_end(rollout)

    allocs = pd.concat(b.allocs, ignore_index=True)
    allocs["category"] = allocs["category"].astype("string")
    allocs["name"] = allocs["name"].astype("string")
    spans = pd.DataFrame(b.spans)
    for col in ("id", "parent", "q_start", "q_end", "t_start_ns", "t_end_ns"):
        spans[col] = spans[col].astype("int64")
    spans["index"] = spans["index"].astype("Int64")
    spans["name"] = spans["name"].astype("string")
    kv_bytes = [int(allocs[(allocs.category == "kv_fp") & (allocs.q_alloc <= q)]["bytes"].sum())
                for q in spans[spans.name == "chunk"]["q_end"]]
    tables = {
        "allocations": allocs,
        "spans": spans,
        "samples": pd.DataFrame(columns=["t_ns", "device_used_bytes", "process_used_bytes", "util_percent"]),
        "counters": pd.DataFrame(columns=["t_ns", "q", "span_id", "allocated_bytes", "reserved_bytes"]),
        "kv": pd.DataFrame({"t_ns": spans[spans.name == "chunk"]["t_end_ns"].to_numpy(),
                            "q": spans[spans.name == "chunk"]["q_end"].to_numpy(), "chunk": np.arange(chunks),
                            "logical_bytes": kv_bytes, "stored_bytes": kv_bytes, "resident_bytes": kv_bytes}),
    }
    write_tables(folder, tables)
    meta = {"schema_version": SCHEMA_VERSION, "run_id": folder.name, "status": "complete", "error": None,
            "method": "synthetic", "integration": "study", "tracker": "dispatch",
            "started_unix_ns": time.time_ns() - 60 * 10**9, "ended_unix_ns": time.time_ns()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


async def _open_app(folder: Path, keys: bool = True) -> dict[str, float | str]:
    """Open the app headless; time until the peak is drawn, then cursor steps and view switches."""
    from tui.app import KvprofApp
    from tui.widgets.cursor import CursorPanel
    from tui.widgets.timeline import TimelineChart

    out: dict[str, float | str] = {}
    t0 = time.perf_counter()
    app = KvprofApp([folder], follow=False)
    async with app.run_test(size=(160, 48)) as pilot:
        while app.current_view() is None or not app.screen.query_one(TimelineChart).peak_label:
            await pilot.pause(0.01)
        out["open_s"] = time.perf_counter() - t0
        out["peak"] = app.screen.query_one(TimelineChart).peak_label
        if not keys:
            return out
        steps = []
        for _ in range(10):
            before = app.screen.query_one(CursorPanel).text
            t = time.perf_counter()
            await pilot.press("left")
            while app.screen.query_one(CursorPanel).text == before:
                await pilot.pause(0.005)
            steps.append(time.perf_counter() - t)
        out["cursor_step_s"] = sorted(steps)[len(steps) // 2]
        for key, name in (("2", "breakdown"), ("3", "allocations"), ("4", "stages"), ("1", "timeline")):
            t = time.perf_counter()
            await pilot.press(key)
            await pilot.pause(0.12)  # one redraw period
            out[f"view_{name}_s"] = time.perf_counter() - t
        return out


def _cold(folder: Path) -> tuple[float, float]:
    """A fresh process: (seconds from spawning it until the peak is drawn, until it has exited).
    Interpreter start and every import are included (torch too: tracers/__init__ imports it)."""
    code = ("import sys, time, asyncio; sys.path.insert(0, 'benchmarks'); from tui_open_1m import _open_app; "
            f"asyncio.run(_open_app(__import__('pathlib').Path({str(folder)!r}), keys=False)); "
            "print(time.time() - float(sys.argv[1]))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, repr(time.time())], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    total = time.perf_counter() - t
    return float(out.stdout.strip().splitlines()[-1]), total


def _pieces(folder: Path) -> dict[str, float]:
    from kvprof.read.trace import load_trace
    from tui.model import build_view

    out = {}
    t = time.perf_counter()
    trace = load_trace(folder)
    out["load_trace_s"] = time.perf_counter() - t
    t = time.perf_counter()
    build_view(trace)
    out["analyses_s"] = time.perf_counter() - t
    return out


def _live_log(folder: Path, live: Path) -> tuple[list[bytes], int]:
    """Rewrite the synthetic trace as a live one (meta running + events.jsonl); return the last
    10,000 lines held back (to append later) and the number of lines written."""
    from tracers.trace_io import EVENTS_FILE

    a = pd.read_parquet(folder / "allocations.parquet")
    sp = pd.read_parquet(folder / "spans.parquet")
    recs: list[tuple[int, bytes]] = []
    for r in sp.itertuples():
        idx = None if pd.isna(r.index) else int(r.index)
        recs.append((r.q_start, json.dumps({"k": "b", "id": r.id, "p": r.parent, "n": r.name, "i": idx,
                                            "t": r.t_start_ns, "q": r.q_start}).encode()))
        recs.append((r.q_end, json.dumps({"k": "e", "id": r.id, "t": r.t_end_ns, "q": r.q_end, "ms": r.host_ms}).encode()))
    for r in a.itertuples():
        recs.append((r.q_alloc, b'{"k":"a","id":%d,"t":%d,"q":%d,"b":%d,"c":"%s","s":%d}' % (
            r.id, r.t_alloc_ns, r.q_alloc, r.bytes, r.category.encode(), r.span_id)))
        if r.q_free != NO_FREE:
            recs.append((r.q_free, b'{"k":"f","id":%d,"t":%d,"q":%d}' % (r.id, r.t_free_ns, r.q_free)))
    recs.sort(key=lambda x: x[0])
    lines = [line + b"\n" for _, line in recs]
    live.mkdir(parents=True, exist_ok=True)
    meta = json.loads((folder / "meta.json").read_text())
    (live / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    (live / EVENTS_FILE).write_bytes(b"".join(lines[:-10_000]))
    return lines[-10_000:], len(lines)


def _follow(folder: Path) -> None:
    """Time following a live trace of the same size: first read of the whole log, a rebuild, and
    an incremental poll after 10,000 more lines."""
    from kvprof.read.live import TraceFollower
    from tracers.trace_io import EVENTS_FILE
    from tui.model import build_view

    live = folder.parent / (folder.name + "-live")
    t = time.perf_counter()
    rest, n = _live_log(folder, live)
    print(f"live copy: {n:,} event lines written in {time.perf_counter() - t:.1f} s")
    f = TraceFollower(live)
    t = time.perf_counter()
    f.poll()
    t_poll = time.perf_counter() - t
    t = time.perf_counter()
    trace = f.trace()
    t_tables = time.perf_counter() - t
    t = time.perf_counter()
    build_view(trace)
    t_build = time.perf_counter() - t
    with open(live / EVENTS_FILE, "ab") as out:
        out.write(b"".join(rest))
    t = time.perf_counter()
    f.poll()
    t_inc = time.perf_counter() - t
    print(f"follow: first poll (parse + fold {n - len(rest):,} lines) {t_poll:.2f} s, tables {t_tables:.2f} s, "
          f"views {t_build:.2f} s; poll of {len(rest):,} new lines {t_inc * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allocs", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the trace here and keep it")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--follow", action="store_true", help="also time following the same trace while it is live")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = (args.keep or Path(tmp)) / f"synthetic-{args.allocs}"
        if not (folder / "meta.json").is_file():
            t = time.perf_counter()
            build_synthetic_trace(folder, args.allocs)
            print(f"built {folder} in {time.perf_counter() - t:.1f} s")
        n = len(pd.read_parquet(folder / "allocations.parquet", columns=["id"]))
        print(f"allocation events: {n:,}")
        for i in range(args.repeat):
            pieces = _pieces(folder)
            res = asyncio.run(_open_app(folder))
            print(f"run {i + 1}: app open to peak drawn {res['open_s']:.2f} s ({res['peak']}); "
                  + ", ".join(f"{k} {v:.2f}" for k, v in pieces.items()) + "; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k not in ("open_s", "peak")))
        for i in range(args.repeat):
            drawn, total = _cold(folder)
            print(f"cold process {i + 1}: spawn to peak drawn {drawn:.2f} s (python start, imports, read, analyses, "
                  f"first draw), to exit {total:.2f} s")
        if args.follow:
            _follow(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
