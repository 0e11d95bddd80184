"""A GPU memory budget (`--budget` on CUDA): the caching allocator capped for the traced run.

The cap is torch's per-process memory fraction, so a real OOM happens at the budget; while no
memory is reserved yet and the user has not configured the allocator, expandable segments are
turned on for the run so that the budget measures the method's bytes and not the allocator's
segment history. Both are undone when the run ends.
"""
from __future__ import annotations

import os

import torch

from tracers.alloc_layout import ALLOC_CONF_VARS

__all__ = ["BudgetCap", "set_allocator_settings", "EXPANDABLE_BY_KVPROF"]

EXPANDABLE_BY_KVPROF = "expandable_segments:True (set by kvprof for --budget)"  # meta.allocator_settings


def set_allocator_settings(settings: str) -> None:
    """Change the caching allocator's settings at runtime (torch >= 2.9 names it per accelerator)."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is not None:
        setter(settings)
    else:
        torch.cuda.memory._set_allocator_settings(settings)


class BudgetCap:
    """Cap `device` at `budget_bytes` with `apply()`, undo it with `release()` (safe to call twice)."""

    def __init__(self, device: torch.device, budget_bytes: int) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.fraction: float | None = None
        self.expandable = False  # kvprof turned expandable segments on (and turns them off again)

    def apply(self) -> None:
        """Set the memory fraction, and expandable segments where kvprof may (see the module docstring)."""
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.fraction = min(1.0, self.budget_bytes / total)
        torch.cuda.set_per_process_memory_fraction(self.fraction, self.device)
        # The cap holds reserved memory: live blocks plus what fragmentation leaves unused in fixed
        # segments; expandable segments keep that slack to whole 2 MiB pages.
        if any(os.environ.get(v) for v in ALLOC_CONF_VARS) or torch.cuda.memory_reserved(self.device) != 0:
            return
        set_allocator_settings("expandable_segments:True")
        self.expandable = True

    def release(self) -> None:
        """Give the whole device back and the allocator settings as they were."""
        if self.fraction is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            self.fraction = None
        if self.expandable:
            set_allocator_settings("expandable_segments:False")
            self.expandable = False
