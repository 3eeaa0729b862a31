"""The MuJoCo tasks as flowpilot sees them over ROS 2.

Each task maps a gymnasium env's state to the two ROS messages the sim
publishes (a JointState and a task Float64MultiArray) and to the policy
observation vector that config/<task>.yaml reassembles from them, so demos
recorded offline and observations seen through the node are the same vector.
"""

import gymnasium as gym
import numpy as np

from experts import PendulumExpert, ReacherExpert


class Reacher:
    name = "reacher"
    env_id = "Reacher-v5"
    joints = ["joint0", "joint1"]
    act_dim = 2
    act_low, act_high = [-1.0, -1.0], [1.0, 1.0]

    @staticmethod
    def ros(env, obs):
        """(positions, velocities, task vector) from the env."""
        q = env.unwrapped.data.qpos[:2].copy()
        v = env.unwrapped.data.qvel[:2].copy()
        return q, v, np.array([obs[4], obs[5], obs[8], obs[9]])

    @staticmethod
    def policy_obs(q, v, task):
        # joint_state source with fields [position, velocity] is joint-major
        return np.array([q[0], v[0], q[1], v[1], *task], dtype=np.float64)

    @staticmethod
    def expert(rng):
        return ReacherExpert(1 if rng.random() < 0.5 else -1)

    @staticmethod
    def success(info):
        return -info.get("reward_dist", -1.0) < 0.02


class Pendulum:
    name = "pendulum"
    env_id = "InvertedPendulum-v5"
    joints = ["slider", "hinge"]
    act_dim = 1
    act_low, act_high = [-3.0], [3.0]

    @staticmethod
    def ros(env, obs):
        return obs[:2].copy(), obs[2:4].copy(), np.zeros(0)

    @staticmethod
    def policy_obs(q, v, task):
        return np.array([q[0], v[0], q[1], v[1]], dtype=np.float64)

    @staticmethod
    def expert(rng):
        return PendulumExpert()

    @staticmethod
    def success(info):
        return True


TASKS = {"reacher": Reacher, "pendulum": Pendulum}


def make(task):
    t = TASKS[task]
    return t, gym.make(t.env_id)


def expert_action(t, expert, q, v, task_vec, gym_obs):
    if t is Reacher:
        return expert(gym_obs)
    return expert(np.array([q[0], q[1], v[0], v[1]]))


def reset_seed(seed, ep):
    """The env.reset seed of episode `ep` of a sim run with `seed`
    (sim/mujoco_sim.py; evaluations elsewhere replay the same episodes)."""
    return seed * 100_000 + 50_000 + ep


def shadow_return(t, env, expert, reset_seed):
    """The scripted expert's return on the episode that env.reset(seed=
    reset_seed) starts, on `env` (a private copy, off the robot's clock):
    the paired baseline for the policy's return on the same episode."""
    o, _ = env.reset(seed=reset_seed)
    ret, done = 0.0, False
    while not done:
        q, v, task_vec = t.ros(env, o)
        act = np.asarray(expert_action(t, expert, q, v, task_vec, o), dtype=np.float32)
        o, r, term, trunc, _ = env.step(act)
        ret += r
        done = term or trunc
    return ret
