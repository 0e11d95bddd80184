"""LPIPS (AlexNet, v0.1) without torchvision.

The trunk is defined here with torchvision's `alexnet().features` layer indices, so torchvision's
ImageNet checkpoint (`alexnet-owt-7be5be79.pth`, keys `features.N.weight`/`bias`) loads as is.
The learned linear heads come from the installed `lpips` package's data file
`weights/v0.1/alex.pth`, located with `importlib.util.find_spec` (the package itself imports
torchvision, so it is never imported). The computation follows lpips 0.1.4's `LPIPS.forward`
with `lpips=True, spatial=False, version='0.1'`: scaling layer, the five ReLU outputs, unit
normalisation over channels, squared difference, 1x1 linear head, spatial mean, sum over layers.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
BACKBONE_ENV = "KVPROF_LPIPS_BACKBONE"
BACKBONE_FLAG = "--lpips-backbone"
HEADS_IN_PACKAGE = Path("weights") / "v0.1" / "alex.pth"
LPIPS_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)
RELU_TAPS: tuple[int, ...] = (1, 4, 7, 9, 11)  # features indices whose outputs LPIPS compares
# lpips' ScalingLayer: inputs in [-1, 1] are shifted and scaled toward ImageNet statistics.
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
LPIPS_BATCH = 16


class LpipsUnavailable(Exception):
    """A file LPIPS needs is missing or unreadable; the message names it and where it was sought."""


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet `features` (same indices, same state-dict keys under `features.`)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(),  # 1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(),  # 4
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(),  # 7
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(),  # 9
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(),  # 11
            nn.MaxPool2d(kernel_size=3, stride=2),  # 12
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of relu1..relu5 for x [N, 3, H, W]."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in RELU_TAPS:
                taps.append(x)
                if i == RELU_TAPS[-1]:
                    break
        return taps


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk; `forward(x0, x1)` -> distance per image [N]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1 [N, 3, H, W] in [-1, 1]."""
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        total = 0
        for lin, a, b in zip(self.lins, f0, f1):
            diff = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            total = total + lin(diff).mean([2, 3], keepdim=True)
        return total.flatten()


def _unit_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + NORM_EPS)


# ---------------------------------------------------------------------- finding the files
def hub_backbone_path() -> Path:
    """Where torchvision's own download of the backbone would be (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILE


def find_backbone(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The AlexNet backbone file: `--lpips-backbone` when given (used alone), else
    $KVPROF_LPIPS_BACKBONE, else torch hub's checkpoint folder. LpipsUnavailable otherwise."""
    env = os.environ if env is None else env
    if explicit is not None:
        path = Path(explicit)
        if path.is_file():
            return path
        raise LpipsUnavailable(
            f"LPIPS backbone {BACKBONE_FILE} not found; looked in: {BACKBONE_FLAG} {path} (no such file). "
            f"{BACKBONE_FLAG} is used alone when given; pass the ImageNet AlexNet checkpoint {BACKBONE_FILE}"
        )
    looked = [f"{BACKBONE_FLAG} (not given)"]
    from_env = env.get(BACKBONE_ENV)
    if from_env:
        if Path(from_env).is_file():
            return Path(from_env)
        looked.append(f"${BACKBONE_ENV}={from_env} (no such file)")
    else:
        looked.append(f"${BACKBONE_ENV} (not set)")
    hub = hub_backbone_path()
    if hub.is_file():
        return hub
    looked.append(f"{hub} (no such file)")
    raise LpipsUnavailable(
        f"LPIPS backbone {BACKBONE_FILE} not found; looked in: {'; '.join(looked)}. "
        f"Pass {BACKBONE_FLAG} FILE or set {BACKBONE_ENV} (torchvision's ImageNet AlexNet weights)"
    )


def find_linear_heads() -> Path:
    """`weights/v0.1/alex.pth` of the installed lpips package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        raise LpipsUnavailable(
            "LPIPS linear heads not found: the 'lpips' package is not installed "
            "(install it with 'pip install --no-deps lpips'; it must not pull in torchvision)"
        )
    path = Path(spec.origin).parent / HEADS_IN_PACKAGE
    if not path.is_file():
        raise LpipsUnavailable(f"LPIPS linear heads not found: {path} (no such file in the installed lpips package)")
    return path


# ---------------------------------------------------------------------- loading
def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise LpipsUnavailable(f"{what} {path}: cannot read a state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise LpipsUnavailable(f"{what} {path}: expected a state dict, got {type(state).__name__}")
    return state


def backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision AlexNet checkpoint (classifier keys are ignored)."""
    state = _load_state(path, "LPIPS backbone")
    want = AlexNetFeatures().state_dict()
    missing = [k for k in want if k not in state]
    if missing:
        raise LpipsUnavailable(
            f"LPIPS backbone {path}: not a torchvision AlexNet state dict (missing {', '.join(missing)})"
        )
    bad = [k for k, v in want.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise LpipsUnavailable(f"LPIPS backbone {path}: wrong shapes for {', '.join(bad)}")
    return {k: state[k] for k in want}


def heads_state(path: Path) -> dict[str, torch.Tensor]:
    """lpips' `lin{k}.model.1.weight` tensors renamed to this module's `lins.{k}.weight`."""
    state = _load_state(path, "LPIPS linear heads")
    out = {}
    for k, c in enumerate(LPIPS_CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in state or tuple(state[key].shape) != (1, c, 1, 1):
            raise LpipsUnavailable(f"LPIPS linear heads {path}: no {key} of shape (1, {c}, 1, 1)")
        out[f"lins.{k}.weight"] = state[key]
    return out


def load_lpips(backbone: Path, heads: Path, device: torch.device | str = "cpu") -> LPIPSAlex:
    """LPIPSAlex in eval mode, float32, on `device`, with both weight files loaded strictly."""
    model = LPIPSAlex()
    state = {f"net.{k}": v for k, v in backbone_state(Path(backbone)).items()}
    state.update(heads_state(Path(heads)))
    state["shift"], state["scale"] = model.shift, model.scale
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_frames(model: LPIPSAlex, frames: torch.Tensor, ref: torch.Tensor, batch: int = LPIPS_BATCH) -> torch.Tensor:
    """LPIPS of each frame pair [N, 3, H, W] in [-1, 1] (clamped), float32 [N] on the model's device."""
    if frames.shape != ref.shape or frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be two [N, 3, H, W] tensors of one shape, got {tuple(frames.shape)} and {tuple(ref.shape)}")
    dev = model.shift.device
    out = []
    for s in range(0, frames.shape[0], batch):
        a = frames[s : s + batch].to(dev, torch.float32).clamp(-1, 1)
        b = ref[s : s + batch].to(dev, torch.float32).clamp(-1, 1)
        out.append(model(a, b))
    return torch.cat(out)


@dataclass(frozen=True)
class LpipsFiles:
    backbone: Path
    heads: Path


def resolve_files(explicit_backbone: str | Path | None = None, env: Mapping[str, str] | None = None) -> LpipsFiles:
    """Both weight files, or LpipsUnavailable naming what is missing (backbone checked first)."""
    backbone = find_backbone(explicit_backbone, env)
    return LpipsFiles(backbone, find_linear_heads())


def lpips_metric(frames: torch.Tensor, ref: torch.Tensor, explicit_backbone: str | Path | None = None,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """{'value': mean, 'per_frame': [...], 'backbone': path} or {'missing': why} (frames in [-1, 1])."""
    try:
        files = resolve_files(explicit_backbone)
        model = load_lpips(files.backbone, files.heads, device)
    except LpipsUnavailable as exc:
        return {"missing": str(exc)}
    per_frame = lpips_frames(model, frames, ref).double().cpu().tolist()
    return {"value": sum(per_frame) / len(per_frame), "per_frame": per_frame, "backbone": str(files.backbone),
            "heads": str(files.heads)}
