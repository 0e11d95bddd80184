"""Quantization building blocks of METHODS.md, as plain vectorized torch functions.

Token groups, symmetric / asymmetric b-bit quantizers with float16 metadata, code storage
(one code per int8 or int16, or bit-packed into uint8), the Walsh-Hadamard rotation, outlier
side tables and token gather / scatter. Nothing here loops over tokens, groups, heads or
channels, and nothing here syncs with the host except the two outlier tables, whose size
depends on the data (METHODS.md's QAQ and TPTQ need that host decision).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GROUP_SIZE = 16  # tokens per quantization group (METHODS.md "Groups")
SCALE_FLOOR = 1e-8  # scales are floored here before the float16 cast
FP16_MAX = torch.finfo(torch.float16).max
# 1e-8 is below float16's smallest subnormal (2^-24) and would round to 0; a stored scale of 0
# would make codes divide by zero, so the stored float16 scale is floored at 2^-24 as well.
FP16_TINY = 2.0**-24
META_DTYPE = torch.float16  # scales, zero points, outlier values
INDEX_DTYPE = torch.int32  # flat indices of outliers


# ---------------------------------------------------------------- groups
def num_groups(num_tokens: int, group_size: int = GROUP_SIZE) -> int:
    """Groups that cover `num_tokens` tokens (the last one zero-padded)."""
    return -(-num_tokens // group_size)


def group_tokens(x: torch.Tensor, group_size: int = GROUP_SIZE, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, L, H, D] -> [B, ceil(L/G), G, H, D], the token axis zero-padded; optionally cast.

    At most one copy is made (padding and cast together); when neither is needed the result
    is a view of `x`, so callers must not modify it in place.
    """
    b, n, h, d = x.shape
    dtype = dtype or x.dtype
    padded = num_groups(n, group_size) * group_size
    if padded != n:
        out = x.new_zeros((b, padded, h, d), dtype=dtype)
        out[:, :n].copy_(x)
    else:
        out = x.to(dtype)
    return out.reshape(b, padded // group_size, group_size, h, d)


def ungroup_tokens(xg: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, n, G, H, D] -> [B, num_tokens, H, D] (a view that drops the padding)."""
    b, n, g, h, d = xg.shape
    return xg.reshape(b, n * g, h, d)[:, :num_tokens]


# ---------------------------------------------------------------- scales
def fp16_scale(raw: torch.Tensor) -> torch.Tensor:
    """A float32 scale floored at 1e-8, as the float16 value that is stored and used."""
    return raw.clamp(SCALE_FLOOR, FP16_MAX).to(META_DTYPE).clamp_min(FP16_TINY)


def sym_qmax(bits: int) -> int:
    """Largest symmetric code: 2^(b-1) - 1 (codes lie in [-qmax - 1, qmax])."""
    return 2 ** (bits - 1) - 1


def asym_qmax(bits: int) -> int:
    """Largest asymmetric code: 2^b - 1 (codes lie in [0, 2^b - 1])."""
    return 2**bits - 1


def sym_scale(x: torch.Tensor, bits: int, dim: int | tuple[int, ...]) -> torch.Tensor:
    """float16 scale max|x| / qmax over `dim` (kept), without an |x| copy of the tensor."""
    amax = torch.maximum(x.amax(dim=dim, keepdim=True), x.amin(dim=dim, keepdim=True).neg_())
    return fp16_scale(amax.div_(sym_qmax(bits)))


def sym_codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(x / scale), -qmax - 1, qmax) as float32, using the stored float16 scale."""
    qmax = sym_qmax(bits)
    return (x / scale.float()).round_().clamp_(-qmax - 1, qmax)


def sym_quantize(x: torch.Tensor, bits: int, dim: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric b-bit: (float32 codes, float16 scale) with stats reduced over `dim`."""
    scale = sym_scale(x, bits, dim)
    return sym_codes(x, scale, bits), scale


def asym_params(x: torch.Tensor, bits: int, dim: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 (scale, zero point) of the asymmetric b-bit quantizer over `dim` (kept)."""
    qmax = asym_qmax(bits)
    lo = x.amin(dim=dim, keepdim=True)
    scale = fp16_scale((x.amax(dim=dim, keepdim=True) - lo).div_(qmax))
    zero = (lo.neg_() / scale.float()).round_().clamp_(0, qmax)
    return scale, zero.to(META_DTYPE)


def asym_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(x / scale) + zero, 0, 2^b - 1) as float32."""
    return (x / scale.float()).round_().add_(zero.float()).clamp_(0, asym_qmax(bits))


def asym_quantize(
    x: torch.Tensor, bits: int, dim: int | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric b-bit: (float32 codes, float16 scale, float16 zero) over `dim`."""
    scale, zero = asym_params(x, bits, dim)
    return asym_codes(x, scale, zero, bits), scale, zero


# ---------------------------------------------------------------- code storage
def codes_per_byte(bits: int) -> int:
    """Codes one packed byte holds: 2 at 4-bit, 4 at 2-bit (one for other widths)."""
    return 8 // bits if bits in (1, 2, 4) else 1


def code_offset(bits: int, signed: bool) -> int:
    """What is added to a code to store it as an unsigned offset (packed storage)."""
    return 2 ** (bits - 1) if signed else 0


def check_storage(bits: int, storage: str) -> None:
    """Refuse a width the storage cannot hold (asymmetric codes need b <= 7 in int8)."""
    limit = {"int8": 7, "int16": 15, "packed": 8}[storage]
    if not 1 <= bits <= limit:
        raise ValueError(f"{bits}-bit codes do not fit {storage} storage (at most {limit} bits)")


def store_codes(q: torch.Tensor, bits: int, signed: bool, storage: str) -> tuple[torch.Tensor, int]:
    """Integer-valued float codes -> (stored tensor, codes per element).

    int8 / int16 hold one (signed) code per element; `packed` holds unsigned offsets, several
    per uint8 along the last axis. `q` may be modified in place.
    """
    check_storage(bits, storage)
    if storage == "int8":
        return q.to(torch.int8), 1
    if storage == "int16":
        return q.to(torch.int16), 1
    offset = code_offset(bits, signed)
    u = (q.add_(offset) if offset else q).to(torch.uint8)
    return pack_codes(u, bits), codes_per_byte(bits)


def load_codes(t: torch.Tensor, bits: int, signed: bool, storage: str, last_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Stored codes -> their integer values in `dtype` (a new tensor)."""
    if storage != "packed":
        return t.to(dtype)
    u = unpack_codes(t, bits, last_dim).to(dtype)
    offset = code_offset(bits, signed)
    return u.sub_(offset) if offset else u


def packed_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """Shape of the packed tensor holding codes of `shape` (last axis packed)."""
    k = codes_per_byte(bits)
    return (*shape[:-1], -(-shape[-1] // k))


def pack_codes(u: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., n] -> uint8 [..., ceil(n/k)] with k = 8 / bits codes per byte.

    Code j of a byte sits at bits [j*b, (j+1)*b). The loop runs over the k slots of a byte.
    """
    k = codes_per_byte(bits)
    if k == 1:
        return u
    n = u.shape[-1]
    if n % k:
        u = F.pad(u, (0, k - n % k))
    u = u.reshape(*u.shape[:-1], -1, k)
    out = u[..., 0].clone()
    for j in range(1, k):
        out.bitwise_or_(u[..., j] << (bits * j))
    return out


def unpack_codes(p: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """uint8 [..., m] packed -> uint8 codes [..., n] (inverse of `pack_codes`)."""
    k = codes_per_byte(bits)
    if k == 1:
        return p
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=p.device)
    u = (p.unsqueeze(-1) >> shifts).bitwise_and_(2**bits - 1)
    return u.reshape(*p.shape[:-1], -1)[..., :n]


def alloc_codes(shape: tuple[int, ...], bits: int, storage: str, device: torch.device) -> tuple[torch.Tensor, int]:
    """An empty code tensor for codes of `shape` (filled slice by slice), and codes per element."""
    check_storage(bits, storage)
    if storage == "packed":
        return torch.empty(packed_shape(shape, bits), dtype=torch.uint8, device=device), codes_per_byte(bits)
    return torch.empty(shape, dtype=torch.int8 if storage == "int8" else torch.int16, device=device), 1


# ---------------------------------------------------------------- Hadamard rotation
def hadamard_matrix(d: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The normalized Walsh-Hadamard matrix [d, d] (entries +-1/sqrt(d), its own inverse).

    Built on the device per call from H[i, j] = (-1)^popcount(i & j) / sqrt(d): a few tiny
    kernels, no host transfer, and no hidden long-lived tensor that the cache's resident bytes
    would not account for (it is kv_scratch, freed with the call).
    """
    if d < 1 or d & (d - 1):
        raise ValueError(f"the Hadamard rotation needs a power-of-two head_dim, got {d}")
    # popcount(i & j) = bits(i) . bits(j): one small matmul instead of a kernel chain per bit (the
    # GPU host profile of quarot_kv_int4 showed the per-bit chain as its largest host cost).
    idx = torch.arange(d, device=device)
    bits = ((idx[:, None] >> torch.arange(d.bit_length() - 1, device=device)) & 1).to(torch.float32)
    parity = torch.remainder(bits @ bits.T, 2)
    return (1 - 2 * parity).to(dtype) / math.sqrt(d)


def rotate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Multiply the last (head_dim) axis by `h`: one matmul."""
    return torch.matmul(x, h)


# ---------------------------------------------------------------- outliers
def outlier_table(x: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every value with |x| > threshold: (int32 flat index, float16 value). One host sync."""
    flat = x.reshape(-1)
    idx = torch.nonzero(flat.abs() > threshold).squeeze(1)  # data-dependent size: syncs
    return idx.to(INDEX_DTYPE), flat[idx].to(META_DTYPE)


def top_outlier_table(x: torch.Tensor, threshold: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `cap` values with |x| > threshold, largest first. One host sync (the count)."""
    flat = x.reshape(-1)
    mag = flat.abs()
    count = min(cap, int((mag > threshold).sum().item()))
    idx = mag.topk(count, sorted=True).indices
    return idx.to(INDEX_DTYPE), flat[idx].to(META_DTYPE)


def put_flat(buf: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, num_tokens: int, first: int, count: int) -> None:
    """Write values at flat indices of a [B, num_tokens, H, D] tensor into `buf`, whose rows
    [0, count) hold tokens [first, first + count) and whose last row is a spare.

    Indices of other tokens land in the spare row, so no host sync filters them.
    `buf` is contiguous [B, rows, H, D] with rows > count.
    """
    b, rows, h, d = buf.shape
    hd = h * d
    i = idx.long()
    bi, rem = i.div(num_tokens * hd, rounding_mode="floor"), i.remainder(num_tokens * hd)
    t, c = rem.div(hd, rounding_mode="floor"), rem.remainder(hd)
    inside = (t >= first) & (t < first + count)
    t = torch.where(inside, t - first, rows - 1)
    buf.view(b, rows, hd).index_put_((bi, t, c), val.to(buf.dtype))


# ---------------------------------------------------------------- token gather / scatter
def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[:, idx] for an int64 token index list (a new tensor)."""
    return x.index_select(1, idx)


def scatter_tokens(out: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
    """out[:, idx] = values, in place."""
    out.index_copy_(1, idx, values)
