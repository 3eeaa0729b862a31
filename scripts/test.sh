#!/usr/bin/env bash
# The test suite: Rust unit/integration tests, then the ROS 2 integration
# tests (a real flowpilot_node against rclpy peers over Fast DDS).
# Uses a sourced system ROS 2 if there is one, else the embedded Jazzy venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ros.sh
# shellcheck disable=SC1091
source .ros/env.sh
export PATH="$HOME/.cargo/bin:$PATH"
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
# The whole workspace, node included (the node is the root package's `ros` feature).
cargo build --release --workspace --features flowpilot/ros --all-targets
# The fuzz tests (crates/core/tests/fuzz.rs) run this long per parser.
export FLOWPILOT_FUZZ_SECS=${FLOWPILOT_FUZZ_SECS:-15}
cargo test --release --workspace --features flowpilot/ros
# The crate docs, private items included (the house tour): no broken link.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --workspace --features flowpilot/ros
# Package as a robot would (colcon + colcon-ros-cargo + cargo-ament-build),
# reusing the build above (the workspace maps its build dir onto target/).
command -v cargo-ament-build >/dev/null || cargo install --locked cargo-ament-build
ws=target/colcon_ws
mkdir -p "$ws/src" "$ws/build"
ln -sfn ../../.. "$ws/src/flowpilot"
ln -sfn "$PWD/target" "$ws/build/flowpilot"
(cd "$ws" && colcon build --cargo-args --features ros > colcon.log 2>&1) || { tail -50 "$ws/colcon.log"; exit 1; }
python3 -m pytest -q tests/ros tests/import
