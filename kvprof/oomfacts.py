"""What an out-of-memory error says about the failing request: its size, the budget, the source."""
from __future__ import annotations

import re
from typing import Any

import torch

from kvprof.units import parse_size
from tracers.session import SimulatedOOM

_TRIED = re.compile(r"Tried to allocate ([0-9.]+ ?[KMGT]?i?B)")
# The caching allocator's own account at the failure: bytes in live blocks, and bytes its segments
# hold that no block uses (fragmentation); a GPU budget caps the sum (reserved memory).
_HELD = re.compile(r"Of the allocated memory ([\d.]+ ?[KMGT]?i?B) is allocated by PyTorch, and ([\d.]+ ?[KMGT]?i?B) is reserved")
# The CPU allocator's refusal (an impossible size, e.g. --frames 300000000): an out-of-memory outcome too.
CPU_REFUSED = re.compile(r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory): you tried to allocate (\d+) bytes")


def oom_facts(exc: BaseException, budget_bytes: int | None, meta: dict[str, Any]) -> dict[str, Any]:
    """What is known about the failing request: its size, the budget, where the numbers come from."""
    if isinstance(exc, SimulatedOOM):
        return {"source": "kvprof budget (tracked live bytes, simulated on CPU)", "requested_bytes": exc.requested,
                "budget_bytes": exc.budget, "tracker_live_bytes": exc.live}
    facts: dict[str, Any] = {"source": "torch.OutOfMemoryError", "budget_bytes": budget_bytes}
    held = _HELD.search(str(exc))
    if held:
        facts["allocated_bytes_at_failure"] = parse_size(held.group(1).replace(" ", ""), "OOM message")
        facts["reserved_unallocated_bytes"] = parse_size(held.group(2).replace(" ", ""), "OOM message")
    events = meta.get("allocator_oom_events") or []
    last = events[-1] if events and isinstance(events[-1], dict) else {}
    if last.get("size") is not None:
        facts.update(requested_bytes=int(last["size"]), source="CUDA caching allocator (oom event)")
        if last.get("device_free") is not None:
            facts["device_free_bytes"] = int(last["device_free"])
        return facts
    cpu = CPU_REFUSED.search(str(exc))
    if cpu:
        facts.update(requested_bytes=int(cpu.group(1)), source="CPU allocator (refused the request)")
        return facts
    m = _TRIED.search(str(exc))
    facts["requested_bytes"] = parse_size(m.group(1).replace(" ", ""), "OOM message") if m else None
    facts["requested_bytes_rounded"] = m is not None  # the message prints two decimals
    return facts


def as_oom(error: BaseException | None) -> BaseException | None:
    """The CPU allocator's refusal (a RuntimeError) as the torch.OutOfMemoryError it means: the host
    has not that much memory, an out-of-memory outcome rather than a failure. Other errors unchanged."""
    if isinstance(error, RuntimeError) and not isinstance(error, torch.OutOfMemoryError) and CPU_REFUSED.search(str(error)):
        return torch.OutOfMemoryError(str(error))
    return error
