#!/usr/bin/env bash
# SAC update throughput, flowpilot (candle) vs PyTorch eager, side by side:
# the same K=4, C=256 flow actor (obs 39, act 8), 2x256 critics, batch 256,
# THREADS threads each, alternating REPEAT times.
#
#   bench/sac_compare.sh [PYTHON_WITH_TORCH] [THREADS] [REPEAT] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
threads=${2:-1}
repeat=${3:-3}
n=${4:-30}
cargo build --release --bin flowpilot 2>&1 | tail -1
m=$(mktemp -d)/k4.safetensors
./target/release/flowpilot new "$m" --obs 39 --act 8 --blocks 4 --hidden 256 --random >/dev/null
for i in $(seq "$repeat"); do
  RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads ./target/release/flowpilot --threads "$threads" bench "$m" --sac --n "$n"
  "$py" bench/sac_torch.py --threads "$threads" --n "$n"
done
