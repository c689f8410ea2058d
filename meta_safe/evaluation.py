"""Held-out adaptation: adapt the meta-policy on unseen tasks and measure every step.

For each task and each ``k = 0..K`` (``k = 0``: before adapting) the mean episode
return and cost of the policy after ``k`` inner steps, and whether that cost is within
the limit. ``evaluation.policy`` says where they are measured: ``sample``, on the batch
the stochastic policy collects for its next update; ``fresh``, on separate episodes of
it, used for nothing else; ``mean``, on separate episodes of its mean action; ``auto``
(the default), ``fresh`` under a step check (whose accepted batches passed a test on
their own cost) or when ``evaluation.measure_episodes`` asks for a number of separate
episodes, and ``sample`` otherwise. ``evaluation.cost_discount < 1`` reports
discounted episode costs.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from meta_safe.adaptation import adapt
from meta_safe.config import EVALUATION_POLICIES, adaptation_rule_config
from meta_safe.data_source import InnerDataSource, RealRollouts
from meta_safe.device import on_device, seeded_generator
from meta_safe.dyna import DynaRollouts, DynaSettings, DynaState
from meta_safe.env_factory import make_batched_env, task_distribution
from meta_safe.errors import ConfigError
from meta_safe.maml import MetaSetup, MetaState, inner_cost_margin_of, step_check_of
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.provenance import environment_record
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, collect, discounted_episode_cost
from meta_safe.rl.surrogate import AdvantageConfig
from meta_safe.step_check import StepCheck
from stochastic_circle.tasks import CircleTask

SEPARATE_EPISODES_SEED_OFFSET = 7919
"""Separate evaluation episodes use env seed ``evaluation.seed + offset``: start states
of their own, apart from the adaptation batches'."""


@dataclass
class AdaptationReport:
    """Per-task curves. ``returns[t][k]`` / ``costs[t][k]``: task ``t`` after ``k`` steps."""

    tasks: list[CircleTask]
    returns: list[list[float]]
    costs: list[list[float]]
    cost_limit: float
    env_steps_per_step: int
    rejected: list[list[int]] | None = None  # [t][k] rejected candidates of step k (step check)
    extra_steps: int = 0  # env steps of the step check's retries, all tasks
    # per inner step k, the share of model samples in its update (Dyna; None without)
    model_share: list[float] | None = None
    # per inner step k, the mean length of its ended imagined paths (Dyna; None without)
    imagined_path_length: list[float | None] | None = None
    # per collection k, the stacked per-task parameters after k steps (not written out)
    policies: list[Params] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, list[float]]:
        """Aggregates per step ``k``: mean return, mean cost, share within the limit."""
        returns, costs = torch.tensor(self.returns), torch.tensor(self.costs)
        n = returns.shape[0]
        return {
            "mean_return": returns.mean(0).tolist(),
            "stderr_return": (returns.std(0) / n**0.5).tolist()
            if n > 1
            else [0.0] * returns.shape[1],
            "mean_cost": costs.mean(0).tolist(),
            "stderr_cost": (costs.std(0) / n**0.5).tolist() if n > 1 else [0.0] * costs.shape[1],
            "within_limit": (costs <= self.cost_limit).float().mean(0).tolist(),
            **(
                {"rejected": torch.tensor(self.rejected).float().mean(0).tolist()}
                if self.rejected is not None
                else {}
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "cost_limit": self.cost_limit,
            "env_steps_per_step": self.env_steps_per_step,
            "tasks": [t.to_dict() for t in self.tasks],
            "returns": self.returns,
            "costs": self.costs,
            "rejected": self.rejected,
            "extra_steps": self.extra_steps,
            "model_share": self.model_share,
            "imagined_path_length": self.imagined_path_length,
            "summary": self.summary(),
        }

    def table(self, title: str = "") -> str:
        """Markdown table of the aggregates per inner step."""
        s = self.summary()
        lines = [
            f"### {title}" if title else "",
            "",
            "| inner steps | return (mean ± s.e.) | cost (mean ± s.e.) | within limit |",
            "|---:|---:|---:|---:|",
        ]
        for k in range(len(s["mean_return"])):
            lines.append(
                f"| {k} | {s['mean_return'][k]:.2f} ± {s['stderr_return'][k]:.2f} "
                f"| {s['mean_cost'][k]:.1f} ± {s['stderr_cost'][k]:.1f} "
                f"| {100 * s['within_limit'][k]:.0f}% |"
            )
        if self.rejected is not None:
            per_step = " / ".join(f"{r:.2f}" for r in s["rejected"][1:])
            share = self.extra_steps / (self.env_steps_per_step * len(self.tasks))
            lines.append(
                f"\nStep check: rejected candidates per task after step 1 / ... / K: {per_step}; "
                f"their retries ran {share:.2f} extra batches in all."
            )
        return "\n".join(lines).strip()

    def write(self, out_dir: Path, stem: str = "evaluation") -> list[Path]:
        """JSON, per-task CSV and an adaptation-curve plot; returns the paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / f"{stem}.json"
        record = {**self.to_dict(), "environment": environment_record()}
        json_path.write_text(json.dumps(record, indent=2))
        csv_path = out_dir / f"{stem}.csv"
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["task", "radius", "wall_distance", "inner_steps", "return", "cost"])
            for t, task in enumerate(self.tasks):
                for k, (ret, cost) in enumerate(zip(self.returns[t], self.costs[t], strict=True)):
                    writer.writerow([t, task.radius, task.wall_distance, k, ret, cost])
        return [json_path, csv_path, self.plot(out_dir / f"{stem}.png")]

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self.summary()
        steps = list(range(len(s["mean_return"])))
        fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(9, 3.5))
        ax_r.errorbar(steps, s["mean_return"], yerr=s["stderr_return"], marker="o")
        ax_r.set(xlabel="inner steps", ylabel="episode return", title="return")
        ax_c.errorbar(steps, s["mean_cost"], yerr=s["stderr_cost"], marker="o", color="tab:red")
        ax_c.axhline(self.cost_limit, ls="--", color="k", label="cost limit")
        ax_c.set(xlabel="inner steps", ylabel="episode cost", title="cost")
        ax_c.legend()
        for ax in (ax_r, ax_c):
            ax.set_xticks(steps)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def evaluate_adaptation(
    policy: GaussianPolicy,
    meta_params: Params,
    normalizer: ObsNormalizer,
    meta_optimizer: MetaOptimizer,
    env_cfg: Any,
    tasks: list[CircleTask],
    inner_steps: int,
    envs_per_task: int,
    steps_per_env: int,
    adv_cfg: AdvantageConfig,
    seed: int,
    dyna: tuple[DynaState, DynaSettings] | None = None,
    measure: str = "auto",
    cost_discount: float = 1.0,
    step_check: StepCheck | None = None,
    inner_cost_margin: float = 0.0,
    measure_episodes: int | None = None,
) -> AdaptationReport:
    """Adapt on ``tasks`` (all at once, first order: no meta-gradient is needed).

    :param dyna: the meta-trained model and settings: inner steps then use a small real
        batch plus model rollouts (the model is not retrained on held-out data); the
        report's real steps per update count the real part only.
    :param measure: ``sample``: report the batches adaptation collects; ``fresh``: after
        each step, ``envs_per_task`` extra episodes of the policy, used for nothing else;
        ``mean``: the same with the mean action; ``auto``: ``fresh`` with a step check
        (its accepted batches passed a test on their own cost, so reporting them would be
        biased low) or with ``measure_episodes`` given, else ``sample``.
    :param measure_episodes: episodes per task of each separate measurement (``fresh``,
        ``mean``); ``None``: ``envs_per_task``. More episodes estimate each policy's
        expected cost more precisely; adaptation's own batches keep ``envs_per_task``.
    :param cost_discount: ``gamma`` of the reported episode cost ``sum_t gamma^t c_t``.
    :param step_check: the measured accept/reject test of each step (as meta-trained);
        the report counts its rejected candidates and their env steps.
    :param inner_cost_margin: the inner rule aims at ``d - margin`` (as meta-trained);
        the report still judges the cost against ``d``.
    """
    if measure not in EVALUATION_POLICIES:
        raise ValueError(f"measure={measure!r} is unknown: valid are {EVALUATION_POLICIES}")
    if measure_episodes is not None and (measure == "sample" or measure_episodes < 1):
        raise ValueError(
            f"measure_episodes={measure_episodes!r} needs measure fresh, mean or auto and "
            "at least 1 episode"
        )
    env = make_batched_env(env_cfg, tasks, envs_per_task, seed, track_states=dyna is not None)
    post_source = RealRollouts(env, steps_per_env, adv_cfg, env_cfg.episode_steps)
    source: InnerDataSource = post_source
    if dyna is not None:
        state, settings = dyna
        real_env = make_batched_env(
            env_cfg, tasks, settings.real_envs_per_task, seed, track_states=True
        )
        source = DynaRollouts(
            real_env, tasks, state, settings, steps_per_env, adv_cfg, env_cfg.episode_steps
        )
    with normalizer.frozen_statistics():
        params = {k: v.detach().clone().requires_grad_() for k, v in meta_params.items()}
        result = adapt(
            policy,
            params,
            meta_optimizer,
            source,
            post_source,
            normalizer,
            inner_steps,
            InnerContext(cost_limit=env_cfg.cost_limit - inner_cost_margin, create_graph=False),
            seeded_generator(seed),
            seed=seed + 1,
            step_check=step_check,
        )
    if measure == "auto":
        separate = step_check is not None or measure_episodes is not None
        measure = "fresh" if separate else "sample"
    measured: list[Batch] = result.batches
    if measure in ("mean", "fresh"):
        eval_env = make_batched_env(
            env_cfg, tasks, measure_episodes or envs_per_task, seed + SEPARATE_EPISODES_SEED_OFFSET
        )
        generator = seeded_generator(seed)
        with normalizer.frozen_statistics():
            measured = [
                collect(eval_env, policy, p, normalizer, steps_per_env, generator, True,
                        seed=seed + SEPARATE_EPISODES_SEED_OFFSET, deterministic=measure == "mean")
                for p in result.policies
            ]  # fmt: skip
    returns = torch.stack([b.episode_return for b in measured], 1).tolist()
    costs = torch.stack([discounted_episode_cost(b, cost_discount) for b in measured], 1).tolist()
    rejected = [[0] + [int(c.rejected[t]) for c in result.checks] for t in range(len(tasks))]
    return AdaptationReport(
        tasks, returns, costs, env_cfg.cost_limit, result.batches[0].num_steps // len(tasks),
        rejected=rejected if result.checks else None,
        extra_steps=sum(c.extra_steps for c in result.checks),
        **(dyna_statistics(result.infos[:inner_steps]) if dyna is not None else {}),
        policies=[{k: v.detach() for k, v in p.items()} for p in result.policies],
    )  # fmt: skip


def dyna_statistics(infos: list[dict[str, float]]) -> dict[str, list[Any]]:
    """Per inner step, the model share and the mean length of the imagined paths that
    ended within its batch (``None`` where none did), from the data source's ``infos``."""
    lengths = [i.get("imagined_mean_path_length", math.nan) for i in infos]
    return {
        "model_share": [float(i.get("model_share", 0.0)) for i in infos],
        "imagined_path_length": [float(n) if math.isfinite(n) else None for n in lengths],
    }


def evaluation_tasks(cfg: DictConfig, explicit: Any = None) -> list[CircleTask]:
    """Explicit ``[[radius, wall_distance], ...]`` or a seeded sample of ``evaluation.split``.

    :raises ConfigError: an explicit task that is not a ``[radius, wall_distance]`` pair
        of numbers, or not a valid task (naming its index and the rule it breaks).
    """
    if explicit is None:
        dist = task_distribution(cfg.env, cfg.evaluation.split)
        return dist.sample(cfg.evaluation.tasks, seed=cfg.evaluation.seed)
    explicit = OmegaConf.to_container(explicit) if OmegaConf.is_config(explicit) else explicit
    if not isinstance(explicit, list) or not explicit:
        raise ConfigError(
            f"tasks={explicit!r} is invalid: expected a non-empty list "
            "[[radius, wall_distance], ...]"
        )
    tasks = []
    for index, pair in enumerate(explicit):
        numbers = isinstance(pair, list) and len(pair) == 2
        if not numbers or not all(isinstance(v, int | float) for v in pair):
            raise ConfigError(
                f"tasks[{index}]={pair!r} is invalid: expected [radius, wall_distance] (numbers)"
            )
        try:
            tasks.append(
                CircleTask(
                    robot=cfg.env.robot,
                    radius=float(pair[0]),
                    wall_distance=float(pair[1]),
                    num_walls=cfg.env.num_walls,
                )
            )
        except ValueError as error:
            raise ConfigError(f"tasks[{index}]: {error}") from error
    return tasks


def adaptation_rule(cfg: DictConfig, trained: MetaOptimizer) -> MetaOptimizer:
    """The inner rule of adaptation: ``trained`` unless ``evaluation.inner_rule`` changes a
    setting of a rule without learned state (validated by :func:`meta_safe.config.validate`)."""
    if not cfg.evaluation.get("inner_rule"):
        return trained
    from meta_safe.meta_optimizers import build_meta_optimizer

    return build_meta_optimizer(adaptation_rule_config(cfg))


def evaluate_meta_state(
    setup: MetaSetup, state: MetaState, cfg: DictConfig, explicit: Any = None
) -> AdaptationReport:
    """Adapt a meta-trained state on the tasks ``cfg.evaluation`` names, on
    ``cfg.runtime.device``."""
    ev = cfg.evaluation
    with on_device(cfg.runtime.device):
        return evaluate_adaptation(
            setup.policy,
            state.meta_params,
            state.normalizer,
            adaptation_rule(cfg, state.meta_optimizer),
            cfg.env,
            evaluation_tasks(cfg, explicit),
            ev.inner_steps,
            ev.envs_per_task,
            ev.steps_per_env,
            AdvantageConfig(**OmegaConf.to_container(cfg.advantage)),
            ev.seed,
            dyna=(state.dyna, setup.dyna_settings) if state.dyna is not None else None,
            measure=ev.policy,
            cost_discount=ev.cost_discount,
            step_check=step_check_of(cfg, evaluation=True),
            inner_cost_margin=inner_cost_margin_of(cfg, evaluation=True),
            measure_episodes=ev.get("measure_episodes"),
        )
