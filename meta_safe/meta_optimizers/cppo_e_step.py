"""The E-step of Dyna-CPPO: target probability ratios ``v*`` in closed form.

Maximise the reward surrogate over ratios in the ball ``||v - 1||^2 <= 2 N delta`` under
the linearised cost constraint, with the ratios clipped below at ``ratio_min`` (an
active set over the clipped coordinates; see :mod:`meta_safe.meta_optimizers.cppo_em`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from meta_safe.optim.cpo_step import CASE_ACTIVE, CASE_INACTIVE, CASE_INFEASIBLE

__all__ = ["EStepError", "EStepSolution", "e_step"]


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
