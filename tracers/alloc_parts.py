"""Allocation rows streamed to disk while a CUDA trace runs, and their merge into allocations.parquet.

A traced rollout of a quantized method makes millions of allocator events; holding them until the
trace closes costs host memory in proportion (19.8 GB for 7.3 M events). The native recorder's
drains instead append each batch of allocation rows as one small Parquet file under
`allocations.parts/` (written atomically, so a killed run leaves only whole parts). A row's free is
filled in when it happened in the same batch; frees, retags and block-size corrections of rows
of earlier batches are event-log records (`f`, `r`, `z`: few, since most allocations die young),
applied by id. At close `merge_parts` writes allocations.parquet one part at a time (memory: one
part plus those updates), rows in id order, then removes the parts. Readers of a trace that never
closed (killed, crashed) fold the parts like the log's own allocation records (`read_parts`).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from tracers.atomic import write_atomic
from tracers.table_schema import arrow_table, parquet_options
from tracers.trace_fold import ALLOC_COLUMNS

PARTS_DIR = "allocations.parts"
_PART = re.compile(r"part-(\d{6})\.parquet")


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    """Allocation rows with the dtypes of the fold's allocations table (int64, string)."""
    df = pd.DataFrame({c: np.asarray(columns[c], dtype=np.int64) for c in ALLOC_COLUMNS
                       if c not in ("category", "name")})
    df["category"] = pd.array(columns["category"], dtype="string")
    df["name"] = pd.array(columns["name"], dtype="string")
    return df[list(ALLOC_COLUMNS)]


def part_options(schema: Any) -> dict[str, Any]:
    """How a streamed part is written: the trace's own encodings (delta-coded ids, orders and times; few-valued
    columns in dictionaries) with LZ4 and no column statistics. Of those measured, the cheapest for the drain
    thread, which writes a part every drain (10 s) beside the model's: ~2.6 B a row of the tests' synthetic history, where
    Parquet's defaults (a dictionary tried on every int64 column) with zstd cost ~4x the CPU for ~8x the bytes
    (benchmarks/RESULTS.md, session 14; `benchmarks/drain_cost.py --part-options`). The close re-encodes the rows
    with zstd anyway."""
    return {**parquet_options(schema), "compression": "lz4", "write_statistics": False}


class AllocationParts:
    """Writer of one trace's streamed allocation parts."""

    def __init__(self, folder: Path):
        self.dir = Path(folder) / PARTS_DIR
        self.count = 0
        self.rows = 0
        self.bytes = 0  # on disk, every part written (the disk a run needs beside its trace until it closes)

    def append(self, columns: dict[str, Any]) -> None:
        """Write one batch of allocation rows (ids consecutive and increasing) as the next part.
        Built as Arrow arrays straight from the numpy columns (no pandas, no per-row strings: this
        runs beside the model's thread and holds the GIL only briefly); `category` comes as
        (codes, names), written dictionary-encoded; `name` as an object array, or None when no row has one."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(columns["id"])
        if not n:
            return
        codes, names = columns["category"]
        cat = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names, pa.string()))
        name = columns["name"]
        arrays = {c: pa.array(np.asarray(columns[c], dtype=np.int64)) for c in ALLOC_COLUMNS if c not in ("category", "name")}
        arrays["category"] = cat
        arrays["name"] = pa.nulls(n, pa.string()) if name is None else pa.array(name, pa.string())
        table = pa.table({c: arrays[c] for c in ALLOC_COLUMNS})
        self.dir.mkdir(exist_ok=True)
        options, path = part_options(table.schema), self.dir / f"part-{self.count:06d}.parquet"
        write_atomic(path, lambda tmp: pq.write_table(table, tmp, **options))
        self.count += 1
        self.rows += n
        self.bytes += path.stat().st_size


def part_files(folder: Path) -> list[Path]:
    """The streamed parts of a trace folder, in the order they were written."""
    d = Path(folder) / PARTS_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _PART.fullmatch(p.name))


def _read_part(path: Path) -> dict[str, Any]:
    """One part's columns: int64 arrays, and category and name as Python strings (None where missing)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, Any] = {}
    for c in ALLOC_COLUMNS:
        col = table.column(c)
        if c in ("category", "name"):
            out[c] = col.cast("string").to_numpy(zero_copy_only=False)
        else:
            out[c] = col.to_numpy()
    return out


def read_part(path: Path) -> dict[str, list[Any]]:
    """One part's rows as columns of Python values (for `TableFolder.add_bulk`): ints as ints, and the
    dictionary-encoded category as the dictionary's few strings shared by every row (a string object
    per row held ~300 MB per million rows in a live follower)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, list[Any]] = {}
    for c in ALLOC_COLUMNS:
        col = table.column(c).combine_chunks()
        if pa.types.is_dictionary(col.type) and not col.null_count:
            words = col.dictionary.cast(pa.string()).to_pylist()
            out[c] = [words[i] for i in col.indices.to_numpy().tolist()]
        elif c in ("category", "name"):
            out[c] = col.cast(pa.string()).to_pylist()
        else:
            out[c] = col.to_numpy().tolist()
    return out


def read_parts(folder: Path) -> Iterator[dict[str, list[Any]]]:
    """Each part's rows as columns (for folding a trace that never closed)."""
    for path in part_files(folder):
        yield read_part(path)


class _Updates:
    """Frees, retags and sizes of rows by id (the log's f/r/z records, in order: later ones win), as
    sorted arrays, applied to each part's rows with one vectorized assignment per column."""

    def __init__(self, records: list[dict[str, Any]]):
        free: dict[int, tuple[int, int]] = {}
        tag: dict[int, tuple[str, str | None]] = {}
        size: dict[int, int] = {}
        for r in records:
            k, i = r["k"], r["id"]
            if k == "f":
                free[i] = (r["q"], r["t"])
            elif k == "r":
                tag[i] = (r["c"], r.get("n") or tag.get(i, (None, None))[1])
            elif k == "z":
                size[i] = r["b"]
        self.free = self._arrays(free)
        self.tag = self._arrays(tag)
        self.size = self._arrays(size)

    @staticmethod
    def _arrays(d: dict[int, Any]) -> tuple[np.ndarray, list[Any]]:
        ids = np.array(sorted(d), dtype=np.int64)
        return ids, [d[int(i)] for i in ids]

    @staticmethod
    def _rows(update: tuple[np.ndarray, list[Any]], ids: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Rows of `ids` (sorted) that `update` touches, and their values."""
        keys, values = update
        lo, hi = np.searchsorted(keys, [ids[0], ids[-1] + 1])
        keys = keys[lo:hi]
        rows = np.searchsorted(ids, keys)
        hit = rows < len(ids)
        hit[hit] = ids[rows[hit]] == keys[hit]
        return rows[hit], [v for v, h in zip(values[lo:hi], hit) if h]

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        if not len(df):
            return df
        ids = df["id"].to_numpy()
        rows, vals = self._rows(self.free, ids)
        if len(rows):
            q_free, t_free = df["q_free"].to_numpy().copy(), df["t_free_ns"].to_numpy().copy()
            q_free[rows] = [v[0] for v in vals]
            t_free[rows] = [v[1] for v in vals]
            df["q_free"], df["t_free_ns"] = q_free, t_free
        rows, vals = self._rows(self.tag, ids)
        if len(rows):
            cat, name = df["category"].to_numpy(dtype=object).copy(), df["name"].to_numpy(dtype=object).copy()
            cat[rows] = [v[0] for v in vals]
            keep = [i for i, v in enumerate(vals) if v[1]]
            name[rows[keep]] = [vals[i][1] for i in keep]
            df["category"], df["name"] = pd.array(cat, dtype="string"), pd.array(name, dtype="string")
        rows, vals = self._rows(self.size, ids)
        if len(rows):
            nbytes = df["bytes"].to_numpy().copy()
            nbytes[rows] = vals
            df["bytes"] = nbytes
        return df


def merge_parts(folder: Path, head: pd.DataFrame, pending: list[dict[str, Any]]) -> Any:
    """A writer of allocations.parquet for `write_tables`: the log's own allocation rows (`head`,
    folded) then every part in order, with `pending` (f/r/z records of rows not in `head`) applied.
    Memory: one part at a time."""
    updates = _Updates(pending)
    parts = part_files(folder)

    def write(tmp: Path) -> None:
        import pyarrow.parquet as pq

        first = arrow_table("allocations", head)
        with pq.ParquetWriter(tmp, first.schema, **parquet_options(first.schema)) as writer:
            if len(head):
                writer.write_table(first)
            for p in parts:
                df = updates.apply(_frame(_read_part(p)))
                writer.write_table(arrow_table("allocations", df).cast(first.schema))

    return write


def remove_parts(folder: Path) -> None:
    """Remove the parts once allocations.parquet holds them."""
    shutil.rmtree(Path(folder) / PARTS_DIR, ignore_errors=True)


__all__ = ["PARTS_DIR", "AllocationParts", "merge_parts", "part_files", "part_options", "read_part", "read_parts",
           "remove_parts"]
