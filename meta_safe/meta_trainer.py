"""Entry point: ``python -m meta_safe.meta_trainer [hydra overrides]``.

Until the MAML trainer lands, this resolves the configuration, prints it, and
runs a smoke episode with random actions on a few meta-train tasks of the
configured backend, printing per-task return and cost.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from stochastic_circle.tasks import TaskDistribution

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def smoke_run(cfg: DictConfig, num_tasks: int = 3) -> list[tuple[float, float, float, float]]:
    """One random-action episode per sampled meta-train task on the torch backend.

    :return: per task ``(radius, wall_distance, episode_return, episode_cost)``.
    """
    from stochastic_circle.torch_backend import BatchedCircleEnv

    env_cfg = cfg.env
    dist = TaskDistribution(
        name="meta_train",
        robot=env_cfg.robot,
        num_walls=env_cfg.num_walls,
        **OmegaConf.to_container(env_cfg.meta_train),
    )
    tasks = dist.sample(num_tasks, seed=cfg.seed)
    env = BatchedCircleEnv(
        tasks,
        num_envs=1,
        seed=cfg.seed,
        placement=env_cfg.placement,
        episode_steps=env_cfg.episode_steps,
    )
    env.reset()
    gen = torch.Generator().manual_seed(cfg.seed)
    ret = torch.zeros(num_tasks, 1)
    cost = torch.zeros(num_tasks, 1)
    for _ in range(env_cfg.episode_steps):
        action = torch.rand(num_tasks, 1, 2, generator=gen) * 2 - 1
        _, r, c, _, _ = env.step(action)
        ret += r
        cost += c
    return [(t.radius, t.wall_distance, float(ret[i]), float(cost[i])) for i, t in enumerate(tasks)]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    print(OmegaConf.to_yaml(cfg))
    print("| radius | wall | return | cost |\n|---|---|---|---|")
    for radius, wall, ret, cost in smoke_run(cfg):
        print(f"| {radius:.3f} | {wall:.3f} | {ret:.3f} | {cost:.0f} |")


if __name__ == "__main__":
    main()
