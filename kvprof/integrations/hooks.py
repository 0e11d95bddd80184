"""Stages through forward hooks: mark `layer[i]` (or any name) around modules you do not own."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch

from tracers import context

__all__ = ["StageHooks", "instrument_module", "find_blocks"]


class StageHooks:
    """Forward hooks that run each watched module's forward inside a stage (and a category).

    The stage opens in a forward pre-hook and closes in a forward hook that runs even when the
    forward raises (`always_call`), so an error never leaves a stage open. With no trace open the
    hooks cost a lookup. `remove()` takes them off.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._open: list[contextlib.ExitStack] = []

    def add(self, module: torch.nn.Module, enter: Callable[[], Sequence[ContextManager[Any]]]) -> None:
        """Run `module.forward` inside the context managers `enter()` returns (when a trace is open)."""

        def pre(mod: torch.nn.Module, args: Any) -> None:
            stack = contextlib.ExitStack()
            if context.active_session() is not None:
                for cm in enter():
                    stack.enter_context(cm)
            self._open.append(stack)

        def post(mod: torch.nn.Module, args: Any, out: Any) -> None:
            if self._open:  # empty when the hooks were added while this module was running
                self._open.pop().close()

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def remove(self) -> None:
        """Take every hook off the modules."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of blocks: its longest `nn.ModuleList` (Wan's `blocks`, a GPT's `h`)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} holds no nn.ModuleList of blocks; pass blocks=[...] to instrument_module")
    return max(lists, key=len)


def instrument_module(model: torch.nn.Module, blocks: Iterable[torch.nn.Module] | None = None, *,
                      name: str = "layer", category: str | None = None) -> StageHooks:
    """Give every block of `model` its stage `name[i]` in any trace that is open when it runs.

    `blocks`: the modules to mark, in order (default: the longest `nn.ModuleList` in `model`).
    `category`: also tag the blocks' allocations (e.g. "activations"). Returns the hooks
    (`.remove()` takes them off)."""
    hooks = StageHooks()
    for i, block in enumerate(find_blocks(model) if blocks is None else blocks):
        def enter(i: int = i) -> list[ContextManager[Any]]:
            cms: list[ContextManager[Any]] = [context.stage(name, i)]
            if category is not None:
                cms.append(context.tag(category))
            return cms

        hooks.add(block, enter)
    return hooks
