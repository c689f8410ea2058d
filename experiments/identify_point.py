"""Fit the torch backend's planar Point model to the MuJoCo simulator.

Collects random-action transitions from the stock ``SafetyPointCircle1-v0``
physics (stepping ``mj_step`` directly, 10 physics steps per env step, exactly
as the task does), then fits the constants of
:class:`stochastic_circle.torch_backend.PointDynamics` by L-BFGS on one-step
prediction error, and prints the fitted constants and per-dimension RMSE.

    .venv/bin/python experiments/identify_point.py --episodes 40
"""

from __future__ import annotations

from dataclasses import replace

import mujoco
import numpy as np
import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from stochastic_circle.compat import import_safety_gymnasium
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import PointDynamics, TaskTensors, physics_step


def collect(episodes: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(state [N, 6], action [N, 2], next_state [N, 6])`` in the joint frame.

    The joint frame is the world frame rotated by the body's initial yaw; the
    dynamics are rotation invariant so fitting in it is exact.
    """
    env = import_safety_gymnasium().make("SafetyPointCircle1-v0")
    env.reset(seed=seed)
    model, data = env.unwrapped.task.model, env.unwrapped.task.data
    rng = np.random.default_rng(seed)
    states, actions, next_states = [], [], []
    for episode in range(episodes):
        mujoco.mj_resetData(model, data)
        data.qpos[2] = rng.uniform(-np.pi, np.pi)
        mujoco.mj_forward(model, data)
        mode = episode % 4  # mix of action styles so every regime is covered
        action = rng.uniform(-1, 1, 2)
        for t in range(steps):
            if mode == 0:
                action = rng.uniform(-1, 1, 2)
            elif mode == 1:
                action = np.clip(rng.normal(0, 0.05, 2), -1, 1)
            elif mode == 2 and t % 25 == 0:
                action = rng.uniform(-1, 1, 2)
            elif mode == 3:
                action = np.clip(action + rng.normal(0, 0.02, 2), -1, 1)
            states.append(np.r_[data.qpos, data.qvel])
            data.ctrl[:] = action
            for _ in range(10):
                mujoco.mj_step(model, data)
            actions.append(action.copy())
            next_states.append(np.r_[data.qpos, data.qvel])
    return np.array(states), np.array(actions), np.array(next_states)


def fit(states: np.ndarray, actions: np.ndarray, next_states: np.ndarray) -> PointDynamics:
    """Least-squares fit of the five free constants of :class:`PointDynamics`."""
    dtype = torch.float64
    s, a, s2 = (torch.tensor(v, dtype=dtype)[:, None] for v in (states, actions, next_states))
    task = TaskTensors.from_tasks([CircleTask()] * len(states), dtype)
    base = PointDynamics()
    names = ("fwd_decay", "lat_decay", "drive_gain", "turn_decay", "turn_gain")
    params = torch.tensor([getattr(base, n) for n in names], dtype=dtype, requires_grad=True)
    scale = torch.tensor([1e-2, 1e-2, 1e-2, 1.0, 1.0, 1.0], dtype=dtype)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        model = PointDynamics(**dict(zip(names, params, strict=True)))
        predicted, _ = physics_step(s, a, task, model)
        value = (((predicted - s2) / scale) ** 2).mean()
        value.backward()
        return value

    for _ in range(3):
        optimizer.step(loss)
    return replace(base, **{n: float(v) for n, v in zip(names, params.detach(), strict=True)})


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    states, actions, next_states = collect(args.episodes, args.steps, args.seed)
    model = fit(states, actions, next_states)
    print("fitted:", model)
    with torch.no_grad():
        predicted, _ = physics_step(
            torch.tensor(states)[:, None],
            torch.tensor(actions)[:, None],
            TaskTensors.from_tasks([CircleTask()] * len(states), torch.float64),
            model,
        )
    rmse = (predicted[:, 0].numpy() - next_states) ** 2
    labels = ["x", "y", "heading", "vx", "vy", "omega"]
    print("one-step RMSE:", dict(zip(labels, np.sqrt(rmse.mean(0)).round(5), strict=True)))


if __name__ == "__main__":
    run_cli(main)
