"""Single-task safe policy optimisation with any inner update rule.

Repeatedly: collect a batch on one task, estimate advantages, apply the rule
(CPO, Lagrangian, TRPO, ...) without meta-gradients. This is the "trained from
scratch" baseline of every results table, and it uses exactly the update rule
that adaptation uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from meta_safe.env_factory import make_batched_env
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.rl.critic import MLPCritic
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import collect
from meta_safe.rl.surrogate import AdvantageConfig, prepare
from stochastic_circle.tasks import CircleTask


@dataclass
class SingleTaskResult:
    """Learning curve (one entry per iteration) and the final parameters."""

    returns: list[float]
    costs: list[float]
    params: Params
    env_steps: int
    seconds: float


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
) -> SingleTaskResult:
    """Train ``policy`` on ``task`` for ``iterations`` updates of ``rule``.

    :param params: start parameters (default: the policy's initialisation).
    :param normalizer: observation normaliser (default: a fresh one, updated as we go).
    :param critic_cfg: the ``critic`` config section; ``cost: mlp`` trains a persistent
        cost critic over all batches (default: per-batch linear values).
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} is invalid: must be >= 1")
    env = make_batched_env(env_cfg, [task], envs, seed)
    normalizer = normalizer if normalizer is not None else ObsNormalizer(policy.obs_dim)
    params = {k: v.detach().clone() for k, v in (params or policy.init_params()).items()}
    state = rule.init_state(1, dtype=next(iter(params.values())).dtype)
    ctx = InnerContext(cost_limit=env_cfg.cost_limit, create_graph=False)
    generator = torch.Generator().manual_seed(seed)
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
    returns, costs, env_steps = [], [], 0
    start = time.perf_counter()
    for iteration in range(iterations + 1):
        batch = collect(
            env, policy, params, normalizer, steps_per_env, generator, seed=seed + iteration
        )
        env_steps += batch.num_steps
        returns.append(float(batch.episode_return[0]))
        costs.append(float(batch.episode_cost[0]))
        if iteration == iterations:
            break  # the last batch only measures the final policy
        data = prepare(batch, adv_cfg, env_cfg.episode_steps, critics)
        live = {k: v.detach().requires_grad_() for k, v in params.items()}
        new, state, _ = rule.step(policy, [live], state, data, ctx)
        params = {k: v.detach() for k, v in new[0].items()}
        state = {k: v.detach() for k, v in state.items()}
    return SingleTaskResult(returns, costs, params, env_steps, time.perf_counter() - start)
