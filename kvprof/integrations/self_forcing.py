"""Trace the upstream Self-Forcing pipeline unmodified: `instrument(pipeline)`.

    import kvprof.api as kv
    from kvprof.integrations.self_forcing import instrument

    instrument(pipeline)                       # a live CausalInferencePipeline (or anything shaped like it)
    with kv.trace("traces/upstream"):
        video = pipeline.inference(noise, text_prompts=[prompt])

Written against upstream's public names only (`generator.model.blocks`, `kv_cache1`,
`crossattn_cache`, `_initialize_kv_cache`, `_initialize_crossattn_cache`, `denoising_step_list`,
`num_frame_per_block`, `frame_seq_length`, `text_encoder`, `vae.decode_to_pixel`); nothing of
upstream's loop is re-implemented here. What the adapter adds, all through wrappers on the
instance and forward hooks:

- weights: the generator's (and text encoder's, VAE's) parameters, buffers and plain tensor
  attributes (the RoPE table `freqs`, moved to the device on the first forward, is re-tagged);
- the self-attention cache (`k`/`v` as `kv_fp`, the end indices as `kv_meta`) whenever
  `_initialize_kv_cache` (re)creates it or `inference` replaces its indices; the cross-attention
  cache (`cross_kv`) when created and when its first use swaps in the real K/V;
- stages `rollout/chunk[i]/denoise[j]/layer[l]`, `rollout/chunk[i]/refresh/layer[l]`,
  `rollout/kv_init`, `rollout/cross_kv`, `rollout/text_embed`, `rollout/decode`. A chunk is a
  run of generator calls with the same `current_start`; within it the first
  `len(denoising_step_list)` calls are denoising steps, and a call at timestep 0 (or any call
  after them) is the refresh (the context pass);
- meta for readers: method "bf16 (upstream cache)", the config from the model's dimensions, the
  rollout from the noise's shape (your own `trace(meta=...)` fields win).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch

from kvprof.integrations.hooks import StageHooks
from kvprof.tagging import Watch, module_tensor_attributes, tensors_of
from tracers import context
from tracers.vocabulary import CHUNK, DECODE, DENOISE, LAYER, REFRESH, ROLLOUT, TEXT_EMBED

__all__ = ["instrument", "SelfForcingInstrument", "looks_like_pipeline", "METHOD"]

METHOD = "bf16 (upstream cache)"
_REQUIRED = ("generator", "inference", "_initialize_kv_cache", "_initialize_crossattn_cache", "denoising_step_list")
_ATTR = "_kvprof_instrument"


def looks_like_pipeline(obj: Any) -> bool:
    """True for objects with the attribute names of upstream's CausalInferencePipeline."""
    return all(hasattr(obj, a) for a in _REQUIRED)


class _Live(Mapping):
    """A read-only mapping recomputed at every look (`items()`), for a `Watch` to walk."""

    def items(self) -> list[tuple[str, torch.Tensor]]:  # type: ignore[override]
        raise NotImplementedError

    def __getitem__(self, name: str) -> torch.Tensor:
        return dict(self.items())[name]

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, _ in self.items()])

    def __len__(self) -> int:
        return len(self.items())


class _CacheView(_Live):
    """The tensors under `keys` of the cache list `owner.<attr>` as it is now (a re-created cache
    is seen), named for kvprof's readers."""

    def __init__(self, owner: Any, attr: str, keys: tuple[str, ...], fmt: str):
        self.owner, self.attr, self.keys, self.fmt = owner, attr, keys, fmt

    def items(self) -> list[tuple[str, torch.Tensor]]:  # type: ignore[override]
        out = []
        for layer, entry in enumerate(getattr(self.owner, self.attr, None) or []):
            if isinstance(entry, Mapping):
                for key in self.keys:
                    t = entry.get(key)
                    if isinstance(t, torch.Tensor):
                        out.append((self.fmt.format(layer=layer, key=key), t))
        return out


class _TensorAttrs(_Live):
    """A module's plain tensor attributes as they are now (`freqs` after its move to the device)."""

    def __init__(self, module: torch.nn.Module, prefix: str):
        self.module, self.prefix = module, prefix

    def items(self) -> list[tuple[str, torch.Tensor]]:  # type: ignore[override]
        return [(f"{self.prefix}.{n}", t) for n, t in module_tensor_attributes(self.module)]


def _tag(t: torch.Tensor, category: str, name: str | None) -> None:
    context.tag_tensor(t, category, name)


class SelfForcingInstrument:
    """The hooks and wrappers `instrument` puts on one pipeline; `remove()` takes them off."""

    def __init__(self, pipeline: Any, method: str = METHOD):
        missing = [a for a in _REQUIRED if not hasattr(pipeline, a)]
        model = getattr(getattr(pipeline, "generator", None), "model", None)
        if model is None or not hasattr(model, "blocks"):
            missing.append("generator.model.blocks")
        if missing:
            raise TypeError(f"{type(pipeline).__name__} is not shaped like Self-Forcing's CausalInferencePipeline: "
                            f"it lacks {', '.join(missing)}")
        self.pipeline, self.method = pipeline, method
        self.model = model
        self.hooks = StageHooks()
        self._handles: list[Any] = []
        self._restore: list[tuple[Any, str]] = []
        self._session: Any = None
        self._active = False  # inside a traced inference()
        self._chunk: contextlib.ExitStack | None = None
        self._chunk_index = -1
        self._chunk_start: Any = None
        self._step = 0
        self._pass: list[contextlib.ExitStack] = []
        self._new_watches()
        self._install()

    # ---------------------------------------------------------------- setup
    def _new_watches(self) -> None:
        p = self.pipeline
        self.kv = Watch(_CacheView(p, "kv_cache1", ("k", "v"), "layer {layer} / {key}"), "kv_fp", None, _tag)
        self.kv_index = Watch(_CacheView(p, "kv_cache1", ("global_end_index", "local_end_index"), "layer {layer} / {key}"),
                              "kv_meta", None, _tag)
        self.cross = Watch(_CacheView(p, "crossattn_cache", ("k", "v"), "cross_{key}[{layer}]"), "cross_kv", None, _tag)
        self.attrs = Watch(_TensorAttrs(p.generator, "generator"), "weights", None, _tag)

    def _wrap(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace `owner.name` on the instance (the class is left alone)."""
        orig = getattr(owner, name)
        wrapper = functools.wraps(orig)(make(orig))
        setattr(owner, name, wrapper)
        self._restore.append((owner, name))

    def _install(self) -> None:
        p = self.pipeline
        self._wrap(p, "inference", self._inference_wrapper)
        self._wrap(p, "_initialize_kv_cache", lambda f: self._init_wrapper(f, "kv_init", "kv_fp", (self.kv, self.kv_index)))
        self._wrap(p, "_initialize_crossattn_cache", lambda f: self._init_wrapper(f, "cross_kv", "cross_kv", (self.cross,)))
        vae = getattr(p, "vae", None)
        if vae is not None and callable(getattr(vae, "decode_to_pixel", None)):
            self._wrap(vae, "decode_to_pixel", self._decode_wrapper)
        gen = p.generator
        self._gen_sig = inspect.signature(gen.forward)
        self._handles.append(gen.register_forward_pre_hook(self._generator_pre, with_kwargs=True))
        self._handles.append(gen.register_forward_hook(self._generator_post, always_call=True))
        for i, block in enumerate(self.model.blocks):
            self.hooks.add(block, lambda i=i: [context.stage(LAYER, i)])
        te = getattr(p, "text_encoder", None)
        if isinstance(te, torch.nn.Module):
            self.hooks.add(te, lambda: [context.stage(TEXT_EMBED), context.tag("activations")])

    def remove(self) -> None:
        """Take the wrappers and hooks off the pipeline."""
        for owner, name in self._restore:
            with contextlib.suppress(AttributeError):
                delattr(owner, name)
        for h in self._handles:
            h.remove()
        self.hooks.remove()
        if getattr(self.pipeline, _ATTR, None) is self:
            delattr(self.pipeline, _ATTR)

    # ---------------------------------------------------------------- wrappers
    def _inference_wrapper(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(orig)

        def inference(*args: Any, **kwargs: Any) -> Any:
            session = context.active_session()
            if session is None or self._active:
                return orig(*args, **kwargs)
            bound = sig.bind_partial(*args, **kwargs).arguments
            self._begin(session, bound)
            self._active = True
            try:
                with context.stage(ROLLOUT), context.tag("latents"):
                    try:
                        return orig(*args, **kwargs)
                    finally:
                        self._close_chunk(sys.exc_info())  # an error: the open chunk is where it failed
            finally:
                self._active = False

        return inference

    def _init_wrapper(self, orig: Callable[..., Any], stage: str, category: str, watches: tuple[Watch, ...]) -> Callable[..., Any]:
        def init(*args: Any, **kwargs: Any) -> Any:
            if context.active_session() is None:
                return orig(*args, **kwargs)
            with context.stage(stage), context.tag(category):
                out = orig(*args, **kwargs)
                for w in watches:
                    w.check()
            return out

        return init

    def _decode_wrapper(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def decode_to_pixel(*args: Any, **kwargs: Any) -> Any:
            if context.active_session() is None:
                return orig(*args, **kwargs)
            self._close_chunk()
            with context.stage(DECODE), context.tag("decode"):
                return orig(*args, **kwargs)

        return decode_to_pixel

    # ---------------------------------------------------------------- per run
    def _begin(self, session: Any, bound: dict[str, Any]) -> None:
        """First traced inference of this session: register what exists, fill meta."""
        if session is not self._session:
            self._session = session
            self._new_watches()  # a new trace: every tensor gets tagged in it again
            p = self.pipeline
            for attr in ("generator", "text_encoder", "vae"):
                part = getattr(p, attr, None)
                if isinstance(part, torch.nn.Module):
                    for t, n in tensors_of(part, attr):
                        _tag(t, "weights", n)
            self.attrs.check()
        self.kv.check()
        self.kv_index.check()
        self.cross.check()
        for key in ("noise", "initial_latent"):
            if isinstance(bound.get(key), torch.Tensor):
                _tag(bound[key], "latents", key)
        noise = bound.get("noise")
        if isinstance(noise, torch.Tensor):
            self._fill_meta(session.meta, noise)
        self._chunk_index, self._chunk_start, self._step = -1, None, 0

    def _fill_meta(self, meta: dict[str, Any], noise: torch.Tensor) -> None:
        p, m = self.pipeline, self.model
        dim, heads = getattr(m, "dim", None), getattr(m, "num_heads", None)
        layers = len(m.blocks)
        b, frames = int(noise.shape[0]), int(noise.shape[1])
        h, w = int(noise.shape[-2]), int(noise.shape[-1])
        patch = tuple(getattr(m, "patch_size", (1, 2, 2)))
        tpf = int(getattr(p, "frame_seq_length", 0) or (h // patch[1]) * (w // patch[2]))
        config = {"name": f"self-forcing {layers}x{dim}", "num_layers": layers, "dim": dim, "num_heads": heads,
                  "head_dim": dim // heads if dim and heads else None, "ffn_dim": getattr(m, "ffn_dim", None),
                  "text_len": getattr(m, "text_len", None), "in_dim": int(noise.shape[2]), "latent_height": h,
                  "latent_width": w, "patch_size": list(patch), "tokens_per_frame": tpf,
                  "dtype": str(noise.dtype).replace("torch.", "")}
        local = getattr(m, "local_attn_size", -1)
        cache = p.kv_cache1[0]["k"].shape[1] if getattr(p, "kv_cache1", None) else None
        rollout = {"frames": frames, "batch": b, "chunk_frames": int(getattr(p, "num_frame_per_block", 1)),
                   "timesteps": [float(t) for t in p.denoising_step_list],
                   "attn_window_frames": int(local) if local not in (None, -1) else None,
                   "rolling_frames": int(local) if local not in (None, -1) else None,
                   "cache_tokens": int(cache) if cache else None,
                   "decode": callable(getattr(getattr(p, "vae", None), "decode_to_pixel", None))}
        for key, value in (("method", self.method), ("integration", "self-forcing"), ("codes", "none"),
                           ("config", config), ("rollout", rollout)):
            meta.setdefault(key, value)

    def _close_chunk(self, exc_info: Any = (None, None, None)) -> None:
        while self._pass:
            self._pass.pop().__exit__(*exc_info)
        if self._chunk is not None:
            if exc_info[0] is None:
                self._record_kv()
            chunk, self._chunk = self._chunk, None
            chunk.__exit__(*exc_info)

    def _record_kv(self) -> None:
        """KV bytes after the chunk: the cache is BF16 in place, so stored = resident = its tensors'
        bytes; logical counts the tokens written so far."""
        session = context.active_session()
        tensors = [t for _, t in self.kv.obj.items()]
        if session is None or not tensors or self._chunk_start is None:
            return
        resident = sum(t.untyped_storage().nbytes() for t in tensors)
        k = tensors[0]
        rollout = session.meta.get("rollout")
        if isinstance(rollout, dict) and rollout.get("cache_tokens") is None:
            rollout["cache_tokens"] = int(k.shape[1])  # the cache is made after inference() starts
        written = min(int(self._chunk_start) + self._chunk_tokens, k.shape[1])
        logical = len(tensors) * k.shape[0] * written * k.shape[2] * k.shape[3] * k.element_size()
        session.record_kv_bytes(self._chunk_index, logical, resident, resident)

    # ---------------------------------------------------------------- generator calls
    def _generator_pre(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if not self._active or context.active_session() is None:
            return
        bound = self._gen_sig.bind_partial(*args, **kwargs).arguments
        start = bound.get("current_start")
        start = int(start) if start is not None else None
        if self._chunk is None or start != self._chunk_start:
            self._close_chunk()
            self._chunk_index += 1
            self._chunk_start, self._step = start, 0
            x = bound.get("noisy_image_or_video")
            self._chunk_tokens = int(x.shape[1]) * int(getattr(self.pipeline, "frame_seq_length", 0)) if x is not None else 0
            self._chunk = contextlib.ExitStack()
            self._chunk.enter_context(context.stage(CHUNK, self._chunk_index))
        t = bound.get("timestep")
        at_zero = isinstance(t, torch.Tensor) and not bool(t.any())
        stack = contextlib.ExitStack()
        if at_zero or self._step >= len(self.pipeline.denoising_step_list):
            stack.enter_context(context.stage(REFRESH))
        else:
            stack.enter_context(context.stage(DENOISE, self._step))
            self._step += 1
        stack.enter_context(context.tag("activations"))
        self._pass.append(stack)
        self.kv.check()  # inference() may have replaced the end indices since the last call
        self.kv_index.check()

    def _generator_post(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if not self._pass:
            return
        try:
            self.cross.check()  # the first call swaps the real cross K/V into the dicts
            self.kv.check()
            self.kv_index.check()
            self.attrs.check()  # `freqs` moved to the device on the first forward
        finally:
            self._pass.pop().close()


def instrument(pipeline: Any, *, method: str = METHOD) -> SelfForcingInstrument:
    """Instrument a live Self-Forcing pipeline (once; a second call returns the first's hooks).

    From then on `pipeline.inference(...)` inside `kvprof.api.trace(...)` is traced with kvprof's
    taxonomy (see the module docstring); outside a trace the hooks do nothing. `method` names the
    KV method for the readers (your fork's own method, say)."""
    done = getattr(pipeline, _ATTR, None)
    if isinstance(done, SelfForcingInstrument):
        return done
    inst = SelfForcingInstrument(pipeline, method)
    setattr(pipeline, _ATTR, inst)
    return inst
