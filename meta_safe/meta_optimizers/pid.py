"""PID-Lagrangian inner step with learnable gains (Stooke, Achiam, Abbeel 2020, algorithm 2).

Per task, with ``v = J_C - d`` the constraint violation of the current batch (cost units,
``> 0``: violating) the multiplier is the *output* of a PID controller (the positional
form of Stooke et al., section 4, not a velocity form that integrates ``lambda``)::

    I      <- max(I + v, 0)                                    (integral, anti-windup)
    lambda  = max(lambda_init + K_P v + K_I I + K_D (v - v_prev), 0)
    theta'  = theta + (eta_R g_hat - lambda eta_C b_hat) / (1 + lambda)

``g_hat, b_hat`` are step directions made from the reward and cost surrogate gradients
(``directions``, :class:`~meta_safe.meta_optimizers.directions.StepDirections`): by default
each is the natural-gradient step of KL ``trust_radius`` along its gradient, so
``eta_R = 1`` with ``lambda = 0`` is one TRPO step, and the step sizes are learned in
units of trust-region steps (``rms``: each gradient divided by its RMS over
coordinates, a step size per coordinate; ``raw``: the gradients themselves). The
``1 / (1 + lambda)`` normalisation is Stooke et al.'s (their objective is
``(L_R - lambda L_C) / (1 + lambda)``): a large multiplier turns the step towards the
cost direction without multiplying its length. ``K_P, K_I, K_D, eta_R, eta_C`` are
meta-parameters (``softplus`` of unconstrained ``nn.Parameter`` s, so they stay positive
while the outer optimiser moves them freely).

Differences from Stooke et al. worth knowing: the integral is kept in violation units and
multiplied by ``K_I`` when read (equal to their ``I <- (I + K_I v)_+`` for a fixed
``K_I > 0``, but keeps the state free of the meta-parameters); ``lambda_init`` plays the
role of the integral's initial value; ``v_prev`` starts at 0, so the first derivative
term is ``K_D v`` (their ``J_C,prev`` also starts at 0); the derivative term is not
projected to ``>= 0``. The multiplier is updated *before* the primal step, so a step
always reacts to the cost measured on the batch it uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.directions import StepDirections, primal_dual_direction
from meta_safe.meta_optimizers.gradients import add_flat, constraint_margin, stacked_task_gradients
from meta_safe.meta_optimizers.multipliers import (
    check_non_negative,
    check_positive,
    pid_multiplier,
    positive_parameter,
)
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


class PIDLagrangian(MetaOptimizer):
    """PID-Lagrangian inner step; gains and step sizes are learned in the outer loop.

    :param k_p: initial proportional gain ``K_P > 0`` (multiplier per unit of violation).
    :param k_i: initial integral gain ``K_I > 0``.
    :param k_d: initial derivative gain ``K_D > 0``.
    :param eta_reward: initial reward step size ``eta_R > 0`` (in units of ``directions``).
    :param eta_cost: initial cost step size ``eta_C > 0``.
    :param lambda_init: multiplier offset ``>= 0`` (initial value of the integral term).
    :param directions: ``natural`` | ``rms`` | ``raw`` (see the module docstring).
    :param trust_radius: KL of a unit ``natural`` direction. :param damping: Fisher damping.
    :param cg_iters: CG steps. :param fisher_stride: the Fisher uses every ``k``-th sample.
    """

    learnable = True
    default_outer_lr = 0.03

    def __init__(
        self,
        k_p: float = 0.1,
        k_i: float = 0.01,
        k_d: float = 0.01,
        eta_reward: float = 1.0,
        eta_cost: float = 1.0,
        lambda_init: float = 0.0,
        directions: str = "natural",
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        check_positive(k_p=k_p, k_i=k_i, k_d=k_d, eta_reward=eta_reward, eta_cost=eta_cost)
        check_non_negative(lambda_init=lambda_init)
        region = TrustRegion(trust_radius, damping, cg_iters, fisher_stride)
        self.directions = StepDirections(directions, region)
        self.raw_k_p = positive_parameter(k_p)
        self.raw_k_i = positive_parameter(k_i)
        self.raw_k_d = positive_parameter(k_d)
        self.raw_eta_reward = positive_parameter(eta_reward)
        self.raw_eta_cost = positive_parameter(eta_cost)
        self.lambda_init = float(lambda_init)

    def gains(self) -> dict[str, Tensor]:
        """Current positive gains and step sizes (scalars, differentiable)."""
        return {
            "k_p": F.softplus(self.raw_k_p),
            "k_i": F.softplus(self.raw_k_i),
            "k_d": F.softplus(self.raw_k_d),
            "eta_reward": F.softplus(self.raw_eta_reward),
            "eta_cost": F.softplus(self.raw_eta_cost),
        }

    def init_state(self, num_tasks: int, dtype: torch.dtype = torch.float32) -> State:
        """``lambda``, ``integral``, ``prev_violation``: each ``[T]``."""
        return {
            "lambda": torch.full((num_tasks,), self.lambda_init, dtype=dtype),
            "integral": torch.zeros(num_tasks, dtype=dtype),
            "prev_violation": torch.zeros(num_tasks, dtype=dtype),
        }

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        g, b = stacked_task_gradients(policy, params, data, ctx.create_graph)  # [T, P] each
        dtype = g.dtype
        gains = {k: v.to(dtype) for k, v in self.gains().items()}
        # v, the integral and v_prev are measurements (constants); gradients reach the
        # gains through lambda and the step, and theta through g_hat, b_hat.
        violation = constraint_margin(data, ctx.cost_limit).to(dtype)  # [T]
        lam, integral = pid_multiplier(
            violation,
            state["integral"].to(dtype),
            state["prev_violation"].to(dtype),
            gains["k_p"],
            gains["k_i"],
            gains["k_d"],
            self.lambda_init,
        )
        g_hat, b_hat = self.directions(policy, params, data, g, b, ctx.create_graph)
        steps = primal_dual_direction(g_hat, b_hat, lam, gains["eta_reward"], gains["eta_cost"])
        new_params = [add_flat(p, s) for p, s in zip(params, steps, strict=True)]
        new_state = {"lambda": lam, "integral": integral, "prev_violation": violation}
        metrics = {
            "lambda": lam.detach(),
            "violation": violation.detach(),
            "step_norm": steps.detach().norm(dim=-1),
        }
        return new_params, new_state, metrics
