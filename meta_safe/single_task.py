"""Single-task safe policy optimisation with any inner update rule.

Repeatedly: collect a batch on one task, estimate advantages, apply the rule
(CPO, Lagrangian, TRPO, ...) without meta-gradients. This is the "trained from
scratch" baseline of every results table, and it uses exactly the update rule
that adaptation uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from meta_safe.data_source import InnerBatch
from meta_safe.device import seeded_generator
from meta_safe.env_factory import make_batched_env
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.rl.critic import MLPCritic
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import collect
from meta_safe.rl.surrogate import AdvantageConfig, prepare
from meta_safe.step_check import StepCheck, checked_step
from stochastic_circle.tasks import CircleTask


@dataclass
class SingleTaskResult:
    """Learning curve (one entry per iteration) and the final parameters."""

    returns: list[float]
    costs: list[float]
    params: Params
    env_steps: int
    seconds: float
    rejected: list[int] = field(default_factory=list)  # per update: step-check rejections


def train_single_task(
    env_cfg: Any,
    task: CircleTask,
    rule: MetaOptimizer,
    policy: GaussianPolicy,
    iterations: int,
    envs: int,
    steps_per_env: int,
    adv_cfg: AdvantageConfig,
    seed: int,
    params: Params | None = None,
    normalizer: ObsNormalizer | None = None,
    critic_cfg: Any = None,
    step_check: StepCheck | None = None,
    cost_margin: float = 0.0,
) -> SingleTaskResult:
    """Train ``policy`` on ``task`` for ``iterations`` updates of ``rule``.

    :param params: start parameters (default: the policy's initialisation).
    :param normalizer: observation normaliser (default: a fresh one, updated as we go).
    :param critic_cfg: the ``critic`` config section; ``cost: mlp`` trains a persistent
        cost critic over all batches (default: per-batch linear values).
    :param step_check: accept/reject each update on the measured cost of the batch the
        updated policy collects (:mod:`meta_safe.step_check`); retries count as env steps.
    :param cost_margin: the rule aims at ``J_C <= cost_limit - cost_margin``, as the inner
        rule of meta-training and adaptation does with ``meta.inner_cost_margin``.
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} is invalid: must be >= 1")
    if cost_margin < 0:
        raise ValueError(f"cost_margin={cost_margin} is invalid: must be >= 0")
    env = make_batched_env(env_cfg, [task], envs, seed)
    normalizer = normalizer if normalizer is not None else ObsNormalizer(policy.obs_dim)
    params = {k: v.detach().clone() for k, v in (params or policy.init_params()).items()}
    state = rule.init_state(1, dtype=next(iter(params.values())).dtype)
    ctx = InnerContext(cost_limit=env_cfg.cost_limit - cost_margin, create_graph=False)
    generator = seeded_generator(seed)
    critics = {}
    if critic_cfg is not None and critic_cfg.cost == "mlp":
        critics["cost"] = MLPCritic(
            policy.obs_dim,
            tuple(critic_cfg.hidden),
            critic_cfg.lr,
            critic_cfg.epochs,
            critic_cfg.minibatch,
            seed=seed,
        )
    returns, costs, rejections, env_steps = [], [], [], 0
    source = _Collector(env, steps_per_env)
    previous: InnerBatch | None = None
    previous_params = params
    start = time.perf_counter()
    for iteration in range(iterations + 1):
        stacked = {k: v.unsqueeze(0) for k, v in params.items()}
        checked = source.inner_batch(iteration, policy, stacked, normalizer, generator,
                                     seed + iteration)  # fmt: skip
        env_steps += checked.real.num_steps
        if step_check is not None and previous is not None:
            kept, checked, record = checked_step(
                step_check, policy, source, normalizer, generator, iteration, seed + iteration,
                [previous_params], previous, [params], checked,
            )  # fmt: skip
            params = {k: v.detach() for k, v in kept[0].items()}
            env_steps += record.extra_steps
            rejections.append(int(record.rejected[0]))
        previous, previous_params, batch = checked, params, checked.real
        returns.append(float(batch.episode_return[0]))
        costs.append(float(batch.episode_cost[0]))
        if iteration == iterations:
            break  # the last batch only measures the final policy
        data = prepare(batch, adv_cfg, env_cfg.episode_steps, critics)
        live = {k: v.detach().requires_grad_() for k, v in params.items()}
        new, state, _ = rule.step(policy, [live], state, data, ctx)
        params = {k: v.detach() for k, v in new[0].items()}
        state = {k: v.detach() for k, v in state.items()}
    seconds = time.perf_counter() - start
    return SingleTaskResult(returns, costs, params, env_steps, seconds, rejections)


class _Collector:
    """Real batches of the one task, as a data source (for the step check)."""

    num_tasks = 1

    def __init__(self, env: Any, steps_per_env: int) -> None:
        self.env, self.steps_per_env = env, steps_per_env

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch:
        """:param params: each tensor ``[1, ...]``. The policy data is prepared later."""
        single = {k: v[0] for k, v in params.items()}
        batch = collect(
            self.env, policy, single, normalizer, self.steps_per_env, generator, seed=seed
        )
        return InnerBatch([None], batch, {})
