#!/usr/bin/env bash
# End-to-end check of the TUI in a real terminal (issue 4): tmux runs the traced tiny rollout
# with the live TUI, send-keys drives it, capture-pane reads the screen.
#
#   bash tests/tui_tmux_e2e.sh            (about 30 s on CPU; needs tmux: apt-get install tmux)
#
# 1. live:   `kvprof trace --method bf16 --tui --out DIR` (falls back to the same wiring through
#            tui.app.run_live while the CLI lacks --tui); waits for status `complete`; checks the
#            screen shows the peak and the category names; `2` breakdown view; `q` quits.
# 2. replay: `kvprof tui DIR/<run>` (or `python -m tui.app`); checks the peak again.
# Screens are saved under $OUT (printed at the end); exit status 0 when every check passed.
set -euo pipefail

cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "tmux not installed (apt-get install tmux)"; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/kvprof-tui-e2e.XXXXXX)}
SESSION=kvprof-tui-e2e-$$
RUN=e2e
PY=${PYTHON:-python}
FAILED=0
trap 'tmux kill-session -t "$SESSION" 2>/dev/null || true' EXIT

if kvprof trace --help 2>/dev/null | grep -q -- '--tui'; then
  LIVE="kvprof trace --method bf16 --tui --out $OUT --run-id $RUN"
else
  LIVE="$PY -c 'import sys; from pathlib import Path; from kvprof.runner import TraceRequest, run_trace; from tui.app import run_live; out = Path(sys.argv[1]); run_live(out / \"$RUN\", lambda: run_trace(TraceRequest(method=\"bf16\", out=out, run_id=\"$RUN\")))' $OUT"
fi
if kvprof --help 2>/dev/null | grep -qw 'tui'; then
  REPLAY="kvprof tui $OUT/$RUN"
else
  REPLAY="$PY -m tui.app $OUT/$RUN"
fi

screen() { tmux capture-pane -p -t "$SESSION"; }

wait_screen() {  # wait_screen PATTERN SECONDS NAME: poll the pane until PATTERN shows
  local pattern=$1 limit=$2 name=$3 i
  for ((i = 0; i < limit * 2; i++)); do
    if screen | grep -q -- "$pattern"; then screen >"$OUT/screen-$name.txt"; return 0; fi
    sleep 0.5
  done
  screen >"$OUT/screen-$name.txt"
  echo "FAIL: '$pattern' not on screen after ${limit}s (see $OUT/screen-$name.txt)"
  cat "$OUT/screen-$name.txt"
  FAILED=1
  return 1
}

check() {  # check FILE PATTERN...: every pattern on the saved screen
  local file=$1; shift
  for p in "$@"; do
    grep -q -- "$p" "$file" || { echo "FAIL: '$p' not in $file"; FAILED=1; }
  done
}

echo "live: $LIVE"
tmux new-session -d -s "$SESSION" -x 160 -y 48 "$LIVE; echo EXIT=\$? >$OUT/exit-live; sleep 60"
wait_screen "running" 60 live-running || true
wait_screen " complete " 180 live-complete
sleep 1
screen >"$OUT/screen-live-complete.txt"
check "$OUT/screen-live-complete.txt" "peak [0-9.]* MiB during rollout/decode" "weights" "kv_fp" "decode" "latents" \
  "chunk 0" "last event"
tmux send-keys -t "$SESSION" 2
wait_screen "breakdown at the cursor and at the peak" 10 live-breakdown \
  && check "$OUT/screen-live-breakdown.txt" "by stage of origin" "rollout/decode" "setup" "weights"
tmux send-keys -t "$SESSION" q
for ((i = 0; i < 30; i++)); do [[ -f $OUT/exit-live ]] && break; sleep 0.5; done
[[ "$(cat "$OUT/exit-live" 2>/dev/null)" == "EXIT=0" ]] || { echo "FAIL: live run exit: $(cat "$OUT/exit-live" 2>/dev/null)"; FAILED=1; }
grep -q '"status": "complete"' "$OUT/$RUN/meta.json" || { echo "FAIL: trace not complete"; FAILED=1; }
tmux kill-session -t "$SESSION"

echo "replay: $REPLAY"
tmux new-session -d -s "$SESSION" -x 160 -y 48 "$REPLAY; echo EXIT=\$? >$OUT/exit-replay; sleep 60"
wait_screen "peak [0-9.]* MiB" 30 replay && check "$OUT/screen-replay.txt" "weights" "kv_fp" "decode" " complete "
tmux send-keys -t "$SESSION" q
for ((i = 0; i < 20; i++)); do [[ -f $OUT/exit-replay ]] && break; sleep 0.5; done
[[ "$(cat "$OUT/exit-replay" 2>/dev/null)" == "EXIT=0" ]] || { echo "FAIL: replay exit: $(cat "$OUT/exit-replay" 2>/dev/null)"; FAILED=1; }

echo "screens saved in $OUT"
if ((FAILED)); then echo "tmux e2e: FAILED"; exit 1; fi
echo "tmux e2e: OK"
