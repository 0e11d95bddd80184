"""Per-tensor quantization schemes: how one `[B, n, H, D]` tensor becomes named state tensors.

A scheme (RTN, KIVI, QuaRot, residual, QAQ, full precision, pooled) encodes one tensor into a
`StateBuilder` under a name stem (`k`, `v_old`, ...) and decodes it back, optionally only the
tokens [start, end). Methods compose schemes over token sets (methods.partition).

Tensor names: `{stem}_codes`, `{stem}_scale`, `{stem}_zero`, `{stem}_res_codes`,
`{stem}_res_scale`, `{stem}_outlier_idx`, `{stem}_outlier_val`; full-precision and pooled
tokens are stored under the stem itself (`k_recent`, `k_pooled`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from methods.base import EncodedKV, Marks
from methods.quant import (
    GROUP_SIZE,
    alloc_codes,
    asym_codes,
    asym_params,
    check_storage,
    group_tokens,
    hadamard_matrix,
    load_codes,
    num_groups,
    outlier_table,
    put_flat,
    rotate,
    store_codes,
    sym_codes,
    sym_scale,
    top_outlier_table,
    ungroup_tokens,
)

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Codec:
    """What every scheme needs besides its tensor: code storage, marks, head_dim."""

    storage: str
    marks: Marks
    head_dim: int


class StateBuilder:
    """Collects named state tensors with their category, code width and codes per element."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.marks = codec.marks
        self.tensors: dict[str, torch.Tensor] = {}
        self.categories: dict[str, str] = {}
        self.bits: dict[str, int] = {}
        self.per_element: dict[str, int] = {}

    def add(self, name: str, t: torch.Tensor, category: str) -> None:
        if name in self.tensors:
            raise ValueError(f"state tensor {name!r} added twice")
        self.tensors[name] = t
        self.categories[name] = category

    def add_codes(self, name: str, q: torch.Tensor, bits: int, signed: bool) -> None:
        """Store float integer codes `q` (consumed) as `name` in the codec's storage."""
        with self.marks.category("kv_codes"):
            t, per = store_codes(q, bits, signed, self.codec.storage)
        self.add_code_tensor(name, t, bits, per)

    def add_code_tensor(self, name: str, t: torch.Tensor, bits: int, per_element: int) -> None:
        self.add(name, t, "kv_codes")
        self.bits[name] = bits
        self.per_element[name] = per_element

    def build(self, num_tokens: int, heads: int, head_dim: int, **extra: Any) -> EncodedKV:
        extra["codes_per_element"] = dict(self.per_element)
        return EncodedKV(self.tensors, self.categories, self.bits, num_tokens, heads, head_dim, extra)


def _dequant_buffer(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, marks: Marks, category: str
) -> torch.Tensor:
    with marks.category(category):
        return torch.empty(shape, dtype=dtype, device=device)


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when `a` may alias `b` (always assumed on the meta device)."""
    if a.device.type == "meta":
        return True
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _group_range(start: int, end: int) -> tuple[int, int]:
    """Groups [g0, g1) that cover tokens [start, end)."""
    return start // GROUP_SIZE, num_groups(end)


class Scheme(ABC):
    """Quantizes one tensor; `role` ("k" or "v") lets a scheme treat keys and values apart."""

    label: str
    fp32_dequant: bool = False  # dequantize through float32 (PRQ, QAQ, TPTQ's old tier)

    @abstractmethod
    def encode(self, x: torch.Tensor, role: str, sb: StateBuilder, stem: str) -> None:
        """Add the state of `x` ([B, n, H, D]) to `sb` under names starting with `stem`."""

    @abstractmethod
    def decode(
        self,
        t: Tensors,
        role: str,
        stem: str,
        codec: Codec,
        num_tokens: int,
        dtype: torch.dtype,
        category: str,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Tokens [start, end) of the stored tensor, [B, end - start, H, D] in `dtype`.

        The result is allocated under `category` (`kv_dequant` when it is what decode
        returns, `kv_scratch` when the caller scatters it further); it never aliases the state.
        """

    def __repr__(self) -> str:
        return self.label

    def _compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.fp32_dequant else dtype


class RTNScheme(Scheme):
    """Symmetric b-bit per-channel: one float16 scale per (group of 16 tokens, head, channel)."""

    def __init__(self, bits: int):
        self.bits = bits
        self.label = f"rtn{bits}"

    def quantize_grouped(self, xg: torch.Tensor, sb: StateBuilder, stem: str) -> None:
        """Quantize float32 grouped [B, n, G, H, D] (the QuaRot scheme reuses this)."""
        with sb.marks.category("kv_meta"):
            scale = sym_scale(xg, self.bits, dim=2)
        with sb.marks.category("kv_scratch"):
            q = sym_codes(xg, scale, self.bits)
        sb.add_codes(f"{stem}_codes", q, self.bits, signed=True)
        sb.add(f"{stem}_scale", scale, "kv_meta")

    def encode(self, x, role, sb, stem):
        check_storage(self.bits, sb.codec.storage)
        with sb.marks.stage("quantize"):
            with sb.marks.category("kv_scratch"):
                xg = group_tokens(x, dtype=torch.float32)
            self.quantize_grouped(xg, sb, stem)

    def dequant_grouped(self, t, stem, codec, g0, g1, dtype, category) -> torch.Tensor:
        """Groups [g0, g1) dequantized into a new [B, g1 - g0, G, H, D] tensor of `dtype`."""
        codes, scale = t[f"{stem}_codes"][:, g0:g1], t[f"{stem}_scale"][:, g0:g1]
        cd = self._compute_dtype(dtype)
        with codec.marks.category("kv_scratch"):
            c = load_codes(codes, self.bits, True, codec.storage, codec.head_dim, cd)
            s = scale.to(cd)
        out = _dequant_buffer(c.shape, dtype, c.device, codec.marks, category)
        torch.mul(c, s, out=out)
        return out

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        g0, g1 = _group_range(start, end)
        with codec.marks.stage("dequantize"):
            out = self.dequant_grouped(t, stem, codec, g0, g1, dtype, category)
        first = g0 * GROUP_SIZE
        return out.reshape(out.shape[0], -1, *out.shape[3:])[:, start - first : end - first]


class KIVIScheme(Scheme):
    """KIVI: asymmetric b-bit, keys per-channel (groups of 16 tokens), values per-token."""

    def __init__(self, bits: int):
        self.bits = bits
        self.label = f"kivi{bits}"

    def encode(self, x, role, sb, stem):
        check_storage(self.bits, sb.codec.storage)
        m = sb.marks
        with m.stage("quantize"):
            with m.category("kv_scratch"):
                xf = group_tokens(x, dtype=torch.float32) if role == "k" else x.float()
            self.quantize_float(xf, role, sb, stem)

    def quantize_float(self, xf: torch.Tensor, role: str, sb: StateBuilder, stem: str) -> None:
        """Keys: grouped float32 [B, n, G, H, D]; values: float32 [B, L, H, D]."""
        dim = 2 if role == "k" else (2, 3)
        with sb.marks.category("kv_meta"):
            scale, zero = asym_params(xf, self.bits, dim)
        with sb.marks.category("kv_scratch"):
            q = asym_codes(xf, scale, zero, self.bits)
        sb.add_codes(f"{stem}_codes", q, self.bits, signed=False)
        sb.add(f"{stem}_scale", scale, "kv_meta")
        sb.add(f"{stem}_zero", zero, "kv_meta")

    def dequant_into(self, t, role, stem, codec, lo, hi, out) -> None:
        """Dequantize groups (keys) or tokens (values) [lo, hi) into `out` (same shape)."""
        codes = t[f"{stem}_codes"][:, lo:hi]
        scale, zero = t[f"{stem}_scale"][:, lo:hi], t[f"{stem}_zero"][:, lo:hi]
        cd = self._compute_dtype(out.dtype)
        with codec.marks.category("kv_scratch"):
            c = load_codes(codes, self.bits, False, codec.storage, codec.head_dim, cd)
            c.sub_(zero.to(cd))
            s = scale.to(cd)
        torch.mul(c, s, out=out)

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        b, h, d = t[f"{stem}_codes"].shape[0], t[f"{stem}_codes"].shape[-2], codec.head_dim
        with codec.marks.stage("dequantize"):
            if role == "v":
                out = _dequant_buffer((b, end - start, h, d), dtype, t[f"{stem}_codes"].device, codec.marks, category)
                self.dequant_into(t, role, stem, codec, start, end, out)
                return out
            g0, g1 = _group_range(start, end)
            out = _dequant_buffer((b, g1 - g0, GROUP_SIZE, h, d), dtype, t[f"{stem}_codes"].device, codec.marks, category)
            self.dequant_into(t, role, stem, codec, g0, g1, out)
        first = g0 * GROUP_SIZE
        return out.reshape(b, -1, h, d)[:, start - first : end - first]


class QuaRotScheme(RTNScheme):
    """QuaRot: rotate head_dim by the normalized Hadamard matrix, then RTN; rotate back on read."""

    def __init__(self, bits: int):
        super().__init__(bits)
        self.label = f"quarot{bits}"

    @staticmethod
    def _matrix(d: int, device: torch.device, dtype: torch.dtype, marks: Marks) -> torch.Tensor:
        with marks.category("kv_scratch"):  # built per call on the device, freed with it
            return hadamard_matrix(d, device, dtype)

    def encode(self, x, role, sb, stem):
        check_storage(self.bits, sb.codec.storage)
        m = sb.marks
        with m.stage("rotate"), m.category("kv_scratch"):
            h = self._matrix(x.shape[-1], x.device, torch.float32, m)
            xg = rotate(group_tokens(x, dtype=torch.float32), h)
        with m.stage("quantize"):
            self.quantize_grouped(xg, sb, stem)

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        g0, g1 = _group_range(start, end)
        cd = self._compute_dtype(dtype)
        with codec.marks.stage("dequantize"):
            xr = self.dequant_grouped(t, stem, codec, g0, g1, cd, "kv_scratch")
        with codec.marks.stage("rotate"):
            h = self._matrix(codec.head_dim, xr.device, cd, codec.marks)
            with codec.marks.category(category if cd == dtype else "kv_scratch"):
                out = rotate(xr, h)
            del xr
            if cd != dtype:
                with codec.marks.category(category):
                    out = out.to(dtype)
        first = g0 * GROUP_SIZE
        return out.reshape(out.shape[0], -1, *out.shape[3:])[:, start - first : end - first]


class ResidualScheme(Scheme):
    """PRQ: symmetric per-channel b-bit base, the residual x - x^ again at r bits in the same
    groups; reconstruction is the float32 sum. Work runs in slices of `slice_groups` groups
    with float32 intermediates (None: one slice).

    With `outlier_sigma` set, keys also keep TPTQ's outlier table: values with |k| > sigma_mult
    * std(k), at most floor(outlier_fraction * numel), largest first, overwriting the
    reconstruction on read (not clamped before quantizing).
    """

    fp32_dequant = True

    def __init__(
        self,
        bits: int,
        residual_bits: int,
        slice_groups: int | None = None,
        outlier_sigma: float | None = None,
        outlier_fraction: float = 0.0,
    ):
        self.bits, self.residual_bits, self.slice_groups = bits, residual_bits, slice_groups
        self.outlier_sigma, self.outlier_fraction = outlier_sigma, outlier_fraction
        self.label = f"res{bits}+{residual_bits}" + ("+outliers" if outlier_sigma is not None else "")

    def _has_outliers(self, role: str) -> bool:
        return self.outlier_sigma is not None and role == "k"

    def encode(self, x, role, sb, stem):
        bb, rb, storage, m = self.bits, self.residual_bits, sb.codec.storage, sb.marks
        with m.stage("quantize"):
            with m.category("kv_scratch"):
                xg = group_tokens(x)  # input dtype; slices are cast to float32 one at a time
            b, ng, g, h, d = xg.shape
            with m.category("kv_codes"):
                codes, per = alloc_codes(xg.shape, bb, storage, x.device)
                res_codes, res_per = alloc_codes(xg.shape, rb, storage, x.device)
            with m.category("kv_meta"):
                scale = torch.empty((b, ng, 1, h, d), dtype=torch.float16, device=x.device)
                res_scale = torch.empty_like(scale)
            step = self.slice_groups or max(ng, 1)
            with m.category("kv_scratch"):  # once, not per slice: ~500k tags of 1-4 us at 42 frames (issue 15)
                for a in range(0, ng, step):  # slices of groups, as the study did
                    e = min(ng, a + step)
                    xs = xg[:, a:e].float()
                    s = sym_scale(xs, bb, dim=2)
                    q = sym_codes(xs, s, bb)
                    with m.stage("residual", fine=True):  # per slice: 260k of them at 42 frames
                        r = xs - q * s.float()
                        rs = sym_scale(r, rb, dim=2)
                        rq = sym_codes(r, rs, rb)
                    scale[:, a:e] = s
                    res_scale[:, a:e] = rs
                    codes[:, a:e] = store_codes(q, bb, True, storage)[0]
                    res_codes[:, a:e] = store_codes(rq, rb, True, storage)[0]
                    del xs, q, r, rq
        sb.add_code_tensor(f"{stem}_codes", codes, bb, per)
        sb.add(f"{stem}_scale", scale, "kv_meta")
        sb.add_code_tensor(f"{stem}_res_codes", res_codes, rb, res_per)
        sb.add(f"{stem}_res_scale", res_scale, "kv_meta")
        if self._has_outliers(role):
            with m.stage("outliers"):
                with m.category("kv_scratch"):
                    threshold = x.float().std() * self.outlier_sigma
                cap = int(self.outlier_fraction * x.numel())
                with m.category("kv_meta"):
                    idx, val = top_outlier_table(x, threshold, cap)
            sb.add(f"{stem}_outlier_idx", idx, "kv_meta")
            sb.add(f"{stem}_outlier_val", val, "kv_meta")

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        g0, g1 = _group_range(start, end)
        codes, scale = t[f"{stem}_codes"], t[f"{stem}_scale"]
        res_codes, res_scale = t[f"{stem}_res_codes"], t[f"{stem}_res_scale"]
        b, _, _, h, _ = scale.shape
        d = codec.head_dim
        rows = (g1 - g0) * GROUP_SIZE
        outliers = self._has_outliers(role)
        # One spare row takes outliers that fall outside [start, end) (see quant.put_flat).
        buf = _dequant_buffer((b, rows + outliers, h, d), dtype, codes.device, codec.marks, category)
        out = buf[:, :rows].view(b, g1 - g0, GROUP_SIZE, h, d)
        step = self.slice_groups or max(g1 - g0, 1)
        with codec.marks.stage("dequantize"), codec.marks.category("kv_scratch"):  # as encode's; copy_ allocates nothing
            for a in range(g0, g1, step):
                e = min(g1, a + step)
                x = load_codes(codes[:, a:e], self.bits, True, codec.storage, d, torch.float32)
                x.mul_(scale[:, a:e].float())
                rc = load_codes(res_codes[:, a:e], self.residual_bits, True, codec.storage, d, torch.float32)
                x.addcmul_(rc, res_scale[:, a:e].float())
                out[:, a - g0 : e - g0].copy_(x)
                del x, rc
        first = g0 * GROUP_SIZE
        if outliers:
            with codec.marks.stage("outliers"):
                put_flat(buf, t[f"{stem}_outlier_idx"], t[f"{stem}_outlier_val"], num_tokens, first, end - first)
        return buf[:, start - first : end - first]


class QAQScheme(KIVIScheme):
    """QAQ: values with |x| > sigma_mult * std(x) go to a side table (int32 flat index, float16
    value), the tensor is clamped to +-sigma_mult * std, then KIVI's asymmetric quantizer
    (keys per-channel, values per-token); read: dequantize in float32, scatter outliers back."""

    fp32_dequant = True

    def __init__(self, bits: int, sigma_mult: float):
        super().__init__(bits)
        self.sigma_mult = sigma_mult
        self.label = f"qaq{bits}"

    def encode(self, x, role, sb, stem):
        check_storage(self.bits, sb.codec.storage)
        m = sb.marks
        with m.stage("quantize"), m.category("kv_scratch"):
            # float32 copy the quantizer needs anyway; `flat` is its unpadded [B, L, H, D] view.
            xf = group_tokens(x, dtype=torch.float32) if role == "k" else x.float()
            flat = ungroup_tokens(xf, x.shape[1]) if role == "k" else xf
        with m.stage("outliers"):
            with m.category("kv_scratch"):
                threshold = flat.std() * self.sigma_mult
            with m.category("kv_meta"):
                idx, val = outlier_table(flat, threshold)  # one host sync: the table's size
        with m.stage("quantize"):
            with m.category("kv_scratch"):
                if _shares_storage(xf, x):
                    xf = xf.clamp(-threshold, threshold)
                else:
                    xf.clamp_(-threshold, threshold)  # padding zeros stay zeros
            self.quantize_float(xf, role, sb, stem)
        sb.add(f"{stem}_outlier_idx", idx, "kv_meta")
        sb.add(f"{stem}_outlier_val", val, "kv_meta")

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        codes = t[f"{stem}_codes"]
        b, h, d = codes.shape[0], t[f"{stem}_codes"].shape[-2], codec.head_dim
        if role == "v":
            lo, hi, first, rows = start, end, start, end - start
        else:
            lo, hi = _group_range(start, end)
            first, rows = lo * GROUP_SIZE, (hi - lo) * GROUP_SIZE
        # float32 buffer with one spare row for outliers outside [start, end) (quant.put_flat).
        buf_category = category if dtype == torch.float32 else "kv_scratch"
        buf = _dequant_buffer((b, rows + 1, h, d), torch.float32, codes.device, codec.marks, buf_category)
        with codec.marks.stage("dequantize"):
            view = buf[:, :rows]
            if role == "k":
                view = view.view(b, hi - lo, GROUP_SIZE, h, d)
            self.dequant_into(t, role, stem, codec, lo, hi, view)
        with codec.marks.stage("outliers"):
            put_flat(buf, t[f"{stem}_outlier_idx"], t[f"{stem}_outlier_val"], num_tokens, first, end - first)
        out = buf[:, start - first : end - first]
        if dtype != torch.float32:
            with codec.marks.category(category):
                out = out.to(dtype)
        return out


def owns_storage(x: torch.Tensor) -> bool:
    """True when x is the whole of its storage (`_is_view()` cannot tell under inference_mode, where
    the rollout runs: a slice of a layer's buffer passed for its own tensor and kept it all alive)."""
    return x.is_contiguous() and x.storage_offset() == 0 and x.untyped_storage().nbytes() == x.numel() * x.element_size()


class FullPrecisionScheme(Scheme):
    """Tokens kept as they are, in the input dtype (`kv_fp`): recent windows."""

    label = "fp"

    def encode(self, x, role, sb, stem):
        with sb.marks.category("kv_fp"):
            kept = x if owns_storage(x) else x.clone()  # never alias (and keep alive) the caller's buffer
        sb.add(stem, kept, "kv_fp")

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        with codec.marks.category(category):
            return t[stem][:, start:end].to(dtype, copy=True)


class PooledScheme(Scheme):
    """One token per chunk of `chunk_tokens` tokens: the float32 mean, stored in BF16 (`kv_fp`),
    broadcast over the chunk's positions on read (FlowCache soft prune)."""

    label = "pooled"
    stored_dtype = torch.bfloat16

    def __init__(self, chunk_tokens: int):
        self.chunk_tokens = chunk_tokens

    def encode(self, x, role, sb, stem):
        b, n, h, d = x.shape
        with sb.marks.stage("pool"):
            with sb.marks.category("kv_scratch"):
                mean = x.reshape(b, n // self.chunk_tokens, self.chunk_tokens, h, d).mean(2, dtype=torch.float32)
            with sb.marks.category("kv_fp"):
                pooled = mean.to(self.stored_dtype)
        sb.add(stem, pooled, "kv_fp")

    def decode(self, t, role, stem, codec, num_tokens, dtype, category, start=0, end=None):
        end = num_tokens if end is None else end
        pooled = t[stem]
        b, c, h, d = pooled.shape
        with codec.marks.stage("pool"), codec.marks.category(category):
            full = pooled.to(dtype)[:, :, None].expand(b, c, self.chunk_tokens, h, d).reshape(b, -1, h, d)
        return full[:, start:end]


def scheme_bits(scheme: Scheme) -> int:
    """The base code width of a quantizing scheme (16 for full precision / pooled)."""
    return getattr(scheme, "bits", 16)


__all__ = [
    "Codec",
    "FullPrecisionScheme",
    "KIVIScheme",
    "PooledScheme",
    "QAQScheme",
    "QuaRotScheme",
    "RTNScheme",
    "ResidualScheme",
    "Scheme",
    "StateBuilder",
    "scheme_bits",
]
