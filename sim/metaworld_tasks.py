"""Meta-World MT1 tasks as flowpilot sees them (numpy + metaworld, no ROS).

Any of Meta-World's 50 v3 tasks, by name: `metaworld:push-v3`,
`metaworld:peg-insert-side-v3`, ... Needs the venv of
scripts/setup-manip.sh (metaworld==3.1.1, mujoco==3.3.0).

- The env is the MT1 setting with the goal observable (39-D observation:
  hand xyz, gripper opening, two objects' pose (18), the same 18 one step
  earlier, goal xyz); the action is 4-D in [-1, 1]: end-effector (mocap)
  position deltas (x 1 cm per unit and step) and the gripper effort. 500
  steps an episode, one step = 5 × 2.5 ms of physics = 80 Hz.
- Each episode's start (object and goal placement) is drawn from the env's
  own random generator seeded with `reset_seed(seed, ep)`: the sim, the
  demo recorder and the shadow expert replay the same episodes.
- The scripted expert is the package's `metaworld.policies` class for the
  task, found from the task's name (`expert_class`), so a task nobody has
  tried needs no table entry.
"""
import inspect
import re
import warnings

import numpy as np

# metaworld.policies warns on every clipped expert action.
warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")

PREFIX = "metaworld:"
OBS_DIM = 39
ACT_DIM = 4
ACT_LOW, ACT_HIGH = [-1.0] * ACT_DIM, [1.0] * ACT_DIM
# The controlled channels, as the sim's /joint_states names them (position:
# hand x, y, z and gripper opening; effort: the executed action).
CHANNELS = ["ee_x", "ee_y", "ee_z", "gripper"]


def is_task(spec):
    return spec.startswith(PREFIX)


def names():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return list(ALL_V3_ENVIRONMENTS)


def env_name(spec):
    """'metaworld:push-v3' (or 'push-v3') -> 'push-v3', checked."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    all_names = names()
    if name not in all_names:
        import difflib
        close = difflib.get_close_matches(name, all_names, n=3)
        raise SystemExit(f"unknown Meta-World task '{name}'"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; the v3 tasks: {' '.join(all_names)}")
    return name


def sanitise(spec):
    """A ROS name for the task: 'metaworld:push-v3' -> 'metaworld_push_v3'."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", spec)
    return s if s[:1].isalpha() else "t_" + s


def cmd_topic(spec):
    return f"/{sanitise(spec)}/cmd"


def _tokens(s):
    return [t.lower() for t in re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", s)]


def expert_class(name):
    """The metaworld.policies class for task `name`: the Sawyer...Policy
    class whose name's words match the task's, each task word a prefix of
    the class word or the reverse (peg-insert-side-v3 ->
    SawyerPegInsertionSideV3Policy), so no table is needed."""
    import metaworld.policies as policies
    classes = {n: c for n, c in vars(policies).items()
               if inspect.isclass(c) and n.startswith("Sawyer") and n.endswith("Policy")}
    want = _tokens(name.replace("-", " "))

    def words(cn):
        return _tokens(cn[len("Sawyer"):-len("Policy")])
    exact = [c for n, c in classes.items() if words(n) == want]
    if len(exact) == 1:
        return exact[0]
    hits = [c for n, c in classes.items()
            if len(words(n)) == len(want)
            and all(a.startswith(b) or b.startswith(a) for a, b in zip(words(n), want))]
    if len(hits) == 1:
        return hits[0]
    raise SystemExit(f"no unique scripted expert for '{name}' in metaworld.policies "
                     f"({[c.__name__ for c in hits] or 'none matches'})")


def make(spec):
    """(name, env): the raw MT1 env with the goal observable, its starts
    drawn from its own seeded generator (see reset)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    name = env_name(spec)
    env = ALL_V3_ENVIRONMENTS[name]()
    env._partially_observable = False
    env.__dict__.pop("sawyer_observation_space", None)  # recomputed with the goal
    env._set_task_called = True
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return name, env


def reset(env, seed):
    """Reset to the episode start that `seed` draws (object and goal)."""
    env.seed(int(seed))
    o, info = env.reset()
    return np.asarray(o, np.float64), info


def reset_seed(seed, ep):
    """The start of episode `ep` of a sim run with `seed` (same rule as
    sim/tasks.py, so demo seeds and evaluation seeds never meet)."""
    return seed * 100_000 + 50_000 + ep


def demo_seed(seed, ep):
    return seed * 100_000 + ep


def step_dt(env):
    return float(env.model.opt.timestep * env.frame_skip)


def success(info):
    return bool(info.get("success", 0.0) > 0.5)


def rollout(env, policy, start_seed, noise=0.0, rng=None, end_on_success=True, max_steps=None):
    """Run one episode from `start_seed` with `policy(obs) -> action`, plus
    N(0, noise²) on each executed action (clipped). Returns a dict of rows
    (obs before each step, executed act, shaped reward, success per step)
    and the episode's outcome."""
    o, _ = reset(env, start_seed)
    rows = {"obs": [], "act": [], "reward": [], "success": []}
    done, k, first = False, 0, None
    limit = max_steps or env.max_path_length
    while not done:
        a = np.asarray(policy(o), np.float64)
        if noise > 0:
            a = np.clip(a + rng.normal(0.0, noise, ACT_DIM), -1.0, 1.0)
        rows["obs"].append(o)
        rows["act"].append(a)
        o, r, term, trunc, info = env.step(a.astype(np.float32))
        s = success(info)
        rows["reward"].append(float(r))
        rows["success"].append(s)
        k += 1
        if s and first is None:
            first = k
        done = term or trunc or k >= limit or (s and end_on_success)
    return rows, {"success": first is not None, "first_success": first, "steps": k,
                  "return": float(np.sum(rows["reward"])), "final_obs": o}
