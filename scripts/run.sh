#!/usr/bin/env bash
# The main job, for now: build, then run the bundled point-mass flow policy
# against the Gaussian baseline trained on the same demonstrations, and
# benchmark the real-time sampler on the reference config.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
fp=./target/release/flowpilot
echo "== bundled flow policy (sampled every tick) =="
$fp eval pointmass models/pointmass_flow.safetensors --episodes 200
echo "== Gaussian baseline, same demos (sampled / mean action) =="
$fp eval pointmass models/pointmass_gaussian.safetensors --episodes 200
$fp eval pointmass models/pointmass_gaussian.safetensors --episodes 200 --mode zero
echo "== real-time sampler, reference config (obs 39, act 8, C=256, K=4) =="
tmp=$(mktemp -d)
$fp new "$tmp/k4.safetensors" --obs 39 --act 8 --hidden 256 --blocks 4 --random >/dev/null
$fp bench "$tmp/k4.safetensors" --twin
rm -rf "$tmp"
