"""The allocation table one column at a time, for the views (kvprof.read.views, kvprof.read.events).

`FrameColumns` serves the columns of an allocation DataFrame already read. `ParquetColumns` reads
them straight from a closed trace's `allocations.parquet`, one column at a time and a row batch
at a time into one numpy array, with the category as dictionary codes: the table never becomes a
DataFrame. That DataFrame is what made closing a trace costly: on a 7.2 M-row trace its pandas
string columns and the Arrow table it is converted from held ~1.2 GB at once, before any event
array existed.

`ParquetColumns` serves only files exactly as kvprof writes them (the columns readers rely on,
with the types `tracers.trace_io.check_tables` accepts, no missing values where none are
allowed, no pandas index columns): anything else raises `Unusual`, and the caller reads the
trace the ordinary way, which checks it and names any damage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kvprof.read.events import CHUNK
from tracers.trace_fold import ALLOC_COLUMNS, NO_FREE

__all__ = ["FrameColumns", "ParquetColumns", "Unusual"]

INT_COLUMNS = ("id", "q_alloc", "q_free", "t_alloc_ns", "t_free_ns", "bytes", "span_id")
STR_COLUMNS = ("category", "name")
# pandas dtypes (the schema's pandas metadata) that read back as the same values
_INT_DTYPES = frozenset(f"{p}int{b}" for p in ("", "I") for b in (8, 16, 32, 64))
_STR_DTYPES = frozenset({"object", "string", "str"})


class Unusual(Exception):
    """The allocation file is not as kvprof writes it: read the trace the ordinary way instead."""


class FrameColumns:
    """The columns of an allocation DataFrame (already checked by the reader)."""

    def __init__(self, allocs: pd.DataFrame):
        self.frame = allocs
        self.n = len(allocs)

    def int64(self, name: str) -> np.ndarray:
        """Column `name` as int64 (a view of the frame's own array where it is int64)."""
        return self.frame[name].to_numpy(dtype=np.int64)

    def codes(self) -> tuple[np.ndarray, list[str]]:
        """Each row's category code, categories in first-seen order."""
        codes, uniques = pd.factorize(self.frame["category"], use_na_sentinel=False)
        return np.asarray(codes), [str(u) for u in uniques]

    def rows(self, mask: np.ndarray) -> pd.DataFrame:
        """The rows where `mask` holds, every column, renumbered from 0."""
        return self.frame[mask].reset_index(drop=True)

    def check(self, q_alloc: np.ndarray, q_free: np.ndarray, ids: np.ndarray) -> None:
        """Nothing to check: the reader checked the frame (tracers.trace_io.check_tables)."""


class ParquetColumns:
    """allocations.parquet read a column at a time (see the module doc); `Unusual` at construction
    when its schema is not kvprof's, or while reading when a value is missing."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.file = pq.ParquetFile(self.path)
        schema = self.file.schema_arrow
        if len(set(schema.names)) != len(schema.names) or not set(ALLOC_COLUMNS) <= set(schema.names):
            raise Unusual("columns")
        for name in INT_COLUMNS:
            if not pa.types.is_signed_integer(schema.field(name).type):
                raise Unusual(name)
        for name in STR_COLUMNS:
            t = schema.field(name).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or (name == "name" and pa.types.is_null(t))):
                raise Unusual(name)
        pandas = schema.pandas_metadata or {}
        if any(isinstance(c, str) for c in pandas.get("index_columns", [])):
            raise Unusual("index columns")  # pandas would move them out of the columns
        for c in pandas.get("columns", []):
            allowed = _INT_DTYPES if c.get("name") in INT_COLUMNS else _STR_DTYPES if c.get("name") in STR_COLUMNS else None
            if allowed is not None and c.get("numpy_type") not in allowed:
                raise Unusual(str(c.get("name")))
        meta = self.file.metadata
        self.n = meta.num_rows
        self.group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])

    @staticmethod
    def _release() -> None:
        # Arrow's allocator (mimalloc) keeps the decoded batches' memory for reuse: ~50 MB held
        # beside the event arrays unless handed back after each column
        import pyarrow as pa

        pa.default_memory_pool().release_unused()

    def _batches(self, columns: list[str], row_groups: list[int] | None = None):
        import pyarrow.parquet as pq

        strings = [c for c in columns if c in STR_COLUMNS]
        f = pq.ParquetFile(self.path, read_dictionary=strings) if strings else self.file
        return f.iter_batches(batch_size=CHUNK, columns=columns, row_groups=row_groups)

    def int64(self, name: str) -> np.ndarray:
        """Column `name` as a new int64 array (one batch of Arrow memory at a time besides it)."""
        out = np.empty(self.n, dtype=np.int64)
        s = 0
        for batch in self._batches([name]):
            col = batch.column(0)
            if col.null_count or s + len(col) > self.n:
                raise Unusual(name)
            out[s:s + len(col)] = col.to_numpy()
            s += len(col)
        self._release()
        if s != self.n:
            raise Unusual(name)
        return out

    def check(self, q_alloc: np.ndarray, q_free: np.ndarray, ids: np.ndarray) -> None:
        """`Unusual` where the reader would refuse the table or skip rows (repeated ids, rows
        freed before made: tracers.trace_io.check_tables), which the views must then not hide."""
        if bool(((q_free != NO_FREE) & (q_free < q_alloc)).any()):
            raise Unusual("rows freed before made")
        if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):  # ids ascend in kvprof's tables: no sort then
            ids = np.sort(ids)
            if bool((ids[1:] == ids[:-1]).any()):
                raise Unusual("repeated ids")

    def codes(self) -> tuple[np.ndarray, list[str]]:
        """Each row's category code (int32), categories in first-seen order, from the column's
        dictionary codes: no string per row is ever made."""
        out = np.empty(self.n, dtype=np.int32)
        code: dict[str, int] = {}
        s = 0
        for batch in self._batches(["category"]):
            col = batch.column(0)
            if col.null_count or col.dictionary.null_count or s + len(col) > self.n:
                raise Unusual("category")
            values = col.dictionary.to_pylist()
            index = col.indices.to_numpy()
            lut = np.zeros(len(values), dtype=np.int32)
            for d in pd.unique(index):  # this batch's entries in first-seen order
                lut[d] = code.setdefault(values[d], len(code))
            out[s:s + len(col)] = lut[index]
            s += len(col)
        self._release()
        if s != self.n:
            raise Unusual("category")
        return out, list(code)

    def rows(self, mask: np.ndarray) -> pd.DataFrame:
        """The rows where `mask` holds, the table's columns (ALLOC_COLUMNS), typed as
        `Views.from_dict` types them: int64 and pandas "string"."""
        wanted = np.flatnonzero(mask)
        groups = np.unique(np.searchsorted(self.group_starts, wanted, side="right") - 1).tolist()
        ints: dict[str, list[np.ndarray]] = {c: [] for c in INT_COLUMNS}
        strs: dict[str, list] = {c: [] for c in STR_COLUMNS}
        for g in groups:  # a row group at a time: batches then never span two groups
            s = int(self.group_starts[g])
            for batch in self._batches(list(ALLOC_COLUMNS), row_groups=[g]):
                local = wanted[(wanted >= s) & (wanted < s + batch.num_rows)] - s
                s += batch.num_rows
                if not len(local):
                    continue
                part = batch.take(local)
                for c in INT_COLUMNS:
                    ints[c].append(part.column(c).to_numpy(zero_copy_only=False).astype(np.int64))
                for c in STR_COLUMNS:
                    strs[c] += part.column(c).to_pylist()
        self._release()
        out = pd.DataFrame({c: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for c, v in ints.items()})
        for c in STR_COLUMNS:
            out[c] = pd.array(strs[c], dtype="string")
        return out[list(ALLOC_COLUMNS)]
