#!/usr/bin/env bash
# The test suite: Rust unit/integration tests, then the ROS 2 integration
# tests (a real flowpilot_node against rclpy peers over Fast DDS).
# Uses a sourced system ROS 2 if there is one, else the embedded Jazzy venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ros.sh
# shellcheck disable=SC1091
source .ros/env.sh
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
cargo build --release --features ros --all-targets
cargo test --release --features ros
python3 -m pytest -q tests/ros
