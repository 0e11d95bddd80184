"""The causes of a peak, named from the buffers live at it: retained or whole-buffer dequantized
K/V, codes stored wider than their bits, duplicate (residual) codes, scales, full-precision
windows, quantization scratch, a VAE decode over a live cache, an out-of-memory failure."""
from __future__ import annotations

import pandas as pd

from kvprof.diagnose.context import TraceContext
from kvprof.diagnose.bytemodel import STORAGE_BITS
from kvprof.diagnose.model import BufferGroup, Cause
from kvprof.read.phases import CACHE_CATEGORIES
from kvprof.units import fmt_bytes
from tracers.vocabulary import DEQUANTIZE_BUFFER

__all__ = ["FP_WINDOW_KINDS", "groups", "detect_causes"]

FP_WINDOW_KINDS = (  # substring of a kv_fp buffer name -> what it is
    ("recent", "BF16 recent window"),
    ("staging", "full-precision staging of the current chunk"),
    ("work", "full-precision working copy kept across the denoising steps (refresh_only)"),
    ("pooled", "pooled summary tokens"),
)


def groups(live: pd.DataFrame) -> list[BufferGroup]:
    """Live allocations grouped by category, buffer, stage of origin and retention, largest first."""
    if live.empty:
        return []
    g = live.groupby(["category", "buffer", "kind_path", "retained"], dropna=False).agg(
        count=("bytes", "size"), bytes=("bytes", "sum"), layers=("layer", "nunique"))
    out = [BufferGroup(str(c), str(b), str(s), int(r["count"]), int(r["bytes"]), int(r["layers"]), bool(ret))
           for (c, b, s, ret), r in g.iterrows()]
    return sorted(out, key=lambda x: -x.bytes)


def detect_causes(ctx: TraceContext, live: pd.DataFrame, peak_phase: str, phases: pd.DataFrame) -> list[Cause]:
    """The causes among the buffers live at the peak, each with the buffer groups that show it."""
    causes: list[Cause] = []
    geo = ctx.geo
    full_buf = geo.capacity_tokens * geo.token_bytes if geo else None

    deq = live[live["category"] == "kv_dequant"]
    if not deq.empty:
        whole = deq["kind_path"].str.contains(DEQUANTIZE_BUFFER, regex=False)
        if full_buf:
            whole |= deq["bytes"] >= full_buf
        retained = deq[deq["retained"]]
        if not retained.empty:
            b = int(retained["bytes"].sum())
            causes.append(Cause(
                "retained_dequant", "retained dequantized K/V", b,
                f"{len(retained)} dequantized buffers made in "
                f"{', '.join(sorted(set(retained['kind_path'])))} outlived the layer call that made them and were "
                f"still live at the peak", "allocation table, span table", b, groups(retained)))
        fresh = deq[~deq["retained"]]
        fw = fresh[whole[~deq["retained"]]]
        if not fw.empty:
            b = int(fw["bytes"].sum())
            size = f" (whole buffer = {geo.capacity_tokens} tokens x {geo.token_bytes} B = {fmt_bytes(full_buf)} per K or V)" if geo else ""
            causes.append(Cause(
                "full_buffer_dequant", "full-buffer dequantization", b,
                f"{len(fw)} whole-buffer reconstructions of the layer's K/V live at the peak{size}; the study "
                "integration dequantizes the whole buffer on every call and keeps it through the re-quantization",
                "allocation table, meta.json config", None, groups(fw)))
        fwin = fresh[~whole[~deq["retained"]]]
        if not fwin.empty:
            b = int(fwin["bytes"].sum())
            causes.append(Cause(
                "window_dequant", "dequantized attention window", b,
                f"{len(fwin)} dequantized window tensors for the attention call in flight at the peak",
                "allocation table", None, groups(fwin)))

    codes = live[live["category"] == "kv_codes"]
    if not codes.empty and not ctx.lossless:
        width = STORAGE_BITS.get(str(ctx.codes))
        if width is not None:
            b = int(codes["bytes"].sum())
            excess, terms, fallback = ctx.packed_excess(live)
            src = "allocation table, meta.json codes, " + ("kv table" if fallback else "method facts bits")
            detail = (f"codes are stored one per {ctx.codes} ({width} bits) although they hold fewer bits: "
                      + "; ".join(terms))
            if width == 16:
                detail += f"; as int8 they would take {fmt_bytes(b // 2)}"
            causes.append(Cause("wide_codes", f"codes stored as {ctx.codes}", b, detail, src, excess or None,
                                groups(codes)))
        # Two code tensors for the same K (or V) of a layer: residual quantization.
        dup = codes[codes["layer"].notna()].copy()
        dup["side"] = dup["buffer"].str.split("_").str[0]
        names = dup.groupby(["layer", "side"])["buffer"].nunique()
        if (names > 1).any():
            extra = dup[dup["buffer"].str.contains("res", regex=False)]
            if extra.empty:  # no residual naming: everything past the largest tensor of each pair
                extra = dup[dup.groupby(["layer", "side"])["bytes"].rank(method="first", ascending=False) > 1]
            b = int(extra["bytes"].sum())
            pairs = sorted(set(dup.groupby("side")["buffer"].apply(lambda s: " + ".join(sorted(set(s)))).tolist()))
            causes.append(Cause(
                "duplicate_codes", "two code tensors per K/V", b,
                f"each layer keeps several code tensors for one K or V ({'; '.join(pairs)}); the second ones hold "
                f"{fmt_bytes(b)} at the peak", "allocation table", None, groups(extra)))

    meta_b = live[live["category"] == "kv_meta"]
    if not meta_b.empty and not ctx.lossless:
        b = int(meta_b["bytes"].sum())
        names = ", ".join(sorted(set(meta_b["buffer"])))
        causes.append(Cause("metadata", "quantization metadata", b,
                            f"scales, zero points, outliers and plans live at the peak ({names})",
                            "allocation table", None, groups(meta_b)))

    fp = live[live["category"] == "kv_fp"]
    if not fp.empty and not ctx.lossless:
        for key, title in FP_WINDOW_KINDS:
            part = fp[fp["buffer"].str.contains(key, regex=False)]
            if part.empty:
                continue
            b = int(part["bytes"].sum())
            causes.append(Cause("fp_window", title, b,
                                f"full-precision K/V held next to the codes: {', '.join(sorted(set(part['buffer'])))}",
                                "allocation table", None, groups(part)))
            fp = fp.drop(part.index)
        if not fp.empty:
            b = int(fp["bytes"].sum())
            causes.append(Cause("fp_window", "full-precision K/V", b,
                                f"full-precision K/V live next to the codes: {', '.join(sorted(set(fp['buffer'])))}",
                                "allocation table", None, groups(fp)))

    scratch = live[live["category"] == "kv_scratch"]
    if not scratch.empty:
        b = int(scratch["bytes"].sum())
        ret = int(scratch.loc[scratch["retained"], "bytes"].sum())
        more = f"; {fmt_bytes(ret)} of it outlived its layer call" if ret else ""
        causes.append(Cause("scratch", "quantization scratch", b,
                            f"temporaries of quantize/dequantize live at the peak, made in "
                            f"{', '.join(sorted(set(scratch['kind_path'])))}{more}",
                            "allocation table", ret or None, groups(scratch)))

    if peak_phase == "decode":
        cache = live[live["category"].isin(CACHE_CATEGORIES) & (live["phase"] != "decode")]
        if not cache.empty and not (ctx.meta.get("rollout") or {}).get("free_cache_before_decode"):
            b = int(cache["bytes"].sum())
            others = phases[phases["phase"] != "decode"]["peak_bytes"]
            dec = phases[phases["phase"] == "decode"]["peak_bytes"]
            saving = None
            if not dec.empty:
                after = max(int(dec.iloc[0]) - b, int(others.max()) if not others.empty else 0)
                saving = int(dec.iloc[0]) - after
            by_cat = cache.groupby("category")["bytes"].sum().sort_values(ascending=False)
            parts = ", ".join(f"{c} {fmt_bytes(int(v))}" for c, v in by_cat.items())
            causes.append(Cause(
                "decode_over_cache", "VAE decode over a live KV cache", b,
                f"the peak falls in the VAE decode while the KV cache and text K/V are still allocated ({parts}); "
                "freeing them first (--free-cache-before-decode) lowers the peak to the larger of the decode without "
                "them and the other phases' peaks", "allocation table, span table", saving, groups(cache)))

    if ctx.trace.status == "oom":
        oom = ctx.meta.get("oom") if isinstance(ctx.meta.get("oom"), dict) else {}
        req = oom.get("requested_bytes")
        at_failure = oom.get("live_bytes")  # live when the failing request came (kvprof.api), else the peak's
        held = int(at_failure) if isinstance(at_failure, int) else int(live["bytes"].sum())
        slack = oom.get("reserved_unallocated_bytes")
        if isinstance(oom.get("allocated_bytes_at_failure"), int):
            held = int(oom["allocated_bytes_at_failure"])
        need = f"; it asked for {fmt_bytes(int(req))} more with {fmt_bytes(held)} live" if isinstance(req, int) else ""
        if need and isinstance(slack, int):
            # A GPU budget caps reserved memory: live blocks plus the segments' unused space.
            need += (f" and {fmt_bytes(slack)} reserved by the caching allocator but unused (fragmentation), so "
                     f"{fmt_bytes(int(req) + held + slack)} of reserved memory was needed at that instant")
        elif need:
            need += f", so {fmt_bytes(int(req) + held)} was needed at that instant"
        if isinstance(oom.get("budget_bytes"), int):
            need += f", against the memory budget of {fmt_bytes(oom['budget_bytes'])} (--budget)"
        causes.append(Cause("oom", "out of memory", int(live["bytes"].sum()),
                            f"the run ran out of memory in {oom.get('stage') or '?'}{need}; the peak shown is the "
                            "highest live total the trace reached before the failure", "meta.json (oom), allocation table"))
    order = {"oom": 0}
    return sorted(causes, key=lambda c: (order.get(c.kind, 1), -c.bytes))
