"""What `tag_tensor`, `register` and `watch` walk: the tensors of a tensor, a module (parameters,
buffers and plain tensor attributes) or a dict/list/tuple of them, and the watch that re-tags a
container's tensors when your code replaces them."""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch

from tracers import context

__all__ = ["tensors_of", "module_tensor_attributes", "Watch", "watch", "watch_in"]


def tensors_of(obj: Any, name: str | None, top: bool = True) -> Iterator[tuple[torch.Tensor, str | None]]:
    """(tensor, name) for a tensor, a module's parameters, buffers and tensor attributes, or a
    dict/list/tuple of them. Inside a container, values that are not tensors (upstream's
    `"is_init": False`, indices kept as ints) are skipped; a top-level non-tensor is an error."""
    if isinstance(obj, torch.Tensor):
        yield obj, name
    elif isinstance(obj, torch.nn.Module):
        for key, t in [*obj.named_parameters(), *obj.named_buffers(), *module_tensor_attributes(obj)]:
            yield t, f"{name}.{key}" if name else key
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from tensors_of(value, f"{name}.{key}" if name else str(key), False)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors_of(value, f"{name}[{i}]" if name else f"[{i}]", False)
    elif top:
        raise TypeError(f"cannot tag a {type(obj).__name__}: pass a tensor, a torch module, or a dict/list/tuple of tensors")


def module_tensor_attributes(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Tensors held as plain attributes of `module` or its submodules (neither parameters nor
    buffers: a RoPE table such as Wan's `freqs`), with their dotted names."""
    out = []
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                out.append((f"{prefix}.{key}" if prefix else key, value))
    return out


class Watch:
    """Keeps the tensors a container holds tagged while code swaps them.

    A tag belongs to a tensor object; code such as Self-Forcing's cross-attention replaces the
    tensors of its cache dicts (`cache["k"] = k` on first use). `check()` walks the container and
    tags every tensor it did not tag before; the session calls it at the end of every stage, so a
    replacement made inside a stage is tagged before the stage closes. Tags last a storage's life,
    so a tensor tagged late is still attributed from its allocation on.
    """

    def __init__(self, obj: Any, category: str, name: str | None, tag: Callable[[torch.Tensor, str, str | None], None]):
        list(tensors_of(obj, name))  # a bad top-level object fails here, not at the first stage end
        self.obj, self.category, self.name, self._tag = obj, category, name, tag
        self._seen: dict[str | None, Callable[[], Any]] = {}

    def check(self) -> None:
        """Tag the tensors that are new in the container since the last check."""
        for t, n in tensors_of(self.obj, self.name):
            ref = self._seen.get(n)
            if ref is not None and ref() is t:
                continue
            self._tag(t, self.category, n)
            self._seen[n] = weakref.ref(t)  # weak: watching must not keep a replaced tensor alive


def watch(obj: Any, category: str, name: str | None = None) -> None:
    """Like `tag_tensor`, and again at the end of every stage for tensors that code put into the
    container since (a cache dict whose "k" is replaced); nothing when no trace is open."""
    session = context.active_session()
    if session is not None:
        watch_in(session, obj, category, name)


def watch_in(session: Any, obj: Any, category: str, name: str | None) -> None:
    """`watch` in the trace session `session`."""
    w = Watch(obj, category, name, session.tag_tensor)
    w.check()
    session.stage_end_hooks.append(w.check)
