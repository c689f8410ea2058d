"""The CPO step: both dual solvers against each other, a generic QCQP, and finite differences.

Problems are built with an explicit small SPD ``H`` (float64) so every quantity of
Achiam et al. (2017), appendix 10.2, can be checked exactly.
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

from meta_safe.optim import cpo_step as cpo_mod
from meta_safe.optim.cpo_layer_dual import _dual_layer
from meta_safe.optim.cpo_step import (
    CASE_ACTIVE,
    CASE_INACTIVE,
    CASE_INFEASIBLE,
    CPOSolverError,
    cpo_step,
    dual_solution,
    dual_value,
)

DTYPE = torch.float64
P = 5
DELTA = 0.01
CASES = {
    "inactive": CASE_INACTIVE,
    "active_safe": CASE_ACTIVE,
    "active_violating": CASE_ACTIVE,
    "infeasible": CASE_INFEASIBLE,
}


def _spd_from(m: Tensor) -> Tensor:
    """SPD matrix parametrised by an unconstrained square ``m`` (differentiable)."""
    return m @ m.T / m.shape[0] + 0.5 * torch.eye(m.shape[0], dtype=m.dtype)


def make_problem(kind: str, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(g [P], b [P], c [], m [P, P])`` with ``H = _spd_from(m)`` deliberately in one case."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(P, P, generator=gen, dtype=DTYPE)
    g = torch.randn(P, generator=gen, dtype=DTYPE)
    b = torch.randn(P, generator=gen, dtype=DTYPE)
    h = _spd_from(m)
    hinv_g, hinv_b = torch.linalg.solve(h, g), torch.linalg.solve(h, b)
    q, r, s = g @ hinv_g, g @ hinv_b, b @ hinv_b
    if r < 0:  # make the reward step push the cost up, so the constraint can bind
        b, r = -b, -r
    tr_push = r * math.sqrt(2 * DELTA / q)  # b^T x of the pure trust-region step
    if kind == "inactive":
        c = -2.0 * tr_push
    elif kind == "active_safe":  # c < 0, the trust-region step crosses the constraint
        c = -0.5 * tr_push
    elif kind == "active_violating":  # c > 0 but part of the trust region is feasible
        c = 0.5 * torch.sqrt(2 * DELTA * s)
    elif kind == "infeasible":  # c^2 / s = 8 delta > 2 delta
        c = 2.0 * torch.sqrt(2 * DELTA * s)
    else:
        raise ValueError(kind)
    return g, b, torch.as_tensor(c, dtype=DTYPE), m


def _step(g: Tensor, b: Tensor, c: Tensor, m: Tensor, solver: str):
    h = _spd_from(m)
    return cpo_step(
        g, b, c, torch.linalg.solve(h, g), torch.linalg.solve(h, b), DELTA, solver=solver
    )


def _batch(kinds: list[str], seed: int = 0):
    probs = [make_problem(k, seed + i) for i, k in enumerate(kinds)]
    g, b, c, m = (torch.stack(t) for t in zip(*probs, strict=True))
    h = _spd_from_batched(m)
    hinv_g = torch.linalg.solve(h, g.unsqueeze(-1)).squeeze(-1)
    hinv_b = torch.linalg.solve(h, b.unsqueeze(-1)).squeeze(-1)
    return g, b, c, h, hinv_g, hinv_b


def _spd_from_batched(m: Tensor) -> Tensor:
    return m @ m.transpose(-1, -2) / m.shape[-1] + 0.5 * torch.eye(m.shape[-1], dtype=m.dtype)


def _qcqp_reference(g: Tensor, b: Tensor, c: float, h: Tensor, delta: float) -> np.ndarray:
    """Solve the primal (P) directly as a generic P-dimensional QCQP with cvxpy.

    Posed in whitened coordinates ``y = L^T x / sqrt(2 delta)`` (``H = L L^T``), where the
    trust region is the unit ball, so the solver's tolerances mean the same for every test.
    """
    chol = np.linalg.cholesky(h.numpy())
    to_x = np.sqrt(2 * delta) * np.linalg.inv(chol.T)  # x = to_x @ y
    g_w, b_w = to_x.T @ g.numpy(), to_x.T @ b.numpy()
    b_norm = np.linalg.norm(b_w)
    y = cp.Variable(g.shape[0])
    unit_ball = cp.norm(y) <= 1
    tight = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    objective = cp.Maximize(g_w / np.linalg.norm(g_w) @ y)
    problem = cp.Problem(objective, [b_w / b_norm @ y + c / b_norm <= 0, unit_ball])
    problem.solve(solver=cp.CLARABEL, **tight)
    if problem.status == cp.INFEASIBLE:  # recovery: the largest cost decrease in the region
        problem = cp.Problem(cp.Minimize(b_w / b_norm @ y), [unit_ball])
        problem.solve(solver=cp.CLARABEL, **tight)
    # "inaccurate" still means ~1e-8 here; the 1e-4 comparison below is the real check
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return to_x @ y.value


ALL_KINDS = list(CASES)


@pytest.mark.parametrize("solver", cpo_mod.SOLVERS)
def test_cases_detected(solver):
    g, b, c, _, hinv_g, hinv_b = _batch(ALL_KINDS)
    _, info = cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver=solver)
    assert info["case"].tolist() == [CASES[k] for k in ALL_KINDS]
    assert info["case"].dtype == torch.int64
    assert torch.all(info["nu"][info["case"] == CASE_INACTIVE] == 0)


def test_solvers_agree_and_steps_are_feasible():
    g, b, c, h, hinv_g, hinv_b = _batch(ALL_KINDS * 2, seed=10)
    x_cf, info_cf = cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver="closed_form")
    x_cl, info_cl = cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver="cvxpylayers")
    rel = (x_cf - x_cl).norm(dim=-1) / x_cf.norm(dim=-1)
    assert rel.max() < 1e-5, rel
    torch.testing.assert_close(info_cf["lambda"], info_cl["lambda"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(info_cf["nu"], info_cl["nu"], rtol=1e-5, atol=1e-8)
    for x in (x_cf, x_cl):
        kl = 0.5 * torch.einsum("bp,bpq,bq->b", x, h, x)
        assert torch.all(kl <= DELTA * (1 + 1e-6))
        feasible = info_cf["case"] != CASE_INFEASIBLE
        assert torch.all((b * x).sum(-1)[feasible] + c[feasible] <= 1e-8)
    # every step uses the whole trust region (the objective is linear)
    torch.testing.assert_close(kl, torch.full_like(kl, DELTA), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_matches_generic_qcqp(kind):
    g, b, c, m = make_problem(kind, seed=20)
    h = _spd_from(m)
    reference = _qcqp_reference(g, b, float(c), h, DELTA)
    for solver in cpo_mod.SOLVERS:
        x, _ = _step(g, b, c, m, solver)
        assert np.linalg.norm(x.numpy() - reference) / np.linalg.norm(reference) < 1e-4


def test_strong_duality_and_unbatched_shapes():
    g, b, c, m = make_problem("active_safe", seed=30)
    x, info = _step(g, b, c, m, "closed_form")
    assert x.shape == (P,) and info["case"].shape == ()
    d = dual_value(info["lambda"], info["nu"], info["q"], info["r"], info["s"], c, DELTA)
    torch.testing.assert_close(d, -(g @ x), rtol=1e-10, atol=1e-12)  # dual of min -g^T x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    c=st.floats(-0.5, 0.5, allow_nan=False),
    delta=st.floats(1e-3, 0.1),
    g_scale=st.floats(1e-2, 1e2),
)
def test_random_problems_agree(seed, c, delta, g_scale):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(P, P, generator=gen, dtype=DTYPE)
    g = g_scale * torch.randn(P, generator=gen, dtype=DTYPE)
    b = torch.randn(P, generator=gen, dtype=DTYPE)
    h = _spd_from(m)
    hinv_g, hinv_b = torch.linalg.solve(h, g), torch.linalg.solve(h, b)
    q, r, s = g @ hinv_g, g @ hinv_b, b @ hinv_b
    # stay away from the measure-zero switch points where the solution is ill-conditioned
    assume(1 - r**2 / (q * s) > 1e-3)  # g not parallel to b
    assume(abs(2 * delta - c**2 / s) > 1e-3 * delta)  # not at the feasibility boundary
    c_t = torch.tensor(c, dtype=DTYPE)
    x_cf, info = cpo_step(g, b, c_t, hinv_g, hinv_b, delta, solver="closed_form")
    x_cl, _ = cpo_step(g, b, c_t, hinv_g, hinv_b, delta, solver="cvxpylayers")
    assert (x_cf - x_cl).norm() / x_cf.norm() < 1e-5
    assert 0.5 * x_cf @ h @ x_cf <= delta * (1 + 1e-8)
    if info["case"] != CASE_INFEASIBLE:
        assert b @ x_cf + c <= 1e-8 * (1 + abs(c))
    # the closed form is optimal: no better feasible point than the generic QCQP's
    reference = _qcqp_reference(g, b, c, h, delta)
    assert np.linalg.norm(x_cf.numpy() - reference) / np.linalg.norm(reference) < 1e-4


def _directional_fd(fn, inputs: tuple[Tensor, ...], direction: tuple[Tensor, ...], eps: float):
    plus = fn(*(x + eps * d for x, d in zip(inputs, direction, strict=True)))
    minus = fn(*(x - eps * d for x, d in zip(inputs, direction, strict=True)))
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_closed_form_gradients_match_finite_differences(kind):
    g, b, c, m = make_problem(kind, seed=40)
    inputs = tuple(t.clone().requires_grad_() for t in (g, b, c, m))

    def step_fn(g, b, c, m):
        return _step(g, b, c, m, "closed_form")[0]

    assert torch.autograd.gradcheck(step_fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_closed_form_second_derivatives():
    """Differentiable to second order (needed e.g. for an outer Fisher product)."""
    g, b, c, m = make_problem("active_safe", seed=41)
    inputs = tuple(t.clone().requires_grad_() for t in (g, b, c))
    hm = _spd_from(m)

    def step_fn(g, b, c):
        return cpo_step(g, b, c, torch.linalg.solve(hm, g), torch.linalg.solve(hm, b), DELTA)[0]

    assert torch.autograd.gradgradcheck(step_fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["active_safe", "active_violating"])
def test_layer_gradients_match_finite_differences_and_closed_form(kind):
    g, b, c, m = make_problem(kind, seed=50)
    weights = torch.randn(P, generator=torch.Generator().manual_seed(51), dtype=DTYPE)

    def loss(solver: str):
        return lambda g, b, c, m: weights @ _step(g, b, c, m, solver)[0]

    inputs = tuple(t.clone().requires_grad_() for t in (g, b, c, m))
    grads_layer = torch.autograd.grad(loss("cvxpylayers")(*inputs), inputs)
    grads_closed = torch.autograd.grad(loss("closed_form")(*inputs), inputs)
    for gl, gc in zip(grads_layer, grads_closed, strict=True):
        torch.testing.assert_close(gl, gc, rtol=1e-4, atol=1e-6)
    gen = torch.Generator().manual_seed(52)
    for _ in range(2):  # directional finite differences of the layer itself
        direction = tuple(torch.randn(t.shape, generator=gen, dtype=DTYPE) for t in inputs)
        with torch.no_grad():
            fd = _directional_fd(loss("cvxpylayers"), (g, b, c, m), direction, eps=1e-5)
        analytic = sum((gl * d).sum() for gl, d in zip(grads_layer, direction, strict=True))
        assert abs(fd - analytic) <= 1e-4 * (1 + abs(analytic)), (fd, analytic)


def test_degenerate_cost_gradient_gives_finite_steps_and_gradients():
    g, _, _, m = make_problem("active_safe", seed=60)
    b = torch.zeros(P, dtype=DTYPE, requires_grad=True)
    c = torch.tensor([-0.1, 0.1], dtype=DTYPE, requires_grad=True)
    for solver in cpo_mod.SOLVERS:
        h = _spd_from(m)
        gg, bb = g.expand(2, P), b.expand(2, P)
        x, info = cpo_step(
            gg,
            bb,
            c,
            torch.linalg.solve(h, gg.T).T,
            torch.linalg.solve(h, bb.T).T,
            DELTA,
            solver=solver,
        )
        assert info["case"].tolist() == [CASE_INACTIVE, CASE_INFEASIBLE]
        assert torch.isfinite(x).all() and torch.all(x[1] == 0)  # no direction reduces cost
        grads = torch.autograd.grad(x.sum(), (b, c), allow_unused=True)
        assert all(gr is None or torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("solver", cpo_mod.SOLVERS)
def test_nan_input_raises_naming_the_task(solver):
    g, b, c, _, hinv_g, hinv_b = _batch(ALL_KINDS)
    g = g.clone()
    g[2, 0] = float("nan")
    with pytest.raises(CPOSolverError, match=r"task\(s\) \[2\]"):
        cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver=solver)


def test_layer_failure_is_detected_by_kkt_checks(monkeypatch):
    """A solver that returns a non-optimal point must raise, not return garbage."""

    class WrongLayer:
        def __call__(self, chol_t, gamma, solver_args=None):
            batch = gamma.shape[0]
            return torch.ones(batch, dtype=DTYPE), torch.full((batch,), 5.0, dtype=DTYPE)

    import meta_safe.optim.cpo_layer_dual as layer_dual

    monkeypatch.setattr(layer_dual, "_dual_layer", lambda: WrongLayer())
    g, b, c, _, hinv_g, hinv_b = _batch(["inactive", "active_safe"])
    with pytest.raises(CPOSolverError, match=r"KKT.*task\(s\) \[1\]"):
        cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver="cvxpylayers")


def test_layer_is_built_once_and_unknown_solver_rejected():
    g, b, c, _, hinv_g, hinv_b = _batch(["active_safe"])
    for _ in range(2):
        cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver="cvxpylayers")
    assert _dual_layer.cache_info().currsize == 1
    with pytest.raises(ValueError, match="closed_form.*cvxpylayers"):
        cpo_step(g, b, c, hinv_g, hinv_b, DELTA, solver="scipy")
    with pytest.raises(ValueError, match="valid choices"):
        dual_solution(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), 0.1, "x")
