"""The KV-cache method interface: one base class, one registry, one encoded-state type.

A method turns a layer's K/V (`[B, L, H, D]` each) into an `EncodedKV` and back. It knows
nothing of the rollout: the cache (kvprof.workload.cache) decides *what* tensor a method is given and
*when* (the integration), and passes a `KVCall` that says where in the rollout the call is.
Methods import torch only; the cache injects `Marks` so inner steps show up as stages.
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Literal

import torch

CodeStorage = Literal["int8", "int16", "packed"]
CODE_STORAGES: tuple[str, ...] = ("int8", "int16", "packed")


@dataclass(frozen=True)
class KVCall:
    """Where in the rollout a method is called: everything METHODS.md's policies read."""

    layer: int
    num_layers: int
    chunk: int
    pass_name: str  # "denoise" or "refresh"
    step: int | None  # denoising step index, None on the refresh pass
    write_start: int  # first buffer slot (token index) written by this call
    write_end: int  # one past the last slot written by this call
    written: int  # tokens of the buffer that hold real data after this write (the written prefix)
    capacity: int  # tokens the buffer holds (whole buffer)
    tokens_per_frame: int

    @property
    def is_refresh(self) -> bool:
        """True on the t = 0 pass that rewrites the chunk's K/V."""
        return self.pass_name == "refresh"


@dataclass
class EncodedKV:
    """A method's stored state for one K/V tensor pair, as named tensors.

    `categories[name]` is the memory category of each tensor (`kv_codes`, `kv_meta`, `kv_fp`);
    `bits[name]` is the bit width of one code for code tensors (for *stored* bytes, which count
    ceil(n * bits / 8) whatever the storage dtype); `num_tokens` is how many token positions the
    state represents (for *logical* bytes). `extra` holds host-side, non-tensor facts (plans).
    """

    tensors: dict[str, torch.Tensor]
    categories: dict[str, str]
    bits: dict[str, int]
    num_tokens: int
    heads: int
    head_dim: int
    extra: dict[str, Any] = field(default_factory=dict)

    def resident_bytes(self) -> int:
        """Bytes of the tensors that actually exist (distinct storages counted once)."""
        seen: set[int] = set()
        total = 0
        for t in self.tensors.values():
            storage = t.untyped_storage()
            key = storage.data_ptr() if t.device.type != "meta" else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += storage.nbytes() if t.device.type != "meta" else t.numel() * t.element_size()
        return total

    def stored_bytes(self) -> int:
        """Packed bits of every code tensor plus every other tensor's bytes (METHODS.md)."""
        total = 0
        for name, t in self.tensors.items():
            if name in self.bits:
                n_codes = self.code_count(name)
                total += math.ceil(n_codes * self.bits[name] / 8)
            else:
                total += t.numel() * t.element_size()
        return total

    def code_count(self, name: str) -> int:
        """Number of codes held by code tensor `name` (packed tensors hold several per byte)."""
        t = self.tensors[name]
        per_elem = self.extra.get("codes_per_element", {}).get(name, 1)
        return t.numel() * per_elem

    def logical_bytes(self) -> int:
        """The same tokens in BF16, K and V."""
        return 2 * self.num_tokens * self.heads * self.head_dim * 2


class Marks:
    """Stage and category markers that the cache injects (no-ops by default)."""

    def stage(self, name: str, fine: bool = False) -> ContextManager[None]:
        """Mark an inner step (`quantize`, `dequantize`, `rotate`, ...). `fine=True` for a step repeated
        inside one step (a loop over slices of groups): traces record those only on request
        (`kvprof trace --fine-stages`), as each costs the host 10-20 microseconds."""
        return contextlib.nullcontext()

    def category(self, category: str) -> ContextManager[None]:
        """Allocations in the body belong to `category` (`kv_scratch`, `kv_dequant`, ...)."""
        return contextlib.nullcontext()


NO_MARKS = Marks()


@dataclass(frozen=True)
class Param:
    """One overridable method parameter with its study default."""

    default: Any
    help: str
    parse: Callable[[str], Any] = float
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""  # human text of `check`, shown in errors


class MethodError(ValueError):
    """Bad method name or parameter; the message names the thing and gives a hint."""


class KVMethod(ABC):
    """Base class of every KV-cache method. Subclasses register with `@register_method`.

    Class attributes describe the method for `kvprof methods`; instances hold parameters.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    key_bits: ClassVar[str]  # e.g. "4", "2", "4+4", "16", "4/2"
    value_bits: ClassVar[str]
    policy: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    # refresh_only: during a chunk's denoising steps work on a full-precision copy; quantize on refresh.
    cadence: ClassVar[str] = "per_step"
    # lossless methods keep a plain BF16 buffer written in place (bf16, flowcache_native).
    lossless: ClassVar[bool] = False
    # position_dependent: the encoding of a token depends on other tokens' positions or values
    # across chunks (tiers, zones, spatial masks, chunk plans): the staged integration re-encodes
    # the written prefix on refresh instead of appending the new chunk alone.
    position_dependent: ClassVar[bool] = False
    # Residual reuse of FlowCache native: the rollout asks `reuse_params` when it is set.
    reuses_residuals: ClassVar[bool] = False

    def __init__(self, storage: CodeStorage = "int8", marks: Marks = NO_MARKS, **overrides: Any):
        if storage not in CODE_STORAGES:
            raise MethodError(f"unknown code storage {storage!r}; choose one of {', '.join(CODE_STORAGES)}")
        self.storage: CodeStorage = storage
        self.marks = marks
        self.values: dict[str, Any] = {k: p.default for k, p in self.params.items()}
        self.values.update(self.validate_params(overrides))

    @classmethod
    def validate_params(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Parse and check `--param` overrides one by one, then together with the defaults
        (`check_params`); MethodError naming the parameter otherwise. Returns the parsed overrides."""
        parsed = {key: cls.validate_param(key, value) for key, value in overrides.items()}
        cls.check_params({**{k: p.default for k, p in cls.params.items()}, **parsed})
        return parsed

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> None:
        """Rules between parameters (e.g. min <= max); methods that have some override this."""

    @classmethod
    def validate_param(cls, key: str, value: Any) -> Any:
        """Parse and check one `--param key=value`; raise MethodError naming it otherwise."""
        if key not in cls.params:
            known = ", ".join(sorted(cls.params)) or "none"
            raise MethodError(
                f"method {cls.name!r} has no parameter {key!r}; its parameters: {known}"
                f" (see 'kvprof methods {cls.name}')"
            )
        spec = cls.params[key]
        try:
            parsed = spec.parse(value) if isinstance(value, str) else value
        except (TypeError, ValueError, OverflowError):
            raise MethodError(f"parameter {key!r} of {cls.name!r}: cannot read {value!r} ({spec.help})") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):  # inf, nan, and 1e400 (read as inf)
            raise MethodError(f"parameter {key!r} of {cls.name!r}: {value!r} is not a finite number ({spec.rule or spec.help})")
        if not spec.check(parsed):
            raise MethodError(f"parameter {key!r} of {cls.name!r}: {parsed!r} is out of range ({spec.rule or spec.help})")
        return parsed

    @classmethod
    def facts(cls) -> dict[str, Any]:
        """What readers need to know of the method, written into the trace's meta (`method_facts`)
        at trace time, so no reader imports `methods` or guesses from the method's name."""
        return {"family": cls.family, "key_bits": str(cls.key_bits), "value_bits": str(cls.value_bits),
                "policy": cls.policy, "cadence": cls.cadence, "lossless": bool(cls.lossless),
                "position_dependent": bool(cls.position_dependent),
                "param_defaults": {k: p.default for k, p in cls.params.items()}}

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @abstractmethod
    def encode(self, k: torch.Tensor, v: torch.Tensor, call: KVCall) -> EncodedKV:
        """Quantize K and V (`[B, L, H, D]`) into a stored state."""

    @abstractmethod
    def decode(self, state: EncodedKV, call: KVCall) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct K and V (`[B, state.num_tokens, H, D]`, in the dtype that was encoded)."""

    def decode_range(self, state: EncodedKV, call: KVCall, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct tokens [start, end) only; methods override when they can do it cheaper."""
        k, v = self.decode(state, call)
        return k[:, start:end], v[:, start:end]


_REGISTRY: dict[str, type[KVMethod]] = {}


def register_method(cls: type[KVMethod]) -> type[KVMethod]:
    """Class decorator: add a method to the name registry; fail loudly on a missing attribute."""
    for attr in ("name", "family", "key_bits", "value_bits", "policy", "summary"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__} must define class attribute {attr!r}")
    if cls.name in _REGISTRY:
        raise TypeError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names in registration order."""
    return list(_REGISTRY)


def get_method_class(name: str) -> type[KVMethod]:
    """The class registered as `name` (a plugin spec `module:Class` or an entry-point method
    loads first), or MethodError with the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        from methods import plugins

        found = plugins.find(name)  # `module:Class` specs and the kvprof.methods entry points
        if found is not None:
            return found

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise MethodError(f"unknown method {name!r}; {hint}see 'kvprof methods'") from None
