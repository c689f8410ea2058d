"""The trust region shared by every natural-gradient meta-optimizer (TRPO, CPO, the
Lagrangian and learned rules, the EM fit): one set of settings, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from meta_safe.optim.natural import check_fisher_stride, natural_directions, trust_region_scale
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


@dataclass(frozen=True)
class TrustRegion:
    """KL trust region ``0.5 x^T H x <= trust_radius`` with ``H`` the policy's Fisher.

    :param trust_radius: the KL bound ``delta`` (finite, ``> 0``).
    :param damping: Tikhonov damping added to ``H`` (finite, ``>= 0``).
    :param cg_iters: conjugate-gradient iterations for ``H^-1 v`` (``>= 1``).
    :param fisher_stride: ``H`` is averaged over every ``k``-th sample (``>= 1``); the
        gradients use every sample.
    """

    trust_radius: float = 0.01
    damping: float = 0.1
    cg_iters: int = 10
    fisher_stride: int = 5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.trust_radius) and self.trust_radius > 0):
            raise ValueError(f"trust_radius={self.trust_radius} is invalid: must be finite and > 0")
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping={self.damping} is invalid: must be finite and >= 0")
        if isinstance(self.cg_iters, bool) or int(self.cg_iters) != self.cg_iters:
            raise ValueError(f"cg_iters={self.cg_iters!r} is invalid: must be an integer >= 1")
        if self.cg_iters < 1:
            raise ValueError(f"cg_iters={self.cg_iters} is invalid: must be >= 1")
        check_fisher_stride(self.fisher_stride)

    def solve(
        self,
        policy: GaussianPolicy,
        params: Params,
        data: PolicyData,
        vectors: list[Tensor],
        create_graph: bool,
    ) -> list[Tensor]:
        """``H^-1 v`` for each ``v`` ``[P]`` (one batched CG), ``H`` at ``params`` on ``data``."""
        return natural_directions(
            policy,
            params,
            data,
            vectors,
            self.damping,
            self.cg_iters,
            create_graph,
            self.fisher_stride,
        )

    def scale(self, v: Tensor, h_inv_v: Tensor) -> Tensor:
        """``sqrt(2 delta / v^T H^-1 v)``: the factor making ``H^-1 v`` a step of KL ``delta``."""
        return trust_region_scale(v, h_inv_v, self.trust_radius)

    def natural_step(
        self,
        policy: GaussianPolicy,
        params: Params,
        data: PolicyData,
        v: Tensor,
        create_graph: bool,
    ) -> tuple[Tensor, Tensor]:
        """The natural-gradient step of KL ``delta`` along ``v``: ``(step [P], scale [])``."""
        (h_inv_v,) = self.solve(policy, params, data, [v], create_graph)
        scale = self.scale(v, h_inv_v)
        return scale * h_inv_v, scale
