"""The Dyna-CPPO EM inner update (:mod:`meta_safe.meta_optimizers.cppo_em`).

E-step: exact against a generic convex solve (cvxpy, Clarabel) of the same problem in the
inactive, active and infeasible (recovery) cases, with and without the lower clip;
feasibility on a sweep of random problems; gradients against finite differences.
M-step / full step: the meta-gradient against finite differences on the tiny problem of
``test_meta_optimizers.py`` (whose helpers are reused), purity, and a step that raises the
reward surrogate while holding the cost at the budget when the advantages are informative.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace

import cvxpy as cp
import numpy as np
import pytest
import torch
from test_meta_optimizers import (
    COST_LIMIT,
    DTYPE,
    NUM_TASKS,
    adapt,
    make_problem,
    meta_gradient_check,
)

from meta_safe.meta_optimizers.base import InnerContext
from meta_safe.meta_optimizers.cppo_em import (
    CASE_ACTIVE,
    CASE_INACTIVE,
    CASE_INFEASIBLE,
    CPPOEM,
    EStepSolution,
    e_step,
)
from meta_safe.rl.policy import GaussianPolicy
from meta_safe.rl.surrogate import PolicyData, surrogates

HORIZON = 10.0
CASES = {"inactive": CASE_INACTIVE, "active": CASE_ACTIVE, "infeasible": CASE_INFEASIBLE}
#: (trust_radius, ratio_min): ``0.01, 0`` never clips random advantages (per-ratio RMS step
#: ``sqrt(2 delta) = 0.14``); ``0.2, 0.6`` clips a good share of them (RMS step 0.63).
UNCLIPPED, CLIPPED = (0.01, 0.0), (0.2, 0.6)


def _advantages(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-ish tailed reward advantages and cost advantages correlated with them."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n) * np.where(rng.random(n) < 0.1, 4.0, 1.0)
    c = rng.standard_normal(n) + 0.5 * a
    return a, c


def _cvxpy_solve(
    a: np.ndarray, c: np.ndarray, margin: float, delta: float, ratio_min: float, mode: str
) -> tuple[str, np.ndarray | None]:
    """The E-step problem in generic form: ``mode="budget"`` the problem itself,
    ``"reward"`` without the cost constraint, ``"recovery"`` minimising the cost instead.

    Solved in ``w = (v - 1) / R`` with unit-norm ``a`` and ``c`` (better conditioned for the
    conic solver than the raw ratios). :return: status and ``v [N]``.
    """
    n = len(a)
    radius = math.sqrt(2 * n * delta)
    w = cp.Variable(n)
    a_unit, c_norm = a / np.linalg.norm(a), np.linalg.norm(c)
    constraints = [cp.norm(w) <= 1, cp.sum(w) == 0, w >= (ratio_min - 1) / radius]
    objective = cp.Minimize(c / c_norm @ w) if mode == "recovery" else cp.Maximize(a_unit @ w)
    if mode == "budget":  # (H/N) C.(v - 1) <= -margin
        constraints.append(c / c_norm @ w <= -margin * n / HORIZON / radius / c_norm)
    problem = cp.Problem(objective, constraints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate" at these tolerances
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return problem.status, None if w.value is None else 1 + radius * w.value


def _cost_change(c: np.ndarray, v: np.ndarray) -> float:
    return HORIZON / len(c) * float(c @ (v - 1))


def _margin_for(case: str, a: np.ndarray, c: np.ndarray, delta: float, ratio_min: float) -> float:
    """A constraint margin putting the problem in ``case``, from the cost change of the
    reward-only optimum and the least cost change (both by cvxpy, independent of e_step)."""
    reward_only = _cost_change(c, _cvxpy_solve(a, c, 0.0, delta, ratio_min, "reward")[1])
    least = _cost_change(c, _cvxpy_solve(a, c, 0.0, delta, ratio_min, "recovery")[1])
    assert reward_only > least + 1.0  # the cases are well separated
    budget = {"inactive": reward_only + 1.0, "active": 0.5 * (reward_only + least)}
    return -budget.get(case, least - 1.0)


def _e_step(
    a: np.ndarray, c: np.ndarray, margin: float, delta: float, ratio_min: float
) -> EStepSolution:
    return e_step(
        torch.tensor(a, dtype=DTYPE),
        torch.tensor(c, dtype=DTYPE),
        torch.tensor(margin, dtype=DTYPE),
        HORIZON,
        delta,
        ratio_min,
    )


# ---------------------------------------------------------------------------------------
# (1) E-step against cvxpy, (2) feasibility
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["unclipped", "clipped"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("seed", "n"), [(0, 50), (1, 120), (2, 200)])
def test_e_step_matches_cvxpy(seed: int, n: int, case: str, clip: str) -> None:
    delta, ratio_min = UNCLIPPED if clip == "unclipped" else CLIPPED
    a, c = _advantages(seed, n)
    margin = _margin_for(case, a, c, delta, ratio_min)
    sol = _e_step(a, c, margin, delta, ratio_min)
    assert sol.case.item() == CASES[case]
    if clip == "unclipped":
        assert sol.num_clipped.item() == 0
    else:
        assert sol.num_clipped.item() >= 3
        assert sol.num_clipped.item() == int((sol.ratios == ratio_min).sum())

    status, expected = _cvxpy_solve(a, c, margin, delta, ratio_min, "budget")
    if case == "infeasible":
        assert status == "infeasible"  # the recovery ratios minimise the cost instead
        status, expected = _cvxpy_solve(a, c, margin, delta, ratio_min, "recovery")
    assert status.startswith("optimal") and expected is not None
    v = sol.ratios.numpy()
    error = np.linalg.norm(v - expected) / np.linalg.norm(expected - 1)
    assert error < 1e-5, f"relative error {error:.2e}"
    if case == "infeasible":
        assert abs(_cost_change(c, v) - _cost_change(c, expected)) < 1e-6 * abs(margin)
    else:
        assert abs(a @ v - a @ expected) / n < 1e-5 * abs(a @ (expected - 1)) / n + 1e-9
        assert sol.objective.item() == pytest.approx(a @ v / n, rel=1e-12)
    assert sol.cost_change.item() == pytest.approx(_cost_change(c, v), rel=1e-9, abs=1e-12)


def test_e_step_solutions_are_feasible() -> None:
    """Random problems of every size, radius, clip and margin: (i)-(iv) hold; the budget
    holds unless flagged infeasible; active solutions meet it with equality."""
    rng = np.random.default_rng(7)
    seen = set()
    for trial in range(60):
        n = int(rng.integers(30, 300))
        delta = float(rng.choice([0.005, 0.01, 0.05, 0.2]))
        ratio_min = float(rng.choice([0.0, 0.3, 0.7]))
        a, c = _advantages(100 + trial, n)
        margin = float(rng.standard_normal()) * math.sqrt(2 * n * delta) * np.linalg.norm(c) / n
        sol = _e_step(a, c, HORIZON * margin, delta, ratio_min)
        v, case = sol.ratios.numpy(), sol.case.item()
        seen.add((case, sol.num_clipped.item() > 0))
        assert ((v - 1) ** 2).sum() <= 2 * n * delta * (1 + 1e-10)
        assert abs(v.mean() - 1) < 1e-12
        assert v.min() >= ratio_min
        budget = -HORIZON * margin
        slack = 1e-9 * (abs(budget) + 1)
        if case == CASE_INFEASIBLE:
            assert _cost_change(c, v) > budget
        else:
            assert _cost_change(c, v) <= budget + slack
        if case == CASE_ACTIVE:
            assert _cost_change(c, v) == pytest.approx(budget, abs=slack)
    assert {(k, clipped) for k in CASES.values() for clipped in (False, True)} <= seen


def test_e_step_rejects_a_trust_region_that_cannot_bind() -> None:
    """With almost every ratio at the clip inside the ball, the problem is an LP."""
    a, c = _advantages(0, 20)
    with pytest.raises(ValueError, match="trust_radius=0.5"):
        _e_step(a, c, 0.0, 0.5, 0.9)


# ---------------------------------------------------------------------------------------
# (3) gradients of the E-step
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "delta", "ratio_min"),
    [("active", *UNCLIPPED), ("active", *CLIPPED), ("infeasible", *CLIPPED)],
)
def test_e_step_gradients_match_finite_differences(
    case: str, delta: float, ratio_min: float
) -> None:
    a, c = _advantages(3, 14)
    margin = _margin_for(case, a, c, delta, ratio_min)
    sol = _e_step(a, c, margin, delta, ratio_min)
    assert sol.case.item() == CASES[case]
    assert (sol.num_clipped.item() > 0) == (ratio_min > 0)
    inputs = tuple(
        torch.tensor(x, dtype=DTYPE, requires_grad=True) for x in (a, c, np.array(margin))
    )

    def ratios(a_t: torch.Tensor, c_t: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
        return e_step(a_t, c_t, m_t, HORIZON, delta, ratio_min).ratios

    assert torch.autograd.gradcheck(ratios, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# (4) meta-gradient of the full step, (5) purity
# ---------------------------------------------------------------------------------------

#: ``cg_iters=5`` as for the other rules in ``test_meta_optimizers.py``; ``ratio_min=0.85``
#: clips some ratios of the tiny problem; ``m_steps=2`` differentiates through a refit.
RULES: dict[str, Callable[[], CPPOEM]] = {
    "default": lambda: CPPOEM(cg_iters=5),
    "clipped": lambda: CPPOEM(cg_iters=5, ratio_min=0.85),
    "two_m_steps": lambda: CPPOEM(cg_iters=5, m_steps=2, m_lr=0.8),
}


@pytest.mark.parametrize("name", list(RULES))
def test_meta_gradient_matches_finite_differences(name: str) -> None:
    rule = RULES[name]().to(DTYPE)
    problem = make_problem(rule)
    # Task 0 (J_C - d = 0.2) is active, task 1 (J_C - d = -1) inactive, at both steps.
    _, _, metrics = adapt(rule, problem, problem.theta0, create_graph=False)
    for step_metrics in metrics:
        assert step_metrics["case"].tolist() == [CASE_ACTIVE, CASE_INACTIVE]
        assert (step_metrics["num_clipped"] > 0).all() == (name == "clipped")
    grad_norm, error = meta_gradient_check(rule, problem)
    assert grad_norm > 1e-6
    assert error < 1e-4, f"relative error {error:.2e}"


def test_step_does_not_modify_its_inputs_and_reports_metrics() -> None:
    rule = RULES["default"]().to(DTYPE)
    problem = make_problem(rule)
    theta0 = {k: v.clone().requires_grad_() for k, v in problem.theta0.items()}
    before = {k: v.detach().clone() for k, v in theta0.items()}
    data = problem.inner_data[0]
    data_before = [(d.reward_adv.clone(), d.cost_adv.clone(), d.log_probs.clone()) for d in data]
    state = rule.init_state(NUM_TASKS, DTYPE)
    ctx = InnerContext(cost_limit=COST_LIMIT)
    params, new_state, metrics = rule.step(problem.policy, [theta0, theta0], state, data, ctx)
    assert new_state == {} and not rule.learnable and not list(rule.parameters())
    for k, v in theta0.items():
        assert torch.equal(v.detach(), before[k]) and v.grad is None
        for task_params in params:
            assert task_params[k] is not v and task_params[k].data_ptr() != v.data_ptr()
            assert task_params[k].requires_grad
    for d, (reward_adv, cost_adv, log_probs) in zip(data, data_before, strict=True):
        assert torch.equal(d.reward_adv, reward_adv) and torch.equal(d.cost_adv, cost_adv)
        assert torch.equal(d.log_probs, log_probs)
    for key, value in metrics.items():
        assert value.shape == (NUM_TASKS,) and torch.isfinite(value).all(), key
    assert (metrics["kl"] > 0).all() and (
        metrics["kl"] <= 1.1 * rule.trust_region.trust_radius
    ).all()


# ---------------------------------------------------------------------------------------
# (6) the step improves the reward and holds the cost at the budget
# ---------------------------------------------------------------------------------------


def _informative_data(policy: GaussianPolicy, episode_cost: float) -> PolicyData:
    """Actions from the policy; the reward favours a large first action component, the
    cost a small sum of both (so the reward direction raises the cost)."""
    gen = torch.Generator().manual_seed(5)
    params = policy.init_params()
    obs = torch.randn(400, 3, generator=gen, dtype=DTYPE)
    mean, std = policy.distribution(params, obs)
    noise = torch.randn(400, 2, generator=gen, dtype=DTYPE)
    actions = (mean + std * noise).detach()
    reward_adv = noise[:, 0] + 0.3 * torch.randn(400, generator=gen, dtype=DTYPE)
    cost_adv = noise.sum(1) + 0.3 * torch.randn(400, generator=gen, dtype=DTYPE)
    return PolicyData(
        obs=obs,
        actions=actions,
        log_probs=policy.log_prob(params, obs, actions).detach(),
        reward_adv=(reward_adv - reward_adv.mean()) / reward_adv.std(),
        cost_adv=cost_adv - cost_adv.mean(),
        episode_return=torch.zeros((), dtype=DTYPE),
        episode_cost=torch.tensor(episode_cost, dtype=DTYPE),
        horizon=int(HORIZON),
    )


def test_step_improves_reward_and_holds_the_cost_at_the_budget() -> None:
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=(8,)).to(DTYPE)
    theta = {k: v.requires_grad_() for k, v in policy.init_params().items()}
    rule = CPPOEM().to(DTYPE)
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    # Far below the limit (inactive), at the limit (active), 0.3 above it (active, recovers).
    costs = (COST_LIMIT - 100.0, COST_LIMIT, COST_LIMIT + 0.3)
    base = _informative_data(policy, 0.0)
    data = [replace(base, episode_cost=torch.tensor(cost, dtype=DTYPE)) for cost in costs]
    params, _, metrics = rule.step(policy, [theta] * 3, {}, data, ctx)
    assert metrics["case"].tolist() == [CASE_INACTIVE, CASE_ACTIVE, CASE_ACTIVE]
    reward0, cost0 = surrogates(policy, theta, base)
    changes = []
    for p, d in zip(params, data, strict=True):
        reward, cost = surrogates(policy, p, d)
        changes.append(((reward - reward0).item(), (cost - cost0).item()))
    free_reward, free_cost = changes[0]
    assert free_reward > 0.1 and free_cost > 0.5  # unconstrained: the cost rises
    budgets = (None, 0.0, -0.3)
    for (reward_change, cost_change), budget, predicted in zip(
        changes[1:], budgets[1:], metrics["predicted_cost_change"][1:], strict=True
    ):
        assert predicted.item() == pytest.approx(budget, abs=1e-9)
        assert reward_change > 0.1 * free_reward
        # The fitted policy keeps the surrogate cost near the budget (the fit is inexact).
        assert abs(cost_change - budget) < 0.15 * free_cost, (cost_change, budget)
    assert (metrics["kl"] <= 1.1 * rule.trust_region.trust_radius).all()


def test_m_step_is_capped_at_the_trust_radius() -> None:
    """Actions spread 3x wider than the policy: the sampled (empirical) Fisher of the ratios
    far exceeds the analytic one, so the uncapped Gauss-Newton step would overshoot."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=(8,)).to(DTYPE)
    theta = {k: v.requires_grad_() for k, v in policy.init_params().items()}
    wide = _informative_data(policy, COST_LIMIT + 0.3)
    wide = replace(wide, actions=3.0 * wide.actions)
    wide = replace(wide, log_probs=policy.log_prob(theta, wide.obs, wide.actions).detach())
    # The cap is exact for the Fisher the step uses; the KL below is measured on every
    # sample, so the Fisher must be too (a subsampled one estimates it from a few points).
    rule = CPPOEM(damping=0.0, fisher_stride=1).to(DTYPE)
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    _, _, metrics = rule.step(policy, [theta], {}, [wide], ctx)
    assert (
        0.5 * rule.trust_region.trust_radius
        < metrics["kl"].item()
        <= 1.1 * rule.trust_region.trust_radius
    )


# ---------------------------------------------------------------------------------------
# constructor validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trust_radius": 0.0}, "trust_radius=0.0"),
        ({"trust_radius": float("inf")}, "trust_radius=inf"),
        ({"ratio_min": -0.1}, "ratio_min=-0.1"),
        ({"ratio_min": 1.0}, r"ratio_min=1.0 .*\[0, 1\)"),
        ({"m_steps": 0}, "m_steps=0"),
        ({"m_lr": 0.0}, "m_lr=0.0"),
        ({"m_lr": 1.5}, r"m_lr=1.5 .*\(0, 1\]"),
        ({"damping": -0.1}, "damping=-0.1"),
        ({"cg_iters": 0}, "cg_iters=0"),
    ],
)
def test_invalid_constructor_values_raise(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CPPOEM(**kwargs)
