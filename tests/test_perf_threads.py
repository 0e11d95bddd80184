"""benchmarks/perf_threads.py (perf stat's per-thread counters of a traced and an untraced process) and the
gpu_session.sh step that takes them (a fake perf and a fake overhead.py stand in)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmark_scripts import load
from test_gpu_session import ROOT, _env, _script

# What `perf stat -x, --per-thread -e ... -o FILE` writes: comm-tid, value, unit, event, run time, %, metric, unit
UNTRACED = """# started on Sat Nov 28 07:20:00 2026

python3-1234,60000000000,,cycles,30000000000,100.00,,
python3-1234,90000000000,,instructions,30000000000,100.00,1.50,insn per cycle
python3-1234,180000000,,cache-misses,30000000000,100.00,,
python3-1234,45000000,,dTLB-load-misses,30000000000,100.00,,
pt_autograd_0-1240,<not counted>,,cycles,0,0.00,,
"""
TRACED = """# started on Sat Nov 28 07:20:00 2026

python3-2234,60000000000,,cycles:u,30000000000,100.00,,
python3-2234,84000000000,,instructions:u,30000000000,100.00,1.40,insn per cycle
python3-2234,252000000,,cache-misses:u,30000000000,100.00,,
python3-2234,<not supported>,,dTLB-load-misses:u,0,0.00,,
kvprof-drain-2240,3000000000,,cycles:u,30000000000,100.00,,
kvprof-drain-2240,6000000000,,instructions:u,30000000000,100.00,2.00,insn per cycle
"""


def test_the_model_thread_rates_traced_over_untraced(tmp_path: Path) -> None:
    pt = load("perf_threads")
    (tmp_path / "u.csv").write_text(UNTRACED)
    (tmp_path / "k.csv").write_text(TRACED)
    out = pt.compare(tmp_path / "u.csv", tmp_path / "k.csv")
    assert out["untraced"]["thread"] == "python3-1234" and out["traced"]["thread"] == "python3-2234"
    assert out["untraced"]["ipc"] == pytest.approx(1.5) and out["traced"]["ipc"] == pytest.approx(1.4)
    assert out["untraced"]["cache-misses_per_kinstr"] == pytest.approx(2.0)
    assert out["traced"]["cache-misses_per_kinstr"] == pytest.approx(3.0)
    assert out["traced"]["dTLB-load-misses_per_kinstr"] is None  # not supported: no rate, no guess
    assert out["traced"]["other_threads_cycles"] == {"kvprof-drain-2240": 3_000_000_000}
    ratio = out["traced_over_untraced"]
    assert ratio["ipc"] == pytest.approx(1.4 / 1.5) and ratio["cache-misses_per_kinstr"] == pytest.approx(1.5)
    assert ratio["dTLB-load-misses_per_kinstr"] is None


def test_a_file_without_counted_cycles_is_named(tmp_path: Path, capsys) -> None:
    pt = load("perf_threads")
    (tmp_path / "u.csv").write_text(UNTRACED)
    (tmp_path / "empty.csv").write_text("# started on Sat Nov 28\n\npython3-1,<not counted>,,cycles,0,0.00,,\n")
    with pytest.raises(SystemExit):
        pt.main([str(tmp_path / "u.csv"), str(tmp_path / "empty.csv")])
    assert "empty.csv: no thread with a counted 'cycles'" in capsys.readouterr().err


FAKE_PERF = """#!/bin/bash
# `perf stat -e cycles true` (the probe) succeeds; `perf stat ... -p PID -o FILE -- sleep S` writes FILE
out=""; while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out=$2; shift; done
[ -z "$out" ] && exit 0
case "$out" in *kvprof*) cat {traced} > "$out" ;; *) cat {untraced} > "$out" ;; esac
"""


def test_perfpair_step_counts_both_processes_at_once_and_compares_them(tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text(UNTRACED)
    (tmp_path / "k.csv").write_text(TRACED)
    out = tmp_path / "out"
    env = _env(tmp_path, OUT=str(out), OVERHEAD=str(tmp_path / "bin" / "fake_overhead"), PERF_AFTER_S="1", PERF_FOR_S="1",
               PIN_CPUS="0/0")  # CI has 2 cores: both fake processes on core 0
    _script(tmp_path / "bin" / "perf", FAKE_PERF.format(traced=tmp_path / "k.csv", untraced=tmp_path / "u.csv"))
    _script(tmp_path / "bin" / "fake_overhead", """#!/bin/bash
sleep 2; echo "{\\"args\\": \\"$*\\"}"
""")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "perfpair:prq_int4:42"], cwd=ROOT, env=env, timeout=60, check=True,
                   capture_output=True)
    report = json.loads((out / "perfpair.json").read_text())
    assert report["traced_over_untraced"]["ipc"] == pytest.approx(1.4 / 1.5)
    assert "--mode kvprof" in json.loads((out / "perfpair_kvprof.json").read_text())["args"]
    assert "--mode untraced" in json.loads((out / "perfpair_untraced.json").read_text())["args"]
    assert "perfpair: traced / untraced" in (out / "steps.log").read_text()


def test_perfpair_says_why_when_perf_cannot_count(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(tmp_path, OUT=str(out))
    _script(tmp_path / "bin" / "perf", "#!/bin/bash\necho 'Error: Access to performance monitoring is restricted' >&2; exit 1\n")
    subprocess.run(["bash", "benchmarks/gpu_session.sh", "perfpair:prq_int4:42"], cwd=ROOT, env=env, timeout=60, check=True,
                   capture_output=True)
    assert "perf cannot count here: Error: Access to performance monitoring is restricted" in (out / "steps.log").read_text()
    assert not (out / "perfpair.json").exists()
