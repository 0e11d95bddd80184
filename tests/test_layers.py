"""The layer rules of docs/architecture.md, checked over the source with `ast`.

Readers (`kvprof.read`, `kvprof.diagnose`, `tui`) know only the trace format: they never import
torch, the workload, the recorder or the methods, so a trace opens on any machine. The import
graph has no circle between packages.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kvprof", "tracers", "methods", "tui")
READERS = ("kvprof.read", "kvprof.diagnose", "tui")
# The trace format: pure Python + pandas, shared by the writer and the readers.
FORMAT_MODULES = ("trace_io", "trace_fold", "table_schema", "summary_schema", "categories", "vocabulary", "atomic",
                  "liveness", "host_stacks")
# What a reader may import from this repository: other readers, the format and two leaf helpers.
READER_MAY_IMPORT = (*READERS, *(f"tracers.{m}" for m in FORMAT_MODULES), "kvprof.errors", "kvprof.units")
NEVER_IN_READERS = ("torch", "diffusers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module imported anywhere in the file (function-level imports too)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_readers_import_only_readers_and_the_format() -> None:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if not _within(name, READERS):
            continue
        for imp in _imports(path, name):
            ours = _within(imp, PACKAGES)
            if _within(imp, NEVER_IN_READERS) or ours and imp in modules and not _within(imp, READER_MAY_IMPORT):
                bad.append(f"{name} imports {imp}")
    assert not bad, "readers must not import the recorder, torch or methods:\n" + "\n".join(sorted(bad))


def test_no_import_circle_between_packages() -> None:
    modules = _modules()
    graph = {n: {i for i in _imports(p, n) if i in modules and i != n} for n, p in modules.items()}

    def top(n: str) -> str:  # the unit a circle may stay inside: kvprof.read, kvprof.workload, tui, ...
        parts = n.split(".")
        return ".".join(parts[:2]) if parts[0] == "kvprof" and len(parts) > 1 else parts[0]

    circles = []
    for start in graph:
        stack, seen = [(start, [start])], {start}
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len({top(m) for m in path}) > 1:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "import circles across packages:\n" + "\n".join(sorted(set(circles))[:20])


def test_every_reader_imports_with_torch_blocked() -> None:
    readers = sorted(n for n in _modules() if _within(n, READERS))
    code = ("import sys\nsys.modules['torch'] = None\nimport importlib\n"
            f"for name in {readers!r}:\n    importlib.import_module(name)\nprint(len({readers!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == len(readers) > 20


@pytest.mark.parametrize("pkg", (*PACKAGES, "tests", "benchmarks", "examples"))
def test_no_source_file_over_500_lines(pkg: str) -> None:
    long = [f"{p.relative_to(ROOT)}: {n}" for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


@pytest.mark.parametrize("command", [["summary"], ["compare"], ["diagnose"], ["report", "-o", "{tmp}/r.md"],
                                     ["export", "--format", "csv", "-o", "{tmp}/x"]])
def test_reading_commands_run_without_torch(bf16_trace: Path, tmp_path: Path, command: list[str]) -> None:
    # every `kvprof` command that reads a trace starts without importing torch (it took seconds)
    argv = [c.replace("{tmp}", str(tmp_path)) for c in command[:1]] + [str(bf16_trace)] + \
        [c.replace("{tmp}", str(tmp_path)) for c in command[1:]]
    code = ("import sys\nsys.modules['torch'] = None\nfrom kvprof.cli import main\n"
            f"sys.exit(main({argv!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
