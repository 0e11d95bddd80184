"""Summary.quality (summary.json's quality) as tables, for reports and the TUI (plain pandas; no torch)."""
from __future__ import annotations

from typing import Any

import pandas as pd

HEADLINE = ("latent_drift", "attention_drift", "psnr_db", "psnr_db_mean", "ssim", "lpips", "flicker", "flicker_reference")


def _cell(value: Any) -> tuple[Any, str]:
    """(value, note): a number or 'inf'/'nan' string as value; a missing metric's reason as note."""
    if isinstance(value, dict) and "missing" in value:
        return None, f"missing: {value['missing']}"
    return value, ""


def quality_table(quality: dict[str, Any] | None) -> pd.DataFrame:
    """One row per headline metric and VBench dimension: metric, value, note."""
    rows = []
    q = quality or {}
    if "missing" in q and len(q) == 1:
        return pd.DataFrame([{"metric": "quality", "value": None, "note": f"missing: {q['missing']}"}],
                            columns=["metric", "value", "note"])
    for name in HEADLINE:
        if name in q:
            value, note = _cell(q[name])
            rows.append({"metric": name, "value": value, "note": note})
    for dim, v in (q.get("vbench") or {}).items():
        value, note = _cell(v)
        rows.append({"metric": f"vbench {dim}", "value": value, "note": note})
    ref = q.get("reference") or {}
    if ref:
        rows.append({"metric": "reference", "value": ref.get("kind"), "note": ref.get("path") or ""})
    return pd.DataFrame(rows, columns=["metric", "value", "note"])


def drift_table(quality: dict[str, Any] | None) -> pd.DataFrame:
    """The drift curves, long: chunk, series ('latents' or 'attention layer N'), rel_l2."""
    drift = (quality or {}).get("drift") or {}
    rows = []
    for c, v in enumerate(drift.get("latents") or []):
        rows.append({"chunk": c, "series": "latents", "rel_l2": v})
    for layer, values in (drift.get("attention") or {}).items():
        if isinstance(values, list):
            rows += [{"chunk": c, "series": f"attention {layer}", "rel_l2": v} for c, v in enumerate(values) if v is not None]
    df = pd.DataFrame(rows, columns=["chunk", "series", "rel_l2"])
    df["rel_l2"] = pd.to_numeric(df["rel_l2"], errors="coerce")
    return df
