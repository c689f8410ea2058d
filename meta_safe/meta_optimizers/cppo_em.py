"""The EM inner update of Dyna-CPPO: a closed-form E-step on probability ratios, an M-step fit.

**E-step** (per task, no policy involved). With ``N`` samples, reward advantages ``A [N]``,
cost advantages ``C [N]``, the constraint margin ``c = J_C - d`` (``> 0``: violating), the
episode length ``H`` and the KL radius ``delta``, find target probability ratios ``v [N]``::

    maximise_v  (1/N) A.v
    s.t.        ||v - 1||^2 <= 2 N delta              (i)   ratio trust region
                (H/N) C.(v - 1) <= -c                 (ii)  linearised cost constraint
                mean(v) = 1                           (iii) ratios of a distribution
                v >= v_min                            (iv)  lower clip (``ratio_min``)

(ii) is :func:`meta_safe.rl.surrogate.surrogates`' cost surrogate ``H mean(ratio C)`` (at
``v = 1``: the batch's own cost) kept under the limit; (i) is the second-order KL trust
region ``mean((v - 1)^2) / 2 ~ KL <= delta``. Write ``u = v - 1``, ``R^2 = 2 N delta`` and
``beta = -c N / H`` (the budget of ``C.u``).

*Closed form without the clip.* (iii) makes only the centred vectors ``a = A - mean(A)``,
``g = C - mean(C)`` matter. Gram-Schmidt gives ``e1 = a / |a|`` and ``e2 ~ g - (g.e1) e1``,
so ``g = g1 e1 + g2 e2`` (``g2 >= 0``, ``|g| = rho``); everything orthogonal to the plane only
uses up radius, so ``u = R (cos phi e1 + sin phi e2)`` on the sphere, with cost
``C.u = R rho cos(phi - psi)``, ``psi = atan2(g2, g1)``, and reward ``|a| R cos phi``:

* ``CASE_INACTIVE`` (0): ``phi = 0`` (the pure reward direction) meets the budget,
  ``R g1 <= beta``.
* ``CASE_ACTIVE`` (1): the angle nearest to ``e1`` on the budget's boundary,
  ``phi = psi - arccos(kappa)`` with ``kappa = beta / (R rho)``; evaluated without trig
  as ``(cos phi, sin phi) = (kappa (g1, g2) + sqrt(1 - kappa^2) (g2, -g1)) / rho``.
* ``CASE_INFEASIBLE`` (2): ``beta < -R rho``, no point of the ball meets the budget:
  recovery ``u = -R g / rho``, the ratios of least linearised cost (flagged, as CPO does).

*The clip, exactly.* The KKT conditions of the full problem give
``u_i = max(l, (A_i - nu C_i - mu) / lam)`` (``l = v_min - 1``; ``lam``, ``nu``, ``mu`` the
multipliers of (i), (ii), (iii)). For a fixed set ``S`` of clipped coordinates
(``u_S = l``) the problem on the free coordinates ``F`` is the unclipped one with a shifted
sum (``sum(u_F) = -|S| l``), radius (``R_F^2 = R^2 - |S| l^2 - |S|^2 l^2 / |F|``) and budget,
so it has the closed form above, which also yields the multipliers. The primal-dual
active-set strategy of Hintermueller, Ito and Kunisch recomputes
``S = {i: (A_i - nu C_i - mu) / lam < l}`` from those multipliers until ``S`` repeats; a
repeated ``S`` satisfies every KKT condition (verified explicitly before returning), so the
result is the exact optimum of the convex problem, not the unclipped optimum clipped
afterwards (checked against cvxpy in ``tests/test_cppo_em.py``). The case is decided on the
clipped problem: the reward-only solution first (inactive if it meets the budget), then the
least-cost one (infeasible if even it misses the budget), else the budget binds
(``C.u = beta``, active). The closed form needs the trust region to bind (``lam > 0``),
which is guaranteed when ``(N - 2) (1 - v_min)^2 > 4 delta`` (every vertex of the clipped
polytope then lies outside the ball; a ``ValueError`` otherwise, never the case for
``N`` in the thousands); an iteration that does not reach a KKT point raises
:class:`EStepError` rather than returning an inexact answer.

*Gradients.* The final solve is written in torch ops for the found ``S`` and case, so
autograd differentiates ``v`` w.r.t. ``A``, ``C`` and ``c`` with the active set held fixed
(exact away from case and active-set switches).

**M-step.** Fit the policy's ratios ``r_theta = pi_theta / pi_old`` to ``v*`` by least
squares, ``L(theta) = mean((r_theta - v*)^2) / 2``, with ``m_steps`` Gauss-Newton steps:
``(1/N) J^T J`` of ``r_theta`` is the (empirical) Fisher, so a step is the natural step
``x = -m_lr H^-1 grad L`` (Fisher-vector products and CG as in
:func:`~meta_safe.meta_optimizers.base.natural_directions`); ``m_lr = 1`` is the full
Gauss-Newton step, the least-squares projection of ``v* - 1`` on the policy's tangent space.
Each step is capped at the KL radius, ``x <- x min(1, sqrt(2 delta / x^T H x))`` (as
:mod:`~meta_safe.meta_optimizers.trpo` scales its step), so a step never leaves the trust
region of the quadratic KL model. Every step is functional (new dicts) and keeps the
graph with ``ctx.create_graph`` for the MAML meta-gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.cppo_e_step import EStepError, EStepSolution, e_step
from meta_safe.meta_optimizers.gradients import add_flat, constraint_margin
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.optim.cpo_step import CASE_ACTIVE, CASE_INACTIVE, CASE_INFEASIBLE
from meta_safe.optim.flat_params import flat_concat
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData, mean_kl

__all__ = [
    "CASE_ACTIVE",
    "CASE_INACTIVE",
    "CASE_INFEASIBLE",
    "CPPOEM",
    "EStepError",
    "EStepSolution",
    "e_step",
]

_METRICS = (
    "case",
    "num_clipped",
    "predicted_cost_change",
    "fitted_cost_change",
    "fitted_reward_change",
    "fit_mse",
    "kl",
)


def _ratios(policy: GaussianPolicy, params: Params, data: PolicyData) -> Tensor:
    """``pi_params / pi_behaviour`` on the batch, ``[M]``."""
    return torch.exp(policy.log_prob(params, data.obs, data.actions) - data.log_probs)


class CPPOEM(MetaOptimizer):
    """EM inner step of Dyna-CPPO (module docstring). Not learnable.

    :param trust_radius: KL bound ``delta`` of the E-step ratios and of each M-step step.
    :param ratio_min: lower clip ``v_min`` of the target ratios, in ``[0, 1)``.
    :param m_steps: Gauss-Newton steps of the M-step fit (``>= 1``).
    :param m_lr: fraction of the Gauss-Newton step taken (``(0, 1]``; 1: full step).
    :param damping: Fisher damping. :param cg_iters: conjugate-gradient iterations.
    :param fisher_stride: the Fisher is averaged over every ``k``-th sample of the batch.
    """

    def __init__(
        self,
        trust_radius: float = 0.01,
        ratio_min: float = 0.0,
        m_steps: int = 1,
        m_lr: float = 1.0,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        self.trust_region = TrustRegion(
            float(trust_radius), float(damping), cg_iters, fisher_stride
        )
        if not (0.0 <= ratio_min < 1.0):
            raise ValueError(f"ratio_min={ratio_min} is invalid: must be in [0, 1)")
        if m_steps < 1:
            raise ValueError(f"m_steps={m_steps} is invalid: must be >= 1")
        if not (0.0 < m_lr <= 1.0):
            raise ValueError(f"m_lr={m_lr} is invalid: must be in (0, 1]")
        self.ratio_min = float(ratio_min)
        self.m_steps, self.m_lr = int(m_steps), float(m_lr)

    def m_step(
        self,
        policy: GaussianPolicy,
        params: Params,
        data: PolicyData,
        target: Tensor,
        create_graph: bool,
    ) -> Params:
        """Fit ``r_theta`` to ``target [M]`` (``m_steps`` capped Gauss-Newton steps from
        ``params``); returns a new dict, in the graph with ``create_graph``."""
        theta = params
        for _ in range(self.m_steps):
            loss = 0.5 * (_ratios(policy, theta, data) - target).pow(2).mean()
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
            descent = -flat_concat(dict(zip(theta, grads, strict=True)))
            (step,) = self.trust_region.solve(policy, theta, data, [descent], create_graph)
            quad_kl = 0.5 * self.m_lr**2 * (descent * step).sum()  # 0.5 x^T H x
            cap = torch.sqrt(self.trust_region.trust_radius / quad_kl.clamp_min(1e-30)).clamp(
                max=1.0
            )
            theta = add_flat(theta, self.m_lr * cap * step)
        return theta

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        """E-step then M-step per task. Metrics ``[T]``: ``case``, ``num_clipped``,
        ``predicted_cost_change`` (E-step, ``(H/N) C.(v* - 1)``), the changes of the linear
        cost and reward surrogates achieved by the fit (``fitted_cost_change``,
        ``fitted_reward_change``), ``fit_mse`` ``mean((r - v*)^2)`` and the step's ``kl``."""
        margins = constraint_margin(data, ctx.cost_limit)
        new_params: list[Params] = []
        rows: list[Tensor] = []
        for p, d, margin in zip(params, data, margins, strict=True):
            sol = e_step(
                d.reward_adv,
                d.cost_adv,
                margin,
                d.horizon,
                self.trust_region.trust_radius,
                self.ratio_min,
            )
            theta = self.m_step(policy, p, d, sol.ratios, ctx.create_graph)
            new_params.append(theta)
            with torch.no_grad():
                new, old = _ratios(policy, theta, d), _ratios(policy, p, d)
                row = [
                    sol.case,
                    sol.num_clipped,
                    sol.cost_change,
                    d.horizon * ((new - old) * d.cost_adv).mean(),
                    ((new - old) * d.reward_adv).mean(),
                    (new - sol.ratios).pow(2).mean(),
                    mean_kl(policy, theta, p, d.obs),
                ]
            rows.append(torch.stack([x.detach().to(new.dtype) for x in row]))
        columns = torch.stack(rows).unbind(1)
        return new_params, state, dict(zip(_METRICS, columns, strict=True))
