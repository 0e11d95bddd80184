"""The VBench adapter (issue 5): dimensions checked, missing Python and weights named word for word, and the real
driver run by another interpreter through a stand-in VBench."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from kvprof.errors import UsageError
from kvprof.quality import vbench


# ----------------------------------------------------------------------------- VBench adapter
def test_vbench_dims_validated():
    assert vbench.parse_dims("imaging_quality, aesthetic_quality,imaging_quality") == ("imaging_quality", "aesthetic_quality")
    with pytest.raises(UsageError, match="unknown or unsupported dimension.s. color"):
        vbench.parse_dims("color")


def test_vbench_missing_python_and_weights_word_for_word(tmp_path):
    video = torch.zeros(1, 3, 2, 8, 8)
    out = vbench.run_vbench(video, ["imaging_quality"], tmp_path / "w", env={})
    assert out == {"imaging_quality": {"missing": "VBench needs its own Python environment: pass --vbench-python PATH "
                                                  "or set KVPROF_VBENCH_PYTHON (neither is given)"}}
    out = vbench.run_vbench(video, ["imaging_quality"], tmp_path / "w", python=tmp_path / "nope", env={})
    assert out == {"imaging_quality": {"missing": f"VBench Python --vbench-python {tmp_path / 'nope'}: no such file"}}
    cache = tmp_path / "vbcache"
    env = {"VBENCH_CACHE_DIR": str(cache), "KVPROF_VBENCH_PYTHON": sys.executable}
    out = vbench.run_vbench(video, ["imaging_quality", "aesthetic_quality"], tmp_path / "w", env=env)
    assert out["imaging_quality"] == {"missing": (
        f"VBench imaging_quality needs {cache}/pyiqa_model/musiq_spaq_ckpt-358bb6af.pth (missing); kvprof never lets "
        "VBench download: put the file(s) there or point $VBENCH_CACHE_DIR at a folder that has them")}
    assert out["aesthetic_quality"] == {"missing": (
        f"VBench aesthetic_quality needs {cache}/clip_model/ViT-L-14.pt, "
        f"{cache}/aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth (missing); kvprof never lets VBench "
        "download: put the file(s) there or point $VBENCH_CACHE_DIR at a folder that has them")}
    assert not (tmp_path / "w" / "driver.py").exists()  # nothing started
    assert vbench.cache_dir({}) == Path.home() / ".cache" / "vbench"


FAKE_VBENCH = '''
import json, os, shutil
from pathlib import Path
import torch

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.output = Path(output_path)
        self.output.mkdir(parents=True, exist_ok=True)

    def evaluate(self, videos_path, name, dimension_list=None, local=False, mode="vbench_standard", **kw):
        assert local and mode == "custom_input"
        videos = sorted(Path(videos_path).glob("*.mp4"))
        frames = torch.stack([torch.load(v) for v in videos])
        env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "https_proxy", "VBENCH_CACHE_DIR")}
        env["wget"] = shutil.which("wget")
        res = {d: [frames.float().mean().item() / 255, [{"video_path": str(v)} for v in videos]] for d in dimension_list}
        res["_env"] = env
        (self.output / f"{name}_eval_results.json").write_text(json.dumps(res))
'''
FAKE_WRITE_VIDEO = '''
import torch
def write_video(path, frames, fps, video_codec=None, options=None):
    assert video_codec == "libx264" and fps == 16
    torch.save(frames, path)
'''


def test_vbench_subprocess_through_a_stand_in_vbench(tmp_path):
    """The real driver, run by another interpreter, with VBench and torchvision.io stood in for."""
    site = tmp_path / "site"
    (site / "vbench").mkdir(parents=True)
    (site / "vbench" / "__init__.py").write_text(FAKE_VBENCH)
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text("")
    (site / "torchvision" / "io.py").write_text(FAKE_WRITE_VIDEO)
    python = tmp_path / "vbench-python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    cache = tmp_path / "cache"
    (cache / "pyiqa_model").mkdir(parents=True)
    (cache / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth").write_bytes(b"")
    video = torch.linspace(-1, 1, 2 * 3 * 3 * 4 * 5).reshape(2, 3, 3, 4, 5)
    work = tmp_path / "work"
    out = vbench.run_vbench(video, ["imaging_quality", "temporal_flickering"], work, python=python,
                            device="cpu", env={"VBENCH_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"})
    expected = vbench.video_to_uint8(video).float().mean().item() / 255
    assert out == {"imaging_quality": pytest.approx(expected), "temporal_flickering": pytest.approx(expected)}
    env = json.loads((work / "results" / "kvprof_eval_results.json").read_text())["_env"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["https_proxy"] == vbench.CLOSED_PROXY
    assert env["VBENCH_CACHE_DIR"] == str(cache) and env["wget"] == str(work / "no-download-bin" / "wget")


def test_vbench_failure_is_reported_missing(tmp_path):
    python = tmp_path / "broken-python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named vbench' >&2\nexit 3\n")
    python.chmod(0o755)
    out = vbench.run_vbench(torch.zeros(1, 3, 2, 8, 8), ["temporal_flickering"], tmp_path / "w", python=python,
                            env={"VBENCH_CACHE_DIR": str(tmp_path)})
    assert out["temporal_flickering"]["missing"] == (
        "VBench exited with code 3: ModuleNotFoundError: No module named vbench "
        f"(full log: {tmp_path / 'w' / 'vbench.log'})")
