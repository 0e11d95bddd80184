"""Plugin KV-cache methods: your own `KVMethod` subclass, used without editing kvprof.

Two ways in, both giving an ordinary registered method:
- a spec `module.path:ClassName` or `path/to/file.py:ClassName` (`kvprof trace --method SPEC`);
- the entry-point group `kvprof.methods` of an installed package, one entry per method
  (`[project.entry-points."kvprof.methods"] my_int4 = "my_pkg.quant:MyInt4"`), found by name.

A plugin that cannot be used (import error, missing attribute, not a KVMethod, abstract, a name
that a built-in method has) raises `PluginError` naming the plugin, never kvprof's internals.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from methods.base import _REGISTRY, KVMethod, MethodError

ENTRY_POINT_GROUP = "kvprof.methods"
_REQUIRED = ("name", "family", "key_bits", "value_bits", "policy", "summary")


class PluginError(MethodError):
    """A plugin method that cannot be loaded; the message names the plugin and what to fix."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin method and where it came from (for `kvprof methods`)."""

    cls: type[KVMethod]
    origin: str  # "module my_pkg.quant:MyInt4", "file ./mine.py:MyInt4", "entry point my_int4 (pkg 1.0)"


_LOADED: dict[str, Plugin] = {}  # method name -> plugin
_BUILTINS: frozenset[str] | None = None
_ENTRY_POINTS_DONE = False


def is_spec(name: str) -> bool:
    """True for `module:Class` / `file.py:Class` method specs (built-in names have no colon)."""
    return ":" in name


def _builtins() -> frozenset[str]:
    global _BUILTINS
    if _BUILTINS is None:
        _BUILTINS = frozenset(n for n, c in _REGISTRY.items() if c.__module__.startswith("methods."))
    return _BUILTINS


def _import(target: str, who: str):
    """The module of `target` (a dotted name, or a .py file path)."""
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target)
            if not path.is_file():
                raise PluginError(f"plugin {who}: no such file {target}; give a .py file or an importable module")
            name = f"kvprof_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise PluginError(f"plugin {who}: cannot load {target} as Python")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: modules of the current folder (examples.my_method) import
        return importlib.import_module(target)
    except PluginError:
        raise
    except BaseException as exc:  # noqa: BLE001 (a plugin's import may raise anything, SystemExit included)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PluginError(f"plugin {who}: importing {target} failed: {type(exc).__name__}: {exc}") from None


def check_plugin_class(cls: object, who: str) -> type[KVMethod]:
    """`cls` as a usable method class, or PluginError saying what is wrong with it."""
    if not (inspect.isclass(cls) and issubclass(cls, KVMethod)):
        raise PluginError(f"plugin {who}: {cls!r} is not a KVMethod subclass; derive from methods.KVMethod "
                          "(or methods.partition.UniformMethod)")
    missing = [a for a in _REQUIRED if not isinstance(getattr(cls, a, None), str)]
    if missing:
        raise PluginError(f"plugin {who}: class {cls.__name__} lacks the string attribute(s) {', '.join(missing)}")
    if inspect.isabstract(cls):
        left = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise PluginError(f"plugin {who}: class {cls.__name__} does not implement {left}")
    if cls.name in _builtins() and _REGISTRY.get(cls.name) is not cls:
        raise PluginError(f"plugin {who}: method name {cls.name!r} is a built-in method's; rename the class's `name`")
    clash = _LOADED.get(cls.name)
    if clash is not None and clash.cls is not cls:
        raise PluginError(f"plugin {who}: method name {cls.name!r} is also the name of plugin {clash.origin}")
    return cls


def _register(cls: type[KVMethod], origin: str) -> type[KVMethod]:
    _REGISTRY.setdefault(cls.name, cls)
    _LOADED[cls.name] = Plugin(cls, origin)
    return cls


def load_spec(spec: str) -> type[KVMethod]:
    """Load and register the method `module:Class` or `file.py:Class`; PluginError when it cannot be used."""
    _builtins()
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise PluginError(f"plugin {spec!r}: write it as module.path:ClassName or path/to/file.py:ClassName")
    module = _import(target, repr(spec))
    if not hasattr(module, attr):
        raise PluginError(f"plugin {spec!r}: {target} has no attribute {attr!r}")
    cls = check_plugin_class(getattr(module, attr), repr(spec))
    kind = "file" if target.endswith(".py") else "module"
    return _register(cls, f"{kind} {spec}")


def load_entry_points() -> list[Plugin]:
    """Load every method of the `kvprof.methods` entry-point group (once); PluginError on a bad one."""
    global _ENTRY_POINTS_DONE
    _builtins()
    if not _ENTRY_POINTS_DONE:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            where = f"entry point {ep.name!r} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
            try:
                obj = ep.load()
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise PluginError(f"plugin {where}: loading failed: {type(exc).__name__}: {exc}; "
                                  "fix or uninstall the package that declares it") from None
            _register(check_plugin_class(obj, where), where)
        _ENTRY_POINTS_DONE = True
    return plugins()


def plugins() -> list[Plugin]:
    """Plugin methods loaded so far, in load order."""
    return list(_LOADED.values())


def find(name: str) -> type[KVMethod] | None:
    """The plugin method `name`: a spec, or the name of an entry-point method; None when no plugin has it."""
    if is_spec(name):
        return load_spec(name)
    load_entry_points()
    found = _LOADED.get(name)
    return found.cls if found else None


def origin_of(name: str) -> str:
    """Where method `name` comes from: "built-in", or the plugin's origin."""
    found = _LOADED.get(name)
    return found.origin if found else "built-in"
