"""Adaptation: K inner steps of a meta-optimizer from the meta-parameters, on every task.

Used by meta-training (:func:`meta_safe.maml.meta_step`, in the autograd graph) and by
evaluation on unseen tasks (first order).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from meta_safe.data_source import InnerDataSource
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, behaviour_params
from meta_safe.rl.surrogate import PolicyData, surrogates
from meta_safe.step_check import StepCheck, StepCheckRecord, checked_step


@dataclass
class AdaptationResult:
    """What one adaptation of a batch of tasks produced.

    :ivar adapted: per-task parameters after the last inner step (in the graph).
    :ivar batches: the K + 1 real batches collected (inner steps, then post-adaptation).
    :ivar data: the policy data of each of the K + 1 collections (per task).
    :ivar metrics: per inner step, the meta-optimizer's metrics ``[T]``.
    :ivar times: seconds spent sampling and in inner updates.
    :ivar infos: per collection, the data source's scalars (e.g. model share).
    :ivar policies: per collection, the detached parameters that collected it, stacked
        over tasks (each tensor ``[T, ...]``): the policy after ``k`` inner steps.
    :ivar trajectory: per collection, the per-task parameters that collected it, in the
        graph (``trajectory[-1]`` is ``adapted``).
    :ivar checks: per inner step, what the measured step check did (empty without it).
    """

    adapted: list[Params]
    batches: list[Batch]
    data: list[list[PolicyData]]
    metrics: list[dict[str, Tensor]]
    times: dict[str, float] = field(default_factory=dict)
    infos: list[dict[str, float]] = field(default_factory=list)
    policies: list[Params] = field(default_factory=list)
    trajectory: list[list[Params]] = field(default_factory=list)
    checks: list[StepCheckRecord] = field(default_factory=list)


def adapt(
    policy: GaussianPolicy,
    meta_params: Params,
    meta_optimizer: MetaOptimizer,
    source: InnerDataSource,
    post_source: InnerDataSource,
    normalizer: ObsNormalizer,
    inner_steps: int,
    ctx: InnerContext,
    generator: torch.Generator,
    seed: int,
    on_batch: Callable[[int, Batch], None] | None = None,
    step_check: StepCheck | None = None,
) -> AdaptationResult:
    """Adapt ``meta_params`` to every task with K inner steps, each on fresh data.

    :param source: data of the inner steps (real rollouts, or real plus model rollouts).
    :param post_source: data of the post-adaptation batch (real rollouts).
    :param seed: env seed of the first collection (collection ``k`` uses ``seed + k``).
    :param on_batch: called with ``(k, batch)`` after each real collection (logging).
    :param step_check: accept/reject each step on its measured cost
        (:mod:`meta_safe.step_check`); ``None``: every step is taken.
    """
    num_tasks = source.num_tasks
    params = [dict(meta_params) for _ in range(num_tasks)]
    state = meta_optimizer.init_state(num_tasks, dtype=next(iter(meta_params.values())).dtype)
    batches, datas, metrics, infos, policies, trajectory = [], [], [], [], [], []
    times = {"sampling": 0.0, "inner_update": 0.0}
    checks: list[StepCheckRecord] = []
    previous, previous_batch = params, None
    for k in range(inner_steps + 1):
        start = time.perf_counter()
        behaviour = behaviour_params(params)
        supplier = post_source if k == inner_steps else source
        inner = supplier.inner_batch(k, policy, behaviour, normalizer, generator, seed + k)
        if step_check is not None and previous_batch is not None:
            params, inner, record = checked_step(
                step_check, policy, supplier, normalizer, generator, k, seed + k,
                previous, previous_batch, params, inner,
            )  # fmt: skip
            checks.append(record)
            behaviour = behaviour_params(params)
        policies.append(behaviour)
        trajectory.append(params)
        previous, previous_batch = params, inner
        times["sampling"] += time.perf_counter() - start
        batches.append(inner.real)
        datas.append(inner.data)
        infos.append(inner.info)
        if on_batch is not None:
            on_batch(k, inner.real)
        if k == inner_steps:
            break
        start = time.perf_counter()
        params, state, step_metrics = meta_optimizer.step(policy, params, state, inner.data, ctx)
        check_finite_step(params, k)
        metrics.append(step_metrics)
        times["inner_update"] += time.perf_counter() - start
    return AdaptationResult(
        params, batches, datas, metrics, times, infos, policies, trajectory, checks
    )


def check_finite_step(params: list[Params], k: int) -> None:
    """Stop before a non-finite inner step is rolled out (its NaN actions would surface
    later as an unrelated error).

    :raises FloatingPointError: naming the step and the tasks.
    """
    bad = [t for t, p in enumerate(params) if not all(torch.isfinite(v).all() for v in p.values())]
    if bad:
        raise FloatingPointError(
            f"inner step {k + 1} produced non-finite policy parameters for task(s) {bad}"
        )


def meta_objectives(
    policy: GaussianPolicy, adapted: list[Params], post: list[PolicyData]
) -> tuple[Tensor, Tensor]:
    """Post-adaptation surrogates ``(L_R [T], L_C [T])``, differentiable to ``theta_0``."""
    rewards, costs = zip(
        *(surrogates(policy, p, d) for p, d in zip(adapted, post, strict=True)), strict=True
    )
    return torch.stack(rewards), torch.stack(costs)
