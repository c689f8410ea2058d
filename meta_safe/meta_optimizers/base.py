"""The one inner-update interface every meta-optimizer implements.

An inner update is a pure function of ``(params, state, data)``::

    new_params, new_state, metrics = rule.step(policy, params, state, data, ctx)

with one parameter dict per task. It never mutates its inputs, so the outer loop
can differentiate ``new_params`` with respect to the meta-parameters (the initial
policy and, for learned rules, the rule's own ``nn.Parameter`` s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData

State = dict[str, Tensor]


@dataclass(frozen=True)
class InnerContext:
    """What an inner step needs besides parameters and data.

    :param cost_limit: per-episode cost limit ``d``.
    :param create_graph: keep the graph for second-order meta-gradients (False: first order).
    """

    cost_limit: float
    create_graph: bool = True


class MetaOptimizer(nn.Module):
    """Base class of inner update rules; learnable rules register ``nn.Parameter`` s."""

    #: Whether the rule has meta-parameters of its own (updated by the outer optimiser).
    learnable: bool = False
    #: Whether the rule ignores cost (Meta-TRPO): ``meta.outer_step=auto`` then takes the
    #: unconstrained outer step too.
    ignores_cost: bool = False
    #: Outer Adam learning rate of a learnable rule's parameters (``meta.learned_rule_lr``
    #: overrides it).
    default_outer_lr: float | None = None

    def init_state(self, num_tasks: int, dtype: torch.dtype = torch.float32) -> State:
        """Optimizer state at the start of an adaptation (e.g. multipliers), per task."""
        return {}

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        """One inner update for every task. :return: new params, new state, metrics ``[T]``."""
        raise NotImplementedError
