"""The cells of a sweep: every combination of the matrix options, each a `kvprof trace` command line.

Options are checked here, before any cluster starts: unknown methods, integrations, code storages,
frame counts, parameters and input files are usage errors that name the flag and give a hint.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvprof.errors import UsageError

# Matrix axes: any of these given on the command line makes a new matrix (not allowed with --resume).
AXES: tuple[str, ...] = ("methods", "skip", "integrations", "codes", "frames", "rolling", "seeds", "prompt_embeds", "param")
# Flags given to every cell's `kvprof trace` as they are.
PASS_THROUGH: tuple[str, ...] = ("config", "dtype", "sink", "decode", "free_cache_before_decode", "checkpoint", "vae", "budget")


@dataclass
class Cell:
    """One trace of the sweep: the values of each axis, and the `kvprof trace` flags that run it."""

    id: str
    method: str
    integration: str
    codes: str | None
    frames: int | None
    seed: int
    rolling: int | None
    prompt_embeds: str | None
    params: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record of the cell (before it runs)."""
        return asdict(self)


@dataclass
class Matrix:
    """The validated matrix options of a sweep (what manifest.json keeps under `matrix`)."""

    methods: list[str]
    integrations: list[str]
    codes: list[str | None]
    frames: list[int | None]
    rolling: list[int | None]
    seeds: list[int]
    prompt_embeds: list[str | None]
    params: dict[str, str]
    common: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the manifest."""
        return asdict(self)


def _ints(flag: str, text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: must be a comma list of integers, e.g. {flag} 42,126") from None
    if not values:
        raise UsageError(f"{flag} {text!r}: empty; e.g. {flag} 42,126")
    return list(dict.fromkeys(values))


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


def parse_matrix(args: Any) -> Matrix:
    """Check the sweep's matrix flags (argparse namespace of `kvprof sweep`) into a Matrix."""
    from kvprof.runner import INTEGRATIONS
    from methods import get_method_class, method_names

    known = method_names()
    methods = known if args.methods == "all" else _names(args.methods)
    if not methods:
        raise UsageError("--methods: none given; 'kvprof methods' lists them, or use --methods all")
    for name in methods:  # built-in names, plugin specs (module:Class, file.py:Class), entry-point methods
        try:
            get_method_class(name)
        except ValueError as exc:
            raise UsageError(f"--methods: {exc}") from None
    skip = _names(args.skip or "")
    bad_skip = [m for m in skip if m not in known]
    if bad_skip:
        raise UsageError(f"--skip: unknown {', '.join(bad_skip)}; 'kvprof methods' lists them")
    methods = [m for m in methods if m not in skip]
    if not methods:
        raise UsageError("--skip leaves no method to trace; skip fewer")
    integrations = _names(args.integrations)
    bad = [i for i in integrations if i not in INTEGRATIONS]
    if bad or not integrations:
        raise UsageError(f"--integrations: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(INTEGRATIONS)}")
    codes: list[str | None] = _names(args.codes) if args.codes else [None]  # type: ignore[assignment]
    params = dict(args.param)
    for name in params:
        if not any(name in get_method_class(m).params for m in methods):
            raise UsageError(f"--param {name}: no method of the sweep has this parameter; "
                             f"'kvprof methods NAME' lists a method's parameters")
    embeds: list[str | None] = [str(p) for p in args.prompt_embeds] if args.prompt_embeds else [None]
    common = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k in PASS_THROUGH}
    m = Matrix(methods=methods, integrations=integrations, codes=codes, frames=_ints("--frames", args.frames),
               rolling=_ints("--rolling", args.rolling), seeds=[s for s in _ints("--seeds", args.seeds) if s is not None] or [0],
               prompt_embeds=embeds, params=params, common=common)
    for codes_value in m.codes:
        if codes_value is not None and not any(_codes_ok(i, codes_value) for i in integrations):
            raise UsageError(f"--codes {codes_value}: not a code storage of {', '.join(integrations)}; "
                             "study takes int8,int16, staged packed,int8,int16")
    return m


def _codes_ok(integration: str, codes: str | None) -> bool:
    allowed = ("int8", "int16") if integration == "study" else ("packed", "int8", "int16")
    return codes is None or codes in allowed


def build_cells(m: Matrix, gpu: bool) -> list[Cell]:
    """Every combination of the matrix (codes not of an integration are left out), checked through
    `kvprof trace`'s own validation; `gpu` picks the defaults of config and frames, as trace does."""
    from methods import get_method_class

    config = m.common.get("config") or ("wan-1.3b" if gpu else "tiny")
    cells = []
    for method, integ, codes, frames, rolling, seed, embeds in itertools.product(
            m.methods, m.integrations, m.codes, m.frames, m.rolling, m.seeds, m.prompt_embeds):
        if not _codes_ok(integ, codes):
            continue
        frames = frames if frames is not None else (42 if gpu else 12)
        params = {k: v for k, v in m.params.items() if k in get_method_class(method).params}
        # a plugin spec (module:Class) is named by its class's name: no ':' or '/' in cell ids
        parts = [get_method_class(method).name, integ, *([codes] if codes else []), f"{frames}f", f"s{seed}",
                 *([f"w{rolling}"] if rolling else []), *([Path(embeds).stem] if embeds else []),
                 *(f"{k}{v}" for k, v in sorted(params.items()))]
        cells.append(Cell(id="-".join(parts).replace("/", "_"), method=method, integration=integ, codes=codes, frames=frames,
                          seed=seed, rolling=rolling, prompt_embeds=embeds, params=params,
                          args=_trace_args(method, integ, codes, frames, rolling, seed, embeds, params, config, m.common)))
    _check_cells(cells, config, m.common)
    return cells


def _trace_args(method: str, integ: str, codes: str | None, frames: int, rolling: int | None, seed: int,
                embeds: str | None, params: dict[str, str], config: str, common: dict[str, Any]) -> list[str]:
    a = ["--method", method, "--integration", integ, "--frames", str(frames), "--seed", str(seed), "--config", config]
    a += ["--codes", codes] if codes else []
    a += ["--rolling", str(rolling)] if rolling else []
    a += ["--sink", str(common["sink"])] if common.get("sink") else []
    a += ["--prompt-embeds", embeds] if embeds else []
    for k, v in params.items():
        a += ["--param", f"{k}={v}"]
    for flag in ("dtype", "checkpoint", "vae", "budget"):
        if common.get(flag) is not None:
            a += [f"--{flag}", str(common[flag])]
    a += [] if common.get("decode", True) else ["--no-decode"]
    a += ["--free-cache-before-decode"] if common.get("free_cache_before_decode") else []
    return a


def _check_cells(cells: list[Cell], config: str, common: dict[str, Any]) -> None:
    """Run `kvprof trace`'s checks on each distinct cell shape (without running anything)."""
    from kvprof.runner import TraceRequest, check_inputs, load_prompt_embeds, resolve
    from kvprof.units import parse_size

    budget = parse_size(common["budget"], "--budget") if common.get("budget") else None
    seen: set[tuple] = set()
    for c in cells:
        key = (c.method, c.integration, c.codes, c.frames, c.rolling, c.prompt_embeds, tuple(c.params.items()))
        if key in seen:
            continue
        seen.add(key)
        req = TraceRequest(method=c.method, integration=c.integration, codes=c.codes, params=dict(c.params), config=config,
                           dtype=common.get("dtype"), frames=c.frames, seed=c.seed, device="cpu", rolling=c.rolling,
                           sink=common.get("sink") or 0, decode=common.get("decode", True),
                           checkpoint=_path(common.get("checkpoint")), vae=_path(common.get("vae")),
                           prompt_embeds=_path(c.prompt_embeds), budget_bytes=budget)
        cfg = resolve(req).cfg
        if len(seen) == 1:
            check_inputs(req, cfg)  # reads the input files (checkpoint, embeddings, VAE) once
        elif c.prompt_embeds:
            load_prompt_embeds(Path(c.prompt_embeds), cfg)  # each embeddings file fits the config


def _path(v: str | None) -> Path | None:
    return Path(v) if v else None
