"""Primal-dual (Lagrangian) inner step with fixed rates: the non-learned PID baseline.

Per task, with ``v = J_C - d`` the batch's constraint violation (cost units)::

    lambda' = max(0, lambda + lr_lambda v)                    (projected dual ascent)
    u       = (g - lambda' b) / (1 + lambda')
    theta'  = theta + sqrt(2 delta / u^T H^-1 u) H^-1 u         (natural step on L)

i.e. the TRPO step of :mod:`meta_safe.meta_optimizers.trpo` (Schulman et al. 2015,
appendix C) applied to the Lagrangian ``J_R - lambda J_C`` (as in the TRPO-Lagrangian
baselines of Ray et al. 2019), so the step size is a KL radius comparable with the CPO
and TRPO rules. The ``1 / (1 + lambda')`` keeps ``u`` on the reward gradient's scale
for large multipliers; the trust-radius scaling makes the step itself invariant to it.
The multiplier is updated before the primal step, so each step reacts to the cost of
the batch it uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.directions import primal_dual_direction
from meta_safe.meta_optimizers.gradients import add_flat, constraint_margin, task_gradients
from meta_safe.meta_optimizers.multipliers import check_non_negative, dual_ascent
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


class Lagrangian(MetaOptimizer):
    """:param lr_lambda: multiplier step per unit of violation (``>= 0``).
    :param lambda_init: initial multiplier (``>= 0``). :param trust_radius: KL bound ``delta``.
    :param damping: Fisher damping. :param cg_iters: conjugate-gradient iterations.
    :param fisher_stride: the Fisher is averaged over every ``k``-th sample of the batch.
    """

    def __init__(
        self,
        lr_lambda: float = 0.05,
        lambda_init: float = 0.0,
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        check_non_negative(lr_lambda=lr_lambda, lambda_init=lambda_init)
        self.lr_lambda, self.lambda_init = float(lr_lambda), float(lambda_init)
        self.trust_region = TrustRegion(trust_radius, damping, cg_iters, fisher_stride)

    def init_state(self, num_tasks: int, dtype: torch.dtype = torch.float32) -> State:
        """``lambda [T]`` filled with ``lambda_init``."""
        return {"lambda": torch.full((num_tasks,), self.lambda_init, dtype=dtype)}

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        dtype = params[0][next(iter(params[0]))].dtype
        violation = constraint_margin(data, ctx.cost_limit).to(dtype)
        # The multiplier is a function of measured costs only: a constant for autograd.
        lam = dual_ascent(state["lambda"].to(dtype).detach(), violation, self.lr_lambda)
        new_params, scales = [], []
        for p, d, lam_t in zip(params, data, lam, strict=True):
            g, b = task_gradients(policy, p, d, ctx.create_graph)
            direction = primal_dual_direction(g, b, lam_t)
            step, scale = self.trust_region.natural_step(policy, p, d, direction, ctx.create_graph)
            new_params.append(add_flat(p, step))
            scales.append(scale.detach())
        metrics = {"lambda": lam, "violation": violation, "step_scale": torch.stack(scales)}
        return new_params, {"lambda": lam}, metrics
