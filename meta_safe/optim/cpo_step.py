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
  ``grad_fn``), which is all a K-step MAML meta-gradient
  needs. Failures are detected (non-finite output, KKT residuals) and raised as
  :class:`CPOSolverError`; nothing is silently returned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.optim.cpo_dual import (
    CASE_ACTIVE,
    CASE_INACTIVE,
    CASE_INFEASIBLE,
    DEGENERATE_S,
    SOLVERS,
    CPOSolverError,
    _closed_form_dual,
    _tiny,
    classify_cases,
)
from meta_safe.optim.cpo_layer_dual import _layer_dual

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
