"""Process-wide tracing context: the stage stack and category tags that tracers read.

Code that is traced (the rollout, the KV cache, user code) only ever calls `stage`, `tag`,
`tag_tensor` and `register`; when no session is active they cost one attribute lookup.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager

from tracers.scopes import NO_SCOPE  # untraced code pays one global read per `with`

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tracers.session import TraceSession

_active: "TraceSession | None" = None


def active_session() -> "TraceSession | None":
    """The session that is recording now, or None."""
    return _active


def _set_active(session: "TraceSession | None") -> None:
    global _active
    if session is not None and _active is not None and _active is not session:
        raise RuntimeError("another kvprof trace session is already active in this process")
    _active = session


def stage(name: str, index: int | None = None, fine: bool = False) -> "ContextManager[None]":
    """Run the body as stage `name` (path element `name[index]` when an index is given). `fine`: a step
    repeated inside one step (a loop over slices), recorded only when the session records fine stages."""
    session = _active
    return NO_SCOPE if session is None else session.stage(name, index, fine)


def tag(category: str) -> "ContextManager[None]":
    """Allocations made in the body belong to `category` unless an inner tag says otherwise."""
    session = _active
    return NO_SCOPE if session is None else session.tag(category)


def tag_tensor(tensor: "torch.Tensor", category: str, name: str | None = None) -> None:
    """Declare what an existing tensor's storage is, for its whole life (and give it a name)."""
    session = _active
    if session is not None:
        session.tag_tensor(tensor, category, name)


def register(tensor: "torch.Tensor", category: str, name: str | None = None) -> None:
    """Account for a tensor that was allocated before tracing began (weights, inputs)."""
    session = _active
    if session is not None:
        session.register(tensor, category, name)
