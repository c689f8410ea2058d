"""What the policy does: single episodes with the robot's path, a path figure and video.

:func:`rollout_episodes` runs one episode per task on either backend and records the
robot's x-y position every step (and, on MuJoCo, rendered frames when asked);
:func:`plot_trajectories` draws the paths of a few tasks before and after adaptation
with each task's circle and walls; :func:`write_video` writes rendered frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from meta_safe.device import on_device, seeded_generator
from meta_safe.env_factory import make_batched_env
from meta_safe.errors import ConfigError
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import action_means
from stochastic_circle.tasks import CircleTask


@dataclass
class Episode:
    """One episode of one task.

    :ivar task: the task.
    :ivar positions: ``[N, 2]`` the robot's x-y before each step (on the CPU).
    :ivar rewards: ``[N]`` the reward of each step.
    :ivar costs: ``[N]`` the cost of each step.
    :ivar frames: rendered ``[H, W, 3]`` uint8 images (MuJoCo backend, when asked),
        else ``None``.
    """

    task: CircleTask
    positions: Tensor
    rewards: Tensor
    costs: Tensor
    frames: list[np.ndarray] | None = None

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    @property
    def episode_cost(self) -> float:
        return float(self.costs.sum())


def rollout_episodes(
    env_cfg: Any,
    tasks: list[CircleTask],
    policy: GaussianPolicy,
    params: Params,
    normalizer: ObsNormalizer,
    seed: int = 0,
    deterministic: bool = True,
    render_every: int = 0,
    envs_per_task: int = 1,
) -> list[Episode]:
    """One episode per task (``env_cfg.episode_steps`` steps), without learning.

    :param params: per-task parameters, each tensor ``[T, ...]`` for the ``T`` tasks.
    :param deterministic: act with the policy's mean, else sample (seeded by ``seed``).
    :param render_every: keep a rendered frame every ``k`` steps (MuJoCo backend only;
        0: none).
    :param envs_per_task: envs run per task; the episode of the first is returned (see
        :func:`figure_envs_per_task`).

    The episodes run on the device of ``params``; their tensors are returned on the CPU.
    """
    if render_every and env_cfg.backend != "mujoco":
        raise ConfigError(
            f"render_every={render_every} needs env.backend='mujoco': the torch backend "
            "has no renderer (its paths are drawn by plot_trajectories)"
        )
    with on_device(params["log_std"].device):
        return _rollout_episodes(
            env_cfg, tasks, policy, params, normalizer, seed, deterministic, render_every,
            envs_per_task,
        )  # fmt: skip


def _rollout_episodes(
    env_cfg: Any,
    tasks: list[CircleTask],
    policy: GaussianPolicy,
    params: Params,
    normalizer: ObsNormalizer,
    seed: int,
    deterministic: bool,
    render_every: int,
    envs_per_task: int,
) -> list[Episode]:
    env = make_batched_env(env_cfg, tasks, envs_per_task, seed)
    if render_every:
        for row in env.envs:
            row[0].render_mode = "rgb_array"
    raw_obs = env.reset(seed=seed)
    means = action_means(policy, params, per_task=True)
    std = params["log_std"].exp().unsqueeze(1)  # [T, 1, act_dim], broadcast over envs
    generator = seeded_generator(seed)
    positions, rewards, costs = [], [], []
    frames: list[list[np.ndarray]] = [[] for _ in tasks]
    with torch.no_grad():
        for step in range(env_cfg.episode_steps):
            positions.append(env.planar_states()[:, 0, :2].double())
            if render_every and step % render_every == 0:
                for t, row in enumerate(env.envs):
                    frames[t].append(row[0].render())
            mean = means(normalizer(raw_obs).to(std.dtype))
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            actions = mean if deterministic else mean + std * noise
            raw_obs, reward, cost, _, _ = env.step(actions)
            rewards.append(reward[:, 0].double())
            costs.append(cost[:, 0].double())
    if hasattr(env, "close"):
        env.close()
    path, reward_t, cost_t = (
        torch.stack(positions, 1),
        torch.stack(rewards, 1),
        torch.stack(costs, 1),
    )
    return [
        Episode(
            task,
            path[t].cpu(),
            reward_t[t].cpu(),
            cost_t[t].cpu(),
            frames[t] if render_every else None,
        )  # fmt: skip
        for t, task in enumerate(tasks)
    ]


def plot_trajectories(
    before: list[Episode], after: list[Episode], path: Path, title: str = ""
) -> Path:
    """One panel per task: the circle, the walls (cost region shaded), and the path
    before (grey) and after (blue) adaptation, with each episode's return and cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(before)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, first, last in zip(axes[0], before, after, strict=True):
        task = first.task
        extent = max(task.radius, task.wall_distance) * 1.6
        angle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(task.radius * np.cos(angle), task.radius * np.sin(angle), "k--", lw=0.8)
        for sign in (-1, 1):
            ax.axvspan(sign * task.wall_distance, sign * extent * 2, color="tab:red", alpha=0.12)
            if task.num_walls == 4:
                ax.axhspan(
                    sign * task.wall_distance, sign * extent * 2, color="tab:red", alpha=0.12
                )
        for episode, colour, label in ((first, "0.55", "before"), (last, "tab:blue", "after")):
            xy = episode.positions.numpy()
            legend = f"{label}: R {episode.episode_return:.1f}, C {episode.episode_cost:.0f}"
            ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1.0, label=legend)
            ax.plot(xy[0, 0], xy[0, 1], "o", color=colour, ms=3)
        ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal",
               title=f"r={task.radius:.2f}, walls ±{task.wall_distance:.2f}")  # fmt: skip
        ax.legend(fontsize=7, loc="lower center")
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_video(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    """Write ``[H, W, 3]`` uint8 frames with imageio (``.gif``; ``.mp4`` needs
    imageio-ffmpeg)."""
    import imageio.v2 as imageio

    if not frames:
        raise ConfigError(f"no frames to write to {str(path)!r}: render_every must be > 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return path


def select_tasks(params: Params, indices: list[int]) -> Params:
    """The stacked per-task ``params`` of the tasks ``indices``."""
    return {k: v[indices] for k, v in params.items()}


FIGURE_TASKS = 4
"""Tasks drawn in the trajectory figure of an evaluation (its first ones)."""


def figure_envs_per_task(env_cfg: Any, evaluation_envs_per_task: int) -> int:
    """Envs per task of the figure's episodes: on the torch backend the evaluation's own
    width, so the figure steps with the kernel the evaluation compiled (a batch of one
    env per task would compile another); elsewhere 1, as each env costs real time."""
    return evaluation_envs_per_task if env_cfg.backend == "torch" else 1


def adaptation_trajectories(
    env_cfg: Any,
    policy: GaussianPolicy,
    normalizer: ObsNormalizer,
    tasks: list[CircleTask],
    policies: list[Params],
    path: Path,
    seed: int = 0,
    title: str = "",
    envs_per_task: int = 1,
) -> Path:
    """The trajectory figure of an adaptation: mean-action episodes of the first
    :data:`FIGURE_TASKS` tasks before (``policies[0]``) and after (``policies[-1]``).

    :param policies: per collection, the stacked per-task parameters
        (:attr:`meta_safe.evaluation.AdaptationReport.policies`).
    :param envs_per_task: envs per task of the episodes (:func:`figure_envs_per_task`).
    """
    shown = list(range(min(FIGURE_TASKS, len(tasks))))
    chosen = [tasks[t] for t in shown]
    with normalizer.frozen_statistics():
        before, after = (
            rollout_episodes(
                env_cfg,
                chosen,
                policy,
                select_tasks(p, shown),
                normalizer,
                seed,
                envs_per_task=envs_per_task,
            )
            for p in (policies[0], policies[-1])
        )
    return plot_trajectories(before, after, path, title)
