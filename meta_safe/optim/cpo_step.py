"""The CPO step: a linear objective under a linearised cost constraint and a KL trust region.

Achiam, Held, Tamar, Abbeel (2017), "Constrained Policy Optimization", section 6.1 and
appendix 10.2. With ``g`` the reward-surrogate gradient (ascent direction), ``b`` the
cost-surrogate gradient, ``c = J_C(pi) - d`` the constraint margin (``c > 0``: currently
violating) and ``H`` the Fisher matrix, the inner step solves

    maximise_x  g^T x   s.t.   b^T x + c <= 0,   0.5 x^T H x <= delta.            (P)

Only ``H^-1 g`` and ``H^-1 b`` are needed (conjugate gradient, :mod:`meta_safe.optim.fisher`):
with ``q = g^T H^-1 g``, ``r = g^T H^-1 b``, ``s = b^T H^-1 b`` the Lagrange dual is

    maximise_{lam >= 0, nu >= 0}  D(lam, nu) = -(q - 2 nu r + nu^2 s) / (2 lam) + nu c - lam delta

and the primal step is ``x = H^-1 (g - nu b) / lam``. Note the sign: for this *ascent*
form, stationarity in ``nu`` gives ``nu = (lam c + r) / s``. The paper's appendix (and
OmniSafe's ``cpo.py``) write ``(lam c - r) / s`` because there ``g`` is the gradient of a
quantity being *minimised*, i.e. ``r`` has the opposite sign; everything below is in the
ascent convention and is checked against a generic QCQP solve of (P) in the tests.

Three cases (``case`` codes in the returned info):

* ``CASE_INACTIVE`` (0): the plain trust-region step already satisfies the linear
  constraint (or ``b ~ 0`` and ``c <= 0``): ``nu = 0``, ``lam = sqrt(q / (2 delta))``.
* ``CASE_ACTIVE`` (1): the constraint binds; solve the two-variable dual.
* ``CASE_INFEASIBLE`` (2): ``c > 0`` and ``c^2 / s > 2 delta``: no point of the trust
  region meets the constraint. Recovery step ``x = -sqrt(2 delta / s) H^-1 b``, the largest
  pure cost-decrease step in the trust region (reported as ``lam = 0``,
  ``nu = sqrt(2 delta / s)``, OmniSafe's convention).

Two interchangeable dual solvers, both batched over a leading task dimension:

* ``"closed_form"``: the paper's analytic solution written with torch ops only
  (``torch.where`` instead of value-dependent Python branches), so autograd
  differentiates it to any order (exact MAML meta-gradients, outer Fisher products).
* ``"cvxpylayers"``: the dual as a DPP convex program solved by one batched
  :class:`cvxpylayers.torch.CvxpyLayer` call. Differentiable once (its backward has no
  ``grad_fn``, see REFERENCE_NOTES section 8), which is all a K-step MAML meta-gradient
  needs. Failures are detected (non-finite output, KKT residuals) and raised as
  :class:`CPOSolverError`; nothing is silently returned.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CASE_ACTIVE",
    "CASE_INACTIVE",
    "CASE_INFEASIBLE",
    "SOLVERS",
    "CPOSolverError",
    "classify_cases",
    "cpo_step",
    "dual_solution",
    "dual_value",
]

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


# ---------------------------------------------------------------------------------------
# cvxpylayers dual (REFERENCE_NOTES section 8)
# ---------------------------------------------------------------------------------------

#: Clarabel (interior point; ECOS, diffcp's default, is not installed) at very tight
#: tolerances: measured on 100 random active problems, gap tolerance 1e-11 leaves errors up
#: to ~1e-4 relative in nu (the solution sits on a second-order-cone boundary, where the
#: error scales like sqrt(gap)); 1e-14 brings them to ~1e-6 at ~0.3 ms per problem.
#: ``mode="dense"`` makes diffcp solve the (tiny) derivative system exactly instead of by
#: LSQR. Serial (n_jobs=1): for two-variable programs a thread pool costs more than it saves.
_LAYER_SOLVER_ARGS: dict[str, Any] = {
    "solve_method": "Clarabel",
    "tol_gap_abs": 1e-14,
    "tol_gap_rel": 1e-14,
    "tol_feas": 1e-14,
    "tol_ktratio": 1e-12,
    "max_iter": 500,
    "n_jobs_forward": 1,
}
_LAYER_DERIVATIVE_ARGS: dict[str, Any] = {"mode": "dense", "n_jobs_backward": 1}


@functools.lru_cache(maxsize=1)
def _dual_layer() -> Any:
    """Build (once) the normalised CPO dual as a DPP program wrapped in a CvxpyLayer.

    Rescaling ``lam = sqrt(q / (2 delta)) lam'``, ``nu = sqrt(q / s) nu'`` and dividing
    ``D`` by ``sqrt(q delta / 2)`` leaves a problem with only two numbers in it,
    ``rho = r / sqrt(q s)`` in [-1, 1] and ``gamma = c sqrt(2 / (s delta))``:

        minimise_{lam' >= 0, nu' >= 0}  ||L^T [1, -nu']||^2 / lam' - gamma nu' + lam',

    with ``L L^T = [[1, rho], [rho, 1]]`` (the Cholesky factor of the normalised Gram matrix
    of ``(g, b)`` in the ``H^-1`` metric). ``quad_over_lin`` makes it a DPP second-order-cone
    program. Without the rescaling ``q`` and ``s`` routinely differ by orders of magnitude
    and fixed solver tolerances would mean different accuracies per task.
    """
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    lam = cp.Variable(name="lam_normalised")
    nu = cp.Variable(name="nu_normalised")
    chol_t = cp.Parameter((2, 2), name="chol_factor_transposed")
    gamma = cp.Parameter(name="gamma")
    residual = chol_t @ cp.hstack([1.0, -nu])
    problem = cp.Problem(cp.Minimize(cp.quad_over_lin(residual, lam) - gamma * nu + lam), [nu >= 0])
    assert problem.is_dpp(), "CPO dual must be DPP for cvxpylayers"
    return CvxpyLayer(problem, parameters=[chol_t, gamma], variables=[lam, nu])


def _layer_dual(
    q: Tensor, r: Tensor, s: Tensor, c: Tensor, delta: Tensor, kkt_tol: float, checked: Tensor
) -> tuple[Tensor, Tensor]:
    """Solve the normalised dual for every task with one batched layer call.

    Inputs must be well-posed (feasible, ``s, q > 0``); callers substitute a stand-in
    problem for the other tasks. Raises :class:`CPOSolverError` naming the failing task.

    :param checked: ``[batch]`` bool, tasks whose solution is used (stand-ins are not
        KKT-checked, so an error never names a task the layer did not really solve).

    :return: ``lam [batch]``, ``nu [batch]`` in the original (unnormalised) scale.
    """
    dtype = q.dtype
    rho = (r / torch.sqrt(q * s)).clamp(-1.0, 1.0)
    sigma = torch.sqrt((1 - rho**2).clamp_min(LAYER_PARALLEL_FLOOR))
    gamma = c * torch.sqrt(2 / (s * delta))
    ones, zeros = torch.ones_like(rho), torch.zeros_like(rho)
    chol_t = torch.stack(
        [torch.stack([ones, rho], dim=-1), torch.stack([zeros, sigma], dim=-1)], dim=-2
    )  # [batch, 2, 2], upper triangular L^T
    needs_grad = torch.is_grad_enabled() and (chol_t.requires_grad or gamma.requires_grad)
    # diffcp's solve-only path rejects the derivative options, so add them only when needed.
    solver_args = {**_LAYER_SOLVER_ARGS, **(_LAYER_DERIVATIVE_ARGS if needs_grad else {})}
    try:
        lam_n, nu_n = _dual_layer()(
            chol_t.to(torch.float64), gamma.to(torch.float64), solver_args=solver_args
        )
    except Exception as err:  # diffcp/clarabel raise assorted types; keep the cause
        raise CPOSolverError(f"cvxpylayers CPO dual solve failed for the batch: {err!r}") from err
    lam_n, nu_n = lam_n.to(dtype), nu_n.to(dtype)
    _check_layer_kkt(lam_n, nu_n, rho.detach(), sigma.detach(), gamma.detach(), kkt_tol, checked)
    lam = lam_n * torch.sqrt(q / (2 * delta))
    nu = nu_n.clamp_min(0) * torch.sqrt(q / s)
    return lam, nu


def _check_layer_kkt(
    lam_n: Tensor,
    nu_n: Tensor,
    rho: Tensor,
    sigma: Tensor,
    gamma: Tensor,
    tol: float,
    checked: Tensor,
) -> None:
    """Verify the normalised dual solution against its optimality conditions.

    The solver status is not exposed through cvxpylayers (and diffcp does not raise on
    Clarabel's "almost solved"), so optimality is checked directly:
    ``lam' > 0``, ``nu' >= 0``, ``lam'^2 = ||L^T [1, -nu']||^2`` (trust region tight) and
    ``nu' = max(0, (rho + gamma lam' / 2) / (rho^2 + sigma^2))``, i.e. ``dD'/dnu' = 0`` or
    ``nu' = 0`` with ``dD'/dnu' <= 0``. Residuals are relative to ``max(1, |value|)``.
    """
    with torch.no_grad():
        finite = torch.isfinite(lam_n) & torch.isfinite(nu_n)
        lam_safe = torch.where(finite, lam_n, torch.ones_like(lam_n))
        nu_safe = torch.where(finite, nu_n, torch.zeros_like(nu_n))
        sq_norm = (1 - rho * nu_safe) ** 2 + (sigma * nu_safe) ** 2
        scale = torch.maximum(lam_safe.abs(), torch.ones_like(lam_safe))
        tr_residual = (lam_safe**2 - sq_norm).abs() / scale**2
        # dD'/dnu' = 2 (rho - (rho^2 + sigma^2) nu') / lam' + gamma = 0 (sigma may be floored)
        nu_target = (rho + gamma * lam_safe / 2) / (rho**2 + sigma**2)
        nu_residual = (nu_safe - nu_target.clamp_min(0)).abs() / torch.maximum(
            nu_safe.abs(), torch.ones_like(nu_safe)
        )
        problems = {
            "non-finite solution": ~finite,
            "lambda <= 0": finite & (lam_safe <= 0),
            "nu < 0": finite & (nu_safe < -tol),
            "trust region not tight (KKT)": finite & (tr_residual > tol),
            "nu stationarity violated (KKT)": finite & (nu_residual > tol),
        }
        for reason, failed in problems.items():
            mask = failed & checked
            if bool(mask.any()):
                tasks = mask.reshape(-1).nonzero().flatten().tolist()
                detail = (
                    f"lam'={lam_n[mask].tolist()}, nu'={nu_n[mask].tolist()}, "
                    f"trust-region residual={tr_residual[mask].tolist()}, "
                    f"nu residual={nu_residual[mask].tolist()}"
                )
                raise CPOSolverError(
                    f"cvxpylayers CPO dual: {reason} for task(s) {tasks} "
                    f"(tolerance {tol}); {detail}"
                )


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _check_inputs(q: Tensor, r: Tensor, s: Tensor, c: Tensor, delta: Tensor) -> None:
    """Raise :class:`CPOSolverError` naming the tasks with unusable inputs."""
    with torch.no_grad():
        bad_finite = ~(
            torch.isfinite(q)
            & torch.isfinite(r)
            & torch.isfinite(s)
            & torch.isfinite(c)
            & torch.isfinite(delta)
        )
        # q and s are squared H^-1-norms: negative values mean H^-1 (i.e. CG) is not PD.
        bad_sign = (q < 0) | (s < 0)
        bad_delta = delta <= 0
        for reason, mask in (
            ("non-finite input (q, r, s, c or delta)", bad_finite),
            ("negative q or s (H^-1 not positive definite; did CG fail?)", bad_sign),
            ("trust radius delta must be > 0", bad_delta),
        ):
            if bool(mask.any()):
                tasks = mask.reshape(-1).nonzero().flatten().tolist()
                raise CPOSolverError(f"CPO dual: {reason} for task(s) {tasks}")


def dual_solution(
    q: Tensor,
    r: Tensor,
    s: Tensor,
    c: Tensor,
    delta: float | Tensor,
    solver: str = "closed_form",
    kkt_tol: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Optimal CPO dual variables ``(lam, nu)`` and case code, batched over tasks.

    :param q: ``[batch]`` (or scalar) ``g^T H^-1 g``.
    :param r: ``[batch]`` ``g^T H^-1 b``.
    :param s: ``[batch]`` ``b^T H^-1 b``.
    :param c: ``[batch]`` constraint margin ``J_C - limit`` (``> 0``: violating).
    :param delta: trust radius (KL bound), scalar or ``[batch]``.
    :param solver: ``"closed_form"`` or ``"cvxpylayers"``.
    :param kkt_tol: tolerance of the cvxpylayers optimality checks (normalised units).
    :return: ``lam [batch]``, ``nu [batch]``, ``case [batch]`` int64. For infeasible tasks
        ``lam = 0`` and ``nu = sqrt(2 delta / s)`` (recovery step ``-nu H^-1 b``).
    :raises ValueError: unknown ``solver``.
    :raises CPOSolverError: non-finite or invalid inputs, or a failed layer solve.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown CPO solver {solver!r}; valid choices: {list(SOLVERS)}")
    q, r, s, c = torch.broadcast_tensors(q, r, s, c)
    delta_t = torch.as_tensor(delta, dtype=q.dtype, device=q.device).expand_as(q)
    _check_inputs(q, r, s, c, delta_t)

    case = classify_cases(q, r, s, c, delta_t)
    infeasible = case == CASE_INFEASIBLE
    degenerate_b = s <= DEGENERATE_S
    # Infeasible and b ~ 0 tasks get a benign stand-in problem (their answer is set
    # below), so neither solver sees an unbounded dual and no NaN reaches any gradient.
    sanitise = infeasible | degenerate_b
    stand_in = {"q": 1.0, "r": 0.5, "s": 1.0, "c": 0.0}  # active, interior optimum
    q_w = torch.where(sanitise, stand_in["q"], q)
    r_w = torch.where(sanitise, stand_in["r"], r)
    s_w = torch.where(sanitise, stand_in["s"], s)
    c_w = torch.where(sanitise, stand_in["c"], c)

    tiny = _tiny(q.dtype)
    lam_trust = torch.sqrt(q.clamp_min(tiny) / (2 * delta_t))  # pure trust-region multiplier
    if solver == "closed_form":
        lam, nu, picked_a = _closed_form_dual(q_w, r_w, s_w, c_w, delta_t)
        # The closed form decides active vs inactive itself (nu > 0 or not); report that,
        # so the case code always describes the multipliers returned.
        regular_case = torch.where(picked_a & (nu > 0), CASE_ACTIVE, CASE_INACTIVE)
        case = torch.where(infeasible, CASE_INFEASIBLE, regular_case)
    else:
        active = case == CASE_ACTIVE
        # Only active tasks need the layer; the others are fed the stand-in so one batched
        # call always sees well-posed programs.
        q_l = torch.where(active, q_w, stand_in["q"])
        r_l = torch.where(active, r_w, stand_in["r"])
        s_l = torch.where(active, s_w, stand_in["s"])
        c_l = torch.where(active, c_w, stand_in["c"])
        lam_layer, nu_layer = _layer_dual(q_l, r_l, s_l, c_l, delta_t, kkt_tol, active)
        lam = torch.where(active, lam_layer, lam_trust)
        nu = torch.where(active, nu_layer, torch.zeros_like(nu_layer))
    # b ~ 0 with c <= 0: constraint cannot bind, plain trust-region step.
    lam = torch.where(degenerate_b & ~infeasible, lam_trust, lam)
    nu = torch.where(degenerate_b & ~infeasible, torch.zeros_like(nu), nu)
    case = torch.where(degenerate_b & ~infeasible, CASE_INACTIVE, case)
    # Infeasible: recovery (OmniSafe's reporting convention lam = 0, nu = sqrt(2 delta/s)).
    nu_recovery = torch.sqrt(2 * delta_t / s.clamp_min(DEGENERATE_S))
    lam = torch.where(infeasible, torch.zeros_like(lam), lam)
    nu = torch.where(infeasible, nu_recovery, nu)

    with torch.no_grad():
        finite = torch.isfinite(lam) & torch.isfinite(nu)
        if not bool(finite.all()):
            bad = (~finite).reshape(-1).nonzero().flatten().tolist()
            raise CPOSolverError(f"{solver} CPO dual produced non-finite multipliers for {bad}")
    return lam, nu, case


def dual_value(
    lam: Tensor, nu: Tensor, q: Tensor, r: Tensor, s: Tensor, c: Tensor, delta: float | Tensor
) -> Tensor:
    """Dual objective ``D(lam, nu)`` of appendix 10.2 (ascent convention); ``[batch]``.

    ``D`` is the dual of the equivalent minimisation of ``-g^T x``, so by strong duality
    ``D(lam*, nu*) = -g^T x*`` for feasible problems (Slater holds inside the trust region).
    Useful for diagnostics and tests.
    """
    return -(q - 2 * nu * r + nu**2 * s) / (2 * lam) + nu * c - lam * delta


def cpo_step(
    g: Tensor,
    b: Tensor,
    c: Tensor | float,
    Hinv_g: Tensor,
    Hinv_b: Tensor,
    trust_radius: float | Tensor,
    solver: str = "closed_form",
    kkt_tol: float = 1e-5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CPO update direction for a batch of tasks (Achiam et al. 2017, section 6.1).

    :param g: ``[batch, P]`` (or ``[P]``) reward-surrogate gradient (ascent direction).
    :param b: ``[batch, P]`` cost-surrogate gradient.
    :param c: ``[batch]`` (or scalar) constraint margin ``J_C(pi) - limit``.
    :param Hinv_g: ``[batch, P]`` ``H^-1 g`` (from
        :func:`meta_safe.optim.fisher.conjugate_gradient`).
    :param Hinv_b: ``[batch, P]`` ``H^-1 b``.
    :param trust_radius: ``delta`` of ``0.5 x^T H x <= delta`` (max KL), scalar or ``[batch]``.
    :param solver: ``"closed_form"`` (differentiable to any order) or ``"cvxpylayers"``.
    :param kkt_tol: tolerance of the cvxpylayers optimality checks.
    :return: ``step [batch, P]`` (``[P]`` for unbatched inputs) and an info dict with
        ``lambda``, ``nu``, ``case`` (int64: 0 inactive, 1 active, 2 infeasible/recovery),
        ``q``, ``r``, ``s``, each ``[batch]`` (scalars for unbatched inputs).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown CPO solver {solver!r}; valid choices: {list(SOLVERS)}")
    unbatched = g.dim() == 1
    if unbatched:
        g, b, Hinv_g, Hinv_b = (t.unsqueeze(0) for t in (g, b, Hinv_g, Hinv_b))
    if not (g.shape == b.shape == Hinv_g.shape == Hinv_b.shape) or g.dim() != 2:
        raise ValueError(
            "cpo_step: g, b, Hinv_g, Hinv_b must all be [batch, P] (or all [P]); got "
            f"{tuple(g.shape)}, {tuple(b.shape)}, {tuple(Hinv_g.shape)}, {tuple(Hinv_b.shape)}"
        )
    batch = g.shape[0]
    c_t = torch.as_tensor(c, dtype=g.dtype, device=g.device).reshape(-1).expand(batch)
    q = (g * Hinv_g).sum(-1)
    r = (g * Hinv_b).sum(-1)
    s = (b * Hinv_b).sum(-1)
    lam, nu, case = dual_solution(q, r, s, c_t, trust_radius, solver=solver, kkt_tol=kkt_tol)
    infeasible = (case == CASE_INFEASIBLE).unsqueeze(-1)
    # lam = 0 only for recovery tasks; the safe divisor keeps their unused branch finite.
    lam_safe = torch.where(infeasible.squeeze(-1), torch.ones_like(lam), lam)
    step_regular = (Hinv_g - nu.unsqueeze(-1) * Hinv_b) / lam_safe.unsqueeze(-1)
    step_recovery = -nu.unsqueeze(-1) * Hinv_b
    step = torch.where(infeasible, step_recovery, step_regular)
    info = {"lambda": lam, "nu": nu, "case": case, "q": q, "r": r, "s": s}
    if unbatched:
        step = step.squeeze(0)
        info = {k: v.squeeze(0) for k, v in info.items()}
    return step, info
