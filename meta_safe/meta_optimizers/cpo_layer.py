"""CPO inner step (Achiam et al. 2017, section 6.1), dual solved as a convex layer.

Per task: ``g, b`` from the surrogates, ``H^-1 g, H^-1 b`` by conjugate gradient on
Fisher-vector products (kept in the graph), then one batched dual solve for all
tasks (``solver="cvxpylayers"``: a differentiable convex program; ``"closed_form"``:
the analytic solution), and the step ``x = H^-1 (g - nu b) / lambda`` or the
recovery step when the constraint cannot be met inside the trust region.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.cpo_step import SOLVERS, cpo_step
from meta_safe.meta_optimizers.base import (
    InnerContext,
    MetaOptimizer,
    State,
    add_flat,
    constraint_margin,
    natural_directions,
    task_gradients,
)
from meta_safe.policy import GaussianPolicy, Params
from meta_safe.surrogate import PolicyData


class CPOLayerUpdate(MetaOptimizer):
    """:param trust_radius: KL bound ``delta``. :param damping: Fisher damping.
    :param cg_iters: conjugate-gradient iterations. :param solver: one of ``SOLVERS``.
    """

    def __init__(
        self,
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        solver: str = "cvxpylayers",
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is unknown: valid choices are {list(SOLVERS)}")
        if trust_radius <= 0:
            raise ValueError(f"trust_radius={trust_radius} is invalid: must be > 0")
        self.trust_radius, self.damping, self.cg_iters, self.solver = (
            trust_radius,
            damping,
            cg_iters,
            solver,
        )

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        gs, bs, hgs, hbs = [], [], [], []
        for p, d in zip(params, data, strict=True):
            g, b = task_gradients(policy, p, d, ctx.create_graph)
            hg, hb = natural_directions(
                policy, p, d, [g, b], self.damping, self.cg_iters, ctx.create_graph
            )
            gs.append(g)
            bs.append(b)
            hgs.append(hg)
            hbs.append(hb)
        margin = constraint_margin(data, ctx.cost_limit).to(gs[0].dtype)
        steps, info = cpo_step(
            torch.stack(gs),
            torch.stack(bs),
            margin,
            torch.stack(hgs),
            torch.stack(hbs),
            self.trust_radius,
            solver=self.solver,
        )
        new_params = [add_flat(p, s) for p, s in zip(params, steps, strict=True)]
        metrics = {
            "lambda": info["lambda"].detach(),
            "nu": info["nu"].detach(),
            "case": info["case"].detach().float(),
        }
        return new_params, state, metrics
