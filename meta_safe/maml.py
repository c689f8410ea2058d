"""MAML through constrained inner updates (Finn et al. 2017; Meta-CPO, Cho & Sun 2024).

One meta-iteration, top to bottom:

1. sample tasks; start every task from the meta-parameters ``theta_0``;
2. K times: collect a fresh batch per task with the current adapted policies, and
   apply the inner rule (kept in the autograd graph unless first-order);
3. collect the post-adaptation batch;
4. meta-objective per task: reward surrogate ``L_R`` and cost surrogate ``L_C`` of
   the adapted policy on post-adaptation data, constraint margin ``c = J_C - d``;
5. exact meta-gradients ``g = d mean(L_R) / d theta_0`` and ``b = d mean(L_C) / d theta_0``
   through all K inner steps (``torch.autograd`` on the inner graph);
6. outer step on ``theta_0``: the CPO step with the Fisher of the *pre-adaptation*
   policy (REFERENCE_NOTES section 8: the convex layer can be differentiated once,
   so the trust region is taken on the pre-adaptation policy), or, for the Meta-TRPO
   baseline (``outer_step: trpo``), the unconstrained natural-gradient step;
7. learnable rules: one step of their own optimiser on
   ``-(mean s L_R - mu * mean max(0, c + L_C))``, with ``s = PolicyData.reward_scale``
   putting the normalised reward surrogate in per-episode units like ``L_C``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from meta_safe.data_source import InnerDataSource
from meta_safe.meta_optimizers.base import (
    InnerContext,
    MetaOptimizer,
    natural_directions,
    trust_region_scale,
)
from meta_safe.optim.cpo_step import cpo_step
from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, stack_params
from meta_safe.rl.surrogate import PolicyData, surrogates


@dataclass
class AdaptationResult:
    """What one adaptation of a batch of tasks produced.

    :ivar adapted: per-task parameters after the last inner step (in the graph).
    :ivar batches: the K + 1 real batches collected (inner steps, then post-adaptation).
    :ivar data: the policy data of each of the K + 1 collections (per task).
    :ivar metrics: per inner step, the rule's metrics ``[T]``.
    :ivar times: seconds spent sampling and in inner updates.
    :ivar infos: per collection, the data source's scalars (e.g. model share).
    """

    adapted: list[Params]
    batches: list[Batch]
    data: list[list[PolicyData]]
    metrics: list[dict[str, Tensor]]
    times: dict[str, float] = field(default_factory=dict)
    infos: list[dict[str, float]] = field(default_factory=list)


def adapt(
    policy: GaussianPolicy,
    meta_params: Params,
    rule: MetaOptimizer,
    source: InnerDataSource,
    post_source: InnerDataSource,
    normalizer: ObsNormalizer,
    inner_steps: int,
    ctx: InnerContext,
    generator: torch.Generator,
    seed: int,
    on_batch: Callable[[int, Batch], None] | None = None,
) -> AdaptationResult:
    """Adapt ``meta_params`` to every task with K inner steps, each on fresh data.

    :param source: data of the inner steps (:mod:`meta_safe.data_source`: real
        rollouts, or real plus model rollouts).
    :param post_source: data of the post-adaptation batch (real rollouts).
    :param seed: env seed of the first collection (collection ``k`` uses ``seed + k``).
    :param on_batch: called with ``(k, batch)`` after each real collection (logging).
    """
    num_tasks = source.num_tasks
    params = [dict(meta_params) for _ in range(num_tasks)]
    state = rule.init_state(num_tasks, dtype=next(iter(meta_params.values())).dtype)
    batches, datas, metrics, infos = [], [], [], []
    times = {"sampling": 0.0, "inner_update": 0.0}
    for k in range(inner_steps + 1):
        start = time.perf_counter()
        behaviour = stack_params([{n: v.detach() for n, v in p.items()} for p in params])
        supplier = post_source if k == inner_steps else source
        inner = supplier.inner_batch(k, policy, behaviour, normalizer, generator, seed + k)
        times["sampling"] += time.perf_counter() - start
        batches.append(inner.real)
        datas.append(inner.data)
        infos.append(inner.info)
        if on_batch is not None:
            on_batch(k, inner.real)
        if k == inner_steps:
            break
        start = time.perf_counter()
        params, state, step_metrics = rule.step(policy, params, state, inner.data, ctx)
        metrics.append(step_metrics)
        times["inner_update"] += time.perf_counter() - start
    return AdaptationResult(params, batches, datas, metrics, times, infos)


def meta_objectives(
    policy: GaussianPolicy, adapted: list[Params], post: list[PolicyData]
) -> tuple[Tensor, Tensor]:
    """Post-adaptation surrogates ``(L_R [T], L_C [T])``, differentiable to ``theta_0``."""
    rewards, costs = zip(
        *(surrogates(policy, p, d) for p, d in zip(adapted, post, strict=True)), strict=True
    )
    return torch.stack(rewards), torch.stack(costs)


OUTER_CASE_UNCONSTRAINED = -1
"""``case`` reported by the unconstrained (``trpo``) outer step."""


def outer_step(
    policy: GaussianPolicy,
    meta_params: Params,
    pre_data: list[PolicyData],
    g: Tensor,
    b: Tensor | None,
    margin: Tensor,
    trust_radius: float,
    damping: float,
    cg_iters: int,
    fisher_stride: int = 1,
) -> tuple[Params, dict[str, Tensor]]:
    """Trust-region step on ``theta_0`` with the pre-adaptation Fisher ``H``.

    With ``b`` given: the CPO step (closed form) under the linearised post-adaptation
    cost constraint ``b^T x + margin <= 0``. With ``b=None``: the unconstrained natural
    gradient step ``x = sqrt(2 delta / g^T H^-1 g) H^-1 g`` (cost ignored), reported as
    ``case = OUTER_CASE_UNCONSTRAINED``.

    :param g, b: ``[P]`` meta-gradients of the mean reward and cost surrogates.
    :param margin: ``[]`` mean post-adaptation ``J_C - d`` over tasks (unused when ``b=None``).
    """
    detached = {k: v.detach().requires_grad_() for k, v in meta_params.items()}
    merged = PolicyData(
        obs=torch.cat([d.obs for d in pre_data]),
        actions=torch.cat([d.actions for d in pre_data]),
        log_probs=torch.cat([d.log_probs for d in pre_data]),
        reward_adv=torch.cat([d.reward_adv for d in pre_data]),
        cost_adv=torch.cat([d.cost_adv for d in pre_data]),
        episode_return=torch.stack([d.episode_return for d in pre_data]).mean(),
        episode_cost=torch.stack([d.episode_cost for d in pre_data]).mean(),
        horizon=pre_data[0].horizon,
    )
    if b is None:
        (hg,) = natural_directions(
            policy, detached, merged, [g], damping, cg_iters, False, fisher_stride
        )
        step = trust_region_scale(g, hg, trust_radius) * hg
        info = {"case": torch.tensor(OUTER_CASE_UNCONSTRAINED), "q": (g * hg).sum()}
    else:
        hg, hb = natural_directions(
            policy, detached, merged, [g, b], damping, cg_iters, False, fisher_stride
        )
        step, info = cpo_step(g, b, margin.to(g.dtype), hg, hb, trust_radius, solver="closed_form")
    new = unflatten_like(flat_concat(detached).detach() + step.detach(), meta_params)
    return new, {k: v.detach() for k, v in info.items()}
