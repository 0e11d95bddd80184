"""Quality alongside memory (DESIGN section 9): divergence from the bf16 rollout of the same seed.

  capture    QualityCapture hooks a rollout; RolloutOutputs and their `quality/` folder
  reference  find or run the bf16 reference
  metrics    relative L2 drift, PSNR, SSIM, flicker (torch, on the device)
  lpips      LPIPS (AlexNet) without torchvision
  vbench     VBench in its own environment, as a subprocess
  compute    compute_quality / quality_after_rollout -> Summary.quality
  tables     Summary.quality as tables for reports (no torch)

Names are loaded lazily so that readers of summaries (TUI, reports) do not import torch.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "QualityCapture": "kvprof.quality.capture",
    "RolloutOutputs": "kvprof.quality.capture",
    "RolloutRecipe": "kvprof.quality.capture",
    "save_outputs": "kvprof.quality.capture",
    "load_outputs": "kvprof.quality.capture",
    "QualityOptions": "kvprof.quality.compute",
    "compute_quality": "kvprof.quality.compute",
    "quality_after_rollout": "kvprof.quality.compute",
    "get_reference": "kvprof.quality.reference",
    "find_reference": "kvprof.quality.reference",
    "quality_table": "kvprof.quality.tables",
    "drift_table": "kvprof.quality.tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kvprof.quality' has no attribute {name!r}")
