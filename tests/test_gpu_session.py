"""Dry runs of benchmarks/gpu_session.sh steps on a machine without a GPU: a fake `nvidia-smi` and a fake
`kvprof sweep` (KV=...) stand in, so the step's own shell logic is what runs."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION10 = ROOT / "benchmarks" / "results" / "session10" / "call3"

FAKE_SMI = """#!/bin/bash
case " $* " in
  *" -L "*) echo "GPU 0: fake"; echo "GPU 1: fake" ;;
  *" -l "*) while true; do echo "2026/11/28 00:00:00.000, 0, 1980 MHz, 2619 MHz, 40, 100 W, 50 %, 0x0"; sleep 1; done ;;
  *) echo "fake" ;;
esac
"""
# `kvprof sweep --out DIR ...`: session 10's finished sweep of the same name (DIR one0, one1 or many)
FAKE_KV = """#!/bin/bash
out=""; while [ $# -gt 0 ]; do [ "$1" = "--out" ] && out=$2; shift; done
mkdir -p "$out" && cp "{results}/$(basename "$out").manifest.json" "$out/manifest.json"
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The step's environment: fake tools first on PATH, the carried wheels counted as installed, folders in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _script(bin_dir / "nvidia-smi", FAKE_SMI)
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / ".done").touch()
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KVTMP": str(tmp_path / "kv"), "SITE": str(site), **extra}


@pytest.mark.parametrize("order", ["ones-first", "many-first"])
def test_sweep_speedup_ends_while_the_clock_sampler_still_runs(tmp_path: Path, order: str) -> None:
    # Session 11: the one-GPU sweeps were awaited with a bare `wait`, which also waited for the nvidia-smi
    # sampler started before them (it never ends): the step hung until the device call's limit.
    out = tmp_path / "out"
    env = _env(tmp_path, OUT=str(out), KV=str(tmp_path / "bin" / "fake_kv"), SPEEDUP_ORDER=order)
    _script(tmp_path / "bin" / "fake_kv", FAKE_KV.format(results=SESSION10))
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "sweep-speedup"], cwd=ROOT, env=env, timeout=90, check=True,
                   capture_output=True)
    report = json.loads((out / "sweep_speedup.json").read_text())
    one_cells = sum(len(json.loads((SESSION10 / f"one{g}.manifest.json").read_text())["cells"]) for g in (0, 1))
    assert report["one"]["cells"] == one_cells  # both fake GPUs' one-GPU sweeps were awaited and read
    assert report["many"]["cells"] == 33 and (out / "many.manifest.json").is_file()
    assert "speed-up" in (out / "sweep_speedup.md").read_text()
    assert (out / "sweep_speedup_smi.csv").is_file()  # the sampler ran (whether it wrote a line before it was stopped is timing)


def test_pairs_run_one_series_per_gpu_pair_at_once_each_on_its_own_cores(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(tmp_path, OUT=str(out), OVERHEAD=str(tmp_path / "bin" / "fake_overhead"), PAIR_GPUS="0,1+2,3",
               PAIR_PINS="0-15/16-31+32-47/48-63", PAIR_MODES="+untraced,kvprof:nosampler")
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "calls"
    # stands in for overhead.py: says when it started and with what, then waits so that two series overlap
    _script(bin_dir / "fake_overhead", f"""#!/bin/bash
echo "$(date +%s.%N) $*" >> {calls}
sleep 3
echo '{{}}'
""")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "pairs:prq_int4:42:2"], cwd=ROOT, env=env, timeout=60, check=True,
                   capture_output=True)
    started = [line.split(" ", 1) for line in calls.read_text().splitlines()]
    assert len(started) == 2 and abs(float(started[0][0]) - float(started[1][0])) < 2.5  # at once (one after the other: >= 3 s apart)
    args = sorted(a for _, a in started)
    assert "--pair-gpus 0,1" in args[0] and "--pin-cpus 0-15/16-31" in args[0] and "--pairs 2" in args[0]
    assert "--pair-gpus 2,3" in args[1] and "--pin-cpus 32-47/48-63" in args[1]
    assert "--modes untraced,kvprof " in args[0] and "--modes untraced,kvprof:nosampler " in args[1]  # an empty entry: the default
    assert (out / "pairs_prq_int4-42-g01.json").is_file() and (out / "pairs_prq_int4-42-g23.json").is_file()


def test_spypair_samples_both_rollouts_at_once_and_compares_them(tmp_path: Path) -> None:
    # spypair: self_profile.py record for kvprof (GPU 0) and untraced (GPU 1) at the same moment, then compare
    out = tmp_path / "out"
    calls = tmp_path / "calls"
    env = _env(tmp_path, OUT=str(out), SELF_PROFILE=str(tmp_path / "bin" / "fake_spy"), PIN_CPUS="0/1", SPY_RATE="10")
    # stands in for `self_profile.py record OUT --mode MODE ...`: writes py-spy's raw lines for its mode
    _script(tmp_path / "bin" / "fake_spy", f"""#!/bin/bash
echo "$(date +%s.%N) $CUDA_VISIBLE_DEVICES $*" >> {calls}
n=50; [ "$4" = kvprof ] && n=80
echo "thread (1): MainThread;run_rollout (kvprof/workload/rollout.py:1);launch (libcuda.so.1) $n" > "$2"
sleep 2
""")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "spypair:prq_int4:42"], cwd=ROOT, env=env, timeout=60, check=True,
                   capture_output=True)
    started = [line.split(" ", 2) for line in calls.read_text().splitlines()]
    assert len(started) == 2 and abs(float(started[0][0]) - float(started[1][0])) < 1.5  # at once
    by_gpu = {gpu: args for _, gpu, args in started}
    assert "--mode kvprof" in by_gpu["0"] and "--mode untraced" in by_gpu["1"] and "--frames 42" in by_gpu["0"]
    report = json.loads((out / "spypair.json").read_text())
    assert report["rollout_s"] == [8.0, 5.0] and report["by_place"][0] == ["libcuda.so.1", 8.0, 5.0, 3.0]


def test_selfcost_keeps_the_traces_own_cost_line_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(tmp_path, OUT=str(out), KV=str(tmp_path / "bin" / "fake_kv"))
    # stands in for `kvprof trace ... --out DIR --run-id ID` (a trace folder with its meta) and `kvprof summary DIR`
    _script(tmp_path / "bin" / "fake_kv", """#!/bin/bash
if [ "$1" = trace ]; then
  out=""; id=""; while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; [ "$1" = --run-id ] && id=$2; shift; done
  mkdir -p "$out/$id" && echo '{"scopes": {"marks_s": 0.4}}' > "$out/$id/meta.json"
else
  echo "peak 1 B"; echo "kvprof's own cost: 1.00 s on the traced thread; about 2.00 % in all"
fi
""")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "selfcost:prq_int4:21"], cwd=ROOT, env=env, timeout=60,
                   check=True, capture_output=True)
    assert "about 2.00 % in all" in (out / "selfcost_prq_int4-21.txt").read_text()
    assert json.loads((out / "selfcost_prq_int4-21.meta.json").read_text())["scopes"]["marks_s"] == 0.4
    assert "selfcost: kvprof's own cost: 1.00 s" in (out / "steps.log").read_text()


def test_a_detached_step_outlives_its_call_and_collect_brings_it_back(tmp_path: Path) -> None:
    # bg:STEP / collect: how session 11 ran a 10-minute trace across two device calls of a warm machine
    env = _env(tmp_path)
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "bg:notes"], cwd=ROOT, env={**env, "OUT": str(tmp_path / "call1")},
                   timeout=60, check=True, capture_output=True)
    assert (tmp_path / "kv" / "bg" / "notes" / "pid").is_file()
    out = tmp_path / "call2"
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "collect"], cwd=ROOT, env={**env, "OUT": str(out)},
                   timeout=120, check=True, capture_output=True)
    assert (out / "bg" / "notes" / "notes.txt").is_file()  # written by the detached step, copied by the later call
    assert "collect: notes finished" in (out / "steps.log").read_text()


def test_gang_runs_every_mode_at_once_with_its_gpus_and_cores(tmp_path: Path) -> None:
    out = tmp_path / "out"
    calls = tmp_path / "calls"
    env = _env(tmp_path, OUT=str(out), GANG=str(tmp_path / "bin" / "fake_gang"), GANG_GPUS="0,1,2,3",
               GANG_PINS="0-15/16-31/32-47/48-63", GANG_MODES="untraced,kvprof,kvprof:quiet,kvprof:lean", GANG_S="100")
    _script(tmp_path / "bin" / "fake_gang", f"""#!/bin/bash
echo "$*" >> {calls}
echo '{{"rows": [], "summary": {{"over_untraced": {{}}, "rounds": 0}}}}'
""")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "gang:prq_int4:21:8"], cwd=ROOT, env=env, timeout=60, check=True,
                   capture_output=True)
    args = calls.read_text()
    for part in ("--method prq_int4", "--frames 21", "--rounds 8", "--budget-s 80", "--gpus 0,1,2,3",
                 "--modes untraced,kvprof,kvprof:quiet,kvprof:lean", "--pins 0-15/16-31/32-47/48-63", "--no-decode"):
        assert part in args, part
    assert json.loads((out / "gang_prq_int4-21.json").read_text())["summary"]["rounds"] == 0
    assert "gang: {'over_untraced'" in (out / "steps.log").read_text()
    assert (out / "gang_smi.csv").is_file()  # the GPUs' clocks sampled beside the rounds (the step ended: not left running)
