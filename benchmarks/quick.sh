#!/usr/bin/env bash
# `make bench`: the quick benchmarks (small sizes, about 7 min on 2 shared cores), then their ratios in one summary.
# The full-size runs, the scale simulation at 200k/2M pairs and the ablation are separate (benchmarks/RESULTS.md
# names their commands). PY: the interpreter (default .venv/bin/python); BENCH_LOG: where the output is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=${BENCH_LOG:-runs/bench_quick.log}
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
QUICK=(
  "benchmarks/bench_download.py --n 2000 --shard-size 500 --repeats 2"
  "benchmarks/bench_embed.py --n 1000 --shard-size 500 --repeats 2"
  "benchmarks/bench_curation.py --quick"
  "benchmarks/bench_train_step.py --config groupvit-toy --threads 1 --clock cpu --steps 3 --warmup 1"
  "benchmarks/bench_eval.py --images 100"
  "benchmarks/bench_scale.py --n 20000 --root /tmp/cocu_scale_quick --fresh"
)
# the lines of each benchmark's output that carry its ratio or headline figure
KEY='overhead (wall|CPU) ratio|speed-up \(|^  (hf|ours-same|ours-cocu) |speed ratio|^index: |^curate: '
summary=""
one=$(mktemp)
start=$SECONDS
for b in "${QUICK[@]}"; do
  echo "== $b" | tee -a "$LOG"
  t=$SECONDS
  # shellcheck disable=SC2086  # the entry is a command line: split it
  $PY $b 2>&1 | grep -v -e "Warning" -e "warnings.warn" -e "pkg_resources" -e '^{' | tee "$one" | tee -a "$LOG"
  echo "   ($((SECONDS - t)) s)" | tee -a "$LOG"
  summary+="${b%% *} ($((SECONDS - t)) s)"$'\n'"$(grep -E "$KEY" "$one" | sed 's/^/    /' || true)"$'\n'
done
rm -f "$one"
echo
echo "== summary (total $((SECONDS - start)) s; full output in $LOG)"
printf '%s' "$summary"
