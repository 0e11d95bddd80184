"""kvprof tracers: stages, category tags, allocation tracking, timing, device sampling, trace I/O."""
from tracers.categories import CATEGORIES, KV_CATEGORIES, Category
from tracers.context import active_session, register, stage, tag, tag_tensor

__all__ = [
    "CATEGORIES",
    "KV_CATEGORIES",
    "Category",
    "active_session",
    "register",
    "stage",
    "tag",
    "tag_tensor",
]
