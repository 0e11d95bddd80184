"""The one fold of trace records: every record kind, the live follower equal to the closed loader."""
from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from kvprof.read.live import TraceFollower
from kvprof.read.trace import load_trace
from tracers.trace_fold import NO_FREE, SPAN_COLUMNS, TableFolder
from tracers.trace_io import EVENTS_FILE, SCHEMA_VERSION, TraceError, tables_from_records

# One record of every kind of tracers.trace_io's docstring, in writer order.
RECORDS = [
    {"k": "b", "id": 1, "p": 0, "n": "rollout", "i": None, "t": 10, "q": 1},
    {"k": "b", "id": 2, "p": 1, "n": "chunk", "i": 0, "t": 11, "q": 2},
    {"k": "a", "id": 7, "t": 12, "q": 3, "b": 100, "c": "activations", "s": 2, "n": None},
    {"k": "z", "id": 7, "b": 512},  # the allocator's block for the 100 B request
    {"k": "a", "id": 8, "t": 13, "q": 4, "b": 64, "c": "activations", "s": 2, "n": "x"},
    {"k": "r", "id": 8, "c": "kv_fp", "n": "layer 0 / k"},
    {"k": "m", "t": 14, "q": 5, "s": 2, "alloc": 576, "reserved": 2097152},
    {"k": "d", "t": 15, "used": 1000, "proc": 900, "util": 50, "others": 0},
    {"k": "kv", "t": 16, "q": 6, "chunk": 0, "logical": 128, "stored": 64, "resident": 64},
    {"k": "f", "id": 7, "t": 17, "q": 7},
    {"k": "e", "id": 2, "t": 18, "q": 8, "ms": 0.5, "hs": 1, "ons": 300000, "tns": 1000},
    {"k": "x", "id": 2, "dms": 0.4},
    {"k": "e", "id": 1, "t": 19, "q": 9, "ms": 0.9},
]


def test_every_record_kind_lands_in_its_table() -> None:
    t = tables_from_records(RECORDS)
    al = t["allocations"].set_index("id")
    assert al.loc[7, "bytes"] == 512 and (al.loc[7, "q_free"], al.loc[7, "t_free_ns"]) == (7, 17)
    assert al.loc[8, "category"] == "kv_fp" and al.loc[8, "name"] == "layer 0 / k" and al.loc[8, "q_free"] == NO_FREE
    sp = t["spans"].set_index("id")
    assert sp.loc[2, "q_end"] == 8 and sp.loc[2, "device_ms"] == 0.4 and sp.loc[2, "host_syncs"] == 1
    assert sp.loc[2, "op_ms"] == pytest.approx(0.3) and sp.loc[2, "tracer_ms"] == pytest.approx(0.001)
    assert pd.isna(sp.loc[1, "device_ms"]) and sp.loc[1, "host_ms"] == 0.9
    assert t["counters"].iloc[0].tolist() == [14, 5, 2, 576, 2097152]
    assert t["samples"].iloc[0].tolist() == [15, 1000, 900, 50, 0]
    assert t["kv"].iloc[0].tolist() == [16, 6, 0, 128, 64, 64]


def test_folding_in_pieces_equals_folding_at_once() -> None:
    whole = TableFolder()
    whole.fold(RECORDS)
    for cut in range(len(RECORDS) + 1):
        parts = TableFolder()
        parts.fold(RECORDS[:cut])
        parts.tables()  # a snapshot in between must not change what follows
        parts.fold(RECORDS[cut:])
        for name, df in whole.tables().items():
            pd.testing.assert_frame_equal(parts.tables()[name], df, check_dtype=True)


def test_bulk_rows_take_frees_retags_and_sizes_recorded_before_them() -> None:
    folder = TableFolder()
    folder.fold([{"k": "z", "id": 5, "b": 1024}, {"k": "f", "id": 5, "t": 30, "q": 30},
                 {"k": "r", "id": 5, "c": "kv_codes", "n": "codes"}])
    folder.add_bulk({"id": [5], "q_alloc": [20], "q_free": [NO_FREE], "t_alloc_ns": [20], "t_free_ns": [NO_FREE],
                     "bytes": [1000], "category": ["activations"], "span_id": [0], "name": [None]})
    row = folder.tables()["allocations"].iloc[0]
    assert (row["bytes"], row["q_free"], row["category"], row["name"]) == (1024, 30, "kv_codes", "codes")


def _spans_by_dicts(records: list[dict]) -> pd.DataFrame:
    """The spans fold as it was before SpanBook (a dict per span, pandas casts at the end): the reference."""
    nan, spans = float("nan"), {}
    for r in records:
        if r["k"] == "b":
            spans[r["id"]] = {"id": r["id"], "parent": r["p"], "name": r["n"], "index": r.get("i"), "q_start": r["q"],
                              "q_end": NO_FREE, "t_start_ns": r["t"], "t_end_ns": NO_FREE, "host_ms": nan, "device_ms": nan,
                              "host_syncs": 0, "op_ms": nan, "tracer_ms": nan}
        elif r["k"] == "e" and r["id"] in spans:
            spans[r["id"]].update(q_end=r["q"], t_end_ns=r["t"], host_ms=r["ms"], host_syncs=r.get("hs", 0),
                                  op_ms=r["ons"] / 1e6 if "ons" in r else nan, tracer_ms=r["tns"] / 1e6 if "tns" in r else nan)
        elif r["k"] == "x" and r["id"] in spans:
            spans[r["id"]]["device_ms"] = r["dms"]
    df = pd.DataFrame(list(spans.values()), columns=list(SPAN_COLUMNS))
    for col in ("id", "parent", "q_start", "q_end", "t_start_ns", "t_end_ns", "host_syncs"):
        df[col] = df[col].astype("int64")
    df["index"], df["name"] = df["index"].astype("Int64"), df["name"].astype("string")
    return df.astype({c: "float64" for c in ("host_ms", "device_ms", "op_ms", "tracer_ms")})


def test_span_columns_equal_the_dict_per_span_fold() -> None:
    """Spans are typed columns (SpanBook, ~100 B a span); random span records (re-begun ids, ends and device
    times of unknown ids, missing indexes, optional counters) give the same table as a dict per span."""
    rng = random.Random(7)
    records: list[dict] = []
    for n in range(3000):
        sid = rng.randint(1, 400)
        kind = rng.choice("bbeex")
        if kind == "b":
            records.append({"k": "b", "id": sid, "p": rng.randint(0, sid), "n": rng.choice(["layer", "residual", "chunk"]),
                            "i": rng.choice([None, rng.randint(0, 50)]), "t": n * 1000 + 2**40, "q": n * 2**32})
        elif kind == "e":
            r = {"k": "e", "id": sid, "t": n * 1000, "q": n * 2**32 + 7, "ms": rng.choice([rng.random(), float("nan")])}
            for key in ("hs", "ons", "tns"):
                if rng.random() < 0.3:
                    r[key] = rng.randint(1, 10**9)
            records.append(r)
        else:
            records.append({"k": "x", "id": sid, "dms": rng.random()})
    folder = TableFolder()
    folder.fold(records)
    assert len(folder.spans) > 300
    pd.testing.assert_frame_equal(folder.tables()["spans"], _spans_by_dicts(records), check_dtype=True)


@pytest.mark.parametrize("deferred", [False, True])
def test_span_columns_written_directly_equal_the_fold_of_the_records(tmp_path, deferred: bool) -> None:
    """EventLog.span_begin/span_end (the session's scopes: no dict per record) give the span table and the
    lines that `write` of the same b/e records gives; `deferred` (a streamed trace) folds them at each flush."""
    from tracers.trace_io import EventLog

    rng = random.Random(5)
    direct, via = EventLog(tmp_path / "direct.jsonl"), EventLog(tmp_path / "via.jsonl")
    direct.deferred = deferred
    open_ids: list[int] = []
    opened = 0
    for n in range(1, 3001):
        if deferred and n % 250 == 0:
            direct.flush()  # as the drain thread does after each drain
        if open_ids and rng.random() < 0.45:
            sid = open_ids.pop(rng.randrange(len(open_ids)))
            ends = {x: rng.randint(1, 10**6) for x in ("hs", "ons", "tns") if rng.random() < 0.2}
            ms = rng.choice([rng.random(), float("nan")])
            direct.span_end(sid, n * 10, n, ms, ends or None)
            via.write({"k": "e", "id": sid, "t": n * 10, "q": n, "ms": ms, **ends})
        else:
            opened += 1
            sid = opened
            index = rng.choice([None, rng.randint(0, 40)])
            name = rng.choice(["layer", "residual"])
            direct.span_begin(sid, sid - 1, name, index, n * 10, n)
            via.write({"k": "b", "id": sid, "p": sid - 1, "n": name, "i": index, "t": n * 10, "q": n})
            open_ids.append(sid)
    direct.close(), via.close()
    pd.testing.assert_frame_equal(direct.folder.tables()["spans"], via.folder.tables()["spans"])
    assert (tmp_path / "direct.jsonl").read_text() == (tmp_path / "via.jsonl").read_text()


def test_a_span_record_of_the_wrong_type_is_named() -> None:
    with pytest.raises(TraceError, match="kind 'b' holds a value of the wrong type"):
        tables_from_records([{"k": "b", "id": "one", "p": 0, "n": "x", "i": None, "t": 1, "q": 1}])


def _live_folder(tmp_path: Path, records: list[dict]) -> Path:
    folder = tmp_path / "live"
    folder.mkdir()
    meta = {"schema_version": SCHEMA_VERSION, "run_id": "live", "status": "running"}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / EVENTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_follower_counts_block_sizes_like_the_closed_loader(tmp_path: Path) -> None:
    # the four-record example of the redesign issue: the follower showed 100 B, the trace 512 B
    records = [RECORDS[0], RECORDS[1], RECORDS[2], RECORDS[3]]
    folder = _live_folder(tmp_path, records)
    follower = TraceFollower(folder)
    assert follower.poll()
    live = follower.trace().allocations
    loaded = load_trace(folder).allocations
    assert live["bytes"].tolist() == loaded["bytes"].tolist() == [512]
    pd.testing.assert_frame_equal(live, loaded)


def test_follower_names_a_damaged_record(tmp_path: Path) -> None:
    folder = _live_folder(tmp_path, [RECORDS[0], {"k": "a", "id": 1}])
    with pytest.raises(TraceError, match="events.jsonl.*kind 'a' lacks field"):
        TraceFollower(folder).poll()


def test_directly_formatted_records_are_the_json_encoders_lines() -> None:
    """b/e/m records are formatted without the JSON encoder (the drain thread writes ~10^6 of them in a PRQ
    rollout); for the writer's records (random ints, names with quotes and non-ASCII, NaN and inf times,
    optional span-end counters) the line is byte-for-byte json's, and any other record goes through json."""
    from tracers.record_lines import _ENCODE, encode_record

    rng = random.Random(3)
    big = lambda: rng.choice([0, 1, rng.randint(2, 2**62)])  # noqa: E731
    names = ["layer", "kv_write", 'q"uote', "é→\n\t", "\\path/x"]
    for _ in range(2000):
        k = rng.choice("bemx")
        if k == "b":
            r = {"k": "b", "id": big(), "p": big(), "n": rng.choice(names), "i": rng.choice([None, big()]), "t": big(), "q": big()}
        elif k == "e":
            r = {"k": "e", "id": big(), "t": big(), "q": big(),
                 "ms": rng.choice([rng.random() * 10 ** rng.randint(-9, 9), float("nan"), float("inf"), 0.0])}
            if rng.random() < 0.3:
                r["hs"] = big()
        elif k == "m":
            r = {"k": "m", "t": big(), "q": big(), "s": big(), "alloc": big(), "reserved": big()}
        else:
            r = {"k": "x", "id": big(), "dms": rng.random()}
        assert encode_record(r) == _ENCODE(r), r
        if k == "b":  # EventLog.span_begin's tuple of the same record
            assert encode_record(("b", r["id"], r["p"], r["n"], r["i"], r["t"], r["q"])) == _ENCODE(r)
        elif k == "e":
            ends = {x: r[x] for x in ("hs", "ons", "tns") if x in r}
            assert encode_record(("e", r["id"], r["t"], r["q"], r["ms"], ends)) == _ENCODE(r)


def test_bulk_rows_fold_like_the_same_rows_one_by_one() -> None:
    """add_bulk extends each column at once (a live follower folds every streamed part): the table, and the
    frees, retags and sizes that reach its rows (a repeated id: the later row), are those of a per-row fold."""
    rng = random.Random(9)
    n = 500
    cols = {"id": [rng.randint(1, 450) for _ in range(n)], "q_alloc": list(range(n)), "q_free": [rng.choice([NO_FREE, 10**6]) for _ in range(n)],
            "t_alloc_ns": list(range(n)), "t_free_ns": [NO_FREE] * n, "bytes": [rng.randint(1, 10**9) for _ in range(n)],
            "category": [rng.choice(["kv_scratch", "activations"]) for _ in range(n)], "span_id": [rng.randint(0, 9) for _ in range(n)],
            "name": [rng.choice([None, "x"]) for _ in range(n)]}
    later = [{"k": "f", "id": 7, "t": 5, "q": 5}, {"k": "r", "id": 9, "c": "kv_codes", "n": "codes"}, {"k": "z", "id": 11, "b": 4096}]
    bulk, rows = TableFolder(), TableFolder()
    bulk.add_bulk(cols)
    for i in range(n):  # the per-row fold add_bulk replaced, as the reference
        rows._add_alloc(cols["id"][i], cols["q_alloc"][i], cols["t_alloc_ns"][i], cols["bytes"][i], cols["category"][i],
                        cols["span_id"][i], cols["name"][i], q_free=cols["q_free"][i], t_free=cols["t_free_ns"][i])
    for f in (bulk, rows):
        f.fold(later)
    pd.testing.assert_frame_equal(bulk.tables()["allocations"], rows.tables()["allocations"])
    with pytest.raises(Exception, match="unequal length"):
        TableFolder().add_bulk({**cols, "bytes": cols["bytes"][:-1]})


def test_a_streamed_part_reads_as_python_values_sharing_the_category_strings(tmp_path) -> None:
    """read_part (a live follower's and a killed trace's reader of streamed parts): the part's values as ints
    and strings, equal to the Parquet file's, with the few category strings shared by all rows."""
    import numpy as np

    from tracers.alloc_parts import AllocationParts, part_files, read_part
    from tracers.categories import CATEGORIES

    n = 5000
    names = np.full(n, None, dtype=object)
    names[::7] = "layer 3 / k"
    codes = np.random.default_rng(1).integers(0, len(CATEGORIES), n)
    AllocationParts(tmp_path).append({"id": np.arange(1, n + 1), "q_alloc": np.arange(n) * 3, "q_free": np.full(n, NO_FREE),
                                      "t_alloc_ns": np.arange(n), "t_free_ns": np.full(n, NO_FREE), "bytes": np.full(n, 512),
                                      "category": (codes, list(CATEGORIES)), "span_id": np.arange(n) % 11, "name": names})
    path = part_files(tmp_path)[0]
    cols = read_part(path)
    disk = pd.read_parquet(path)
    for c, values in cols.items():
        expected = [None if pd.isna(v) else v for v in disk[c].astype(object)] if c in ("category", "name") else disk[c].tolist()
        assert values == expected, c
    assert all(type(v) is int for v in cols["q_alloc"]) and len({id(v) for v in cols["category"]}) <= len(CATEGORIES)


def test_a_tag_of_the_category_in_force_opens_no_context_and_changes_no_row(tmp_path) -> None:
    """PRQ tags each slice `kv_scratch` inside the encode's own `kv_scratch` tag: such a tag opens no new
    context (its two cost a little on each of ~10^6 tags), and the trace's rows are the same as without it
    (category, span, bytes, order of q); a tag of another category still opens contexts and takes effect."""
    import torch

    from kvprof.read.trace import load_trace
    from tracers import TraceSession, stage, tag

    def run(folder, inner: bool):
        s = TraceSession(folder, {"run_id": folder.name}, "cpu")
        with s:
            with stage("quantize"), tag("kv_scratch"):
                keep = [torch.ones(64)]
                for _ in range(3):
                    with tag("kv_scratch") if inner else contextlib.nullcontext():
                        keep.append(torch.ones(32))
                        with stage("residual"):
                            keep.append(torch.ones(16))
                    with tag("kv_codes"):
                        keep.append(torch.ones(8))
                contexts = s._ctx
            del keep
        return contexts, load_trace(folder).allocations

    with_inner, rows_a = run(tmp_path / "a", True)
    without, rows_b = run(tmp_path / "b", False)
    assert with_inner == without
    for rows in (rows_a, rows_b):
        rows["q_rank"], rows["free_rank"] = rows["q_alloc"].rank(), rows["q_free"].rank()
    cols = ["bytes", "category", "span_id", "q_rank", "free_rank"]
    pd.testing.assert_frame_equal(rows_a[cols], rows_b[cols])
    assert rows_a["category"].value_counts().to_dict() == {"kv_scratch": 7, "kv_codes": 3}


def test_fine_stages_are_left_to_their_parent_unless_asked_for(tmp_path) -> None:
    """A `fine` stage (PRQ's residual per slice of groups) is a no-op by default: no span, its allocations
    belong to the enclosing stage with the same bytes and categories, meta counts it and a note says how to
    record it; with fine_stages=True it is a span like any other."""
    import json

    import torch

    from kvprof.read.trace import load_trace
    from tracers import TraceSession, stage, tag

    def run(folder, fine_stages: bool):
        with TraceSession(folder, {"run_id": folder.name}, "cpu", fine_stages=fine_stages):
            with stage("quantize"), tag("kv_scratch"):
                keep = [torch.ones(64)]
                for _ in range(3):
                    with stage("residual", fine=True):
                        keep.append(torch.ones(16))
            del keep
        return load_trace(folder), json.loads((folder / "meta.json").read_text())

    (skipped, meta_s), (recorded, meta_r) = run(tmp_path / "s", False), run(tmp_path / "r", True)
    assert sorted(skipped.spans["name"]) == ["quantize"]
    assert sorted(recorded.spans["name"]) == ["quantize"] + ["residual"] * 3
    quantize = int(skipped.spans.loc[skipped.spans["name"] == "quantize", "id"].iloc[0])
    assert set(skipped.allocations["span_id"]) == {quantize}
    assert sorted(skipped.allocations["bytes"]) == sorted(recorded.allocations["bytes"]) == [64] * 3 + [256]
    assert set(skipped.allocations["category"]) == set(recorded.allocations["category"]) == {"kv_scratch"}
    residual_ids = set(recorded.spans.loc[recorded.spans["name"] == "residual", "id"])
    assert set(recorded.allocations["span_id"]) == residual_ids | {int(recorded.spans.loc[recorded.spans["name"] == "quantize", "id"].iloc[0])}
    assert meta_s["fine_stages"] == {"recorded": False, "skipped": 3}
    assert meta_r["fine_stages"] == {"recorded": True, "skipped": 0}
    assert any("3 fine stages" in n and "--fine-stages" in n for n in meta_s["notes"])
    assert not any("fine stages" in n for n in meta_r["notes"])


def test_span_paths_chunks_and_passes_follow_the_parents() -> None:
    """Trace.spans derives path, kind path, depth, chunk and pass from the parent chain; a span whose parent is
    not in the table starts its own path."""
    from kvprof.read.trace import Trace
    from tracers.trace_io import RawTrace

    recs = [{"k": "b", "id": i, "p": p, "n": n, "i": x, "t": i, "q": i} for i, p, n, x in (
        (1, 0, "rollout", None), (2, 1, "chunk", 3), (3, 2, "refresh", None), (4, 3, "layer", 7), (5, 4, "kv_read", None),
        (6, 1, "chunk", 4), (7, 6, "denoise", 2), (8, 99, "orphan", None))]
    raw = RawTrace(path=Path("."), meta={}, tables=tables_from_records(recs), summary=None, live=True, torn_tail=False)
    got = Trace(raw).spans.set_index("id")
    assert got.loc[5, "path"] == "rollout/chunk[3]/refresh/layer[7]/kv_read"
    assert got.loc[5, "kind_path"] == "rollout/chunk/refresh/layer/kv_read" and got.loc[5, "depth"] == 4
    assert got.loc[5, "chunk"] == 3 and got.loc[5, "pass_name"] == "refresh"
    assert got.loc[7, "path"] == "rollout/chunk[4]/denoise[2]" and got.loc[7, "pass_name"] == "denoise[2]"
    assert got.loc[7, "chunk"] == 4 and pd.isna(got.loc[1, "chunk"]) and pd.isna(got.loc[1, "pass_name"])
    assert got.loc[8, "path"] == "orphan" and got.loc[8, "depth"] == 0
