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

import math
from typing import NamedTuple

import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import (
    InnerContext,
    MetaOptimizer,
    State,
    add_flat,
    check_fisher_stride,
    constraint_margin,
    natural_directions,
)
from meta_safe.optim.cpo_step import CASE_ACTIVE, CASE_INACTIVE, CASE_INFEASIBLE
from meta_safe.optim.flat_params import flat_concat
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData, mean_kl

__all__ = [
    "CASE_ACTIVE",
    "CASE_INACTIVE",
    "CASE_INFEASIBLE",
    "CPPOEMUpdate",
    "EStepError",
    "EStepSolution",
    "e_step",
]

# Which problem a free-coordinate solve answers.
_REWARD, _RECOVERY, _BUDGET = 0, 1, 2
#: Floor on norms and radii (float64): keeps degenerate inputs (``A`` or ``C`` constant, or
#: parallel after centring) finite; such inputs have non-unique solutions anyway.
_TINY = 1e-30
#: Relative tolerance of active-set membership and case decisions. A coordinate at the
#: clip within it, or a budget met within it, gives the same solution either way.
_REL_TOL = 1e-11


class EStepError(RuntimeError):
    """The active-set iteration of the clipped E-step did not reach a KKT point."""


class EStepSolution(NamedTuple):
    """E-step result for one task.

    :ivar ratios: ``[N]`` target ratios ``v*`` (dtype of the inputs, differentiable).
    :ivar case: ``[]`` int64 ``CASE_INACTIVE`` / ``CASE_ACTIVE`` / ``CASE_INFEASIBLE``.
    :ivar num_clipped: ``[]`` int64, ratios held at ``ratio_min``.
    :ivar objective: ``[]`` ``(1/N) A.v*``. :ivar cost_change: ``[]`` ``(H/N) C.(v* - 1)``.
    :ivar iterations: active-set iterations of the final solve.
    """

    ratios: Tensor
    case: Tensor
    num_clipped: Tensor
    objective: Tensor
    cost_change: Tensor
    iterations: int


def _free_solution(
    a: Tensor, c: Tensor, free: Tensor, budget: Tensor, radius_sq: float, lower: float, mode: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-form optimum with the coordinates outside ``free`` held at ``lower``.

    Maximises ``a.u`` (``_REWARD``), ``-c.u`` (``_RECOVERY``) or ``a.u`` subject to
    ``c.u = budget`` (``_BUDGET``), on ``|u| = R``, ``sum(u) = 0``, ``u_S = lower``.

    :param a, c: ``[N]``. :param free: ``[N]`` bool. :param budget: ``[]``.
    :return: ``u [N]`` and the multipliers ``(lam, nu, mu)`` (``[]`` each) with
        ``u_F = (obj - nu c - mu) / lam``, ``obj`` being ``a`` or ``-c``.
    """
    f = free.to(a.dtype)
    m = f.sum()
    n_clipped = a.numel() - m
    shift = -n_clipped * lower / m  # every free coordinate's share of the sum constraint
    r_sq = radius_sq - n_clipped * lower**2 - m * shift**2
    radius = r_sq.clamp_min(_TINY).sqrt()
    obj = a if mode != _RECOVERY else -c
    obj_bar = (obj - (obj * f).sum() / m) * f
    c_mean = (c * f).sum() / m
    beta = budget - lower * (c * (1 - f)).sum() - shift * m * c_mean  # budget of c.w
    obj_norm = obj_bar.norm().clamp_min(_TINY)
    zero = torch.zeros((), dtype=a.dtype)
    if mode != _BUDGET:
        w = radius * obj_bar / obj_norm
        lam, nu = obj_norm / radius, zero
    else:
        c_bar = (c - c_mean) * f
        e1 = obj_bar / obj_norm
        g1 = c_bar @ e1
        resid = c_bar - g1 * e1
        g2 = resid.norm().clamp_min(_TINY)
        e2 = resid / g2
        rho = (g1**2 + g2**2).sqrt()
        kappa = (beta / (radius * rho)).clamp(-1.0, 1.0)
        sine = (1 - kappa**2).clamp_min(_TINY).sqrt()
        cos_phi = (kappa * g1 + sine * g2) / rho
        sin_phi = (kappa * g2 - sine * g1) / rho
        w = radius * (cos_phi * e1 + sin_phi * e2)
        lam = obj_norm * g2 / (rho * radius * sine)
        nu = (obj_norm * g1 / rho - lam * radius * kappa) / rho
    mu = (obj * f).sum() / m - nu * c_mean - lam * shift
    u = torch.where(free, shift + w, torch.full_like(a, lower))
    return u, lam, nu, mu


@torch.no_grad()
def _active_set(
    a: Tensor,
    c: Tensor,
    budget: Tensor,
    radius_sq: float,
    lower: float,
    mode: int,
    free: Tensor,
    max_iters: int,
) -> tuple[Tensor, int]:
    """Primal-dual active-set iteration from ``free [N]``: the free set at the KKT point.

    :return: ``free [N]`` bool and the number of iterations.
    :raises EStepError: no repeat within ``max_iters``, or a KKT sign condition fails.
    """
    obj = a if mode != _RECOVERY else -c
    tol = _REL_TOL * max(1.0, abs(lower))
    min_free = 3 if mode == _BUDGET else 2  # a 2-D (1-D) sum-zero subspace on F
    for iteration in range(1, max_iters + 1):
        if free.sum() < min_free:
            break
        _, lam, nu, mu = _free_solution(a, c, free, budget, radius_sq, lower, mode)
        unclipped = (obj - nu * c - mu) / lam
        new_free = torch.where(free, unclipped >= lower - tol, unclipped > lower + tol)
        if torch.equal(new_free, free):
            return free, iteration
        free = new_free
    raise EStepError(
        f"E-step active-set iteration did not converge (mode {mode}, {int((~free).sum())} "
        f"of {a.numel()} ratios clipped after {max_iters} iterations)"
    )


@torch.no_grad()
def _check_kkt(
    a: Tensor, c: Tensor, free: Tensor, budget: Tensor, radius_sq: float, lower: float, mode: int
) -> None:
    """Raise :class:`EStepError` unless the solution for ``free`` is a KKT point of its
    problem (primal feasibility, ``lam > 0``, ``nu >= 0``, clip multipliers ``>= 0``)."""
    u, lam, nu, mu = _free_solution(a, c, free, budget, radius_sq, lower, mode)
    obj = a if mode != _RECOVERY else -c
    unclipped = (obj - nu * c - mu) / lam
    tol = 1e-8
    scale = 1.0 + abs(lower) + math.sqrt(radius_sq)
    cost_scale = (budget.abs() + math.sqrt(radius_sq) * c.norm()).item() + 1.0
    checks = {
        "sum(v - 1) = 0": abs(u.sum().item()) <= tol * scale * a.numel(),
        "|v - 1|^2 = 2 N delta": abs(u.pow(2).sum().item() - radius_sq) <= tol * scale**2,
        "v >= ratio_min": bool((u >= lower - tol).all()),
        "lam > 0": lam.item() > 0,
        "clip multipliers >= 0": bool((unclipped[~free] <= lower + tol * scale).all()),
    }
    if mode == _BUDGET:
        checks["cost at budget"] = abs((c @ u - budget).item()) <= tol * cost_scale
        checks["nu >= 0"] = nu.item() >= -tol * lam.item()
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise EStepError(
            f"E-step solution (mode {mode}, {int((~free).sum())} of {a.numel()} ratios "
            f"clipped) fails the KKT conditions {failed}"
        )


def e_step(
    reward_adv: Tensor,
    cost_adv: Tensor,
    margin: Tensor | float,
    horizon: float,
    trust_radius: float,
    ratio_min: float = 0.0,
    max_iters: int = 100,
) -> EStepSolution:
    """Target ratios of the E-step (module docstring), exact with the clip.

    :param reward_adv: ``A [N]``. :param cost_adv: ``C [N]``. :param margin: ``c = J_C - d``
        (``[]``). :param horizon: ``H``. :param trust_radius: ``delta``.
    :param ratio_min: ``v_min`` in ``[0, 1)``. :param max_iters: active-set iterations per solve.
    Differentiable w.r.t. ``reward_adv``, ``cost_adv`` and ``margin`` (active set fixed).
    """
    dtype = reward_adv.dtype
    a, c = reward_adv.double(), cost_adv.double()
    n = a.numel()
    budget = -torch.as_tensor(margin, dtype=torch.float64) * n / horizon
    radius_sq, lower = 2.0 * n * trust_radius, ratio_min - 1.0
    if not (0.0 <= ratio_min < 1.0):
        raise ValueError(f"ratio_min={ratio_min} is invalid: must be in [0, 1)")
    if (n - 2) * lower**2 <= 4 * trust_radius:
        raise ValueError(
            f"trust_radius={trust_radius} is too wide for ratio_min={ratio_min} and N={n} "
            "samples: the ratio trust region must bind, (N - 2) (1 - ratio_min)^2 > "
            "4 trust_radius"
        )
    a0, c0, b0 = a.detach(), c.detach(), budget.detach()
    all_free = torch.ones(n, dtype=torch.bool)
    scale = _REL_TOL * (b0.abs() + math.sqrt(radius_sq) * c0.norm())

    def solve(mode: int, start: Tensor) -> tuple[Tensor, Tensor, int]:
        free, iters = _active_set(a0, c0, b0, radius_sq, lower, mode, start, max_iters)
        with torch.no_grad():
            u = _free_solution(a0, c0, free, b0, radius_sq, lower, mode)[0]
        return free, u, iters

    free, u, iters = solve(_REWARD, all_free)
    mode, case = _REWARD, CASE_INACTIVE
    if c0 @ u > b0 + scale:
        free_reward = free
        free, u, iters = solve(_RECOVERY, all_free)
        mode, case = _RECOVERY, CASE_INFEASIBLE
        if c0 @ u <= b0 - scale:  # the budget is reachable but the reward optimum misses it
            free, _, iters = solve(_BUDGET, free_reward)
            mode, case = _BUDGET, CASE_ACTIVE
    _check_kkt(a0, c0, free, b0, radius_sq, lower, mode)
    u = _free_solution(a, c, free, budget, radius_sq, lower, mode)[0]
    ratios = torch.where(free, (1.0 + u).clamp_min(ratio_min), ratio_min)
    return EStepSolution(
        ratios=ratios.to(dtype),
        case=torch.tensor(case),
        num_clipped=(~free).sum(),
        objective=(a @ ratios / n).to(dtype),
        cost_change=(horizon * (c @ (ratios - 1.0)) / n).to(dtype),
        iterations=iters,
    )


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


class CPPOEMUpdate(MetaOptimizer):
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
        if not (math.isfinite(trust_radius) and trust_radius > 0):
            raise ValueError(f"trust_radius={trust_radius} is invalid: must be finite and > 0")
        if not (0.0 <= ratio_min < 1.0):
            raise ValueError(f"ratio_min={ratio_min} is invalid: must be in [0, 1)")
        if m_steps < 1:
            raise ValueError(f"m_steps={m_steps} is invalid: must be >= 1")
        if not (0.0 < m_lr <= 1.0):
            raise ValueError(f"m_lr={m_lr} is invalid: must be in (0, 1]")
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping={damping} is invalid: must be finite and >= 0")
        if cg_iters < 1:
            raise ValueError(f"cg_iters={cg_iters} is invalid: must be >= 1")
        self.trust_radius, self.ratio_min = float(trust_radius), float(ratio_min)
        self.m_steps, self.m_lr = int(m_steps), float(m_lr)
        self.damping, self.cg_iters = float(damping), int(cg_iters)
        self.fisher_stride = check_fisher_stride(fisher_stride)

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
            (step,) = natural_directions(
                policy,
                theta,
                data,
                [descent],
                self.damping,
                self.cg_iters,
                create_graph,
                self.fisher_stride,
            )
            quad_kl = 0.5 * self.m_lr**2 * (descent * step).sum()  # 0.5 x^T H x
            cap = torch.sqrt(self.trust_radius / quad_kl.clamp_min(1e-30)).clamp(max=1.0)
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
                d.reward_adv, d.cost_adv, margin, d.horizon, self.trust_radius, self.ratio_min
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
