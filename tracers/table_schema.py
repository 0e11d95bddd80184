"""What each column of the trace's Parquet tables means, and their types when a table is empty.

The descriptions travel inside every Parquet file kvprof writes (field metadata `description`,
schema metadata `kvprof.table` and `kvprof.description`), so a reader of a lone file learns what
`q_alloc` is from the file itself; docs/trace-format.md says the same for people.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

_Q = ("order key: every record of a trace gets one, increasing in the order things happened "
      "(context * 2**32 + position in it); sort and compare by q, not by time stamps, which may tie "
      "or come from different clocks")

TABLE_DOCS: dict[str, str] = {
    "allocations": "one row per allocation (a tensor storage on CPU, an allocator block on CUDA) over its whole life",
    "spans": "one row per stage (span): name, index and parent make the stage path",
    "samples": "NVML device samples during the run (empty on CPU)",
    "counters": "the CUDA allocator's counters at stage boundaries (empty on CPU)",
    "kv": "KV cache bytes after each chunk, as the method counts them",
    "stages": "export only: each span's stage path, kind path, depth, chunk, pass and phase (join on id = span_id)",
    "timeline": "export only: live bytes by category after every allocation and free, in q order",
}

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "allocations": {
        "id": "allocation id, unique in the trace",
        "q_alloc": f"q of the allocation; {_Q}",
        "q_free": "q of the free; -1 when the allocation was still live when the trace ended",
        "t_alloc_ns": "ns since the trace started, at the allocation",
        "t_free_ns": "ns since the trace started, at the free; -1 when never freed",
        "bytes": "bytes held (the allocator's block size on CUDA)",
        "category": "memory category: weights, kv_fp, kv_codes, kv_meta, kv_dequant, kv_scratch, cross_kv, "
                    "activations, latents, decode, unattributed",
        "span_id": "id of the stage (spans.id) that made it; 0 outside any stage",
        "name": "what the tensor is (a parameter name such as dit.blocks.0.attn.q.weight), when known",
    },
    "spans": {
        "id": "span id, unique in the trace",
        "parent": "id of the enclosing span; 0 at the top",
        "name": "stage kind, e.g. chunk, denoise, layer, kv_write",
        "index": "index of the stage among its kind (chunk 2, layer 7), or null",
        "q_start": f"q of the span's begin; {_Q}",
        "q_end": "q of the span's end; -1 when the span never closed (the trace ended first)",
        "t_start_ns": "ns since the trace started, at the begin",
        "t_end_ns": "ns since the trace started, at the end; -1 when never closed",
        "host_ms": "host wall time of the span in ms, inclusive of nested spans",
        "device_ms": "device (CUDA event) time in ms, inclusive; NaN where there is no device time (CPU)",
        "host_syncs": "host-device synchronizations inside the span",
        "op_ms": "ms spent inside aten ops (CPU dispatch tracker), NaN where not measured",
        "tracer_ms": "ms of tracer bookkeeping inside the span, NaN where not measured",
    },
    "samples": {
        "t_ns": "ns since the trace started",
        "device_used_bytes": "device memory used, all processes (NVML)",
        "process_used_bytes": "device memory used by this process (NVML, read once a second); -1 when NVML cannot say",
        "util_percent": "GPU utilization in percent (NVML)",
        "other_processes": "other processes on the GPU (read once a second); -1 when unknown",
    },
    "counters": {
        "t_ns": "ns since the trace started",
        "q": f"q of the reading; {_Q}",
        "span_id": "the span whose boundary this is",
        "allocated_bytes": "torch.cuda.memory_allocated at that moment",
        "reserved_bytes": "torch.cuda.memory_reserved at that moment",
    },
    "kv": {
        "t_ns": "ns since the trace started",
        "q": f"q of the record; {_Q}",
        "chunk": "chunk just finished",
        "logical_bytes": "bytes the cache would hold uncompressed",
        "stored_bytes": "bytes of codes and metadata the method counts as stored",
        "resident_bytes": "bytes of the cache's tensors live in memory",
    },
    "stages": {
        "id": "span id (= allocations.span_id, spans.id)",
        "path": "stage path, e.g. rollout/chunk[1]/refresh/layer[0]/kv_read",
        "kind_path": "the path without indices, e.g. rollout/chunk/refresh/layer/kv_read",
        "depth": "nesting depth, 0 at the top",
        "chunk": "the enclosing chunk, or null",
        "pass_name": "the enclosing pass (denoise[i] or refresh), or null",
        "phase": "the phase of the rollout the span belongs to (setup, denoise, refresh, decode, ...)",
    },
    "timeline": {
        "q": f"{_Q}",
        "t_ns": "ns since the trace started",
        "t_s": "seconds since the trace started",
        "total": "live bytes, all categories",
    },
}

# Types of columns when a table has no rows (pandas would make them `object`, Parquet `null`).
EMPTY_DTYPES: dict[str, dict[str, str]] = {
    "samples": dict.fromkeys(("t_ns", "device_used_bytes", "process_used_bytes", "util_percent", "other_processes"),
                             "int64"),
    "counters": dict.fromkeys(("t_ns", "q", "span_id", "allocated_bytes", "reserved_bytes"), "int64"),
    "kv": dict.fromkeys(("t_ns", "q", "chunk", "logical_bytes", "stored_bytes", "resident_bytes"), "int64"),
}


def typed(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the real types of an empty table's columns (a non-empty table keeps its own)."""
    dtypes = EMPTY_DTYPES.get(name)
    if not dtypes or len(df):
        return df
    return df.astype({c: t for c, t in dtypes.items() if c in df.columns})


def arrow_table(name: str, df: pd.DataFrame) -> Any:
    """Table `name` as an Arrow table whose schema carries its column descriptions (and pandas' dtypes)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(typed(name, df), preserve_index=False)
    docs = COLUMN_DOCS.get(name, {})
    fields = [f.with_metadata({"description": docs[f.name]}) if f.name in docs else f for f in table.schema]
    meta = dict(table.schema.metadata or {})  # keeps pandas' own metadata (dtypes round-trip)
    meta[b"kvprof.table"] = name.encode()
    meta[b"kvprof.description"] = TABLE_DOCS.get(name, "").encode()
    meta[b"kvprof.columns"] = json.dumps(docs).encode()
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=meta))


def write_parquet(path: Path, name: str, df: pd.DataFrame) -> None:
    """Write table `name` to `path` as Parquet with its column descriptions in the file's schema."""
    import pyarrow.parquet as pq

    table = arrow_table(name, df)
    pq.write_table(table, path, **parquet_options(table.schema))


# Integer columns with few distinct values (sizes, span ids, chunks): a dictionary beats deltas.
_FEW_VALUES = frozenset({"bytes", "span_id", "parent", "chunk", "index", "host_syncs", "other_processes"})


def parquet_options(schema: Any) -> dict[str, Any]:
    """Parquet options that make a trace a few bytes per event, every value kept: order keys and
    times (increasing, or nearly) delta-encoded, names and categories (and other columns of few
    values) dictionary-encoded, all zstd-compressed. On a 1 M-allocation table this is ~3x
    smaller than Parquet's defaults (tests/test_profiler_cost.py states the bound)."""
    import pyarrow as pa

    dictionary, delta = [], {}
    for f in schema:
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type) \
                or f.name in _FEW_VALUES:
            dictionary.append(f.name)
        elif pa.types.is_integer(f.type):
            delta[f.name] = "DELTA_BINARY_PACKED"
    return {"compression": "zstd", "use_dictionary": dictionary, "column_encoding": delta}
