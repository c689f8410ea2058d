"""A constraint margin calibrated on the linear cost model's measured overshoot.

CPO's step satisfies the *linearised* constraint ``c + b^T x <= 0``. Its guarantee
(Achiam et al. 2017, Corollary 3) has a further term, the cost of the state-distribution
shift, ``~ sqrt(2 delta) gamma eps_C / (1 - gamma)^2``, which practical CPO drops. On the
circle tasks that term is not small: a KL-0.01 step from a nearly safe policy moves whole
orbits through the wall, and the measured episode cost then rises by 40-100 where the
linear model predicted 0-6 (README, single-task results).

This module estimates the dropped term from data instead of bounding it: after each
update it compares the realised change of the batch episode cost with the change the
linear model predicted for the step taken, and keeps an exponential moving average of
the positive part (the overshoot). The next step's constraint is tightened by it::

    o_k = decay * o_{k-1} + (1 - decay) * max(0, (J_C,k - J_C,k-1) - b_{k-1}^T x_{k-1})
    c_k = J_C,k - d + o_k

or, holding the largest recent overshoot (``hold``), ``o_k = max(decay * o_{k-1}, miss_k)``
with ``miss_k`` the positive part above: one large miss keeps the margin large for
several steps instead of entering it at a weight of ``1 - decay``.

Noise in the batch cost estimate also shows up as overshoot, so the estimate grows
with estimation noise too, which errs on the safe side. Episode costs are data
(detached, like ``c``); the prediction ``b^T x`` keeps its autograd history, so an
adaptation's margin is a differentiable function of the initial parameters and the
exact meta-gradient sees it (checked against finite differences).
"""

from __future__ import annotations

import torch
from torch import Tensor

State = dict[str, Tensor]

__all__ = ["initial_state", "predicted_change", "update_overshoot"]


def initial_state(num_tasks: int, prior: float = 0.0) -> State:
    """No history: ``previous_cost`` NaN, zero prediction, overshoot ``prior`` (the
    margin of the first step, before any overshoot was measured), each ``[T]`` float64."""
    return {
        "previous_cost": torch.full((num_tasks,), float("nan"), dtype=torch.float64),
        "predicted_change": torch.zeros(num_tasks, dtype=torch.float64),
        "overshoot": torch.full((num_tasks,), float(prior), dtype=torch.float64),
    }


def update_overshoot(
    state: State, episode_cost: Tensor, decay: float, hold: bool = False
) -> Tensor:
    """The overshoot estimate for this step, from the cost change since the previous step.

    :param state: from :func:`initial_state` or the previous step.
    :param episode_cost: ``[T]`` mean episode cost of the current batch.
    :param decay: weight of the previous estimate in ``[0, 1)``.
    :param hold: keep the larger of the decayed estimate and the new miss instead of
        averaging them.
    :return: ``overshoot [T]`` float64 (``>= 0``); tasks without a previous step keep theirs.
    """
    cost = episode_cost.detach().to(torch.float64)
    realised = cost - state["previous_cost"]
    overshoot = (realised - state["predicted_change"]).clamp_min(0.0)
    has_history = torch.isfinite(realised)
    miss = torch.where(has_history, overshoot, 0.0)
    if hold:
        blended = torch.maximum(decay * state["overshoot"], miss)
    else:
        blended = decay * state["overshoot"] + (1.0 - decay) * miss
    return torch.where(has_history, blended, state["overshoot"])


def predicted_change(cost_gradient: Tensor, step: Tensor) -> Tensor:
    """Linear model's change of the episode cost for ``step``: ``b^T x``, ``[T]`` float64.

    :param cost_gradient: ``[T, P]`` gradient of the cost surrogate (episode-cost units).
    :param step: ``[T, P]`` the step actually applied (after any line search).
    """
    return (cost_gradient * step).sum(-1).to(torch.float64)
