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

The ``step_length`` model (:func:`update_proportional_overshoot`,
:func:`choose_step_fractions`) makes the expected overshoot proportional to the step's
length ``t = sqrt(KL / delta)``, as the dropped term is: ``c_k(t) = J_C,k - d + o_k t``,
with the trust radius ``delta t^2`` and ``t`` chosen per step.

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

__all__ = [
    "MODELS",
    "choose_step_fractions",
    "initial_state",
    "measured_miss",
    "predicted_change",
    "update_overshoot",
    "update_proportional_overshoot",
]

#: How the expected overshoot depends on the step: ``"constant"`` (one margin for any
#: step) or ``"step_length"`` (proportional to the step's length ``sqrt(KL / delta)``).
MODELS = ("constant", "step_length")

#: Step lengths (fractions of the trust-region step) the ``step_length`` model tries.
STEP_FRACTIONS = tuple(0.8**j for j in range(16))


def initial_state(num_tasks: int, prior: float = 0.0, model: str = "constant") -> State:
    """No history: ``previous_cost`` NaN, zero prediction, overshoot ``prior`` (the
    margin of the first step, before any overshoot was measured), each ``[T]`` float64.

    The ``step_length`` model also keeps the step length taken (``step_length``) and the
    two discounted moments of its fit, ``miss_moment = sum w_i miss_i t_i`` and
    ``length_moment = sum w_i t_i^2``, which start as one full-length step that missed by
    ``prior``.
    """
    if model not in MODELS:
        raise ValueError(f"overshoot model {model!r} is unknown: valid choices are {list(MODELS)}")
    state = {
        "previous_cost": torch.full((num_tasks,), float("nan"), dtype=torch.float64),
        "predicted_change": torch.zeros(num_tasks, dtype=torch.float64),
        "overshoot": torch.full((num_tasks,), float(prior), dtype=torch.float64),
    }
    if model == "step_length":
        state["step_length"] = torch.zeros(num_tasks, dtype=torch.float64)
        state["miss_moment"] = torch.full((num_tasks,), float(prior), dtype=torch.float64)
        state["length_moment"] = torch.ones(num_tasks, dtype=torch.float64)
    return state


def measured_miss(state: State, episode_cost: Tensor) -> tuple[Tensor, Tensor]:
    """The previous step's miss, ``max(0, (J_C,k - J_C,k-1) - b^T x)``, and whether there
    was a previous step: ``miss [T]`` float64 (0 without one), ``has_history [T]`` bool."""
    realised = episode_cost.detach().to(torch.float64) - state["previous_cost"]
    has_history = torch.isfinite(realised)
    miss = (realised - state["predicted_change"]).clamp_min(0.0)
    return torch.where(has_history, miss, 0.0), has_history


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
    miss, has_history = measured_miss(state, episode_cost)
    if hold:
        blended = torch.maximum(decay * state["overshoot"], miss)
    else:
        blended = decay * state["overshoot"] + (1.0 - decay) * miss
    return torch.where(has_history, blended, state["overshoot"])


def update_proportional_overshoot(
    state: State, episode_cost: Tensor, decay: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The overshoot per full-length step, fitted to misses that scale with step length.

    CPO's bound on the cost of the new policy (Achiam et al. 2017, Corollary 3) adds
    ``sqrt(2 delta') gamma eps_C / (1 - gamma)^2`` to the linear model for a step of KL
    ``delta'``: proportional to the step length. This fits that coefficient ``o`` to the
    measured misses ``miss_i`` of steps of length ``t_i = sqrt(KL_i / delta)`` by
    discounted least squares through the origin,
    ``o = sum w_i miss_i t_i / sum w_i t_i^2`` with ``w_i = decay^(k - i)``: a short step
    carries little evidence (weight ``t_i^2``), so its noise does not inflate ``o``.

    :param state: from :func:`initial_state` with ``model="step_length"``, or the previous
        step's.
    :param episode_cost: ``[T]`` mean episode cost of the current batch.
    :param decay: discount of older steps in ``[0, 1)``.
    :return: ``overshoot [T]`` (``o``), ``miss_moment [T]`` and ``length_moment [T]``, float64;
        tasks without a previous step keep theirs.
    """
    miss, has_history = measured_miss(state, episode_cost)
    length = state["step_length"]
    miss_moment = torch.where(
        has_history, decay * state["miss_moment"] + miss * length, state["miss_moment"]
    )
    length_moment = torch.where(
        has_history, decay * state["length_moment"] + length**2, state["length_moment"]
    )
    return miss_moment / length_moment, miss_moment, length_moment


@torch.no_grad()
def choose_step_fractions(
    q: Tensor, r: Tensor, s: Tensor, c: Tensor, overshoot: Tensor, trust_radius: float
) -> Tensor:
    """The step length ``t`` of each task's CPO step under a step-length overshoot.

    For each ``t`` in :data:`STEP_FRACTIONS` the CPO problem with trust radius
    ``delta t^2`` and margin ``c + o t`` is solved in closed form (only the scalars
    ``q, r, s`` of the full problem are needed); the ``t`` whose step gains the most
    linearised reward, ``g^T x = (q - nu r) / lam``, among the feasible ones is returned.
    With none feasible (violating beyond recovery at every length), ``t = 1``: the
    full-length recovery step.

    :param q: ``[T]`` ``g^T H^-1 g``.
    :param r: ``[T]`` ``g^T H^-1 b``.
    :param s: ``[T]`` ``b^T H^-1 b``.
    :param c: ``[T]`` ``J_C - d`` (``> 0``: violating).
    :param overshoot: ``[T]`` ``o >= 0``, the expected miss of a full-length step.
    :param trust_radius: ``delta`` of the full-length step.
    :return: ``t [T]`` in ``(0, 1]``, without gradient.
    """
    from meta_safe.optim.cpo_step import CASE_INFEASIBLE, dual_solution

    fractions = torch.tensor(STEP_FRACTIONS, dtype=q.dtype, device=q.device)  # [F]
    grid = fractions.unsqueeze(1).expand(-1, q.shape[0])  # [F, T]

    def tiled(value: Tensor) -> Tensor:
        return value.detach().to(q.dtype).unsqueeze(0).expand_as(grid).reshape(-1)

    margins = tiled(c) + tiled(overshoot) * grid.reshape(-1)
    lam, nu, case = dual_solution(
        tiled(q), tiled(r), tiled(s), margins, trust_radius * grid.reshape(-1) ** 2
    )
    gain = (tiled(q) - nu * tiled(r)) / lam.clamp_min(torch.finfo(q.dtype).tiny)
    gain = torch.where(case == CASE_INFEASIBLE, -torch.inf, gain).reshape(grid.shape)
    best = gain.argmax(0)
    chosen = fractions[best]
    return torch.where(torch.isfinite(gain.max(0).values), chosen, torch.ones_like(chosen))


def predicted_change(cost_gradient: Tensor, step: Tensor) -> Tensor:
    """Linear model's change of the episode cost for ``step``: ``b^T x``, ``[T]`` float64.

    :param cost_gradient: ``[T, P]`` gradient of the cost surrogate (episode-cost units).
    :param step: ``[T, P]`` the step actually applied (after any line search).
    """
    return (cost_gradient * step).sum(-1).to(torch.float64)
