#!/usr/bin/env bash
# The prepared GPU check (issue 19): the CUDA-marked tests on the device, then every engine and
# a training epoch timed on the device against the CPU in the same run (bench/gpu_check.py).
# About 6 minutes on one H200.
#
#   bash bench/gpu_check.sh                  # on a machine with CUDA
#   bash bench/gpu_check.sh --device cpu     # the dry run here: the same steps, small workloads
#
# It installs nothing and needs no network: the repository runs in place (a folder of links puts
# solvers/ at verispec.solvers, as the installed package has it), with .venv/bin/python where the
# project's set-up made one, else python3 (or $PYTHON). With OUT set, the figures go to
# $OUT/gpu_check.json and the tests' output to $OUT/cuda_tests.log.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
device=cuda
scale=1
smoothing_n=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    *) echo "usage: bash bench/gpu_check.sh [--device cuda|cpu] [--scale S]" >&2; exit 2 ;;
  esac
done
if [ "$device" = cpu ] && [ "$scale" = 1 ]; then
  scale=0.02
  smoothing_n=1000
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PY="$root/.venv/bin/python"; else PY=python3; fi
fi
view="$(mktemp -d)"
trap 'rm -rf "$view"' EXIT
mkdir -p "$view/verispec"
for entry in "$root"/verispec/*; do
  [ "${entry##*/}" = __pycache__ ] || ln -s "$entry" "$view/verispec/"
done
ln -s "$root/solvers" "$view/verispec/solvers"
export PYTHONPATH="$view:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"
log="${OUT:-$view}/cuda_tests.log"
echo "== pytest -m cuda on $device ($("$PY" -c 'import torch; print(torch.__version__)'))"
status=0
VERISPEC_TEST_DEVICE="$device" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py \
  2>&1 | tee "$log" || status=$?
echo "== timings on $device against the cpu (scale $scale, smoothing n = $smoothing_n)"
out=()
[ -n "${OUT:-}" ] && out=(--out "$OUT/gpu_check.json")
"$PY" bench/gpu_check.py --device "$device" --scale "$scale" --smoothing-n "$smoothing_n" "${out[@]}"
exit "$status"
