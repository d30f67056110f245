#!/usr/bin/env bash
# One-command set-up and run, from a clean clone:
#   bash scripts/dev.sh run    # venv + install + verispec check specs/digits.toml
#   bash scripts/dev.sh test   # venv + install + the test suite
# Extra arguments after the command are passed on (to verispec check / pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"; shift || true
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
case "$what" in
  run)  exec .venv/bin/verispec check specs/digits.toml "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  *)    echo "usage: bash scripts/dev.sh run|test [args]" >&2; exit 2 ;;
esac
