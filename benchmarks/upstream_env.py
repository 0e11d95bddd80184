"""Make the upstream Self-Forcing repository importable for a random-weights trace.

    import upstream_env; upstream_env.setup(SELF_FORCING_DIR)

Puts the repository first on sys.path and, for each third-party module its imports need that is
not installed, registers a stand-in: a module whose names are inert placeholders. Only modules that
the text-to-video inference path never calls may be missing (tokenizer, text-encoder, config and
distributed helpers: transformers, ftfy, regex, xfuser, easydict, torchvision); einops is needed (the
VAE decode uses it) and diffusers too. Each stand-in is printed to stderr when made.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

# Never flash_attn: upstream picks its attention kernel by whether that import succeeds.
OPTIONAL = ("easydict", "ftfy", "regex", "transformers", "xfuser", "omegaconf", "torchvision", "tqdm")


class _Placeholder:
    """Stands for any name of a missing module: constructible, callable, subscriptable, inert."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __getitem__(self, key):
        return self

    def __class_getitem__(cls, key):
        return cls


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots, self.used = set(roots), []

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in self.roots:
            return None
        if any(f.find_spec(name, path, target) for f in sys.meta_path if f is not self and hasattr(f, "find_spec")):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = lambda n: (_ for _ in ()).throw(AttributeError(n)) if n.startswith("__") else _Placeholder
        self.used.append(spec.name)
        print(f"upstream_env: stand-in for {spec.name} (not installed)", file=sys.stderr)
        return mod

    def exec_module(self, module):
        pass


def setup(repo: str) -> list[str]:
    """Upstream on sys.path, stand-ins for its missing optional modules; the stand-ins' names (after import)."""
    sys.path.insert(0, repo)
    import diffusers.models.modeling_utils  # noqa: F401  (before any stand-in: it probes what is installed)

    roots = [m for m in OPTIONAL if importlib.util.find_spec(m) is None]
    finder = _StandIn(roots)
    sys.meta_path.append(finder)
    _attention_without_flash_attn()
    return finder.used


def _attention_without_flash_attn() -> None:
    """Upstream's cross-attention calls `flash_attention` directly, which asserts that the
    flash_attn package is installed; without it, point that call at upstream's own SDPA path
    (`wan.modules.attention.attention`, what its self-attention already falls back to)."""
    attention = importlib.import_module("wan.modules.attention")
    if attention.FLASH_ATTN_2_AVAILABLE or getattr(attention, "FLASH_ATTN_3_AVAILABLE", False):
        return
    model = importlib.import_module("wan.modules.model")
    model.flash_attention = attention.attention
    print("upstream_env: no flash_attn: cross-attention through upstream's SDPA fallback", file=sys.stderr)
