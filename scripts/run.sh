#!/usr/bin/env bash
# The main job: a simulated robot controlled by flowpilot_node over ROS 2.
#
#   scripts/run.sh [EPISODES]
#
# Sets up the embedded ROS 2 (unless one is sourced), builds, then starts the
# point-mass simulator (rclpy) and flowpilot_node with the bundled flow
# policy and config/pointmass.yaml — exactly what launch/flowpilot.launch.xml
# declares — runs the episodes, and prints success and loop statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
episodes=${1:-20}
scripts/setup-ros.sh >/dev/null
# shellcheck disable=SC1091
source .ros/env.sh
cargo build --release --features ros --bin flowpilot_node --bin flowpilot 2>&1 | tail -1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
log=$(mktemp)
./target/release/flowpilot_node --ros-args --params-file config/pointmass.yaml \
  -p model:="$PWD/models/pointmass_flow.safetensors" >"$log" 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null || true' EXIT
python3 sim/pointmass_sim.py --episodes "$episodes"
kill -TERM $node
wait $node
trap - EXIT
echo "flowpilot_node: $(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'loop summary.*' || echo 'no summary (see '"$log"')')"
