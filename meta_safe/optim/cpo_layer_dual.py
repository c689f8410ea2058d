"""The CPO dual as a DPP convex program solved by one batched cvxpylayers call.

Differentiable once (the layer's backward has no ``grad_fn``), which is all a K-step
MAML meta-gradient needs. Failures (non-finite output, KKT residuals) raise
:class:`~meta_safe.optim.cpo_dual.CPOSolverError`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from meta_safe.optim.cpo_dual import LAYER_PARALLEL_FLOOR, CPOSolverError

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
