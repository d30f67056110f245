#!/usr/bin/env bash
# One-command set-up and run, from a clean clone:
#   bash scripts/dev.sh run    # venv + install + verispec check specs/digits.toml
#   bash scripts/dev.sh test   # venv + install (with the dev tools) + lint + types + the test suite
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
# the test path needs ruff and mypy too: the dev extra is the test extra plus those two.
extra=test
[ "$what" = test ] && extra=dev
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extra]"

LINTED=(verispec solvers cli.py tests)

# mypy names a module after its directory, so `mypy verispec solvers cli.py tests` checks
# solvers/ as a top-level package `solvers` and, unable to run setuptools' editable finder
# (the package-dir mapping solvers/ -> verispec.solvers), types every `verispec.solvers`
# import as Any, silently under ignore_missing_imports: no error, and no checking of any call
# into the solvers. So mypy runs on a view of the installed layout, rebuilt each time under
# build/ (ignored): build/typecheck/verispec/ links every entry of verispec/ plus
# solvers -> solvers/, next to links to tests/ and cli.py. The same files are checked, under
# their real module names; errors in solvers/X.py are reported as verispec/solvers/X.py.
typecheck() {
  local root="$PWD" view="$PWD/build/typecheck" entry
  rm -rf "$view"
  mkdir -p "$view/verispec"
  for entry in verispec/*; do
    [ "${entry##*/}" = __pycache__ ] || ln -s "$root/$entry" "$view/verispec/"
  done
  ln -s "$root/solvers" "$view/verispec/solvers"
  ln -s "$root/tests" "$root/cli.py" "$view/"
  (cd "$view" && "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" \
    --cache-dir "$root/.mypy_cache" verispec cli.py tests)
}

case "$what" in
  run)  exec .venv/bin/verispec check specs/digits.toml "$@" ;;
  test)
    # every check runs and reports; any failure stops the command before the suite
    failed=()
    .venv/bin/ruff check "${LINTED[@]}" || failed+=("ruff check")
    .venv/bin/ruff format --check "${LINTED[@]}" || failed+=("ruff format --check")
    typecheck || failed+=("mypy")
    if [ "${#failed[@]}" -gt 0 ]; then
      printf 'dev.sh test: failed:' >&2
      printf ' [%s]' "${failed[@]}" >&2
      printf '\n' >&2
      exit 1
    fi
    exec .venv/bin/python -m pytest -q "$@" ;;
  *)    echo "usage: bash scripts/dev.sh run|test [args]" >&2; exit 2 ;;
esac
