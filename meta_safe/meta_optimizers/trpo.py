"""Unconstrained natural-gradient (TRPO) inner step: the Meta-TRPO baseline.

``x = sqrt(2 delta / g^T H^-1 g) H^-1 g`` (Schulman et al. 2015, appendix C), cost ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import (
    InnerContext,
    MetaOptimizer,
    State,
    add_flat,
    check_fisher_stride,
    natural_directions,
    task_gradients,
    trust_region_scale,
)
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


class TRPOUpdate(MetaOptimizer):
    """:param trust_radius: KL bound. :param damping: Fisher damping. :param cg_iters: CG steps.
    :param fisher_stride: the Fisher is averaged over every ``k``-th sample of the batch."""

    def __init__(
        self,
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        if trust_radius <= 0:
            raise ValueError(f"trust_radius={trust_radius} is invalid: must be > 0")
        self.trust_radius, self.damping, self.cg_iters = trust_radius, damping, cg_iters
        self.fisher_stride = check_fisher_stride(fisher_stride)

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
            (hg,) = natural_directions(
                policy, p, d, [g], self.damping, self.cg_iters, ctx.create_graph, self.fisher_stride
            )
            scale = trust_region_scale(g, hg, self.trust_radius)
            new_params.append(add_flat(p, scale * hg))
            scales.append(scale.detach())
        return new_params, state, {"step_scale": torch.stack(scales)}
