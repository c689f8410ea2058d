"""Step directions of the primal-dual rules (lagrangian, pid, lstm) from the reward and
cost surrogate gradients ``g, b``, and their combination with a multiplier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData


def primal_dual_direction(
    g: Tensor,
    b: Tensor,
    lam: Tensor,
    eta_reward: Tensor | float = 1.0,
    eta_cost: Tensor | float = 1.0,
) -> Tensor:
    """``(eta_R g - lambda eta_C b) / (1 + lambda)`` (Stooke et al.'s normalisation: a large
    multiplier turns the step towards the cost direction without lengthening it).

    :param g, b: ``[..., P]``. :param lam: ``[...]`` multipliers (``>= 0``).
    """
    lam = lam.unsqueeze(-1)
    return (eta_reward * g - lam * eta_cost * b) / (1.0 + lam)


#: Added under the square root of the RMS: keeps the normalisation smooth (and finite
#: to differentiate) at a vanishing gradient, where the normalised step then vanishes too.
RMS_EPS = 1e-12


def rms_normalize(v: Tensor, eps: float = RMS_EPS) -> Tensor:
    """``v / sqrt(mean(v^2) + eps)`` over the last dimension ``[..., P]``.

    RMS rather than the Euclidean norm: each coordinate then moves by about ``eta`` per
    step whatever ``P`` is (the step-size semantics of Adam), so one learning rate suits
    policies of different widths, and reward and cost gradients (whose raw scales differ
    by the horizon and advantage normalisation) enter with equal weight, leaving the
    trade-off to ``lambda``. The scale is *not* detached: the meta-gradient is exact for
    the function computed, including the normalisation's dependence on ``theta``.
    """
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)


#: How the learned rules (pid, lstm) turn the surrogate gradients ``g, b`` into step
#: directions: ``natural`` (each a natural-gradient step of KL ``trust_radius``),
#: ``rms`` (each divided by its root-mean-square over coordinates), ``raw`` (unchanged).
DIRECTIONS = ("natural", "rms", "raw")


@dataclass(frozen=True)
class StepDirections:
    """The learned rules' step directions ``(g_hat, b_hat)`` from ``(g, b)`` (see
    :data:`DIRECTIONS`; the trust region is used by ``natural`` only).

    ``natural``: per task, ``v_hat = sqrt(2 delta / v^T H^-1 v) H^-1 v``, the
    natural-gradient step along ``v`` whose quadratic KL ``0.5 v_hat^T H v_hat`` equals
    ``delta = trust_radius`` (``H``: the task's Fisher), so a unit step size means one
    TRPO step whatever the policy's size or the gradients' scale. Differentiable (in the
    graph) when ``create_graph``.
    """

    kind: str = "natural"
    trust_region: TrustRegion = TrustRegion()

    def __post_init__(self) -> None:
        if self.kind not in DIRECTIONS:
            raise ValueError(
                f"directions={self.kind!r} is invalid: valid choices are {list(DIRECTIONS)}"
            )

    def __call__(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        data: list[PolicyData],
        g: Tensor,
        b: Tensor,
        create_graph: bool,
    ) -> tuple[Tensor, Tensor]:
        """:param g, b: ``[T, P]`` surrogate gradients. :return: ``(g_hat, b_hat)`` ``[T, P]``."""
        if self.kind == "rms":
            return rms_normalize(g), rms_normalize(b)
        if self.kind == "raw":
            return g, b
        g_hat, b_hat = [], []
        region = self.trust_region
        for p, d, g_t, b_t in zip(params, data, g, b, strict=True):
            hg, hb = region.solve(policy, p, d, [g_t, b_t], create_graph)
            g_hat.append(region.scale(g_t, hg) * hg)
            b_hat.append(region.scale(b_t, hb) * hb)
        return torch.stack(g_hat), torch.stack(b_hat)
