"""Scripted experts for the MuJoCo tasks (numpy only).

Reacher-v5: analytic inverse kinematics of the 2-link arm (links 0.1 and
0.11 m) to the target, elbow up OR down chosen per episode (a bimodal
expert), then PD control on the joint angles. InvertedPendulum-v5: an LQR-
like linear state feedback.
"""
import math

import numpy as np

L1, L2 = 0.1, 0.11


def reacher_ik(tx, ty, elbow):
    """Joint angles putting the fingertip on (tx, ty); elbow = +1 or -1."""
    r2 = tx * tx + ty * ty
    c = np.clip((r2 - L1 * L1 - L2 * L2) / (2 * L1 * L2), -1.0, 1.0)
    q1 = elbow * math.acos(c)
    q0 = math.atan2(ty, tx) - math.atan2(L2 * math.sin(q1), L1 + L2 * math.cos(q1))
    return q0, q1


def wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


class ReacherExpert:
    def __init__(self, elbow, kp=(0.5, 0.3), kd=(0.1, 0.06)):
        self.elbow, self.kp, self.kd = elbow, kp, kd

    def __call__(self, obs):
        c0, c1, s0, s1, tx, ty, v0, v1 = obs[:8]
        q0, q1 = math.atan2(s0, c0), math.atan2(s1, c1)
        d0, d1 = reacher_ik(tx, ty, self.elbow)
        e0, e1 = wrap(d0 - q0), wrap(d1 - q1)
        u = np.array([self.kp[0] * e0 - self.kd[0] * v0, self.kp[1] * e1 - self.kd[1] * v1])
        return np.clip(u, -1.0, 1.0)


class PendulumExpert:
    """InvertedPendulum-v5 obs: [cart x, pole angle, cart v, pole angular v]."""

    K = np.array([1.0, 10.0, 1.0, 1.5])

    def __call__(self, obs):
        return np.clip(np.array([self.K @ obs]), -3.0, 3.0)
