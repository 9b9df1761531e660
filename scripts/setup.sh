#!/usr/bin/env bash
# One-command setup: venv, torch CPU first, the project, trap fixes, WordNet data, smoke check.
# Re-running is fast: each step is skipped when its result is already in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${COCU_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
NLTK_DIR="$ROOT/.nltk_data"
export NO_ALBUMENTATIONS_UPDATE=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
STAMP="$VENV/.cocu-install-stamp"
WANT="$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  step "installing torch 2.13.0 (CPU) first"
  $PIP install -q -c scripts/constraints.txt "torch==2.13.0"
  step "installing the project and its pinned dependencies"
  $PIP install -q -c scripts/constraints.txt -e ".[dev]"
  step "removing the dataclasses backport (breaks Prefect's ephemeral server)"
  $PIP uninstall -y -q dataclasses >/dev/null 2>&1 || true
  echo "$WANT" > "$STAMP"
else
  step "python dependencies already installed (delete $STAMP to force)"
fi
# The backport can come back with any later install: always make sure it is gone.
if $VENV/bin/python -c "import dataclasses,sys; sys.exit(0 if 'site-packages' in dataclasses.__file__ else 1)" 2>/dev/null; then
  $PIP uninstall -y -q dataclasses
fi

if [ ! -f "$NLTK_DIR/corpora/wordnet/data.noun" ]; then
  step "installing WordNet 3.0 from Debian into $NLTK_DIR"
  if [ ! -f /usr/share/wordnet/data.noun ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
  fi
  "$VENV/bin/python" -m cocu_core.wordnet_data --src /usr/share/wordnet --dest "$NLTK_DIR"
fi

step "smoke check"
NLTK_DATA="$NLTK_DIR" "$VENV/bin/cocu" doctor
