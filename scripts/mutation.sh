#!/usr/bin/env bash
# Mutation testing of the core numeric modules with their fast tests only (`make mutation`; not part of CI).
# Why a copy: mutmut 2 rewrites the mutated file in place while the tests run; running it on a copy of the tracked
# files keeps the working tree (and any test run from it meanwhile) untouched. Each module is mutated against its
# own fast test file, so one mutant costs one short pytest run (bounded time on a 2-core machine).
# Usage: bash scripts/mutation.sh [OUT_DIR]   (default runs/mutation; results in OUT_DIR/<module>.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="$(mkdir -p "${1:-$ROOT/runs/mutation}" && cd "${1:-$ROOT/runs/mutation}" && pwd)"
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: $PY -m pip install 'mutmut>=2.4,<3'" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cocu-mutation.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$WORK")
cd "$WORK"
export PYTHONPATH="$WORK" NLTK_DATA="${NLTK_DATA:-$ROOT/.nltk_data}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# module to mutate | the fast tests that pin it
PAIRS=(
  "cocu_core/curation/ranking.py|tests/test_curation_equations.py"
  "cocu_core/curation/sampling.py|tests/test_curation_sampling.py"
  "cocu_core/evaluation/metrics.py|tests/test_eval_metrics.py"
  "cocu_core/train/losses.py|tests/test_train_losses.py"
  "cocu_core/train/optim.py|tests/test_train_optim.py"
  "cocu_core/evaluation/segmentation.py|tests/test_eval_segmentation.py"
)
for pair in "${PAIRS[@]}"; do
  mod="${pair%%|*}"; tests="${pair##*|}"; name="$(basename "$mod" .py)"
  [[ -n "${ONLY:-}" && "$ONLY" != *"$name"* ]] && continue
  rm -f .mutmut-cache
  echo "== $mod against $tests ($(date -u +%H:%M:%S))"
  "$PY" -m mutmut run --paths-to-mutate "$mod" --tests-dir tests \
      --runner "$PY -m pytest -x -q -p no:cacheprovider -o addopts= $tests" --no-progress \
      > "$OUT/$name.log" 2>&1 || true   # mutmut exits non-zero when mutants survive
  "$PY" -m mutmut results > "$OUT/$name.txt" 2>&1 || true
  for id in $("$PY" -m mutmut result-ids survived 2>/dev/null); do
    echo "--- mutant $id"; "$PY" -m mutmut show "$id"
  done > "$OUT/$name.survivors.diff" 2>&1 || true
  echo "   $(grep -E 'Survived|Killed|Timeout|Suspicious' "$OUT/$name.txt" | tr '\n' ' ')"
done
echo "results in $OUT"
