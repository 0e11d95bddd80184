"""The profiler's own cost where a CPU test can see it (timings themselves live in benchmarks/)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_off_imports_happen_when_the_trace_opens_not_in_the_first_stage(tmp_path: Path) -> None:
    # torch imports torch._dynamo on the first op dispatched under a mode (1-2 s on CPU): the first
    # stage of every CPU trace was charged for it ("step[0] 2,712 ms host vs 21.5 ms of ops")
    code = f"""
import sys, torch
import kvprof.api as kv
with kv.trace({str(tmp_path / 't')!r}):
    print('torch._dynamo' in sys.modules)
    with kv.stage('step', 0):
        torch.ones(4) + 1
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "True"
