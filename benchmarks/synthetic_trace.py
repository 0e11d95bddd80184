"""A realistic closed CUDA trace of any size, for measuring how fast kvprof's readers open traces.

    python benchmarks/synthetic_trace.py OUT_FOLDER [--allocs 7300000] [--chunks 16] [--layers 30] [--seed 0]

What it models (a wan-1.3b-shaped self-forcing rollout with a 4-bit KIVI cache stored as int8
codes, traced with the CUDA allocator history, as `kvprof trace` on a GPU host writes it):
  - setup: the DiT's weights (long-lived, never freed) and the cache's initialisation;
  - rollout/text_embed and rollout/cross_kv (the text K/V, long-lived);
  - rollout/chunk[c]/{denoise[0..3], refresh}/layer[l]/{kv_write, kv_read, attention, cross_attn, ffn}:
    ~15k spans; each leaf stage makes a run of short-lived temporaries (kv_scratch in kv_write,
    kv_dequant in kv_read, activations elsewhere), each freed right after the next one is made;
    refresh's kv_write also makes the layer's codes (kv_codes) and scales / zero points (kv_meta)
    for the chunk, which stay live to the end (the growing KV set); a latent per chunk lives
    through its chunk;
  - rollout/decode: large VAE buffers over the live cache (where the peak falls).
Order keys follow the format (q = context * 2**32 + position, tracers/trace_fold.py): every
stage begin and end opens a new context; the allocator's counters are read at each boundary
(`counters`, allocated = the exact live bytes there, so reconciliation is exact), KV bytes are
recorded after each chunk, and NVML samples every ~0.1 s. Times are 10 us per event (a
7.3 M-row trace is a ~150 s rollout). Generation is vectorized numpy (~10 s for 7.3 M rows);
the tables are written with the format's own writer (`tracers.trace_io.write_tables`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracers.trace_fold import NO_FREE, Q_STRIDE  # noqa: E402
from tracers.trace_io import SCHEMA_VERSION, write_tables  # noqa: E402

MiB = 1 << 20
OPS = ("kv_write", "kv_read", "attention", "cross_attn", "ffn")
OP_CATEGORY = {"kv_write": "kv_scratch", "kv_read": "kv_dequant", "attention": "activations",
               "cross_attn": "activations", "ffn": "activations"}
PASSES = (("denoise", 0), ("denoise", 1), ("denoise", 2), ("denoise", 3), ("refresh", None))
KV_BUFFERS = (("k_codes", "kv_codes", 7 * MiB), ("v_codes", "kv_codes", 7 * MiB), ("k_scale", "kv_meta", 96 << 10),
              ("k_zero", "kv_meta", 96 << 10), ("v_scale", "kv_meta", 960 << 10), ("v_zero", "kv_meta", 960 << 10))
WEIGHT_PARAMS = ("self_attn.q.weight", "self_attn.k.weight", "self_attn.v.weight", "self_attn.o.weight",
                 "cross_attn.q.weight", "cross_attn.k.weight", "cross_attn.v.weight", "cross_attn.o.weight",
                 "ffn.0.weight", "ffn.2.weight", "norm3.weight", "modulation")
NS_PER_EVENT = 10_000


class _Runs:
    """Runs of allocations, one per place that makes them: context, span, category, count, sizes."""

    def __init__(self) -> None:
        self.ctx: list[int] = []
        self.span: list[int] = []
        self.cat: list[str] = []
        self.n: list[int] = []
        self.keep: list[bool] = []  # live to the end (else a chain of temporaries)
        self.size: list[int] = []  # typical bytes
        self.name: list[str | None] = []
        self.first: list[int] = []  # position of the run's first event in its context

    def add(self, ctx: int, span: int, cat: str, n: int, keep: bool, size: int, name: str | None = None,
            first: int = 2) -> None:
        for lst, v in ((self.ctx, ctx), (self.span, span), (self.cat, cat), (self.n, n), (self.keep, keep),
                       (self.size, size), (self.name, name), (self.first, first)):
            lst.append(v)


class _Tree:
    """Spans in begin order; each begin and end opens a context (the format's stage boundaries)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.ctx = 0

    def begin(self, parent: int, name: str, index: int | None) -> dict:
        self.ctx += 1
        row = {"id": len(self.rows) + 1, "parent": parent, "name": name, "index": index,
               "ctx_start": self.ctx, "ctx_end": -1}
        self.rows.append(row)
        return row

    def end(self, row: dict) -> None:
        self.ctx += 1
        row["ctx_end"] = self.ctx


def _layout(n_allocs: int, chunks: int, layers: int) -> tuple[_Tree, _Runs, list[tuple[int, int]]]:
    """The span tree and the allocation runs; also (chunk, ctx at its end) for the KV table."""
    tree, runs = _Tree(), _Runs()
    leaves = chunks * len(PASSES) * layers * len(OPS)
    fixed = layers * len(WEIGHT_PARAMS) + 2 * layers + chunks * (layers * len(KV_BUFFERS) + 1)
    decode_n = 4000
    per_leaf, extra = divmod(max(0, n_allocs - fixed - decode_n), leaves)
    setup = tree.begin(0, "setup", None)
    for i, p in enumerate(WEIGHT_PARAMS):  # one run per parameter kind, all layers
        size = 2 * 1536 * (8960 if p.startswith("ffn") else 1536 if p != "norm3.weight" else 1)
        runs.add(setup["ctx_start"], setup["id"], "weights", layers, True, size, f"dit.blocks.*.{p}", first=2 + i * layers)
    init = tree.begin(setup["id"], "cache_init", None)
    tree.end(init)
    tree.end(setup)
    rollout = tree.begin(0, "rollout", None)
    text = tree.begin(rollout["id"], "text_embed", None)
    tree.end(text)
    cross = tree.begin(rollout["id"], "cross_kv", None)
    runs.add(cross["ctx_start"], cross["id"], "cross_kv", 2 * layers, True, 2 * 512 * 1536, "cross_kv")
    tree.end(cross)
    chunk_ends = []
    leaf = 0
    for c in range(chunks):
        chunk = tree.begin(rollout["id"], "chunk", c)
        runs.add(chunk["ctx_start"], chunk["id"], "latents", 1, False, 3 * 16 * 60 * 104 * 2, "latents")
        for pname, pidx in PASSES:
            p = tree.begin(chunk["id"], pname, pidx)
            for layer in range(layers):
                lspan = tree.begin(p["id"], "layer", layer)
                for op in OPS:
                    s = tree.begin(lspan["id"], op, None)
                    n = per_leaf + (1 if leaf < extra else 0)
                    leaf += 1
                    size = {"kv_scratch": MiB, "kv_dequant": 24 * MiB}.get(OP_CATEGORY[op], 14 * MiB)
                    runs.add(s["ctx_start"], s["id"], OP_CATEGORY[op], n, False, size)
                    if op == "kv_write" and pname == "refresh":
                        for j, (buf, cat, b) in enumerate(KV_BUFFERS):
                            runs.add(s["ctx_start"], s["id"], cat, 1, True, b, f"layer {layer} / {buf}", first=2 + 2 * n + j)
                    tree.end(s)
                tree.end(lspan)
            tree.end(p)
        tree.end(chunk)
        chunk_ends.append((c, chunk["ctx_end"]))
    decode = tree.begin(rollout["id"], "decode", None)
    runs.add(decode["ctx_start"], decode["id"], "decode", decode_n, False, 400 * MiB)
    tree.end(decode)
    tree.end(rollout)
    return tree, runs, chunk_ends


def _allocations(runs: _Runs, tree: _Tree, rng: np.random.Generator) -> pd.DataFrame:
    """The allocation rows of every run, vectorized: q, sizes, frees, names."""
    n = np.asarray(runs.n, dtype=np.int64)
    total = int(n.sum())
    run = np.repeat(np.arange(len(n)), n)
    i = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)  # index within its run
    keep = np.asarray(runs.keep)[run]
    first = np.asarray(runs.first, dtype=np.int64)[run]
    nn = n[run]
    # a chain of temporaries: a0 a1 f0 a2 f1 ... a(n-1) f(n-2) f(n-1)
    rel_alloc = np.where(keep, i, np.where(i == 0, 0, 2 * i - 1))
    rel_free = np.where(i < nn - 1, 2 * i + 2, np.where(nn == 1, 1, 2 * nn - 1))
    ctx = np.asarray(runs.ctx, dtype=np.int64)[run]
    q_alloc = ctx * Q_STRIDE + first + rel_alloc
    q_free = np.where(keep, NO_FREE, ctx * Q_STRIDE + first + rel_free)
    # latents live through their chunk: freed in the context that ends the chunk
    chunk_end = {r["ctx_start"]: r["ctx_end"] for r in tree.rows if r["name"] == "chunk"}
    lat = np.asarray(runs.cat)[run] == "latents"
    q_free[lat] = np.array([chunk_end[c] for c in ctx[lat]], dtype=np.int64) * Q_STRIDE + 2
    typical = np.asarray(runs.size, dtype=np.int64)[run]
    jitter = rng.choice(np.array([1, 2, 3, 4, 6, 8], dtype=np.int64), total) * typical // 4
    sizes = np.where(keep | lat, typical, jitter) // 512 * 512 + 512
    names = np.asarray(runs.name, dtype=object)[run]
    weights = np.char.startswith(names.astype(str), "dit.blocks.*")
    names[weights] = [nm.replace("*", str(k)) for nm, k in zip(names[weights], i[weights])]
    cross = names == "cross_kv"
    names[cross] = [f"cross_{'kv'[k % 2]}[{k // 2}]" for k in i[cross]]
    order = np.argsort(q_alloc, kind="stable")
    return pd.DataFrame({
        "id": np.arange(1, total + 1, dtype=np.int64), "q_alloc": q_alloc[order], "q_free": q_free[order],
        "t_alloc_ns": np.zeros(total, dtype=np.int64), "t_free_ns": np.zeros(total, dtype=np.int64),
        "bytes": sizes[order], "category": pd.array(np.asarray(runs.cat, dtype=object)[run][order], dtype="string"),
        "span_id": np.asarray(runs.span, dtype=np.int64)[run][order], "name": pd.array(names[order], dtype="string"),
    })


def build_trace(folder: Path, n_allocs: int = 7_300_000, chunks: int = 16, layers: int = 30, seed: int = 0) -> Path:
    """Write a closed synthetic trace with about `n_allocs` allocation rows into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tree, runs, chunk_ends = _layout(n_allocs, chunks, layers)
    allocs = _allocations(runs, tree, rng)
    n_ctx = tree.ctx + 2
    # Event times: 10 us per event, contexts in order (each boundary is 2 records: counter, begin/end).
    ctx_alloc = allocs["q_alloc"].to_numpy() // Q_STRIDE
    freed = allocs["q_free"].to_numpy() != NO_FREE
    ctx_free = allocs["q_free"].to_numpy()[freed] // Q_STRIDE
    per_ctx = np.bincount(ctx_alloc, minlength=n_ctx) + np.bincount(ctx_free, minlength=n_ctx) + 2
    ctx_t0 = (np.cumsum(per_ctx) - per_ctx) * NS_PER_EVENT

    def t_of(q: np.ndarray) -> np.ndarray:
        return ctx_t0[q // Q_STRIDE] + (q % Q_STRIDE) * NS_PER_EVENT

    allocs["t_alloc_ns"] = t_of(allocs["q_alloc"].to_numpy())
    allocs.loc[freed, "t_free_ns"] = t_of(allocs["q_free"].to_numpy()[freed])
    allocs.loc[~freed, "t_free_ns"] = NO_FREE
    # Exact live bytes at each boundary (before its records) and the peak, from the sorted events.
    b = allocs["bytes"].to_numpy()
    q_ev = np.concatenate([allocs["q_alloc"].to_numpy(), allocs["q_free"].to_numpy()[freed]])
    d_ev = np.concatenate([b, -b[freed]])
    order = np.argsort(q_ev, kind="stable")
    q_ev, live = q_ev[order], np.cumsum(d_ev[order])
    peak = int(live.max())

    spans = pd.DataFrame(tree.rows)
    ctx_b = np.concatenate([spans["ctx_start"].to_numpy(), spans["ctx_end"].to_numpy()])
    q_b = ctx_b * Q_STRIDE
    pos = np.searchsorted(q_ev, q_b, side="right") - 1
    live_b = np.where(pos >= 0, live[np.clip(pos, 0, None)], 0)
    counters = pd.DataFrame({"t_ns": t_of(q_b), "q": q_b, "span_id": np.concatenate([spans["id"]] * 2),
                             "allocated_bytes": live_b, "reserved_bytes": (live_b // (2 * MiB) + 2) * 2 * MiB})
    counters = counters.sort_values("q").reset_index(drop=True)
    start, end = spans["ctx_start"].to_numpy() * Q_STRIDE + 1, spans["ctx_end"].to_numpy() * Q_STRIDE + 1
    host_ms = (t_of(end) - t_of(start)) / 1e6
    spans = pd.DataFrame({
        "id": spans["id"].astype("int64"), "parent": spans["parent"].astype("int64"),
        "name": spans["name"].astype("string"), "index": spans["index"].astype("Int64"), "q_start": start,
        "q_end": end, "t_start_ns": t_of(start), "t_end_ns": t_of(end), "host_ms": host_ms, "device_ms": host_ms * 0.97,
        "host_syncs": np.zeros(len(spans), dtype=np.int64), "op_ms": np.full(len(spans), np.nan),
        "tracer_ms": np.full(len(spans), np.nan)})
    kv_codes = allocs["category"].isin(["kv_codes", "kv_meta"]).to_numpy()
    kv_rows = []
    for c, ctx_end in chunk_ends:
        q = ctx_end * Q_STRIDE + 3
        resident = int(b[kv_codes & (allocs["q_alloc"].to_numpy() <= q)].sum())
        kv_rows.append({"t_ns": int(t_of(np.array([q]))[0]), "q": q, "chunk": c, "logical_bytes": 4 * resident,
                        "stored_bytes": resident * 9 // 16, "resident_bytes": resident})
    t_end = int(t_of(np.array([(tree.ctx + 1) * Q_STRIDE]))[0])
    t_s = np.arange(0, t_end, 100_000_000, dtype=np.int64)
    samples = pd.DataFrame({"t_ns": t_s, "device_used_bytes": np.full(len(t_s), peak + (2 << 30)),
                            "process_used_bytes": np.full(len(t_s), peak + (1 << 30)), "util_percent": np.full(len(t_s), 97),
                            "other_processes": np.zeros(len(t_s), dtype=np.int64)})
    write_tables(folder, {"allocations": allocs, "spans": spans, "samples": samples, "counters": counters,
                          "kv": pd.DataFrame(kv_rows)})
    (folder / "meta.json").write_text(json.dumps(_meta(folder.name, chunks, layers, peak, t_end, int(live[-1])), indent=2))
    return folder


def _meta(run_id: str, chunks: int, layers: int, peak: int, t_end: int, live_end: int) -> dict:
    """meta.json shaped like a `kvprof trace` on a GPU host (kivi_int4, int8 codes, wan-1.3b)."""
    return {
        "run_id": run_id, "command": ["kvprof", "trace", "--method", "kivi_int4", "--config", "wan-1.3b"],
        "source": "kvprof.api", "method": "kivi_int4", "method_params": {},
        "method_facts": {"family": "kivi", "key_bits": "4", "value_bits": "4", "policy": "no full-precision residual window",
                         "cadence": "per_step", "lossless": False, "position_dependent": False, "param_defaults": {},
                         "spec": "kivi_int4"},
        "integration": "study", "codes": "int8",
        "config": {"name": "wan-1.3b", "num_layers": layers, "dim": 1536, "num_heads": 12, "ffn_dim": 8960,
                   "text_dim": 4096, "text_len": 512, "latent_height": 60, "latent_width": 104, "freq_dim": 256,
                   "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2], "eps": 1e-06, "dtype": "bfloat16",
                   "vae": "wan", "tokens_per_frame": 1560, "head_dim": 128},
        "rollout": {"frames": 3 * chunks, "seed": 0, "batch": 1, "chunk_frames": 3,
                    "timesteps": [1000.0, 937.5, 833.3, 625.0], "attn_window_frames": 3 * chunks, "rolling_frames": None,
                    "sink_frames": 0, "integration": "study", "decode": True, "free_cache_before_decode": False},
        "budget_bytes": None, "checkpoint": None,
        "environment": {"python": "3.11.7", "torch": "2.5.1+cu124", "cuda": "12.4", "host": "synthetic",
                        "device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "git_revision": "synthetic"},
        "schema_version": SCHEMA_VERSION, "status": "complete", "error": None,
        "started_unix_ns": 1_790_000_000_000_000_000, "ended_unix_ns": 1_790_000_000_000_000_000 + t_end,
        "tracker": "cuda-allocator-history", "wall_s": t_end / 1e9, "notes": ["synthetic trace (benchmarks/synthetic_trace.py)"],
        "other_gpu_processes_max": 0, "tracer_drain_s": 1.5, "allocated_before_bytes": 0, "held_before_bytes": 0,
        "registered_before_bytes": 0, "unregistered_before_bytes": 0, "max_memory_allocated_bytes": peak,
        "memory_allocated_end_bytes": live_end,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: write one synthetic trace folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--allocs", type=int, default=7_300_000)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    folder = build_trace(a.out, a.allocs, a.chunks, a.layers, a.seed)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
