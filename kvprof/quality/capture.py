"""What a rollout leaves for quality: latents, video, and a few layers' attention outputs.

`QualityCapture(model, spec, embeddings)` hooks the self-attention of a few sampled layers
before the rollout and `finish(result)` returns host copies as `RolloutOutputs`; `save_outputs`
/ `load_outputs` keep them in a trace's `quality/` folder so that a bf16 trace can serve later
runs as their reference. The `RolloutRecipe` holds what decides the rollout's numbers; its `key`
is what a reference must match.

Capturing costs little and is visible: for each sampled layer and pass, a strided subset of the
tokens of the attention output (at most `MAX_ELEMENTS` values) is copied to the host, through a
device temporary of that size (tagged as the pass's activations) on CUDA.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvprof.workload.config import ModelConfig
from kvprof.workload.rollout import RolloutResult, RolloutSpec

QUALITY_DIR = "quality"
KEY_FILE = "key.json"
LATENTS_FILE = "latents.pt"
VIDEO_FILE = "video.pt"
ATTENTION_FILE = "attention.pt"
MAX_ELEMENTS = 1 << 18  # values kept per (layer, pass) of the attention output
VIDEO_SAVE_MAX_BYTES = 64 << 20  # larger videos are not saved: a reference re-decodes its latents
SAMPLED_LAYERS = 3
FORMAT_VERSION = 1


def default_layers(num_layers: int, count: int = SAMPLED_LAYERS) -> tuple[int, ...]:
    """First, middle and last layer (fewer when the model has fewer)."""
    if count <= 1:
        return (0,)
    picks = {round(i * (num_layers - 1) / (count - 1)) for i in range(count)}
    return tuple(sorted(picks))


def pass_label(pass_name: str, step: int | None) -> str:
    return pass_name if step is None else f"{pass_name}{step}"


def attention_key(chunk: int, layer: int, label: str) -> str:
    return f"c{chunk}/l{layer}/{label}"


def parse_attention_key(key: str) -> tuple[int, int, str]:
    c, l, label = key.split("/")
    return int(c[1:]), int(l[1:]), label


def embeddings_digest(embeddings: torch.Tensor) -> str:
    """sha256 of the embeddings' float32 values and shape (what the reference must share)."""
    t = embeddings.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@dataclass
class RolloutRecipe:
    """Everything that decides the bf16 reference's numbers, and how to run it again."""

    config: ModelConfig
    spec: RolloutSpec
    embeddings: torch.Tensor  # host copy [1, n, text_dim]
    device: str
    checkpoint: Path | None = None
    vae: Path | None = None

    def key(self) -> dict[str, Any]:
        """JSON-able identity: config, the rollout fields that change numbers, embeddings digest,
        weight files and device. Integration, code storage and decode do not change a bf16
        rollout's latents and are left out."""
        s = self.spec
        dev = torch.device(self.device)
        return json.loads(json.dumps({
            "config": dataclasses.asdict(self.config),
            "rollout": {"frames": s.frames, "seed": s.seed, "batch": s.batch, "chunk_frames": s.chunk_frames,
                        "timesteps": list(s.timesteps), "attn_window_frames": s.attn_window_frames,
                        "rolling_frames": s.rolling_frames, "sink_frames": s.sink_frames},
            "embeddings_sha256": embeddings_digest(self.embeddings),
            "checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
            "vae": str(Path(self.vae).resolve()) if self.vae else None,
            "device": dev.type,
            "device_name": device_name(dev),
        }))


@dataclass
class RolloutOutputs:
    """Host copies of what quality compares: latents [B, C, F, H, W], video [B, 3, T, H, W] in
    [-1, 1] or None, and sampled attention outputs keyed `c{chunk}/l{layer}/{pass}`."""

    key: dict[str, Any]
    method: str
    latents: torch.Tensor
    video: torch.Tensor | None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: tuple[int, ...] = ()
    max_elements: int = MAX_ELEMENTS
    recipe: RolloutRecipe | None = None  # None when loaded from disk
    folder: Path | None = None  # where it was loaded from / saved to

    @property
    def chunk_frames(self) -> int:
        return int(self.key["rollout"]["chunk_frames"])

    @property
    def num_chunks(self) -> int:
        return self.latents.shape[2] // self.chunk_frames


def _token_stride(tokens: int, width: int, max_elements: int) -> int:
    return max(1, math.ceil(tokens * width / max_elements))


class QualityCapture:
    """Forward hooks on sampled layers' self-attention; use as a context manager or call `close`.

    The pre-hook on `self_attn` notes the call (chunk, pass, step); the pre-hook on its output
    projection `o` copies its input (the attention output, [B, L, heads*head_dim]) to the host.
    """

    def __init__(self, model: torch.nn.Module, spec: RolloutSpec, embeddings: torch.Tensor, *,
                 method: str, checkpoint: Path | None = None, vae: Path | None = None,
                 layers: tuple[int, ...] | None = None, max_elements: int = MAX_ELEMENTS) -> None:
        cfg = model.config
        self.method = method
        self.recipe = RolloutRecipe(cfg, spec, embeddings.detach().to("cpu", copy=True), str(model.device),
                                    checkpoint, vae)
        self.layers = tuple(layers) if layers is not None else default_layers(cfg.num_layers)
        bad = [l for l in self.layers if not 0 <= l < cfg.num_layers]
        if bad:
            raise ValueError(f"attention layers {bad} out of range for {cfg.num_layers} layers")
        self.max_elements = max_elements
        self.device = model.device
        self.records: dict[str, torch.Tensor] = {}
        self._calls: dict[int, Any] = {}
        self._handles = []
        for l in self.layers:
            attn = model.blocks[l].self_attn
            self._handles.append(attn.register_forward_pre_hook(self._note_call(l)))
            self._handles.append(attn.o.register_forward_pre_hook(self._copy_output(l)))

    def _note_call(self, layer: int):
        def hook(module, args):
            self._calls[layer] = next(a for a in args if hasattr(a, "pass_name") and hasattr(a, "chunk"))
        return hook

    def _copy_output(self, layer: int):
        def hook(module, args):
            x = args[0]  # [B, L, D]
            call = self._calls.pop(layer)
            sub = x[:, :: _token_stride(x.shape[1], x.shape[2], self.max_elements)]
            if x.device.type == "cuda":
                host = torch.empty(sub.shape, dtype=sub.dtype, pin_memory=True)
                host.copy_(sub, non_blocking=True)
            else:
                host = sub.to("cpu", copy=True)
            self.records[attention_key(call.chunk, layer, pass_label(call.pass_name, call.step))] = host
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "QualityCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finish(self, result: RolloutResult) -> RolloutOutputs:
        """Stop capturing; host copies of the result's latents and video with the captures."""
        self.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the pinned copies were asynchronous
        video = None if result.video is None else result.video.detach().to("cpu", copy=True)
        return RolloutOutputs(
            key=self.recipe.key(), method=self.method, latents=result.latents.detach().to("cpu", copy=True),
            video=video, attention=dict(self.records), layers=self.layers, max_elements=self.max_elements,
            recipe=self.recipe,
        )


# ---------------------------------------------------------------------- on disk
def save_outputs(folder: Path, outputs: RolloutOutputs, video_max_bytes: int = VIDEO_SAVE_MAX_BYTES) -> Path:
    """Write `folder/quality/` (key.json, latents.pt, attention.pt, video.pt when it is at most
    `video_max_bytes`, in its own dtype). Returns the quality folder."""
    qdir = Path(folder) / QUALITY_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    torch.save(outputs.latents.contiguous(), qdir / LATENTS_FILE)
    torch.save({k: v.contiguous() for k, v in outputs.attention.items()}, qdir / ATTENTION_FILE)
    video_saved = False
    if outputs.video is not None and outputs.video.numel() * outputs.video.element_size() <= video_max_bytes:
        torch.save(outputs.video.contiguous(), qdir / VIDEO_FILE)
        video_saved = True
    info = {"format": FORMAT_VERSION, "method": outputs.method, "key": outputs.key, "layers": list(outputs.layers),
            "max_elements": outputs.max_elements, "video_saved": video_saved,
            "video_shape": None if outputs.video is None else list(outputs.video.shape)}
    tmp = qdir / (KEY_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(qdir / KEY_FILE)  # written last: a key.json means the folder is complete
    outputs.folder = Path(folder)
    return qdir


def read_key(folder: Path) -> dict[str, Any] | None:
    """The key.json of `folder/quality/`, or None when there is none (or it is unreadable)."""
    path = Path(folder) / QUALITY_DIR / KEY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class UnreadableOutputs(LookupError):
    """Saved quality outputs that cannot be read (truncated, foreign or hostile files): the
    message names the file; quality is then reported as missing, never the run's failure."""


def _load_saved(path: Path, want: type) -> Any:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file (UnpicklingError, RuntimeError...)
        raise UnreadableOutputs(f"{path}: unreadable saved output ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(value, want):
        raise UnreadableOutputs(f"{path}: holds {type(value).__name__}, not {want.__name__} (damaged saved output)")
    return value


def load_outputs(folder: Path) -> RolloutOutputs:
    """The saved outputs of a trace (or reference) folder; video is None when it was not saved.
    UnreadableOutputs (a LookupError) naming the file when one cannot be read."""
    qdir = Path(folder) / QUALITY_DIR
    info = read_key(folder)
    if info is None:
        raise FileNotFoundError(f"{qdir / KEY_FILE}: no saved quality outputs")
    if not isinstance(info, dict) or not isinstance(info.get("key"), dict) or not isinstance(info.get("method"), str):
        raise UnreadableOutputs(f"{qdir / KEY_FILE}: lacks its key or method (damaged saved output)")
    latents = _load_saved(qdir / LATENTS_FILE, torch.Tensor)
    attention = _load_saved(qdir / ATTENTION_FILE, dict)
    video = _load_saved(qdir / VIDEO_FILE, torch.Tensor) if info.get("video_saved") else None
    try:
        layers, max_elements = tuple(info.get("layers", ())), int(info.get("max_elements", MAX_ELEMENTS))
    except (TypeError, ValueError):
        raise UnreadableOutputs(f"{qdir / KEY_FILE}: layers or max_elements of the wrong type (damaged saved output)") from None
    return RolloutOutputs(key=info["key"], method=info["method"], latents=latents, video=video, attention=attention,
                          layers=layers, max_elements=max_elements, folder=Path(folder))
