#!/usr/bin/env bash
# Trains the three digits members of specs/cascade.toml and specs/voting.toml (GloRo MinMax
# MLPs, one hidden layer of 32; seeds and training radii differ) into specs/models/.
# Deterministic on the CPU for fixed seeds; about a minute each on one core.
#   bash scripts/train_members.sh
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/verispec
common=(--data sklearn:digits --arch minmax-mlp --width 32 --depth 1 --eps 0.3 --epochs 60 --lr 0.005)
$V train "${common[@]}" --train-eps 0.4 --seed 1 --out specs/models/member_a.pt
$V train "${common[@]}" --train-eps 0.25 --seed 2 --out specs/models/member_b.pt
$V train "${common[@]}" --train-eps 0.6 --seed 3 --out specs/models/member_c.pt
