#!/usr/bin/env bash
# Trains the ten digits members of specs/selective.toml (GloRo MinMax MLPs, one hidden layer
# of 32, identical but for the seed: initialisation and data order) into
# specs/models/selective/, with `verispec train --seeds`, which also writes member.toml
# there (the ensemble with the default alpha). Deterministic on the CPU; about 30 s per
# member on one core.
#   bash scripts/train_selective.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p specs/models/selective
.venv/bin/verispec train --data sklearn:digits --arch minmax-mlp --width 32 --depth 1 \
  --eps 0.3 --train-eps 0.4 --epochs 60 --lr 0.005 --seeds 10 --seed 1 \
  --out specs/models/selective/member.pt --no-progress
