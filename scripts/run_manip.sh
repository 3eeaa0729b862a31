#!/usr/bin/env bash
# scripts/run.sh metaworld:<task> [EPISODES] [--model PATH] lands here:
#
#   scripts/run_manip.sh TASK EPISODES FINETUNE(0|1) [MODEL]
#
# The whole path for any Meta-World MT1 task, generated from its name:
#   1. .manip/ (scripts/setup-manip.sh: metaworld 3.1.1 + mujoco 3.3.0 + rclpy)
#      and the embedded ROS 2 (.ros/), the release binaries;
#   2. unless MODEL is given or already cached in the state directory
#      (~/.local/state/flowpilot/metaworld_<task>/): 10 scripted-expert
#      demonstrations with DART noise 0.1 (sim/manip_demos.py), then NF-BC
#      (flowpilot train bc: 4 blocks, C 128, chunks of 4 steps from the
#      last 2 observations, 3000 steps, ~2 min on 2 cores);
#   3. the node's parameters (sim/manip_config.py -> params.yaml), then
#      flowpilot_node as launch/flowpilot.launch.xml declares it, against
#      sim/manip_sim.py in real time (80 Hz, seed 1, episodes end on success);
#   4. the success rate, the loop statistics, and the scripted expert's
#      success on the same episodes.
# Environment: FP_DEMOS (10), FP_NOISE (0.1), FP_CHUNK (4), FP_OBS_HORIZON
# (2), FP_HIDDEN (128), FP_STEPS (3000), FP_TEMPERATURE (0), FP_SIM_RATE
# (80; k x 80 runs k times real time), FP_SEED (1: the sim's episodes),
# FP_POLICY (flow | gaussian: the diagonal-Gaussian baseline, same data,
# chunks, history, width and steps), FP_STATE_DIR (the task's state
# directory: demos, BC policy, params, log, checkpoints).
#
# FINETUNE=1 (scripts/run.sh metaworld:<task> N --finetune): an on-robot
# SAC session (scripts/finetune_session.py) from the same chunked BC flow
# (the learner's critic is chunk-level, Q(s, a_{t:t+H}); FP_CHUNK=1
# FP_OBS_HORIZON=1 for a one-step policy), with the sparse success reward, the demonstrations as prior data
# and the recipe of sim/manip_config.py: 20 evaluation episodes (sim seed
# 1000) before, at 10 000 and 25 000 robot steps and at the end (50 000
# steps or N training episodes, whichever comes first), a JSON summary and
# a learning curve in the state directory, then the session report.
# Session environment: FP_SIM_RATE (100: 1.25x real time), FP_TEMPERATURE
# (0.3: acting), FP_EVAL_TEMPERATURE (0: evaluations), FP_RUN_SEED (0: the
# node's and the learner's seed), FP_MAX_STEPS (50000), FP_EVAL_AT
# (10000,25000; empty: none between before and after), FP_EVAL_EPISODES (20), FP_REWARD (sparse | shaped), FP_LEARNER_EXTRA (learner
# flags appended to the recipe), FP_SUMMARY (the JSON summary's path).
set -euo pipefail
cd "$(dirname "$0")/.."
task=$1 episodes=${2:-10} finetune=${3:-0} model=${4:-}
case "$task" in metaworld:[a-z0-9]*) ;; *) echo "task must be metaworld:<name>, e.g. metaworld:push-v3" >&2; exit 2 ;; esac
san=$(printf '%s' "$task" | sed 's/[^A-Za-z0-9_]/_/g')
scripts/setup-ros.sh >/dev/null
scripts/setup-manip.sh >/dev/null
# The sims run in the Meta-World venv (its mujoco), the node with the ROS env.
manip() { ( source .manip/env.sh; "$@" ); }
# Fail early on a name Meta-World does not know (it lists the tasks).
manip python3 -c "import sys; sys.path.insert(0, 'sim'); import metaworld_tasks as m; m.expert_class(m.env_name('$task'))"
state=${FP_STATE_DIR:-$HOME/.local/state/flowpilot/$san}
mkdir -p -m 700 "$state"
# A fresh run's log and checkpoints; the demonstrations and the BC policy are kept.
rm -rf "$state/log" "$state/ckpt"
# shellcheck disable=SC1091
source .ros/env.sh
cargo build --release --features ros --bin flowpilot_node --bin flowpilot 2>&1 | tail -1
fp=./target/release/flowpilot

demos_n=${FP_DEMOS:-10} noise=${FP_NOISE:-0.1}
if [ "$finetune" = 1 ]; then
  # 1.25x real time: the learner's ~90-100 updates/s keep UTD ~1 and a
  # 50 000-step session takes ~14 min (docs/manipulation.md, "Fine-tuning")
  chunk=${FP_CHUNK:-4} hist=${FP_OBS_HORIZON:-2} tau=${FP_TEMPERATURE:-0.3} sim_rate=${FP_SIM_RATE:-100.0}
else
  chunk=${FP_CHUNK:-4} hist=${FP_OBS_HORIZON:-2} tau=${FP_TEMPERATURE:-0.0} sim_rate=${FP_SIM_RATE:-80.0}
fi
hidden=${FP_HIDDEN:-128} steps=${FP_STEPS:-3000} sim_seed=${FP_SEED:-1}
demos="$state/demos_d${demos_n}_n${noise}.npz"
if [ -z "$model" ] || [ "$finetune" = 1 ]; then
  # the demonstrations: BC's data, and a session's prior data (reward, terminal)
  if [ ! -f "$demos" ]; then
    manip python3 sim/manip_demos.py --task "$task" --episodes "$demos_n" --act-noise "$noise" --seed 0 --out "$demos.tmp.npz"
    mv "$demos.tmp.npz" "$demos"
  fi
fi
if [ -z "$model" ]; then
  recipe="d${demos_n}_n${noise}_h${chunk}_o${hist}_c${hidden}_s${steps}"
  case "${FP_POLICY:-flow}" in
    flow) kind=flow kind_args=(--blocks 4) ;;
    gaussian) kind=gauss kind_args=(--gaussian) ;;
    *) echo "FP_POLICY must be flow or gaussian, not '${FP_POLICY}'" >&2; exit 2 ;;
  esac
  model="$state/bc_${kind}_$recipe.safetensors"
  if [ ! -f "$model" ]; then
    echo "training the BC ${FP_POLICY:-flow} ($recipe) -> $model"
    $fp train bc --data "$demos" --out "$model.tmp.safetensors" "${kind_args[@]}" --hidden "$hidden" \
      --steps "$steps" --chunk "$chunk" --obs-horizon "$hist" --seed 0 2>&1 | tail -1
    mv "$model.tmp.safetensors" "$model"
    [ -f "$model.tmp.loss.png" ] && mv "$model.tmp.loss.png" "${model%.safetensors}.loss.png"
  fi
fi
# A chunked or history policy plays one step per tick on the robot's
# clock: the node runs at the sim's rate; a one-step policy at twice it.
spec=$($fp inspect "$model")
if ! grep -q '^chunks ' <<<"$spec"; then
  node_rate=$(python3 -c "print(2 * float('$sim_rate'))")
else
  node_rate=$sim_rate
fi
if [ "$finetune" = 1 ]; then
  run_seed=${FP_RUN_SEED:-0}
  prior=$demos
  if [ "${FP_REWARD:-sparse}" = shaped ]; then
    # the prior data's reward as the sim's shaped one (Meta-World's 0..10)
    prior="${demos%.npz}_shaped.npz"
    manip python3 -c "import numpy as np, sys; d = dict(np.load(sys.argv[1])); d['reward'] = d['reward_shaped']; np.savez(sys.argv[2], **d)" "$demos" "$prior"
  fi
  python3 sim/manip_config.py "$task" --model "$model" --rate "$node_rate" --temperature "$tau" \
    --state-dir "$state" --seed "$run_seed" --prior "$prior" --learner-extra="${FP_LEARNER_EXTRA:-}" > "$state/params.yaml"
else
  python3 sim/manip_config.py "$task" --model "$model" --rate "$node_rate" --temperature "$tau" \
    --state-dir "$state" > "$state/params.yaml"
fi
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
log=$(mktemp)
python3 scripts/launch_run.py launch/flowpilot.launch.xml \
  params_file:="$state/params.yaml" model:="$model" >"$log" 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null || true' EXIT
if [ "$finetune" = 1 ]; then
  python3 -c 'import matplotlib' 2>/dev/null || pip install -q "matplotlib==3.10.*"
  summary=${FP_SUMMARY:-$state/finetune.json}
  # the session's Python is the .manip venv's: its sims need that mujoco
  session_rc=0
  manip python3 scripts/finetune_session.py --task "$task" --train-episodes "$episodes" \
    --max-steps "${FP_MAX_STEPS:-50000}" --eval-at-steps "${FP_EVAL_AT-10000,25000}" \
    --eval-episodes "${FP_EVAL_EPISODES:-20}" --sim-rate "$sim_rate" --eval-temperature "${FP_EVAL_TEMPERATURE:-0}" --reward "${FP_REWARD:-sparse}" \
    --ckpt-dir "$state/ckpt" --plot "${summary%.json}.png" --summary "$summary" || session_rc=$?
else
  manip python3 sim/manip_sim.py --ros-args -p task:="$task" -p episodes:="$episodes" \
    -p seed:="$sim_seed" -p rate_hz:="$sim_rate"
fi
# The node may have ended by itself (a fault): its log is the evidence, so
# a failed kill must not end this script before the log is kept.
kill -TERM $node 2>/dev/null || echo "flowpilot_node had already exited: $(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E 'ERROR|flowpilot_node:' | tail -2)" >&2
wait $node || true
trap - EXIT
echo "flowpilot_node: $(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'loop summary.*' || echo "no summary (see $log)")"
if [ "$finetune" = 1 ]; then
  cp "$log" "$state/node.log"   # the node's and the learner's log
  ./target/release/flowpilot report "$state/log" "$state/ckpt" --out "$state/report" || true
  exit "$session_rc"
fi
echo "scripted expert on the same episodes (for reference):"
manip python3 sim/manip_sim.py --ros-args -p task:="$task" -p episodes:="$episodes" -p seed:="$sim_seed" \
  -p expert:=true -p rate_hz:=1000.0 | tail -1
