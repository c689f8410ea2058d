"""The CPO dual in closed form, its cases and tolerances (see :mod:`meta_safe.optim.cpo_step`).

Written with torch ops only (``torch.where`` instead of value-dependent branches), so
autograd differentiates it to any order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CASE_INACTIVE = 0
CASE_ACTIVE = 1
CASE_INFEASIBLE = 2
SOLVERS = ("closed_form", "cvxpylayers")

#: ``s = b^T H^-1 b`` at or below this is "b ~ 0": the step cannot change the linearised
#: cost, so the constraint is ignored (c <= 0) or only a (vanishing) recovery step is taken.
DEGENERATE_S = 1e-12
#: Relative margin on ``B = 2 delta - c^2 / s`` below which a violated constraint
#: (``c > 0``) counts as infeasible. At ``B = 0`` the active-case step equals the
#: recovery step, so the switch is continuous; the margin keeps ``lam = sqrt(A / B)``
#: (and the solver) away from the pole.
FEASIBILITY_MARGIN = 1e-8
#: Floor on ``1 - rho^2`` (``rho`` the H^-1-cosine between g and b). ``g`` parallel to ``b``
#: makes the active-case solution non-unique (``lam -> 0``); the floor picks a finite one.
PARALLEL_FLOOR = 1e-12
#: The same floor for the convex layer, whose conic solver needs a well-conditioned
#: Cholesky factor (interior-point accuracy degrades as ``lam -> 0``).
LAYER_PARALLEL_FLOOR = 1e-8


class CPOSolverError(RuntimeError):
    """A CPO dual solve failed (bad inputs, solver failure, or KKT conditions violated)."""


# ---------------------------------------------------------------------------------------
# Case classification (shared by both solvers)
# ---------------------------------------------------------------------------------------


def classify_cases(q: Tensor, r: Tensor, s: Tensor, c: Tensor, delta: Tensor) -> Tensor:
    """Which CPO case each task is in (piecewise constant, so computed without gradient).

    :param q: ``[batch]`` ``g^T H^-1 g``.
    :param r: ``[batch]`` ``g^T H^-1 b``.
    :param s: ``[batch]`` ``b^T H^-1 b``.
    :param c: ``[batch]`` constraint margin ``J_C - limit``.
    :param delta: ``[batch]`` trust radius (KL bound).
    :return: ``[batch]`` int64 case codes (0 inactive, 1 active, 2 infeasible).
    """
    with torch.no_grad():
        tiny = _tiny(q.dtype)
        degenerate_b = s <= DEGENERATE_S
        s_safe = s.clamp_min(DEGENERATE_S)
        # B = 2 delta - c^2/s < 0 with c > 0: the half-space misses the trust region.
        slack = 2 * delta - c**2 / s_safe
        infeasible = (c > 0) & (degenerate_b | (slack <= FEASIBILITY_MARGIN * 2 * delta))
        # The pure trust-region step x = sqrt(2 delta / q) H^-1 g is feasible iff
        # c + r sqrt(2 delta / q) <= 0 (Achiam et al. appendix 10.2: nu* = 0).
        tr_feasible = c + r * torch.sqrt(2 * delta / q.clamp_min(tiny)) <= 0
        inactive = ~infeasible & (degenerate_b | tr_feasible)
        case = torch.full_like(q, CASE_ACTIVE, dtype=torch.int64)
        case = torch.where(inactive, CASE_INACTIVE, case)
        return torch.where(infeasible, CASE_INFEASIBLE, case)


# ---------------------------------------------------------------------------------------
# Closed form (Achiam et al. 2017, appendix 10.2, Theorem 2), ascent convention
# ---------------------------------------------------------------------------------------


def _tiny(dtype: torch.dtype) -> float:
    """Smallest safe divisor: its square and reciprocal square stay finite in ``dtype``."""
    return torch.finfo(dtype).tiny ** 0.25


def _closed_form_dual(
    q: Tensor, r: Tensor, s: Tensor, c: Tensor, delta: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Analytic dual optimum for *feasible*, non-degenerate problems (``s > 0``).

    ``D(lam) = max_{nu >= 0} D(lam, nu)`` is concave in ``lam``. On
    ``Lambda_a = {lam : lam c + r > 0}`` the optimal ``nu = (lam c + r)/s > 0`` and

        f_a(lam) = -0.5 (A / lam + B lam) + r c / s,  A = q - r^2/s,  B = 2 delta - c^2/s,

    on ``Lambda_b = {lam : lam c + r <= 0}`` it is ``nu = 0`` and
    ``f_b(lam) = -0.5 (q / lam + 2 delta lam)``. The maximiser of each concave piece over
    its interval is the projection of its free maximiser (``sqrt(A/B)``, resp.
    ``sqrt(q / (2 delta))``) onto that interval; the better of the two is optimal.

    All branching is ``torch.where`` on masks, so gradients flow through the selected
    branch only and the unselected one is kept finite (no NaN from ``0 * inf``).

    :return: ``lam [batch]``, ``nu [batch]``, ``picked_a [batch] bool`` (``nu`` may be > 0).
    """
    tiny = _tiny(q.dtype)
    q_safe = q.clamp_min(tiny)
    s_safe = s.clamp_min(DEGENERATE_S)
    # Cauchy-Schwarz gives A >= 0; the floor keeps sqrt differentiable when g || b.
    a_coef = (q_safe - r**2 / s_safe).clamp_min(PARALLEL_FLOOR * q_safe)
    b_coef = 2 * delta - c**2 / s_safe

    # Breakpoint lam c + r = 0 between the two pieces (nu switches on or off there).
    c_nonzero = c.abs() > torch.finfo(q.dtype).eps ** 2
    c_neg = c_nonzero & (c < 0)
    c_pos = c_nonzero & (c > 0)
    one = torch.ones_like(c)
    breakpoint_ = -r / torch.where(c_nonzero, c, one)
    zero = torch.zeros_like(c)
    # c < 0: Lambda_a = (0, t),  Lambda_b = [max(t, 0), inf)
    # c > 0: Lambda_a = (max(t, 0), inf),  Lambda_b = [0, t]
    # c = 0: Lambda_a = (0, inf) if r > 0 else empty; Lambda_b its complement.
    a_empty = (c_neg & (breakpoint_ <= 0)) | (~c_nonzero & (r <= 0))
    b_empty = (c_pos & (breakpoint_ < 0)) | (~c_nonzero & (r > 0))
    lower_a = torch.where(c_pos, breakpoint_.clamp_min(0), zero)
    lower_b = torch.where(c_neg, breakpoint_.clamp_min(0), zero)

    b_pos = b_coef > 0
    # B <= 0 only happens here with c < 0 (c > 0 would be infeasible): f_a then increases
    # on all of Lambda_a, so its maximiser is the right end t.
    lam_a_stationary = torch.sqrt(a_coef / torch.where(b_pos, b_coef, one))
    lam_a_free = torch.where(b_pos, lam_a_stationary, torch.where(c_neg, breakpoint_, one))
    lam_a = torch.where(c_neg, torch.minimum(lam_a_free, breakpoint_), lam_a_free)
    lam_a = torch.maximum(lam_a, lower_a).clamp_min(tiny)
    lam_b_free = torch.sqrt(q_safe / (2 * delta))
    lam_b = torch.where(c_pos, torch.minimum(lam_b_free, breakpoint_), lam_b_free)
    lam_b = torch.maximum(lam_b, lower_b).clamp_min(tiny)

    with torch.no_grad():  # the comparison only selects a branch
        f_a = -0.5 * (a_coef / lam_a + b_coef * lam_a) + r * c / s_safe
        f_b = -0.5 * (q_safe / lam_b + 2 * delta * lam_b)
        f_a = torch.where(a_empty, -math.inf, f_a)
        f_b = torch.where(b_empty, -math.inf, f_b)
        picked_a = f_a > f_b
    lam = torch.where(picked_a, lam_a, lam_b)
    nu = torch.where(picked_a, ((lam * c + r) / s_safe).clamp_min(0), zero)
    return lam, nu, picked_a
