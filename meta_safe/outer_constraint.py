"""The outer step's cost constraint: which costs it covers and how tasks combine.

The outer CPO step on ``theta_0`` takes one linearised constraint ``b^T x + c <= 0``.
:func:`constrained_costs` picks the costs it covers (after adapting, before, or after
every step), :func:`outer_constraint_weights` combines the tasks' (mean, worst task,
CVaR, costliest step) and :func:`outer_cost_constraint` builds ``b`` and ``c`` with a margin.
:func:`measured_line_search` backtracks the resulting step on the meta-policy's
measured cost. The choice of defaults and its evidence are in ``docs/design.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from meta_safe.adaptation import AdaptationResult, meta_objectives
from meta_safe.config import OUTER_CONSTRAINTS, OUTER_COST_BATCHES
from meta_safe.device import seeded_generator
from meta_safe.meta_optimizers.gradients import constraint_margin
from meta_safe.optim.flat_params import flat_concat, flat_gradient, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import collect


def outer_constraint_weights(
    margin: Tensor, aggregate: str, cvar_fraction: float, num_tasks: int | None = None
) -> Tensor:
    """Weights ``w [N]`` (summing to 1) that turn per-task constraints into the outer
    step's one constraint ``sum_n w_n (J_C,n - d + b_n^T x) <= 0``.

    ``mean``: ``1 / N`` each (the cost averaged over all entries). ``worst``: all weight
    on the entry whose measured margin ``J_C,n - d`` is largest. ``cvar``: equal weight
    on the ``ceil(cvar_fraction * N)`` entries with the largest margins (the conditional
    value at risk of the per-task cost). ``worst_step``: the entries are ``G`` groups of
    ``num_tasks`` (step-major, as :func:`constrained_costs` returns them), and weight
    ``1 / num_tasks`` goes to each task of the group whose mean margin is largest: the
    costliest inner step ``k``, averaged over tasks (with one group, the mean). Ties go
    to the lower index.

    :param margin: ``[N]`` measured ``J_C,n - d`` (only its order matters, no gradient).
    :param num_tasks: tasks per group for ``worst_step`` (default ``N``: one group).
    """
    size = margin.shape[0]
    if aggregate == "mean":
        return torch.full((size,), 1.0 / size, dtype=margin.dtype)
    if aggregate == "worst_step":
        per_group = size if num_tasks is None else num_tasks
        if per_group < 1 or size % per_group:
            raise ValueError(f"{size} margins do not split into groups of {per_group} tasks")
        group_means = margin.detach().reshape(-1, per_group).mean(dim=1)
        worst = int(torch.argmax(group_means))  # the first of equal maxima
        weights = torch.zeros(size, dtype=margin.dtype)
        weights[worst * per_group : (worst + 1) * per_group] = 1.0 / per_group
        return weights
    if aggregate == "worst":
        count = 1
    elif aggregate == "cvar":
        count = max(1, math.ceil(cvar_fraction * size - 1e-9))
    else:
        raise ValueError(f"outer constraint {aggregate!r} is unknown: valid {OUTER_CONSTRAINTS}")
    order = torch.sort(margin.detach(), descending=True, stable=True).indices[:count]
    weights = torch.zeros(size, dtype=margin.dtype)
    weights[order] = 1.0 / count
    return weights


def constrained_costs(
    policy: GaussianPolicy,
    result: AdaptationResult,
    post_cost_sur: Tensor,
    post_margin: Tensor,
    batches: str,
    cost_limit: float,
) -> tuple[Tensor, Tensor]:
    """The cost surrogates and measured margins the outer constraint covers.

    ``post``: each task's post-adaptation cost (``[T]``). ``pre``: each task's cost of
    the meta-policy itself, before adapting (``[T]``; a plain policy gradient).
    ``every``: every collection ``k = 0..K`` of every task (``[(K + 1) T]``), each the
    surrogate of the policy after ``k`` steps on its own batch.

    :param post_cost_sur, post_margin: ``[T]`` the post-adaptation ones (reused).
    """
    if batches == "post":
        return post_cost_sur, post_margin
    if batches not in OUTER_COST_BATCHES:
        raise ValueError(f"outer cost batches {batches!r} unknown: valid {OUTER_COST_BATCHES}")
    last = len(result.data) - 1
    steps = [0] if batches == "pre" else range(last + 1)
    costs, margins = [], []
    for k in steps:
        if k == last:
            costs.append(post_cost_sur)
            margins.append(post_margin)
            continue
        _, cost_k = meta_objectives(policy, result.trajectory[k], result.data[k])
        costs.append(cost_k)
        margins.append(constraint_margin(result.data[k], cost_limit).to(post_margin.dtype))
    return torch.cat(costs), torch.cat(margins)


def outer_cost_constraint(
    cost_sur: Tensor,
    margin: Tensor,
    meta_params: Params,
    aggregate: str,
    cvar_fraction: float,
    cost_margin: float,
    retain_graph: bool,
    num_tasks: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The outer step's linearised cost constraint ``b^T x + c <= 0`` on ``theta_0``.

    ``b = d sum_t w_t L_C,t / d theta_0`` and ``c = sum_t w_t (J_C,t - d) + cost_margin``
    with the weights of :func:`outer_constraint_weights` (``mean``: the gradient of
    ``mean(L_C)`` and the mean margin, exactly as without weights).

    :param cost_sur, margin: ``[N]`` cost surrogates (in the graph of ``meta_params``)
        and measured margins ``J_C,n - d``, e.g. ``N = (K + 1) T`` from
        :func:`constrained_costs`.
    :param num_tasks: ``T``, the group size of ``worst_step``.
    :return: ``(b [P], c [])``.
    """
    if aggregate == "mean":
        b = flat_gradient(cost_sur.mean(), meta_params, retain_graph=retain_graph)
        return b, margin.mean() + cost_margin
    weights = outer_constraint_weights(margin, aggregate, cvar_fraction, num_tasks)
    weights = weights.to(cost_sur.dtype)
    b = flat_gradient((weights * cost_sur).sum(), meta_params, retain_graph=retain_graph)
    return b, (weights * margin).sum() + cost_margin


def measured_line_search(
    policy: GaussianPolicy,
    old_params: Params,
    new_params: Params,
    env: Any,
    normalizer: ObsNormalizer,
    current_costs: Tensor,
    cost_limit: float,
    aggregate: str,
    cvar_fraction: float,
    cost_margin: float,
    steps: int,
    shrink: float,
    steps_per_env: int,
    seed: int,
) -> tuple[Params, float, int]:
    """Backtrack the outer step on the *measured* cost of the meta-policy.

    Candidates ``theta_0 + shrink^j (theta_new - theta_0)``, ``j = 0..steps-1``, each
    run on the iteration's tasks (one batch, the same start states and action noise for
    every candidate). The first whose tasks' costs, combined as by
    :func:`outer_constraint_weights`, are within ``d - cost_margin``, or (when the
    current meta-policy violates that) no higher than the current ones, is taken; if
    none is, ``theta_0`` is kept.

    :param current_costs: ``[T]`` the current meta-policy's episode costs.
    :return: the parameters, the scale taken (``0``: rejected) and the env steps used.
    """

    def combined(costs: Tensor) -> float:
        margin = costs.double() - cost_limit
        weights = outer_constraint_weights(margin, aggregate, cvar_fraction).double()
        return float((weights * margin).sum()) + cost_margin

    current = combined(current_costs)
    old = flat_concat(old_params).detach()
    step = flat_concat(new_params).detach() - old
    used = 0
    for j in range(steps):
        scale = shrink**j
        candidate = unflatten_like(old + scale * step, old_params)
        generator = seeded_generator(seed)
        batch = collect(env, policy, candidate, normalizer, steps_per_env, generator, seed=seed)
        used += batch.num_steps
        measured = combined(batch.episode_cost)
        if measured <= 0.0 or (current > 0.0 and measured <= current):
            return candidate, scale, used
    return {k: v.detach() for k, v in old_params.items()}, 0.0, used
