"""benchmarks/gang.py: several overhead.py modes at once, one a GPU, rotated round by round (issue 15)."""
from __future__ import annotations

from pathlib import Path

import pytest


def test_gang_runs_every_mode_each_round_rotating_their_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # benchmarks/gang.py: all modes at once, one a GPU; round r puts mode i on slot (i + r) mod N; ratios are read
    # against untraced of the same round; the slots' own speed is reported; --budget-s stops before a round that
    # would not fit
    import json

    from benchmark_scripts import load

    gang = load("gang")
    oh = gang.overhead
    started: list[tuple[int, str, str, frozenset]] = []
    speed = {"untraced": 10.0, "kvprof": 11.0, "kvprof:quiet": 10.2}
    slow_gpu = {"0": 1.0, "1": 1.0, "2": 1.1}  # GPU 2 is 10 % slower, whoever runs on it

    def run_one(mode: str, shared: list[str], gpu: str | None = None, cpus: set | None = None) -> tuple:
        started.append((len(started) // 3, mode, gpu, frozenset(cpus or ())))
        return mode, gpu

    def row(proc: tuple, mode: str, timeout: float, **extra) -> dict:
        if mode == "kvprof:quiet" and extra["round"] == 1:
            return {"mode": mode, "failed": ["boom"], **extra}  # a failed run leaves its round's other ratios
        return {"mode": mode, "rollout_wall_s": speed[mode] * slow_gpu[proc[1]], **extra,
                "cpu_probe_ms": [10.0 * slow_gpu[proc[1]]] * 2}  # the slow GPU's host cores are slow too, here

    monkeypatch.setattr(oh, "_run_one", run_one)
    monkeypatch.setattr(oh, "_row", row)
    log = tmp_path / "rows.jsonl"
    assert gang.main(["--gpus", "0,1,2", "--pins", "0/1/2-3", "--modes", "untraced,kvprof,kvprof:quiet", "--rounds", "3",
                      "--rows-log", str(log), "--method", "prq_int4", "--frames", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r, m, g) for r, m, g, _ in started] == [
        (0, "untraced", "0"), (0, "kvprof", "1"), (0, "kvprof:quiet", "2"),
        (1, "untraced", "1"), (1, "kvprof", "2"), (1, "kvprof:quiet", "0"),
        (2, "untraced", "2"), (2, "kvprof", "0"), (2, "kvprof:quiet", "1")]
    assert {g: c for _, _, g, c in started} == {"0": {0}, "1": {1}, "2": {2, 3}}  # each GPU's processes on its own CPUs
    ratios = out["summary"]["over_untraced"]
    # kvprof: 11/10, 12.1/10, 11/11 -> every round's ratio against the untraced run beside it, the slow GPU included
    assert ratios["kvprof"]["each"] == pytest.approx([1.1, 1.21, 1.0]) and ratios["kvprof"]["median"] == pytest.approx(1.1)
    assert ratios["kvprof:quiet"]["rounds"] == 2  # round 1 failed
    # each round's CPU probe over untraced's: kvprof ran on the slow slot in round 1, untraced in round 2
    assert ratios["kvprof"]["probe_each"] == pytest.approx([1.0, 1.1, 1 / 1.1], abs=1e-4)
    assert out["summary"]["slot_speed"]["2"] > out["summary"]["slot_speed"]["0"]  # the slow GPU shows as a slot
    assert len(log.read_text().splitlines()) == 9 and all("round" in json.loads(x) for x in log.read_text().splitlines())
    # --budget-s: after one round of (stand-in) time, a budget of 0 s starts no second round
    started.clear()
    assert gang.main(["--gpus", "0,1", "--modes", "untraced,kvprof", "--rounds", "5", "--budget-s", "0"]) == 0
    assert len(started) == 2 and "would not fit" in capsys.readouterr().err
    for bad in (["--gpus", "0", "--modes", "untraced"], ["--gpus", "0,1", "--modes", "kvprof,kvprof:lean"],
                ["--gpus", "0,1", "--modes", "untraced,kvprof:bogus"], ["--gpus", "0,1", "--modes", "untraced,kvprof", "--pins", "0-1/1"],
                ["--gpus", "0,1", "--modes", "untraced,kvprof", "--pins", "0"]):
        with pytest.raises(SystemExit):
            gang.main(bad)


def test_gang_repeated_modes_make_several_pairs_a_round_and_untraced_copies_the_noise_floor(
        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # untraced,kvprof,untraced,kvprof on four GPUs: two pairs a round, copy k of kvprof against copy k of untraced;
    # untraced's second copy over its first, each round, is the noise floor at the same moment
    import json

    from benchmark_scripts import load

    gang = load("gang")
    oh = gang.overhead
    started: list[tuple[str, str]] = []
    gpu_speed = {"0": 1.0, "1": 1.0, "2": 1.2, "3": 1.2}  # GPUs 2 and 3 (their cores) 20 % slower

    def run_one(mode: str, shared: list[str], gpu: str | None = None, cpus: set | None = None) -> tuple:
        started.append((mode, gpu))
        return mode, gpu

    def row(proc: tuple, mode: str, timeout: float, **extra) -> dict:
        return {"mode": mode, "rollout_wall_s": {"untraced": 100.0, "kvprof": 102.0}[mode] * gpu_speed[proc[1]], **extra}

    monkeypatch.setattr(oh, "_run_one", run_one)
    monkeypatch.setattr(oh, "_row", row)
    assert gang.copies(["untraced", "kvprof", "untraced", "kvprof", "twin"]) == [0, 0, 1, 1, 0]
    assert gang.main(["--gpus", "0,1,2,3", "--modes", "untraced,kvprof,untraced,kvprof", "--rounds", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert started[:4] == [("untraced", "0"), ("kvprof", "1"), ("untraced", "2"), ("kvprof", "3")]
    assert started[4:] == [("untraced", "1"), ("kvprof", "2"), ("untraced", "3"), ("kvprof", "0")]
    assert [(r["mode"], r["copy"], r["slot"]) for r in out["rows"][4:]] == [
        ("untraced", 0, 1), ("kvprof", 0, 2), ("untraced", 1, 3), ("kvprof", 1, 0)]
    k = out["summary"]["over_untraced"]["kvprof"]
    # round 0: 102/100 and 122.4/120; round 1: 122.4/100 (kvprof on a slow slot) and 102/120
    assert k["rounds"] == 4 and k["each"] == pytest.approx([1.02, 1.02, 1.224, 0.85], abs=1e-4)
    assert k["median"] == pytest.approx(1.02) and k["pooled"] == pytest.approx((102 + 122.4) * 2 / 440, abs=1e-4)
    assert out["summary"]["untraced_a_a"] == pytest.approx([1.2, 1.2])  # same-moment A/A: the slots' own difference
