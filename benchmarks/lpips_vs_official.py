"""kvprof's LPIPS (AlexNet, no torchvision) against the official `lpips.LPIPS(net='alex', pnet_rand=True)`.

    python3 benchmarks/lpips_vs_official.py [--device cuda] [--backbone FILE] [--out FILE]

Needs torchvision and the lpips package (`pip install --no-deps lpips`) in this environment, which
kvprof itself does not. A seeded random torchvision AlexNet is saved to a temporary file (or
--backbone, e.g. the real alexnet-owt-7be5be79.pth, is used); both implementations load it and the
linear heads of the installed lpips package, then score the same image pairs. TF32 is switched off
so that both run true float32 convolutions. Passes when every distance agrees within 1e-5; the run
is recorded as JSON (default benchmarks/results/lpips_vs_official_<device>.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 1e-5
# (batch, height, width): LPIPS' own 64x64 patches, a square image, the tiny VAE's frame, Wan's 480x832 frame
CASES = ((8, 64, 64), (4, 224, 224), (6, 64, 96), (2, 480, 832))
# official lpips' trunk slices hold torchvision's features.<i> as slice<s>.<i>
SLICE_OF = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


def official_model(backbone_state: dict, device: torch.device):
    import lpips

    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # heads from the package's weights/v0.1
    trunk = {}
    for key, value in backbone_state.items():
        if key.startswith("features."):
            idx, leaf = key.split(".")[1:]
            trunk[f"slice{SLICE_OF[int(idx)]}.{idx}.{leaf}"] = value
    model.net.load_state_dict(trunk, strict=True)
    return model.to(device).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", type=Path, help="torchvision AlexNet state dict (default: a seeded random one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        import lpips
        import torchvision
    except ImportError as exc:
        print(f"needs torchvision and lpips in this environment ({exc}); pip install torchvision && "
              f"pip install --no-deps lpips", file=sys.stderr)
        return 2
    from kvprof.quality.lpips import find_linear_heads, load_lpips, lpips_frames

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.backbone is None:
            torch.manual_seed(args.seed)
            backbone = Path(tmp) / "random-alexnet.pth"
            torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
        else:
            backbone = args.backbone
        state = torch.load(backbone, map_location="cpu", weights_only=True)
        official = official_model(state, device)
        heads = find_linear_heads()
        ours = load_lpips(backbone, heads, device)

        gen = torch.Generator().manual_seed(args.seed + 1)
        rows = []
        with torch.no_grad():
            for batch, h, w in CASES:
                x = torch.rand((batch, 3, h, w), generator=gen) * 2 - 1
                for label, y in (("independent", torch.rand((batch, 3, h, w), generator=gen) * 2 - 1),
                                 ("perturbed", (x + 0.05 * torch.randn((batch, 3, h, w), generator=gen)).clamp(-1, 1))):
                    ref = official(x.to(device), y.to(device)).flatten().double().cpu()
                    mine = lpips_frames(ours, x, y).double().cpu()
                    diff = (ref - mine).abs().max().item()
                    rows.append({"batch": batch, "height": h, "width": w, "pair": label, "max_abs_diff": diff,
                                 "official_mean": ref.mean().item(), "kvprof_mean": mine.mean().item()})
                    print(f"{batch}x{h}x{w} {label:<11} official {ref.mean().item():.6f}  kvprof {mine.mean().item():.6f}"
                          f"  max |diff| {diff:.2e}")
                same = lpips_frames(ours, x, x.clone())
                rows.append({"batch": batch, "height": h, "width": w, "pair": "identical",
                             "max_abs_diff": same.abs().max().item(), "official_mean": None, "kvprof_mean": same.mean().item()})
    worst = max(r["max_abs_diff"] for r in rows)
    passed = worst <= TOLERANCE
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "lpips": _version("lpips"), "lpips_module": lpips.__file__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "tf32": False}
    record = {"benchmark": "lpips_vs_official", "backbone": "random (seed %d)" % args.seed if args.backbone is None
              else str(args.backbone), "heads": str(heads), "tolerance": TOLERANCE, "max_abs_diff": worst,
              "passed": passed, "environment": env, "cases": rows}
    out = args.out or Path(__file__).resolve().parent / "results" / f"lpips_vs_official_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'PASS' if passed else 'FAIL'}: max |official - kvprof| = {worst:.2e} (tolerance {TOLERANCE:g}); wrote {out}")
    return 0 if passed else 1


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
