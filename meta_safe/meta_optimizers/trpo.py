"""Unconstrained natural-gradient (TRPO) inner step: the Meta-TRPO baseline.

``x = sqrt(2 delta / g^T H^-1 g) H^-1 g`` (Schulman et al. 2015, appendix C), cost ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.gradients import add_flat, task_gradients
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


class TRPO(MetaOptimizer):
    """:param trust_radius: KL bound of each inner step. :param damping: Fisher damping.
    :param cg_iters: conjugate-gradient iterations.
    :param fisher_stride: the Fisher is averaged over every ``k``-th sample of the batch."""

    ignores_cost = True

    def __init__(
        self,
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        self.trust_region = TrustRegion(trust_radius, damping, cg_iters, fisher_stride)

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        new_params, scales = [], []
        for p, d in zip(params, data, strict=True):
            g, _ = task_gradients(policy, p, d, ctx.create_graph)
            step, scale = self.trust_region.natural_step(policy, p, d, g, ctx.create_graph)
            new_params.append(add_flat(p, step))
            scales.append(scale.detach())
        return new_params, state, {"step_scale": torch.stack(scales)}
