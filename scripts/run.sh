#!/usr/bin/env bash
# The main job: a simulated robot driven by flowpilot_node over ROS 2.
#
#   scripts/run.sh [reacher|pendulum|reach|pointmass] [EPISODES] [--finetune]   (default: reacher 10)
#
# --finetune runs an on-robot fine-tuning session instead (node + learner +
# sim, scripts/finetune_session.py): the return before, EPISODES episodes of
# logged robot time with the learner hot-swapping new versions in (reacher:
# an evaluation every 150 episodes), and the return after, with a learning
# curve PNG, a JSON summary and a session report (report/index.html) in
# ~/.local/state/flowpilot/<task>/. `reach` is the
# robot whose bundled policy takes a detour; `pendulum` is MuJoCo
# InvertedPendulum-v5 with a 1-D action, in real time (40 s an episode).
#
# Sets up the embedded ROS 2 (unless one is sourced) and MuJoCo, builds,
# then starts the simulated robot (rclpy) and flowpilot_node exactly as
# launch/flowpilot.launch.xml declares it (scripts/launch_run.py), with the
# bundled policy and config/<task>.yaml. Prints each episode, the mean return
# (and the scripted expert's on the same seeds, for reference), and the
# control loop's statistics.
#
#   scripts/run.sh metaworld:<task> [EPISODES] [--model PATH]   (e.g. metaworld:push-v3 20)
#
# Any Meta-World MT1 task by name (docs/manipulation.md): sets up .manip/
# (scripts/setup-manip.sh), records 10 scripted-expert demonstrations and
# trains a BC flow into ~/.local/state/flowpilot/metaworld_<task>/ unless
# they are there already (or serves --model), generates the node's
# parameters (sim/manip_config.py), runs sim/manip_sim.py in real time
# (80 Hz) against the node and prints the success rate, then the scripted
# expert's on the same episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
finetune=0
given_model=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --finetune) finetune=1 ;;
    --model) given_model=$(realpath "$2"); shift ;;
    --model=*) given_model=$(realpath "${1#--model=}") ;;
    *) args+=("$1") ;;
  esac
  shift
done
task=${args[0]:-reacher}
episodes=${args[1]:-10}
case "$task" in
  metaworld:*) exec scripts/run_manip.sh "$task" "$episodes" "$finetune" "$given_model" ;;
esac
[ -z "$given_model" ] || { echo "--model: metaworld:<task> only" >&2; exit 2; }
case "$task" in reacher|pendulum|reach|pointmass) ;; *) echo "usage: $0 [reacher|pendulum|reach|pointmass|metaworld:<task>] [EPISODES] [--finetune]" >&2; exit 2 ;; esac
case "$finetune$task" in 1pointmass) echo "--finetune: reach, reacher or pendulum" >&2; exit 2 ;; esac
# A fresh session: the configs log to and hot-swap from a state directory
# (docs/security.md: not /tmp); this job's own, emptied first.
state="$HOME/.local/state/flowpilot/$task"
rm -rf "$state"
mkdir -p -m 700 "$state"
scripts/setup-ros.sh >/dev/null
# shellcheck disable=SC1091
source .ros/env.sh
python3 -c 'import gymnasium, mujoco' 2>/dev/null || pip install -q "gymnasium[mujoco]==1.4.0" "mujoco==3.17.0"
if [ $finetune = 1 ]; then
  python3 -c 'import matplotlib' 2>/dev/null || pip install -q "matplotlib==3.10.*"
  if [ "$task" = reacher ]; then
    # The learner's prior data (config/reacher.yaml: --prior): the scripted
    # expert's demonstrations with their rewards, as the BC policy saw them.
    python3 sim/record_demos.py --task reacher --episodes 300 --seed 0 --out "$state/demos.npz"
  fi
fi
cargo build --release --features ros --bin flowpilot_node --bin flowpilot 2>&1 | tail -1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
log=$(mktemp)
model="$PWD/models/${task}_flow.safetensors"
# Pendulum sessions start from a deliberately weak policy, cloned from 5
# demonstrations that never leave upright (docs/finetuning.md).
[ $finetune = 1 ] && [ "$task" = pendulum ] && model="$PWD/models/pendulum_weak_flow.safetensors"
python3 scripts/launch_run.py launch/flowpilot.launch.xml \
  params_file:="$PWD/config/$task.yaml" model:="$model" >"$log" 2>&1 &
node=$!
report=
trap 'kill -TERM $node $report 2>/dev/null || true' EXIT
if [ $finetune = 1 ]; then
  # The session report, live: open it in a browser while the session runs.
  ./target/release/flowpilot report "$state/log" "$state/ckpt" --out "$state/report" --every 10 >/dev/null &
  report=$!
  echo "live session report: $state/report/index.html (reloads itself every 10 s)"
  python3 scripts/finetune_session.py --task "$task" --train-episodes "$episodes" \
    $([ "$task" = reacher ] && echo --eval-every 150) $([ "$task" = pendulum ] && echo --max-steps 30000)
elif [ "$task" = reacher ]; then
  python3 sim/mujoco_sim.py --ros-args -p task:=reacher -p episodes:="$episodes" -p seed:=1
elif [ "$task" = pendulum ]; then
  python3 sim/mujoco_sim.py --ros-args -p task:=pendulum -p episodes:="$episodes" -p seed:=1 -p rate_hz:=25.0
elif [ "$task" = reach ]; then
  python3 sim/reach_sim.py --episodes "$episodes"
else
  python3 sim/pointmass_sim.py --episodes "$episodes"
fi
kill -TERM $node
wait $node || true
trap - EXIT
echo "flowpilot_node: $(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'loop summary.*' || echo "no summary (see $log)")"
if [ $finetune = 1 ]; then
  # The session report: plots and one HTML page (the node has closed its log).
  kill -TERM $report 2>/dev/null || true
  wait $report 2>/dev/null || true
  ./target/release/flowpilot report "$state/log" "$state/ckpt" --out "$state/report"
fi
if [ "$task" = reacher ] && [ $finetune = 0 ]; then
  echo "scripted expert on the same seeds (for reference):"
  python3 sim/mujoco_sim.py --ros-args -p task:=reacher -p episodes:="$episodes" -p seed:=1 -p expert:=true | tail -1
fi
