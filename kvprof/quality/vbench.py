"""VBench through its own Python environment, as a subprocess that may not download anything.

VBench pins its own torch, torchvision, decord, clip, pyiqa..., so it runs from another
interpreter (`--vbench-python PATH` or $KVPROF_VBENCH_PYTHON). Before starting it, the weight
files each chosen dimension loads in VBench's local mode are checked under VBench's cache folder
($VBENCH_CACHE_DIR, else ~/.cache/vbench, as `vbench/utils.py` resolves it); a dimension whose
files are missing is reported missing with their paths. The subprocess runs with the Hugging
Face libraries offline, proxies pointing at a closed local port and `wget`, `curl` and `git`
replaced by stubs that fail, so a file VBench would fetch is an error, never a download.

Only the dimensions that need no prompt are offered (kvprof's prompts are embeddings).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kvprof.errors import UsageError

PYTHON_ENV = "KVPROF_VBENCH_PYTHON"
PYTHON_FLAG = "--vbench-python"
CACHE_ENV = "VBENCH_CACHE_DIR"
VIDEO_FPS = 16  # Wan / Self-Forcing output frame rate
TIMEOUT_S = 3600
RUN_NAME = "kvprof"
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once

# Files VBench's init_submodules(local=True) and the dimension modules read, relative to the cache.
DIMENSION_FILES: dict[str, tuple[str, ...]] = {
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "subject_consistency": ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "temporal_flickering": (),
}
DIMENSIONS: tuple[str, ...] = tuple(DIMENSION_FILES)

DRIVER = r'''
"""kvprof's VBench driver: frames.pt -> mp4 -> VBench custom_input -> result.json."""
import json, sys
from pathlib import Path

args = json.loads(Path(sys.argv[1]).read_text())
import torch

frames = torch.load(args["frames"], weights_only=True)  # [B, T, H, W, 3] uint8
videos = Path(args["videos"])
videos.mkdir(parents=True, exist_ok=True)
writer = None
try:
    from torchvision.io import write_video

    def writer(path, clip):
        write_video(str(path), clip, fps=args["fps"], video_codec="libx264", options={"crf": "0"})
except ImportError:
    pass
if writer is None:
    import imageio.v2 as imageio

    def writer(path, clip):
        imageio.mimwrite(str(path), clip.numpy(), fps=args["fps"], quality=10)
for b in range(frames.shape[0]):
    writer(videos / f"{args['name']}-{b}.mp4", frames[b])

from vbench import VBench

bench = VBench(torch.device(args["device"]), args["full_info"], args["output"])
bench.evaluate(videos_path=str(videos), name=args["name"], dimension_list=args["dims"], local=True,
               mode="custom_input")
results = json.loads((Path(args["output"]) / f"{args['name']}_eval_results.json").read_text())
scores = {}
for dim in args["dims"]:
    value = results[dim]
    scores[dim] = float(value[0] if isinstance(value, (list, tuple)) else value)
Path(args["result"]).write_text(json.dumps(scores))
'''

_STUB = "#!/bin/sh\necho \"kvprof: $(basename \"$0\") is disabled while VBench runs (no downloads)\" >&2\nexit 1\n"


def parse_dims(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'imaging_quality,aesthetic_quality' (or a list) -> validated names; UsageError otherwise."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    dims = tuple(dict.fromkeys(d.strip() for d in items if d.strip()))
    unknown = [d for d in dims if d not in DIMENSION_FILES]
    if unknown:
        raise UsageError(
            f"--vbench-dims: unknown or unsupported dimension(s) {', '.join(unknown)}; kvprof runs the "
            f"prompt-free ones: {', '.join(DIMENSIONS)}"
        )
    return dims


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """VBench's cache folder, resolved as vbench/utils.py does."""
    env = os.environ if env is None else env
    return Path(env[CACHE_ENV]) if env.get(CACHE_ENV) else Path.home() / ".cache" / "vbench"


def missing_files(dims: Sequence[str], cache: Path) -> dict[str, list[Path]]:
    """For each dimension, the weight files (or folders) it needs that are absent."""
    return {d: [cache / rel for rel in DIMENSION_FILES[d] if not (cache / rel).exists()] for d in dims}


def missing_message(dim: str, paths: Sequence[Path]) -> str:
    return (f"VBench {dim} needs {', '.join(str(p) for p in paths)} (missing); kvprof never lets VBench download: "
            f"put the file(s) there or point ${CACHE_ENV} at a folder that has them")


def find_python(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """(interpreter, '') or (None, why not)."""
    env = os.environ if env is None else env
    if explicit is not None:
        path, where = Path(explicit), f"{PYTHON_FLAG} {explicit}"
    elif env.get(PYTHON_ENV):
        path, where = Path(env[PYTHON_ENV]), f"${PYTHON_ENV}={env[PYTHON_ENV]}"
    else:
        return None, (f"VBench needs its own Python environment: pass {PYTHON_FLAG} PATH or set {PYTHON_ENV} "
                      f"(neither is given)")
    if not path.is_file():
        return None, f"VBench Python {where}: no such file"
    if not os.access(path, os.X_OK):
        return None, f"VBench Python {where}: not executable"
    return path, ""


def offline_env(base: Mapping[str, str], stubs: Path, cache: Path) -> dict[str, str]:
    """The subprocess environment: offline hubs, refused proxies, download tools stubbed."""
    env = dict(base)
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DIFFUSERS_OFFLINE": "1",
        CACHE_ENV: str(cache),
        "http_proxy": CLOSED_PROXY, "https_proxy": CLOSED_PROXY, "HTTP_PROXY": CLOSED_PROXY,
        "HTTPS_PROXY": CLOSED_PROXY, "ALL_PROXY": CLOSED_PROXY, "all_proxy": CLOSED_PROXY,
        "no_proxy": "", "NO_PROXY": "",
        "PATH": str(stubs) + os.pathsep + base.get("PATH", ""),
    })
    return env


def _write_stubs(folder: Path) -> Path:
    stubs = folder / "no-download-bin"
    stubs.mkdir(parents=True, exist_ok=True)
    for tool in ("wget", "curl", "git"):
        p = stubs / tool
        p.write_text(_STUB)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return stubs


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] uint8 on the host."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).contiguous().cpu()


def run_vbench(video: torch.Tensor, dims: Sequence[str], workdir: Path, *, python: str | Path | None = None,
               device: str = "cuda", env: Mapping[str, str] | None = None, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Score `video` ([B, 3, T, H, W] in [-1, 1]) on `dims`: {dim: score or {'missing': why}}."""
    env = os.environ if env is None else env
    dims = parse_dims(list(dims))
    if not dims:
        return {}
    exe, why = find_python(python, env)
    if exe is None:
        return {d: {"missing": why} for d in dims}
    cache = cache_dir(env)
    absent = missing_files(dims, cache)
    out: dict[str, Any] = {d: {"missing": missing_message(d, absent[d])} for d in dims if absent[d]}
    runnable = [d for d in dims if not absent[d]]
    if not runnable:
        return out
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.save(video_to_uint8(video), workdir / "frames.pt")
    (workdir / "driver.py").write_text(DRIVER)
    args = {"frames": str(workdir / "frames.pt"), "videos": str(workdir / "videos"), "fps": VIDEO_FPS,
            "name": RUN_NAME, "device": device, "dims": runnable, "full_info": str(workdir / "unused_full_info.json"),
            "output": str(workdir / "results"), "result": str(workdir / "result.json")}
    (workdir / "args.json").write_text(json.dumps(args, indent=2))
    log = workdir / "vbench.log"
    try:
        with open(log, "w") as fh:
            proc = subprocess.run([str(exe), str(workdir / "driver.py"), str(workdir / "args.json")], cwd=workdir,
                                  env=offline_env(env, _write_stubs(workdir), cache), stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    except OSError as exc:
        out.update({d: {"missing": f"VBench Python {exe}: cannot start ({exc.strerror})"} for d in runnable})
        return out
    if rc != 0 or not (workdir / "result.json").is_file():
        tail = _last_line(log)
        what = f"timed out after {timeout_s:g} s" if rc is None else f"exited with code {rc}"
        out.update({d: {"missing": f"VBench {what}: {tail} (full log: {log})"} for d in runnable})
        return out
    scores = json.loads((workdir / "result.json").read_text())
    for d in runnable:
        out[d] = float(scores[d]) if d in scores else {"missing": f"VBench returned no score for {d} (log: {log})"}
    return {d: out[d] for d in dims}


def _last_line(path: Path) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no output)"
    return lines[-1][:300] if lines else "(no output)"
