"""Observation, reward, cost and planar state of many MuJoCo circle envs at once.

Pure numpy functions over arrays gathered from ``N`` envs' ``mjData`` after
``mj_forward``; each one equals what :class:`stochastic_circle.mujoco_backend.MujocoCircleEnv`
computes for one env: the cost exactly, the rest to rounding (within about 1e-14:
the sums run in another order, and the body velocity is taken from ``cvel`` rather
than from the body Jacobian). :class:`stochastic_circle.mujoco_batched.MujocoBatchedEnv`
uses them so that its per-env Python is only the physics calls.
"""

from __future__ import annotations

import numpy as np

from stochastic_circle.mujoco_backend import (
    LIDAR_MAX_DIST,
    LIDAR_NUM_BINS,
    REWARD_CLIP,
    REWARD_FACTOR,
)

_BIN_SIZE = 2.0 * np.pi / LIDAR_NUM_BINS


def quat_to_rotation(quat: np.ndarray) -> np.ndarray:
    """Row-major rotation matrices of unit quaternions ``(w, x, y, z)``, as ``mju_quat2Mat``.

    :param quat: ``[N, 4]``. :return: ``[N, 9]``.
    """
    w, x, y, z = quat.T
    ww, xx, yy, zz = w * w, x * x, y * y, z * z
    wx, wy, wz = w * x, w * y, w * z
    xy, xz, yz = x * y, x * z, y * z
    rows = (
        ww + xx - yy - zz,
        2 * (xy - wz),
        2 * (xz + wy),
        2 * (xy + wz),
        ww - xx + yy - zz,
        2 * (yz - wx),
        2 * (xz - wy),
        2 * (yz + wx),
        ww - xx - yy + zz,
    )
    return np.stack(rows, axis=1)  # the identity quaternion gives the identity exactly


def circle_lidar(position: np.ndarray, xmat: np.ndarray) -> np.ndarray:
    """Stock pseudo-lidar of the circle centre at the origin, with aliasing.

    :param position: agent body positions ``[N, 3]``; :param xmat: their row-major
        orientations ``[N, 9]``. :return: ``[N, 16]``.
    """
    # Egocentric vector to the centre: (centre - agent) expressed in the body frame.
    ego = np.einsum("ni,nij->nj", -position, xmat.reshape(-1, 3, 3))
    dist = np.hypot(ego[:, 0], ego[:, 1])
    angle = np.arctan2(ego[:, 1], ego[:, 0]) % (2.0 * np.pi)
    index = (angle / _BIN_SIZE).astype(np.int64)
    sensor = np.maximum(0.0, LIDAR_MAX_DIST - dist) / LIDAR_MAX_DIST
    alias = (angle - _BIN_SIZE * index) / _BIN_SIZE
    lidar = np.zeros((len(position), LIDAR_NUM_BINS))
    rows = np.arange(len(position))
    lidar[rows, index] = sensor
    # The neighbours start at 0 and the alias shares are >= 0, so stock's max() is the share.
    lidar[rows, (index + 1) % LIDAR_NUM_BINS] = alias * sensor
    lidar[rows, (index - 1) % LIDAR_NUM_BINS] = (1.0 - alias) * sensor
    return lidar


def body_velocity(cvel: np.ndarray, position: np.ndarray, com: np.ndarray) -> np.ndarray:
    """World-frame ``[angular(3), linear(3)]`` velocity of the body origins.

    ``cvel`` is MuJoCo's velocity about the root subtree's centre of mass ``com``; the
    linear part moves to the origin as ``v + w x (origin - com)``, as ``mj_objectVelocity``.

    :param cvel: ``[N, 6]``; :param position: ``[N, 3]``; :param com: ``[N, 3]``.
    :return: ``[N, 6]``.
    """
    wx, wy, wz = cvel[:, 0], cvel[:, 1], cvel[:, 2]
    rx, ry, rz = (position - com).T
    # w x r written out: np.cross costs ~100 us a call on these small arrays
    shift = np.stack([wy * rz - wz * ry, wz * rx - wx * rz, wx * ry - wy * rx], axis=1)
    return np.concatenate([cvel[:, :3], cvel[:, 3:] + shift], axis=1)


def circle_reward(position: np.ndarray, velocity: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``0.1 * ((-u y + v x) / r) / (1 + |r - R|)``, clipped to +-10, as stock.

    :param position: ``[N, 3]``; :param velocity: :func:`body_velocity` ``[N, 6]``;
        :param radius: each env's circle radius ``[N]``. :return: ``[N]``.
    """
    x, y = position[:, 0], position[:, 1]
    u, v = velocity[:, 3], velocity[:, 4]
    r = np.sqrt(x * x + y * y)
    reward = REWARD_FACTOR * ((-u * y + v * x) / r) / (1.0 + np.abs(r - radius))
    return np.clip(reward, -REWARD_CLIP, REWARD_CLIP)


def wall_cost(position: np.ndarray, wall: np.ndarray, four_walls: np.ndarray) -> np.ndarray:
    """1 outside the walls (``|x|``, and ``|y|`` where ``four_walls``, beyond ``wall``).

    :param position: ``[N, 3]``; :param wall: ``[N]``; :param four_walls: bool ``[N]``.
    :return: ``[N]`` of 0.0 / 1.0.
    """
    outside = (np.abs(position[:, 0]) > wall) | (four_walls & (np.abs(position[:, 1]) > wall))
    return outside.astype(np.float64)


def planar_state(position: np.ndarray, xmat: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """``[x, y, heading, vx, vy, omega]`` of each agent, as ``planar_state_of``.

    :param position: ``[N, 3]``; :param xmat: ``[N, 9]``; :param velocity: ``[N, 6]``.
    :return: ``[N, 6]``.
    """
    heading = np.arctan2(xmat[:, 3], xmat[:, 0])
    return np.stack(
        [position[:, 0], position[:, 1], heading, velocity[:, 3], velocity[:, 4], velocity[:, 2]],
        axis=1,
    )
