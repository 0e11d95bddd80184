"""What the cause detectors and the projections share for one trace: its meta, method facts,
geometry, the live set at an order key (with layer, buffer, phase and retention) and the
code-storage arithmetic (what bit-packing or int8 codes would change)."""
from __future__ import annotations

import math

import pandas as pd

from kvprof.diagnose.bytemodel import STORAGE_BITS, Geometry, MethodFacts, code_bits, split_name
from kvprof.read.analysis import live_at
from kvprof.read.phases import OUTSIDE, retained_mask, span_phases
from kvprof.read.trace import Trace
from kvprof.units import fmt_bytes
from tracers.categories import KV_CATEGORIES
from tracers.vocabulary import LAYER

__all__ = ["TraceContext"]


class TraceContext:
    """What the detectors and projections share for one trace."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.meta = trace.meta
        self.method = trace.meta.get("method")
        self.facts = MethodFacts.from_meta(trace.meta)
        # a method that does not say (your own plain cache, API traces) is lossless when it stores no codes
        self.lossless = self.facts.lossless if self.facts.lossless is not None else "kv_codes" not in trace.views.categories
        self.codes = trace.meta.get("codes")
        self.integration = trace.meta.get("integration")
        self.geo = Geometry.from_meta(trace.meta)
        spans = trace.spans
        self._layer_of = self._layer_ancestors(spans)
        sp = span_phases(trace)
        self.span_phase = pd.Series(sp["phase"].to_numpy(), index=sp["id"].to_numpy())  # span id -> phase

    def phase_of(self, allocs: pd.DataFrame) -> pd.Series:
        """The phase each allocation row was made in (kvprof.read.phases.allocation_phases, for these rows)."""
        return allocs["span_id"].map(self.span_phase).fillna(OUTSIDE).astype(str)

    def category_max(self, category: str) -> int:
        """The largest live bytes of `category` over the whole trace (0 when it never held any)."""
        return int(self.trace.views.category_max.get(category, 0))

    @staticmethod
    def _layer_ancestors(spans: pd.DataFrame) -> dict[int, int]:
        """span id -> id of its nearest `layer` ancestor-or-self (absent when none)."""
        out: dict[int, int] = {}
        for sid, par, name in zip(spans["id"].tolist(), spans["parent"].tolist(), spans["name"].astype(object).tolist()):
            if str(name) == LAYER:
                out[sid] = sid
            elif par in out:
                out[sid] = out[par]
        return out

    def live(self, q: int) -> pd.DataFrame:
        """Allocations live at q with layer/buffer names, phase and retention columns."""
        live = live_at(self.trace, q).copy()
        split = [split_name(n) for n in live["name"]]
        live["layer"] = [s[0] for s in split]
        live["buffer"] = [s[1] for s in split]
        # Weights, latents, decode temporaries...: one name each; grouped by category instead.
        plain = live["layer"].isna() & ~live["category"].isin(KV_CATEGORIES)
        live.loc[plain, "buffer"] = "(" + live.loc[plain, "category"].astype(str) + ")"
        live["phase"] = self.phase_of(live)
        live["retained"] = retained_mask(self.trace, live, q, owner=self._layer_of)  # outlived its layer call
        return live

    def packed_excess(self, live: pd.DataFrame) -> tuple[int, list[str], bool]:
        """Bytes the live code tensors would shrink by if bit-packed instead of one code per
        int8/int16; (excess, terms, used_kv_table). Bits per code come from `code_bits`; code
        tensors of mixed width use the packed/resident fraction of the KV table instead."""
        width = STORAGE_BITS.get(str(self.codes))
        known, unknown = self._code_widths(live)
        if not (known or unknown) or width is None:
            return 0, [], False
        excess, terms = 0, []
        for buf, b, bits in known:
            new = math.ceil(b * bits / width)
            excess += b - new
            terms.append(f"{buf} {fmt_bytes(b)} at {width} bits/code -> {fmt_bytes(new)} at {bits} bits")
        used_kv = False
        if unknown:
            frac = self.kv_packed_fraction()
            if frac is not None:
                new = int(round(unknown * frac))
                excess += unknown - new
                terms.append(f"mixed-width codes {fmt_bytes(unknown)} x packed/resident fraction {frac:.3f} = {fmt_bytes(new)}")
                used_kv = True
            else:
                terms.append(f"{fmt_bytes(unknown)} of codes with unknown bit width left as they are")
        return excess, terms, used_kv

    def int8_growth(self, live: pd.DataFrame) -> tuple[int, list[str]]:
        """Bytes bit-packed code tensors would grow by if stored one code per int8 (bits from
        `code_bits`; tensors of unknown width are left out and said so)."""
        known, unknown = self._code_widths(live)
        grow, terms = 0, []
        for buf, b, bits in known:
            new = b * 8 // bits
            grow += new - b
            terms.append(f"+{fmt_bytes(new - b)} {buf} one per int8 ({fmt_bytes(b)} packed at {bits} bits -> {fmt_bytes(new)}) [method facts bits]")
        if unknown:
            terms.append(f"{fmt_bytes(unknown)} of mixed-width codes left packed (bit width per tensor unknown)")
        return grow, terms

    def _code_widths(self, live: pd.DataFrame) -> tuple[list[tuple[str, int, int]], int]:
        """Live code tensors by buffer as (buffer, bytes, bits of one code), and the bytes of those
        whose width the method facts do not give (mixed widths)."""
        known, unknown = [], 0
        for buf, b in live[live["category"] == "kv_codes"].groupby("buffer")["bytes"].sum().items():
            bits = code_bits(self.facts, str(buf))
            if bits is None:
                unknown += int(b)
            else:
                known.append((str(buf), int(b), bits))
        return known, unknown

    def kv_packed_fraction(self) -> float | None:
        """Packed code bytes / resident code bytes at the last KV record: (codes - (resident -
        stored)) / codes, codes being the kv_codes bytes live when the record was written."""
        kv = self.trace.kv
        if kv.empty:
            return None
        last = kv.iloc[-1]
        codes = self.trace.views.kv_codes_at_last_kv  # None: the record precedes every event
        if codes is None or codes <= 0:
            return None
        excess = int(last.resident_bytes) - int(last.stored_bytes)
        return min(1.0, max(0.0, (codes - excess) / codes))
