"""Surrogate gradients of one task's data, and the parameter arithmetic of a step."""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData, surrogates


def task_gradients(
    policy: GaussianPolicy, params: Params, data: PolicyData, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Flat gradients ``(g, b)`` ``[P]`` of the reward and cost surrogates at ``params``."""
    reward, cost = surrogates(policy, params, data)
    values = list(params.values())
    g = torch.autograd.grad(reward, values, create_graph=create_graph, retain_graph=True)
    b = torch.autograd.grad(cost, values, create_graph=create_graph)
    return flat_concat(dict(zip(params, g, strict=True))), flat_concat(
        dict(zip(params, b, strict=True))
    )


def stacked_task_gradients(
    policy: GaussianPolicy, params: list[Params], data: list[PolicyData], create_graph: bool
) -> tuple[Tensor, Tensor]:
    """:func:`task_gradients` of every task, stacked: ``(g [T, P], b [T, P])``."""
    pairs = [task_gradients(policy, p, d, create_graph) for p, d in zip(params, data, strict=True)]
    return torch.stack([g for g, _ in pairs]), torch.stack([b for _, b in pairs])


def add_flat(params: Params, flat_step: Tensor) -> Params:
    """A new dict ``params + step`` (``flat_step [P]``); the inputs are not modified."""
    step = unflatten_like(flat_step, params)
    return {k: v + step[k] for k, v in params.items()}


def constraint_margin(data: list[PolicyData], cost_limit: float) -> Tensor:
    """``J_C - d`` per task ``[T]`` (``> 0``: violating), from the batch's episode costs."""
    return torch.stack([d.episode_cost.detach() for d in data]) - cost_limit
