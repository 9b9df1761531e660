#!/usr/bin/env bash
# The services the test suite starts by itself, installed if missing (`make test` runs this after setup):
# PostgreSQL, for the deployment test's Prefect server (tests/pg_fixtures.py starts its own throwaway cluster).
set -euo pipefail
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL from Debian (for tests/test_deploy.py)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  # Debian's package starts a system cluster on port 5432; the tests use their own and need none running
  $SUDO pg_ctlcluster --help >/dev/null 2>&1 && for c in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
    $SUDO pg_ctlcluster ${c%/*} ${c#*/} stop || true
  done
fi
