"""The KV cache seam: one `LayerKVCache` per layer, called by the model's self-attention.

The cache owns *when* a method is asked to encode/decode and *what tensor* it is given: that is
the integration of DESIGN section 8.

  study   the published hook: before each self-attention call the layer's whole buffer is
          decoded, the new K/V written into it, attention run on the window, and the whole
          buffer encoded again, on all five passes of a chunk; codes one per int8 (or int16).
  staged  codes bit-packed; the current chunk stays full precision in a staging buffer during
          its denoising steps and is encoded once, on the refresh pass; a read decodes only the
          attended window of one layer, freed right after attention.

Lossless methods (bf16) keep one buffer written in place under either integration.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn.functional as F

from methods.base import EncodedKV, KVCall, KVMethod, Marks
from tracers import stage, tag, tag_tensor
from tracers.vocabulary import ATTENTION, DEQUANTIZE_BUFFER, KV_READ, KV_WRITE, layer_buffer_name

INTEGRATIONS: tuple[str, ...] = ("study", "staged")


class TracerMarks(Marks):
    """Marks that forward a method's inner steps to kvprof's tracers."""

    def stage(self, name: str, fine: bool = False) -> ContextManager[None]:
        return stage(name, fine=fine)

    def category(self, category: str) -> ContextManager[None]:
        return tag(category)


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes shared by every layer's cache, in tokens."""

    batch: int
    heads: int
    head_dim: int
    tokens_per_frame: int
    capacity_frames: int  # frames the buffer holds (all frames, or the rolling window)
    attn_window_frames: int  # self-attention reads at most this many frames
    sink_frames: int = 0  # frames pinned at the start of a rolling buffer
    rolling: bool = False

    @property
    def capacity(self) -> int:
        return self.capacity_frames * self.tokens_per_frame


@dataclass
class _Segment:
    """A run of encoded tokens held by the staged integration (buffer slots [start, end))."""

    start: int
    end: int
    state: EncodedKV


class LayerKVCache:
    """K/V of one layer. `attend(q, k, v, call)` writes this call's K/V and returns attention output."""

    def __init__(
        self,
        layer: int,
        num_layers: int,
        method: KVMethod,
        integration: str,
        geometry: CacheGeometry,
        dtype: torch.dtype,
        device: torch.device,
    ):
        if integration not in INTEGRATIONS:
            raise ValueError(f"unknown integration {integration!r}; choose one of {', '.join(INTEGRATIONS)}")
        self.layer, self.num_layers = layer, num_layers
        self.method, self.integration, self.geo = method, integration, geometry
        self.dtype, self.device = dtype, device
        self.written = 0  # tokens holding real data (prefix of the buffer)
        self._chunk_start: dict[int, int] = {}  # chunk -> first slot of its tokens
        self.buffer_k: torch.Tensor | None = None  # lossless buffer, or study's whole-buffer state
        self.buffer_v: torch.Tensor | None = None
        self.state: EncodedKV | None = None  # study: the encoded whole buffer
        self.segments: list[_Segment] = []  # staged: encoded chunks (or one prefix state)
        self.stage_k: torch.Tensor | None = None  # staged / refresh_only working copy
        self.stage_v: torch.Tensor | None = None
        shape = (geometry.batch, geometry.capacity, geometry.heads, geometry.head_dim)
        with tag("kv_fp" if method.lossless else "kv_scratch"):
            if method.lossless or integration == "study":
                zeros_k = torch.zeros(shape, dtype=dtype, device=device)
                zeros_v = torch.zeros(shape, dtype=dtype, device=device)
        if method.lossless:
            self.buffer_k, self.buffer_v = zeros_k, zeros_v
            self._name(self.buffer_k, "kv_fp", "k")
            self._name(self.buffer_v, "kv_fp", "v")
        elif integration == "study":
            # The study's buffer starts as zeros and is encoded whole from the first call on.
            with stage("kv_init"):
                self.state = self._encode(zeros_k, zeros_v, self._init_call())
            del zeros_k, zeros_v

    # ------------------------------------------------------------------ helpers
    def _name(self, t: torch.Tensor, category: str, name: str) -> None:
        tag_tensor(t, category, layer_buffer_name(self.layer, name))

    def _encode(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> EncodedKV:
        with tag("kv_scratch"):
            state = self.method.encode(k, v, call)
        # Decoding reads the state as it was encoded (plans depend on the written prefix then).
        state.extra["encoded_call"] = call
        for name, t in state.tensors.items():
            self._name(t, state.categories[name], name)
        return state

    def _decode(self, state: EncodedKV, call: KVCall, start: int | None = None, end: int | None = None):
        call = state.extra.get("encoded_call", call)
        with stage(DEQUANTIZE_BUFFER) if start is None else contextlib.nullcontext(), tag("kv_dequant"):
            if start is None:
                return self.method.decode(state, call)
            return self.method.decode_range(state, call, start, end)

    def _init_call(self) -> KVCall:
        return KVCall(self.layer, self.num_layers, -1, "init", None, 0, 0, 0, self.geo.capacity, self.geo.tokens_per_frame)

    def _slots(self, call, n_tokens: int) -> tuple[int, int]:
        """Buffer slots of this call's tokens; rolls the buffer on a new chunk that does not fit."""
        if call.chunk not in self._chunk_start:
            start = self.written
            if start + n_tokens > self.geo.capacity:
                if not self.geo.rolling:
                    raise RuntimeError(
                        f"layer {self.layer}: chunk {call.chunk} needs slots up to {start + n_tokens} "
                        f"but the cache holds {self.geo.capacity} tokens"
                    )
                with stage("evict"):
                    self._evict(start + n_tokens - self.geo.capacity)
                start = self.written
            self._chunk_start = {call.chunk: start}
            self.written = start + n_tokens
        start = self._chunk_start[call.chunk]
        return start, start + n_tokens

    def _evict(self, n: int) -> None:
        """Drop the `n` oldest tokens after the sink frames, shifting the rest left (Self-Forcing's roll)."""
        sink = self.geo.sink_frames * self.geo.tokens_per_frame
        keep_from = sink + n
        if self.buffer_k is not None:
            for buf in (self.buffer_k, self.buffer_v):
                buf[:, sink : self.written - n].copy_(buf[:, keep_from : self.written].clone())
        if self.state is not None:
            # Study: decode the whole buffer, shift, encode again with the written prefix it now has
            # (policies such as FlowCache plans and recent windows read `written`).
            call = dataclasses.replace(self._init_call(), written=self.written - n)
            k, v = self._decode(self.state, call)
            k[:, sink : self.written - n] = k[:, keep_from : self.written].clone()
            v[:, sink : self.written - n] = v[:, keep_from : self.written].clone()
            self.state = self._encode(k, v, call)
            del k, v
        if self.segments:
            kept = []
            for seg in self.segments:
                if seg.end <= sink:
                    kept.append(seg)
                elif seg.start >= keep_from:
                    kept.append(_Segment(seg.start - n, seg.end - n, seg.state))
                elif seg.start < keep_from:
                    continue  # chunks are evicted whole: rolling windows are chunk multiples
            self.segments = kept
        self.written -= n

    def _window(self, end: int) -> tuple[int, int]:
        """First slot attention reads (the sink frames are read separately when rolling)."""
        window = self.geo.attn_window_frames * self.geo.tokens_per_frame
        sink = self.geo.sink_frames * self.geo.tokens_per_frame if self.geo.rolling else 0
        return max(sink, end - window), sink

    def kv_call(self, call, start: int, end: int) -> KVCall:
        """The method-facing description of this call."""
        return KVCall(
            call.layer, call.num_layers, call.chunk, call.pass_name, call.step, start, end, self.written,
            self.geo.capacity, self.geo.tokens_per_frame,
        )

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[B, L, H, D] in and out; bidirectional within the chunk, earlier chunks are all context."""
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    @staticmethod
    def _window_kv(k: torch.Tensor, v: torch.Tensor, lo: int, end: int, sink: int):
        if sink and lo > sink:
            return torch.cat([k[:, :sink], k[:, lo:end]], 1), torch.cat([v[:, :sink], v[:, lo:end]], 1)
        return k[:, (0 if sink else lo):end], v[:, (0 if sink else lo):end]

    # ------------------------------------------------------------------ the seam
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call) -> torch.Tensor:
        """Store this call's K/V (`[B, L, H, D]`), read what attention needs, run attention."""
        start, end = self._slots(call, k.shape[1])
        kvc = self.kv_call(call, start, end)
        if self.method.lossless:
            return self._attend_lossless(q, k, v, start, end)
        if self.integration == "study":
            return self._attend_study(q, k, v, kvc)
        return self._attend_staged(q, k, v, kvc)

    def _attend_lossless(self, q, k, v, start: int, end: int) -> torch.Tensor:
        with stage(KV_WRITE):
            self.buffer_k[:, start:end].copy_(k)
            self.buffer_v[:, start:end].copy_(v)
        with stage(KV_READ):
            lo, sink = self._window(end)
            kw, vw = self._window_kv(self.buffer_k, self.buffer_v, lo, end, sink)
        with stage(ATTENTION):
            out = self._sdpa(q, kw, vw)
        return out

    def _attend_study(self, q, k, v, kvc: KVCall) -> torch.Tensor:
        refresh_only = self.method.cadence == "refresh_only"
        with stage(KV_READ):
            if refresh_only and self.stage_k is not None:
                full_k, full_v = self.stage_k, self.stage_v
            else:
                full_k, full_v = self._decode(self.state, kvc)
                if refresh_only and not kvc.is_refresh:
                    # The study kept this working copy alive across the chunk's denoising steps.
                    self.stage_k, self.stage_v = full_k, full_v
                    self._name(full_k, "kv_fp", "k_work")
                    self._name(full_v, "kv_fp", "v_work")
            full_k[:, kvc.write_start : kvc.write_end] = k
            full_v[:, kvc.write_start : kvc.write_end] = v
            lo, sink = self._window(kvc.write_end)
            kw, vw = self._window_kv(full_k, full_v, lo, kvc.write_end, sink)
        with stage(ATTENTION):
            out = self._sdpa(q, kw, vw)
        del kw, vw
        if refresh_only and not kvc.is_refresh:
            return out
        with stage(KV_WRITE):
            old = self.state
            self.state = None
            del old  # the study replaced the codes: the old ones are gone before the new exist
            self.state = self._encode(full_k, full_v, kvc)
        self.stage_k = self.stage_v = None
        del full_k, full_v
        return out

    def _attend_staged(self, q, k, v, kvc: KVCall) -> torch.Tensor:
        with stage(KV_WRITE):
            if self.stage_k is None:
                with tag("kv_fp"):
                    self.stage_k, self.stage_v = k.clone(), v.clone()
                self._name(self.stage_k, "kv_fp", "k_staging")
                self._name(self.stage_v, "kv_fp", "v_staging")
            else:
                self.stage_k.copy_(k)
                self.stage_v.copy_(v)
        with stage(KV_READ):
            lo, sink = self._window(kvc.write_end)
            parts_k, parts_v = self._read_segments(kvc, lo, kvc.write_start, sink)
            with tag("kv_dequant"):
                kw = torch.cat(parts_k + [self.stage_k], 1) if parts_k else self.stage_k
                vw = torch.cat(parts_v + [self.stage_v], 1) if parts_v else self.stage_v
            del parts_k, parts_v
        with stage(ATTENTION):
            out = self._sdpa(q, kw, vw)
        del kw, vw  # the window's dequantized copy is freed right after attention
        if kvc.is_refresh:
            with stage(KV_WRITE):
                self._commit_staged(kvc)
        return out

    def _read_segments(self, kvc: KVCall, lo: int, hi: int, sink: int):
        """Decode the encoded tokens attention reads: sink [0, sink) and [lo, hi)."""
        ranges = [(0, sink), (lo, hi)] if sink and lo > sink else [(0 if sink else lo, hi)]
        parts_k, parts_v = [], []
        for seg in self.segments:
            for a, b in ranges:
                s, e = max(a, seg.start), min(b, seg.end)
                if s < e:
                    with stage("dequantize_window"):
                        pk, pv = self._decode(seg.state, kvc, s - seg.start, e - seg.start)
                    parts_k.append(pk)
                    parts_v.append(pv)
        return parts_k, parts_v

    def _commit_staged(self, kvc: KVCall) -> None:
        """Encode the staged chunk once (refresh pass) and drop the staging buffer."""
        if self.method.position_dependent and self.segments:
            # Policies that look across chunks see the whole written prefix, one layer at a time.
            prefix = self.segments[0]
            pk, pv = self._decode(prefix.state, kvc)
            with tag("kv_scratch"):
                all_k = torch.cat([pk, self.stage_k], 1)
                all_v = torch.cat([pv, self.stage_v], 1)
            del pk, pv
            self.segments = []
            self.segments = [_Segment(0, kvc.write_end, self._encode(all_k, all_v, kvc))]
            del all_k, all_v
        else:
            self.segments.append(_Segment(kvc.write_start, kvc.write_end, self._encode(self.stage_k, self.stage_v, kvc)))
        self.stage_k = self.stage_v = None

    # ------------------------------------------------------------------ accounting
    def states(self) -> list[EncodedKV]:
        """Every encoded state this layer holds now."""
        if self.state is not None:
            return [self.state]
        return [s.state for s in self.segments]

    def byte_counts(self) -> tuple[int, int, int]:
        """(logical, stored, resident) bytes of this layer's cache now (METHODS.md).

        Logical counts the represented tokens at the model's element size (BF16 on the GPU
        config), so that the uncompressed method has logical = stored = resident on any config.
        """
        if self.method.lossless:
            n = sum(t.numel() * t.element_size() for t in (self.buffer_k, self.buffer_v))
            return n, n, n
        elem = self.dtype.itemsize  # not a tensor: counting bytes must not allocate (it ran outside stages)
        logical = stored = resident = 0
        for st in self.states():
            logical += 2 * st.num_tokens * st.heads * st.head_dim * elem
            stored += st.stored_bytes()
            resident += st.resident_bytes()
        for t in (self.stage_k, self.stage_v):
            if t is not None:
                n = t.numel() * t.element_size()
                logical, stored, resident = logical + n, stored + n, resident + n
        return logical, stored, resident
