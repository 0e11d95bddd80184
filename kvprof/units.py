"""Units: parse '24GiB' and print GiB as GiB (never 'GB'); milliseconds with "-" for none."""
from __future__ import annotations

import re

from kvprof.errors import UsageError

_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str, what: str = "size") -> int:
    """'24GiB', '512MiB', '1.5GiB', '1000000' -> bytes; UsageError naming `what` otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"{what}: cannot read size {text!r}; write e.g. '24GiB', '512MiB' or a byte count")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"{what}: size must be positive, got {text!r}; write e.g. '24GiB' or '512MiB'")
    if value < 1:  # would round to 0 B and be echoed as '0'
        raise UsageError(f"{what}: {text!r} is less than one byte (sizes count whole bytes; a bare number is bytes); "
                         "write e.g. '24GiB' or '512MiB'")
    return int(value)


def fmt_bytes(n: int | float | None) -> str:
    """Human size in binary units: '11.25 GiB', '512.0 MiB', '640 B'."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def fmt_ms(v: float | None) -> str:
    """Milliseconds with one decimal; "-" where there is no value (e.g. no device time on CPU)."""
    if v is None or v != v:  # None or NaN
        return "-"
    return f"{float(v):.1f}"
