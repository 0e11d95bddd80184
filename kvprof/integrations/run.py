"""`kvprof run [--instrument self-forcing] -- python SCRIPT ARGS`: your script, in this process,
under a trace (like `py-spy record --` or `nsys profile`).

The script runs through `runpy` with `sys.argv` = [SCRIPT, ARGS...] and its folder first on
`sys.path`, as `python SCRIPT ARGS` would run it, inside `kvprof.api.trace`; its own
`kvprof.api.stage` / `tag_tensor` calls act on that trace (it must not open another one).

`--instrument self-forcing`: every upstream-shaped pipeline the script builds is instrumented
(`kvprof.integrations.self_forcing.instrument`) the first time its `inference` runs. How: an
import hook looks at the modules the script imports from outside the Python installation
(your fork, not torch or the standard library); a class there with upstream's methods
(`inference`, `_initialize_kv_cache`, `_initialize_crossattn_cache`) gets an `inference` that
instruments its instance first. Nothing else is patched.
"""
from __future__ import annotations

import importlib.machinery
import os
import runpy
import sys
import sysconfig
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kvprof.errors import UsageError

__all__ = ["RunRequest", "run_script", "parse_command", "INSTRUMENTS"]

INSTRUMENTS = ("self-forcing",)
EXIT_FAILED, EXIT_OOM, EXIT_INTERRUPTED = 1, 3, 130
_PYTHONS = ("python", "python3", f"python3.{sys.version_info.minor}")


@dataclass
class RunRequest:
    """What `kvprof run` was asked for."""

    command: list[str]  # after `--`: [python] SCRIPT ARGS or [python] -m MODULE ARGS
    out: Path = Path("traces")
    run_id: str | None = None
    instrument: str | None = None
    device: str | None = None
    fine_stages: bool = False  # record stages marked fine (steps repeated inside a step)


def parse_command(command: list[str]) -> tuple[str, str, list[str]]:
    """("path", SCRIPT, ARGS) or ("module", NAME, ARGS) from `python SCRIPT ARGS` / `python -m NAME ARGS`."""
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if cmd and (Path(cmd[0]).name in _PYTHONS or os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)):
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("kvprof run: no script given; write 'kvprof run [--instrument self-forcing] -- python SCRIPT [ARGS]'")
    if cmd[0] == "-m":
        if len(cmd) < 2:
            raise UsageError("kvprof run: '-m' needs a module name, as with python -m")
        return "module", cmd[1], cmd[2:]
    if cmd[0].startswith("-"):
        raise UsageError(f"kvprof run: python option {cmd[0]!r} is not supported; run the script as 'python SCRIPT ARGS'")
    script = Path(cmd[0])
    if not script.is_file():
        raise UsageError(f"kvprof run: script {cmd[0]} not found; give the path of a Python file")
    return "path", str(script), cmd[1:]


# --------------------------------------------------------------------------- the import hook
_SYSTEM_PATHS = tuple({os.path.realpath(p) for k, p in sysconfig.get_paths().items()
                       if k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _is_user_file(origin: str | None) -> bool:
    if not origin or not origin.endswith(".py"):
        return False
    real = os.path.realpath(origin)
    return not any(real.startswith(p + os.sep) for p in _SYSTEM_PATHS)


def _pipeline_shaped(cls: type) -> bool:
    """Whether a class has upstream's pipeline methods, looked up without running any of its code:
    `getattr` on a library's lazy placeholder classes (diffusers' dummy objects) can raise, and an
    exception in an import hook would end the user's script."""
    import inspect

    names = ("inference", "_initialize_kv_cache", "_initialize_crossattn_cache")
    return all(callable(inspect.getattr_static(cls, a, None)) for a in names)


def patch_pipeline_class(cls: type) -> None:
    """Give `cls` an `inference` that instruments the instance on first use (once per class)."""
    if cls.__dict__.get("_kvprof_patched") or "inference" not in cls.__dict__:
        return
    from kvprof.integrations.self_forcing import instrument, looks_like_pipeline

    orig = cls.__dict__["inference"]

    def inference(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "_kvprof_instrument" not in vars(self) and looks_like_pipeline(self):
            try:
                instrument(self)
            except TypeError as exc:  # shaped like upstream on the outside only: run it untouched
                print(f"kvprof run: not instrumenting {type(self).__name__}: {exc}", file=sys.stderr)
                vars(self)["_kvprof_instrument"] = None
                return orig(self, *args, **kwargs)
            return self.inference(*args, **kwargs)  # the instance's instrumented inference
        return orig(self, *args, **kwargs)

    inference.__wrapped__ = orig  # type: ignore[attr-defined]
    inference.__doc__ = orig.__doc__
    cls.inference = inference  # type: ignore[attr-defined]
    cls._kvprof_patched = True  # type: ignore[attr-defined]


class PipelineFinder:
    """A meta-path finder: modules of your code (not the Python installation) are loaded as usual,
    then their pipeline-shaped classes are patched (`patch_pipeline_class`)."""

    def __init__(self) -> None:
        self.patched: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not _is_user_file(spec.origin) or not hasattr(spec.loader, "exec_module"):
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            loader_exec(module)
            self.after_import(module)

        spec.loader.exec_module = exec_module  # this module's loader instance only
        return spec

    def after_import(self, module: Any) -> None:
        for value in list(vars(module).values()):
            if isinstance(value, type) and vars(value).get("__module__") == module.__name__ and _pipeline_shaped(value):
                patch_pipeline_class(value)
                self.patched.append(f"{module.__name__}.{value.__qualname__}")

    def invalidate_caches(self) -> None:
        """Nothing cached here (the path finder keeps its own caches)."""


# --------------------------------------------------------------------------- the run
def _execute(kind: str, target: str, args: list[str]) -> int:
    """Run the script as __main__; its exit code (SystemExit included)."""
    old_argv, old_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [target, *args]
    if kind == "path":
        sys.path.insert(0, str(Path(target).resolve().parent))
    else:
        sys.path.insert(0, os.getcwd())
    try:
        if kind == "path":
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = old_argv
        if sys.path and old_path0 is not None and sys.path[0] != old_path0:
            sys.path.pop(0)


def run_script(req: RunRequest, print_summary: Callable[[Path, dict[str, Any]], None]) -> int:
    """Run the command of `req` under a trace; print the summary; the exit code (the script's,
    else 1 when it raised, 3 out of memory, 130 interrupted)."""
    import torch

    import kvprof.api as kv

    if req.instrument is not None and req.instrument not in INSTRUMENTS:
        raise UsageError(f"--instrument {req.instrument!r}: unknown; choose {' or '.join(INSTRUMENTS)}")
    kind, target, args = parse_command(req.command)
    run_id = req.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-run-{Path(target).stem if kind == 'path' else target}"
    folder = Path(req.out) / run_id
    meta = {"run_id": run_id, "command": ["kvprof", "run", *sys.argv[2:]] if sys.argv[1:2] == ["run"] else list(req.command),
            "source": "kvprof run"}
    finder = PipelineFinder() if req.instrument == "self-forcing" else None
    if finder is not None:
        sys.meta_path.insert(0, finder)
    run = kv.trace(folder, meta=meta, device=req.device, fine_stages=req.fine_stages)
    code = 0
    try:
        with run:
            code = _execute(kind, target, args)
    except torch.OutOfMemoryError:
        code = EXIT_OOM
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Exception:  # the script's own error: its traceback is what the user needs
        traceback.print_exc()
        code = EXIT_FAILED
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
    if run.summary is not None:
        print_summary(folder, run.summary)
    if finder is not None and not finder.patched:
        print("kvprof run: --instrument self-forcing found no pipeline class (one with inference, _initialize_kv_cache "
              "and _initialize_crossattn_cache) in the modules the script imported", file=sys.stderr)
    return code
