"""Projections: the peak under the other code storage, the other integration and with the cache
freed before decode, from each phase's measured peak and the byte model's change at it."""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from kvprof.diagnose.bytemodel import STORAGE_BITS, MethodFacts
from kvprof.diagnose.context import TraceContext
from kvprof.diagnose.model import Projection
from kvprof.read.phases import CACHE_CATEGORIES
from kvprof.units import fmt_bytes
from tracers.vocabulary import PASS_NAMES

__all__ = ["trace_command", "project"]


def trace_command(meta: dict[str, Any], **changes: Any) -> str | None:
    """The `kvprof trace` command line that runs this trace with `changes` (None: meta lacks the shape)."""
    cfg, r = meta.get("config") or {}, meta.get("rollout") or {}
    if not meta.get("method") or not cfg.get("name") or not r.get("frames"):
        return None
    integration = changes.get("integration", meta.get("integration"))
    method = (meta.get("method_facts") or {}).get("spec") or meta["method"]  # a plugin's module:Class
    parts = ["kvprof", "trace", "--method", str(method), "--integration", str(integration)]
    codes = changes.get("codes", meta.get("codes") if integration == meta.get("integration") else None)
    if codes:
        parts += ["--codes", str(codes)]
    parts += ["--config", str(cfg["name"]), "--frames", str(r["frames"]), "--seed", str(r.get("seed", 0))]
    defaults = MethodFacts.from_meta(meta).param_defaults
    for k, v in (meta.get("method_params") or {}).items():
        if k not in defaults or v != defaults[k]:
            parts += ["--param", f"{k}={v}"]
    if r.get("rolling_frames"):
        parts += ["--rolling", str(r["rolling_frames"]), "--sink", str(r.get("sink_frames") or 0)]
    if not r.get("decode", True):
        parts.append("--no-decode")
    if changes.get("free_cache_before_decode", r.get("free_cache_before_decode")):
        parts.append("--free-cache-before-decode")
    return " ".join(parts)


def project(ctx: TraceContext, phases: pd.DataFrame, lives: dict[str, pd.DataFrame], peak: int) -> list[Projection]:
    """Projections: each scenario maps (phase row, live set at that phase's peak) to (change, terms)."""
    geo, meta = ctx.geo, ctx.meta
    rollout = meta.get("rollout") or {}
    has_decode = "decode" in set(phases["phase"])

    def packed(row, live):
        d, terms, _ = ctx.packed_excess(live)
        return -d, ([f"codes bit-packed: -{fmt_bytes(d)} ({'; '.join(terms)})"] if d else []), live

    def int8(row, live):
        codes = int(live.loc[live["category"] == "kv_codes", "bytes"].sum())
        return -(codes // 2), ([f"codes int16 -> int8: -{fmt_bytes(codes // 2)} (half of {fmt_bytes(codes)} kv_codes live)"] if codes else []), live

    def staged(row, live):
        deq = int(live.loc[live["category"] == "kv_dequant", "bytes"].sum())
        scr = int(live.loc[live["category"] == "kv_scratch", "bytes"].sum())
        d, terms = -(deq + scr), []
        gone = [f"-{fmt_bytes(n)} {c}" for n, c in ((deq, "kv_dequant"), (scr, "kv_scratch")) if n]
        if gone:
            terms.append(f"no whole-buffer dequantize / re-quantize temporaries: {' '.join(gone)} [measured]")
        p, pterms, _ = packed(row, live)
        d += p
        terms += pterms
        if row["phase"] in PASS_NAMES and geo is not None:
            stage_b = geo.num_layers * 2 * geo.chunk_tokens * geo.token_bytes
            win_b = 2 * 2 * geo.window_tokens * geo.token_bytes
            d += stage_b + win_b
            terms.append(f"+{fmt_bytes(stage_b)} BF16 staging of the current chunk ({geo.num_layers} layers x K,V x "
                         f"{geo.chunk_tokens} tokens x {geo.token_bytes} B) [byte model, meta.json]")
            terms.append(f"+{fmt_bytes(win_b)} dequantized attention window of one layer (K,V x 2 copies x "
                         f"{geo.window_tokens} tokens x {geo.token_bytes} B) [byte model, meta.json]")
        return d, terms, live[~live["category"].isin(["kv_dequant", "kv_scratch"])]

    def study(row, live):
        deq = int(live.loc[live["category"] == "kv_dequant", "bytes"].sum())
        fp = live[(live["category"] == "kv_fp") & live["buffer"].str.contains("staging", regex=False)]
        stg = int(fp["bytes"].sum())
        d = -(deq + stg)
        gone = [f"-{fmt_bytes(n)} {c}" for n, c in ((deq, "kv_dequant"), (stg, "staging")) if n]
        terms = [f"no window dequantize or staging: {' '.join(gone)} [measured]"] if gone else []
        if str(ctx.codes) == "packed":
            grow, gterms = ctx.int8_growth(live)
            d += grow
            terms += gterms
        if row["phase"] in PASS_NAMES and geo is not None:
            whole = 2 * geo.capacity_tokens * geo.token_bytes
            d += whole
            terms.append(f"+{fmt_bytes(whole)} whole-buffer dequantization of one layer (K,V x {geo.capacity_tokens} "
                         f"tokens x {geo.token_bytes} B) [byte model, meta.json]")
            scr_max = ctx.category_max("kv_scratch")
            if scr_max:
                # Staged encodes one chunk per layer (the written prefix for position-dependent
                # methods); the study re-encodes the whole buffer, its scratch scaling with tokens.
                pos_dep = ctx.facts.position_dependent
                factor = 1.0 if pos_dep else geo.capacity_tokens / geo.chunk_tokens
                scr = int(round(scr_max * factor))
                d += scr
                how = "the written prefix" if pos_dep else f"one chunk, x {geo.capacity_tokens}/{geo.chunk_tokens} tokens"
                terms.append(f"+{fmt_bytes(scr)} re-quantization scratch of the whole buffer (largest kv_scratch of this "
                             f"trace {fmt_bytes(scr_max)}, for {how}) [allocation table x byte model]")
        return d, terms, live

    def free_cache(row, live):
        if row["phase"] != "decode":
            return 0, [], live
        freed = live["category"].isin(CACHE_CATEGORIES) & (live["phase"] != "decode")
        b = int(live.loc[freed, "bytes"].sum())
        return -b, ([f"decode without the KV cache and text K/V: -{fmt_bytes(b)} [measured]"] if b else []), live[~freed]

    def both(*fns):
        def fn(row, live):  # apply in order, each on what the previous ones left live
            d, terms = 0, []
            for f in fns:
                x, t, live = f(row, live)
                d, terms = d + x, terms + t
            return d, terms, live
        return fn

    scenarios: list[tuple[str, Callable, bool, str | None]] = []
    quantized = not ctx.lossless and ctx.method is not None
    if quantized and str(ctx.codes) in STORAGE_BITS:
        scenarios.append((f"codes bit-packed instead of {ctx.codes} ({ctx.integration})", packed, False,
                          trace_command(meta, codes="packed") if ctx.integration == "staged" else None))
    if quantized and str(ctx.codes) == "int16":
        scenarios.append(("codes int8 instead of int16", int8, False, trace_command(meta, codes="int8")))
    if quantized and ctx.integration == "study":
        scenarios.append(("staged integration (packed codes)", staged, True, trace_command(meta, integration="staged")))
    if quantized and ctx.integration == "staged":
        scenarios.append(("study integration (int8 codes)", study, True, trace_command(meta, integration="study", codes="int8")))
    if has_decode and not rollout.get("free_cache_before_decode"):
        scenarios.append(("cache freed before decode", free_cache, False, trace_command(meta, free_cache_before_decode=True)))
        if quantized and ctx.integration == "study":
            scenarios.append(("staged integration + cache freed before decode", both(free_cache, staged), True,
                              trace_command(meta, integration="staged", free_cache_before_decode=True)))

    out = []
    for name, fn, estimate, command in scenarios:
        best: tuple[int, str, list[str]] | None = None
        for _, row in phases.iterrows():
            d, terms, _ = fn(row, lives[row["phase"]])
            value = int(row["peak_bytes"]) + d
            if best is None or value > best[0]:
                best = (value, str(row["phase"]), [f"{row['phase']} phase peak {fmt_bytes(int(row['peak_bytes']))} [measured]", *terms])
        if best is not None:
            out.append(Projection(name, best[0], best[0] - peak, best[1], best[2], estimate, command))
    return out
