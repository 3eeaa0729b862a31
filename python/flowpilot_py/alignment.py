#!/usr/bin/env python3
"""How often does the transition log hold the action the robot applied?

  python3 scripts/log_alignment.py LOG_DIR TRUTH.npz [--json out.json]

LOG_DIR: the node's log (a directory of .mcap files, or one file).
TRUTH.npz: the sim's ground truth (sim/mujoco_sim.py -p truth_log:=PATH):
one row per env step with episode, step, obs (the state before the step, in
the policy's layout), act (the action applied in that step), reward.

Each node record is matched to the sim step whose pre-step obs equals the
record's obs (float32, max abs difference <= --obs-tol); records at an
episode's final state (no step starts there) are counted apart. Then, for
every consecutive pair of records (i, i+1) of one file that the learner
would turn into a transition, with record i matched to step (e, k):

  old contract: record i's action_applied == act[e, k]
                (usable: tick step == `every`, same episode, i acted,
                 i not truncated, reward of i+1 finite);
  new contract: record i+1's action_executed == act[e, k]
                (usable: robot_steps of i+1 == 1, same episode, i not
                 truncated, i+1 reports the action and a finite reward);
  both:         record i+1's reward == reward[e, k] (the reward the
                learner uses) and record i+1's obs is step k's successor.

Prints one summary line per contract (the new one only when the log reports
executed actions) and a line on matching.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from .logs import read_log, records


def load_truth(path):
    t = np.load(path)
    out = {k: t[k] for k in ("episode", "step", "obs", "act", "reward")}
    out["stale"] = t["stale"] if "stale" in t else np.zeros(len(out["step"]), bool)
    out["final_episode"] = t["final_episode"] if "final_episode" in t else np.zeros(0, np.int64)
    out["final_obs"] = t["final_obs"] if "final_obs" in t else np.zeros((0, out["obs"].shape[1]))
    return out


def match(obs, ref, tol, chunk=128):
    """Index into ref of the row equal to each obs row (max |diff| <= tol; the
    nearest if several), -1 if none; and how many rows had several."""
    obs, ref = np.asarray(obs, np.float32), np.asarray(ref, np.float32)
    idx = np.full(len(obs), -1, np.int64)
    ambiguous = 0
    if len(ref) == 0 or len(obs) == 0 or obs.shape[1] != ref.shape[1]:
        return idx, ambiguous
    for s in range(0, len(obs), chunk):
        d = np.abs(obs[s:s + chunk, None, :] - ref[None, :, :]).max(axis=2)
        best = d.argmin(axis=1)
        ok = d[np.arange(len(best)), best] <= tol
        idx[s:s + chunk] = np.where(ok, best, -1)
        ambiguous += int(((d <= tol).sum(axis=1) > 1).sum())
    return idx, ambiguous


def files_of(path):
    return sorted(glob.glob(os.path.join(path, "*.mcap"))) if os.path.isdir(path) else [path]


def every_of(path):
    for meta, _ in records(path):
        return int(meta.get("every", 1) or 1)
    return 1


def close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and bool(np.all(np.abs(a - b) <= tol))


def analyse(log_path, truth_path, obs_tol=1e-5, act_tol=1e-6, rew_tol=1e-6):
    tr = load_truth(truth_path)
    key = {(int(e), int(k)): i for i, (e, k) in enumerate(zip(tr["episode"], tr["step"]))}
    ep_len = {}
    for e, k in zip(tr["episode"], tr["step"]):
        ep_len[int(e)] = max(ep_len.get(int(e), 0), int(k) + 1)
    stats = {"records": 0, "matched": 0, "final_state": 0, "unmatched": 0, "unmatched_policy": 0, "ambiguous": 0,
             "files": 0, "truth_steps": int(len(tr["step"]))}
    contracts = {c: dict(pairs=0, first_unmatched=0, action=0, reward=0, successor=0, all=0,
                         action_stale_truth=0) for c in ("old", "new")}
    steps_logged = set()
    for f in files_of(log_path):
        log = read_log(f)
        if not log:
            continue
        stats["files"] += 1
        every = every_of(f)
        n = len(log["tick"])
        stats["records"] += n
        idx, amb = match(log["obs"], tr["obs"], obs_tol)
        fidx, _ = match(log["obs"], tr["final_obs"], obs_tol)
        stats["ambiguous"] += amb
        stats["matched"] += int((idx >= 0).sum())
        stats["final_state"] += int(((idx < 0) & (fidx >= 0)).sum())
        stats["unmatched"] += int(((idx < 0) & (fidx < 0)).sum())
        stats["unmatched_policy"] += int(((idx < 0) & (fidx < 0) & (log["decision"] == 0)).sum())
        steps_logged.update(int(i) for i in idx[idx >= 0])
        executed_ok = np.isfinite(log["action_executed"]).all(axis=1)
        for i in range(n - 1):
            j = i + 1
            same_ep = log["episode"][j] == log["episode"][i] or log["terminated"][i]
            base = same_ep and not log["truncated"][i] and np.isfinite(log["reward"][j])
            usable = {
                "old": base and log["tick"][j] == log["tick"][i] + every
                and np.isfinite(log["action_applied"][i]).all(),
                "new": base and log["robot_steps"][j] == 1 and executed_ok[j],
            }
            for c, ok in usable.items():
                if not ok:
                    continue
                s = contracts[c]
                s["pairs"] += 1
                if idx[i] < 0:
                    s["first_unmatched"] += 1
                    continue
                t = idx[i]
                e, k = int(tr["episode"][t]), int(tr["step"][t])
                a = log["action_applied"][i] if c == "old" else log["action_executed"][j]
                a_ok = close(a, tr["act"][t], act_tol)
                r_ok = abs(float(log["reward"][j]) - float(tr["reward"][t])) <= rew_tol
                nxt = key.get((e, k + 1))
                if nxt is not None:
                    succ = idx[j] == nxt
                else:  # the episode's last step: the successor is its final state
                    fe = np.flatnonzero(tr["final_episode"] == e)
                    succ = idx[j] < 0 and len(fe) > 0 and fidx[j] == fe[0]
                s["action"] += a_ok
                s["reward"] += r_ok
                s["successor"] += bool(succ)
                s["all"] += a_ok and r_ok and bool(succ)
                s["action_stale_truth"] += (not a_ok) and bool(tr["stale"][t])
    stats["truth_steps_logged"] = len(steps_logged)
    has_new = contracts["new"]["pairs"] > 0
    return stats, contracts, has_new


def pct(a, b):
    return f"{a}/{b} ({100.0 * a / b:.1f}%)" if b else f"{a}/0"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="the node's log directory (or one .mcap)")
    ap.add_argument("truth", help="the sim's truth_log .npz")
    ap.add_argument("--obs-tol", type=float, default=1e-5)
    ap.add_argument("--act-tol", type=float, default=1e-6)
    ap.add_argument("--reward-tol", type=float, default=1e-6)
    ap.add_argument("--json", help="also write the counts to this JSON file")
    a = ap.parse_args()
    stats, contracts, has_new = analyse(a.log, a.truth, a.obs_tol, a.act_tol, a.reward_tol)
    if stats["records"] == 0:
        print(f"no records in {a.log}", file=sys.stderr)
        return 1
    st = stats
    amb = f", {st['ambiguous']} ambiguous" if st["ambiguous"] else ""
    print(f"records {st['records']} in {st['files']} file(s): {pct(st['matched'], st['records'])} matched a sim step, "
          f"{st['final_state']} at an episode's final state, {st['unmatched']} matched nothing "
          f"({st['unmatched_policy']} of them policy decisions)"
          f"{amb}; "
          f"{pct(st['truth_steps_logged'], st['truth_steps'])} of the sim's steps logged")
    names = {"old": "old contract (record i action_applied)", "new": "new contract (record i+1 action_executed)"}
    for c in ("old", "new") if has_new else ("old",):
        s = contracts[c]
        m = s["pairs"] - s["first_unmatched"]
        print(f"{names[c]}: {s['pairs']} transitions, {s['first_unmatched']} start at an unmatched record; of {m}: "
              f"action = applied {pct(s['action'], m)}, reward = step's {pct(s['reward'], m)}, "
              f"next obs = step's successor {pct(s['successor'], m)}, all three {pct(s['all'], m)}"
              f" (action mismatches where the sim applied zero for a stale command: {s['action_stale_truth']})")
    if not has_new:
        print("new contract: the log reports no executed actions (action_executed empty / robot_steps 0)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"matching": stats, "contracts": contracts if has_new else {"old": contracts["old"]}}, fh,
                      indent=2, default=int)
    return 0


if __name__ == "__main__":
    sys.exit(main())
