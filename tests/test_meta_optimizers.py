"""Every inner update rule: exact meta-gradients (finite differences), purity, learning.

A tiny float64 problem: ``GaussianPolicy(3, 2, hidden=(4,))`` (``P = 28``), two tasks,
synthetic :class:`PolicyData`. Task 0 violates the cost limit (CPO active case), task 1
is safe (inactive). ``K = 2`` inner steps; step 2 reuses the step-1 samples with
behaviour log-probs of the step-1 adapted policy, as fresh on-policy data would have.
All data (including those log-probs) are computed once at the nominal parameters and
then held fixed, so finite differences and autograd differentiate the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.meta_optimizers.cpo_layer import CPOLayer
from meta_safe.meta_optimizers.cppo_em import CPPOEM
from meta_safe.meta_optimizers.gradients import stacked_task_gradients, task_gradients
from meta_safe.meta_optimizers.lagrangian import Lagrangian
from meta_safe.meta_optimizers.lstm import LSTMOptimizer, log_sign_preprocess
from meta_safe.meta_optimizers.pid import PIDLagrangian
from meta_safe.meta_optimizers.trpo import TRPO
from meta_safe.optim.cpo_step import CASE_ACTIVE, CASE_INACTIVE, CASE_INFEASIBLE
from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData, surrogates

DTYPE = torch.float64
NUM_TASKS, NUM_SAMPLES, HORIZON, INNER_STEPS = 2, 64, 10, 2
COST_LIMIT = 1.0
#: Task 0: J_C - d = 0.2, inside CPO's feasible-but-active band (0 < c < sqrt(2 delta s)
#: ~ 0.4); task 1: J_C - d = -1, far inside the inactive case.
EPISODE_COSTS = (1.2, 0.0)
#: Weight of the cost surrogate in the outer objective.
COST_WEIGHT = 0.1
FD_EPS = 1e-6
FD_DIRECTIONS = 4

#: ``cg_iters=5``: with ``P = 28`` conjugate gradient would otherwise run into its
#: round-off tail (residual ~1e-6 relative), where the iterates, though differentiable,
#: vary too fast for finite differences at ``FD_EPS``; real policies (P ~ 1e3) stop earlier.
RULES: dict[str, Callable[[], MetaOptimizer]] = {
    "cpo_closed_form": lambda: CPOLayer(solver="closed_form", cg_iters=5),
    "cpo_cvxpylayers": lambda: CPOLayer(solver="cvxpylayers", cg_iters=5),
    "cpo_overshoot": lambda: CPOLayer(
        solver="closed_form", cg_iters=5, overshoot_margin=True, overshoot_decay=0.5
    ),
    "cpo_overshoot_step": lambda: CPOLayer(
        solver="closed_form",
        cg_iters=5,
        overshoot_margin=True,
        overshoot_decay=0.5,
        overshoot_prior=0.1,
        overshoot_model="step_length",
    ),
    "trpo": lambda: TRPO(cg_iters=5),
    "cppo_em": lambda: CPPOEM(cg_iters=5),
    "lagrangian": lambda: Lagrangian(lr_lambda=0.5, lambda_init=0.1, cg_iters=5),
    # Larger gains than the defaults so the multiplier visibly moves the policy.
    "pid": lambda: PIDLagrangian(k_p=0.5, k_i=0.2, k_d=0.1, lambda_init=1.0, cg_iters=5),
    "pid_rms": lambda: PIDLagrangian(
        k_p=0.5, k_i=0.2, k_d=0.1, eta_reward=0.05, eta_cost=0.05, directions="rms"
    ),
    "lstm": lambda: LSTMOptimizer(hidden_size=8, output_scale=5.0, eta_lambda=0.5, cg_iters=5),
    "lstm_rms": lambda: LSTMOptimizer(
        hidden_size=8,
        output_scale=0.05,
        eta_reward=0.05,
        eta_cost=0.05,
        eta_lambda=0.5,
        directions="rms",
    ),
}
LEARNABLE = ("pid", "pid_rms", "lstm", "lstm_rms")
#: Relative tolerance of the finite-difference checks (the convex layer's conic solver
#: is accurate to ~1e-8, not to machine precision).
FD_RTOL = {"cpo_cvxpylayers": 1e-3}


def make_rule(name: str) -> MetaOptimizer:
    torch.manual_seed(0)
    return RULES[name]().to(DTYPE)


@dataclass
class Problem:
    """Policy, initial parameters and fixed per-step / post-adaptation data."""

    policy: GaussianPolicy
    theta0: Params
    inner_data: list[list[PolicyData]]  # [K][T]
    post_data: list[PolicyData]  # [T]


def _samples(
    policy: GaussianPolicy, params: Params, gen: torch.Generator, episode_cost: float
) -> PolicyData:
    obs = torch.randn(NUM_SAMPLES, 3, generator=gen, dtype=DTYPE)
    actions = 0.6 * torch.randn(NUM_SAMPLES, 2, generator=gen, dtype=DTYPE)
    reward_adv = torch.randn(NUM_SAMPLES, generator=gen, dtype=DTYPE)
    cost_adv = torch.randn(NUM_SAMPLES, generator=gen, dtype=DTYPE)
    return PolicyData(
        obs=obs,
        actions=actions,
        log_probs=policy.log_prob(params, obs, actions).detach(),
        reward_adv=(reward_adv - reward_adv.mean()) / reward_adv.std(),
        cost_adv=cost_adv - cost_adv.mean(),
        episode_return=torch.zeros((), dtype=DTYPE),
        episode_cost=torch.tensor(episode_cost, dtype=DTYPE),
        horizon=HORIZON,
    )


def _refresh(policy: GaussianPolicy, params: Params, data: PolicyData) -> PolicyData:
    """The same samples with behaviour log-probs of ``params`` (mimics fresh data)."""
    log_probs = policy.log_prob({k: v.detach() for k, v in params.items()}, data.obs, data.actions)
    return replace(data, log_probs=log_probs.detach())


def make_problem(
    rule: MetaOptimizer, episode_costs: tuple[float, ...] = EPISODE_COSTS, seed: int = 1
) -> Problem:
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=(4,)).to(DTYPE)
    theta0 = {k: v.to(DTYPE).requires_grad_() for k, v in policy.init_params().items()}
    gen = torch.Generator().manual_seed(seed)
    first = [_samples(policy, theta0, gen, cost) for cost in episode_costs]
    post_samples = [_samples(policy, theta0, gen, cost) for cost in episode_costs]
    # Nominal adaptation, only to fix the behaviour log-probs of later batches.
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    params = [dict(theta0) for _ in episode_costs]
    state = rule.init_state(len(episode_costs), DTYPE)
    inner_data = [first]
    for k in range(INNER_STEPS):
        params, state, _ = rule.step(policy, params, state, inner_data[k], ctx)
        if k + 1 < INNER_STEPS:
            inner_data.append([_refresh(policy, p, d) for p, d in zip(params, first, strict=True)])
    post = [_refresh(policy, p, d) for p, d in zip(params, post_samples, strict=True)]
    return Problem(policy, {k: v.detach() for k, v in theta0.items()}, inner_data, post)


def adapt(
    rule: MetaOptimizer, problem: Problem, theta0: Params, create_graph: bool = True
) -> tuple[list[Params], dict[str, Tensor], list[dict[str, Tensor]]]:
    """``INNER_STEPS`` inner updates from ``theta0``: adapted params, final state, metrics."""
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=create_graph)
    if not any(v.requires_grad for v in theta0.values()):  # task_gradients needs a graph
        theta0 = {k: v.detach().requires_grad_() for k, v in theta0.items()}
    params = [dict(theta0) for _ in range(NUM_TASKS)]
    state = rule.init_state(NUM_TASKS, DTYPE)
    metrics = []
    for data in problem.inner_data:
        params, state, step_metrics = rule.step(problem.policy, params, state, data, ctx)
        metrics.append(step_metrics)
    return params, state, metrics


def outer_objective(
    rule: MetaOptimizer, problem: Problem, theta0_flat: Tensor, create_graph: bool = True
) -> Tensor:
    """Sum over tasks of ``reward - COST_WEIGHT * cost`` surrogates after adaptation."""
    if not theta0_flat.requires_grad:  # task_gradients needs a graph to differentiate
        theta0_flat = theta0_flat.detach().requires_grad_()
    theta0 = unflatten_like(theta0_flat, problem.theta0)
    params, _, _ = adapt(rule, problem, theta0, create_graph)
    total = torch.zeros((), dtype=DTYPE)
    for p, d in zip(params, problem.post_data, strict=True):
        reward, cost = surrogates(problem.policy, p, d)
        total = total + reward - COST_WEIGHT * cost
    return total


def _relative_error(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------------
# (a) meta-gradient w.r.t. the initial policy parameters
# ---------------------------------------------------------------------------------------


def meta_gradient_check(rule: MetaOptimizer, problem: Problem) -> tuple[float, float]:
    """``(|meta-gradient|, relative error against central finite differences)``.

    Directional derivatives along random directions (full coordinate-wise differences
    cost 2P evaluations; a few directions test every coordinate's contribution).
    """
    theta0_flat = flat_concat(problem.theta0).clone().requires_grad_()
    objective = outer_objective(rule, problem, theta0_flat)
    (grad,) = torch.autograd.grad(objective, theta0_flat)
    gen = torch.Generator().manual_seed(3)
    directions = torch.randn(FD_DIRECTIONS, grad.numel(), generator=gen, dtype=DTYPE)
    base = theta0_flat.detach()
    fd = torch.stack(
        [
            (
                outer_objective(rule, problem, base + FD_EPS * u, create_graph=False)
                - outer_objective(rule, problem, base - FD_EPS * u, create_graph=False)
            ).detach()
            / (2 * FD_EPS)
            for u in directions
        ]
    )
    return grad.norm().item(), _relative_error(directions @ grad, fd)


@pytest.mark.parametrize("name", list(RULES))
def test_meta_gradient_matches_finite_differences(name: str) -> None:
    rule = make_rule(name)
    grad_norm, error = meta_gradient_check(rule, make_problem(rule))
    assert grad_norm > 1e-6
    assert error < FD_RTOL.get(name, 1e-4), f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("name", ["cpo_closed_form", "cpo_cvxpylayers"])
def test_cpo_problem_is_in_the_intended_cases(name: str) -> None:
    """Task 0 active, task 1 inactive at both steps: the FD test is away from case switches."""
    rule = make_rule(name)
    problem = make_problem(rule)
    _, _, metrics = adapt(rule, problem, problem.theta0, create_graph=False)
    for step_metrics in metrics:
        assert step_metrics["case"].tolist() == [CASE_ACTIVE, CASE_INACTIVE]


# ---------------------------------------------------------------------------------------
# (b) learned rules: gradients w.r.t. their own parameters
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNABLE)
def test_rule_parameters_receive_exact_nonzero_gradients(name: str) -> None:
    rule = make_rule(name)
    assert rule.learnable
    problem = make_problem(rule)
    theta0_flat = flat_concat(problem.theta0).clone().requires_grad_()
    named = dict(rule.named_parameters())
    grads = torch.autograd.grad(outer_objective(rule, problem, theta0_flat), list(named.values()))
    gen = torch.Generator().manual_seed(2)
    for (param_name, param), grad in zip(named.items(), grads, strict=True):
        assert grad.abs().sum() > 0, f"{name}.{param_name} has a zero meta-gradient"
        # Directional derivative along a random direction per tensor.
        direction = torch.randn(param.shape, generator=gen, dtype=DTYPE)
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                param.add_(sign * FD_EPS * direction)
            values.append(outer_objective(rule, problem, theta0_flat.detach(), False).detach())
            with torch.no_grad():
                param.sub_(sign * FD_EPS * direction)
        fd = (values[0] - values[1]) / (2 * FD_EPS)
        analytic = (grad * direction).sum()
        error = abs((analytic - fd).item()) / max(abs(fd.item()), 1e-10)
        assert error < 1e-4, f"{name}.{param_name}: {analytic.item()} vs FD {fd.item()}"


# ---------------------------------------------------------------------------------------
# (c) purity, (d) outer training, (e) state shapes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_inner_updates_do_not_modify_meta_parameters(name: str) -> None:
    rule = make_rule(name)
    problem = make_problem(rule)
    theta0 = {k: v.clone().requires_grad_() for k, v in problem.theta0.items()}
    theta0_before = {k: v.detach().clone() for k, v in theta0.items()}
    rule_before = {k: v.detach().clone() for k, v in rule.state_dict().items()}
    params, state, _ = adapt(rule, problem, theta0)
    for k, v in theta0.items():
        assert torch.equal(v.detach(), theta0_before[k])
        assert v.grad is None
        for task_params in params:
            assert task_params[k] is not v
            assert task_params[k].data_ptr() != v.data_ptr()
    for k, v in rule.state_dict().items():
        assert torch.equal(v, rule_before[k]), f"inner step modified {name}.{k}"
    rule_tensors = {p.data_ptr() for p in rule.parameters()}
    assert not any(s.data_ptr() in rule_tensors for s in state.values() if s.numel())


@pytest.mark.parametrize("name", LEARNABLE)
def test_meta_parameters_change_under_outer_adam(name: str) -> None:
    """LSTM and PID meta-parameters receive non-zero gradients and change during training."""
    rule = make_rule(name)
    problem = make_problem(rule)
    theta0_flat = flat_concat(problem.theta0).clone().requires_grad_()
    before = {k: v.detach().clone() for k, v in rule.named_parameters()}
    optimizer = torch.optim.Adam(list(rule.parameters()) + [theta0_flat], lr=1e-2)
    objectives = []
    for _ in range(3):
        optimizer.zero_grad()
        objective = outer_objective(rule, problem, theta0_flat)
        (-objective).backward()
        for param_name, param in rule.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
        optimizer.step()
        objectives.append(objective.item())
    for param_name, param in rule.named_parameters():
        assert not torch.equal(param.detach(), before[param_name]), f"{param_name} unchanged"
    assert objectives[-1] > objectives[0]


EXPECTED_STATE = {
    "cpo_closed_form": {},
    "cpo_cvxpylayers": {},
    "cpo_overshoot": {
        "previous_cost": (NUM_TASKS,),
        "predicted_change": (NUM_TASKS,),
        "overshoot": (NUM_TASKS,),
    },
    "cpo_overshoot_step": {
        "previous_cost": (NUM_TASKS,),
        "predicted_change": (NUM_TASKS,),
        "overshoot": (NUM_TASKS,),
        "step_length": (NUM_TASKS,),
        "miss_moment": (NUM_TASKS,),
        "length_moment": (NUM_TASKS,),
    },
    "trpo": {},
    "cppo_em": {},
    "lagrangian": {"lambda": (NUM_TASKS,)},
    "pid": {"lambda": (NUM_TASKS,), "integral": (NUM_TASKS,), "prev_violation": (NUM_TASKS,)},
    "lstm": {"lambda": (NUM_TASKS,), "h": (NUM_TASKS, 28, 8), "c": (NUM_TASKS, 28, 8)},
}
EXPECTED_STATE["pid_rms"] = EXPECTED_STATE["pid"]
EXPECTED_STATE["lstm_rms"] = EXPECTED_STATE["lstm"]


@pytest.mark.parametrize("name", list(RULES))
def test_state_and_metric_shapes(name: str) -> None:
    rule = make_rule(name)
    problem = make_problem(rule)
    initial = rule.init_state(NUM_TASKS, DTYPE)
    assert set(initial) == set(EXPECTED_STATE[name])
    _, state, metrics = adapt(rule, problem, problem.theta0, create_graph=False)
    assert {k: tuple(v.shape) for k, v in state.items()} == EXPECTED_STATE[name]
    for step_metrics in metrics:
        assert step_metrics
        for key, value in step_metrics.items():
            assert value.shape == (NUM_TASKS,), key
            assert torch.isfinite(value).all(), key
    if "lambda" in state:
        assert (state["lambda"] >= 0).all()
    if name.startswith("lstm"):
        assert initial["h"].shape == (NUM_TASKS, 0, 8)
        assert rule.init_state(NUM_TASKS, DTYPE, num_params=28)["h"].shape == (NUM_TASKS, 28, 8)


def test_pid_state_follows_the_controller_equations() -> None:
    rule = make_rule("pid")
    problem = make_problem(rule)
    _, state, metrics = adapt(rule, problem, problem.theta0, create_graph=False)
    violation = torch.tensor(EPISODE_COSTS, dtype=DTYPE) - COST_LIMIT
    gains = {k: v.detach() for k, v in rule.gains().items()}
    # Two identical measurements: integral 2v (projected at 0), derivative v then 0.
    integral = (2 * violation).clamp_min(0.0)
    assert torch.allclose(state["integral"], integral)
    assert torch.allclose(state["prev_violation"], violation)
    lam = (rule.lambda_init + gains["k_p"] * violation + gains["k_i"] * integral).clamp_min(0.0)
    assert torch.allclose(metrics[-1]["lambda"], lam)


def test_pid_with_natural_directions_and_no_violation_is_one_trpo_step() -> None:
    """``eta_R = 1``, ``lambda = 0`` (a safe task): the PID step is exactly TRPO's step of
    KL ``trust_radius``; a violating task's step is ``(TRPO step - lambda eta_C b_hat) /
    (1 + lambda)``."""
    pid = PIDLagrangian(eta_reward=1.0, cg_iters=5, fisher_stride=1).to(DTYPE)
    trpo = TRPO(cg_iters=5, fisher_stride=1).to(DTYPE)
    problem = make_problem(pid, episode_costs=(COST_LIMIT + 20.0, 0.0))
    data = problem.inner_data[0]
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    theta0 = {k: v.clone().requires_grad_() for k, v in problem.theta0.items()}
    pid_params, _, metrics = pid.step(
        problem.policy, [theta0, theta0], pid.init_state(NUM_TASKS, DTYPE), data, ctx
    )
    trpo_params, _, _ = trpo.step(problem.policy, [theta0, theta0], {}, data, ctx)
    lam = metrics["lambda"]
    assert lam[1] == 0.0 and lam[0] > 0.0
    torch.testing.assert_close(flat_concat(pid_params[1]), flat_concat(trpo_params[1]))
    g, b = stacked_task_gradients(problem.policy, [theta0, theta0], data, create_graph=False)
    _, b_hat = pid.directions(problem.policy, [theta0, theta0], data, g, b, create_graph=False)
    trpo_step = flat_concat(trpo_params[0]) - flat_concat(theta0)
    eta_cost = pid.gains()["eta_cost"].detach()
    expected = (trpo_step - lam[0] * eta_cost * b_hat[0]) / (1 + lam[0])
    torch.testing.assert_close(flat_concat(pid_params[0]) - flat_concat(theta0), expected)


# ---------------------------------------------------------------------------------------
# Signs: a safe task climbs the reward, a badly violating task descends the cost
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_step_signs(name: str) -> None:
    """To first order, a safe task's step climbs the reward and a far-violating task's
    step descends the cost (guards against sign errors; step sizes play no role)."""
    rule = make_rule(name)
    problem = make_problem(rule, episode_costs=(COST_LIMIT + 100.0, 0.0))
    data = problem.inner_data[0]
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    theta0 = {k: v.clone().requires_grad_() for k, v in problem.theta0.items()}
    state = rule.init_state(NUM_TASKS, DTYPE)
    params, _, metrics = rule.step(problem.policy, [theta0, theta0], state, data, ctx)
    steps = [(flat_concat(p) - flat_concat(theta0)).detach() for p in params]
    _, cost_slope = task_gradients(problem.policy, theta0, data[0], create_graph=False)
    reward_slope, _ = task_gradients(problem.policy, theta0, data[1], create_graph=False)
    assert reward_slope @ steps[1] > 0
    if name != "trpo":  # TRPO ignores the cost
        assert cost_slope @ steps[0] < 0
    if name.startswith("cpo"):
        assert metrics["case"][0] == CASE_INFEASIBLE  # recovery step


# ---------------------------------------------------------------------------------------
# (f) constructor validation, preprocessing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: CPOLayer(solver="bogus"), "bogus"),
        (lambda: CPOLayer(trust_radius=0.0), "trust_radius=0.0"),
        (lambda: TRPO(trust_radius=-1.0), "trust_radius=-1.0"),
        (lambda: Lagrangian(lr_lambda=-0.5), "lr_lambda=-0.5"),
        (lambda: Lagrangian(lambda_init=-1.0), "lambda_init=-1.0"),
        (lambda: Lagrangian(trust_radius=0.0), "trust_radius=0.0"),
        (lambda: Lagrangian(cg_iters=0), "cg_iters=0"),
        (lambda: PIDLagrangian(k_p=0.0), "k_p=0.0"),
        (lambda: PIDLagrangian(k_i=-1.0), "k_i=-1.0"),
        (lambda: PIDLagrangian(k_d=float("nan")), "k_d=nan"),
        (lambda: PIDLagrangian(eta_reward=-0.1), "eta_reward=-0.1"),
        (lambda: PIDLagrangian(eta_cost=0.0), "eta_cost=0.0"),
        (lambda: PIDLagrangian(lambda_init=-2.0), "lambda_init=-2.0"),
        (lambda: LSTMOptimizer(hidden_size=0), "hidden_size=0"),
        (lambda: LSTMOptimizer(output_scale=0.0), "output_scale=0.0"),
        (lambda: LSTMOptimizer(eta_lambda=-1.0), "eta_lambda=-1.0"),
        (lambda: LSTMOptimizer(preprocess_p=0.0), "preprocess_p=0.0"),
        (lambda: LSTMOptimizer(lambda_init=-0.5), "lambda_init=-0.5"),
        (lambda: PIDLagrangian(directions="adam"), "directions='adam' is invalid"),
        (lambda: LSTMOptimizer(directions="sgd"), "valid choices are"),
        (lambda: PIDLagrangian(trust_radius=0.0), "trust_radius=0.0"),
        (lambda: LSTMOptimizer(fisher_stride=0), "fisher_stride=0"),
    ],
)
def test_invalid_constructor_values_raise(factory: Callable[[], MetaOptimizer], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_log_sign_preprocess_is_continuous_and_differentiable_at_zero() -> None:
    p = 10.0
    edge = torch.tensor([-1.0, 1.0], dtype=DTYPE) * torch.exp(torch.tensor(-p, dtype=DTYPE))
    inside, outside = (
        log_sign_preprocess(edge * (1 - 1e-9), p),
        log_sign_preprocess(edge * (1 + 1e-9), p),
    )
    assert torch.allclose(inside, outside, atol=1e-6)
    assert torch.allclose(
        log_sign_preprocess(edge, p), torch.tensor([[-1.0, -1.0], [-1.0, 1.0]], dtype=DTYPE)
    )
    x = torch.zeros(3, dtype=DTYPE, requires_grad=True)
    (grad,) = torch.autograd.grad(log_sign_preprocess(x, p).sum(), x)
    assert torch.isfinite(grad).all()


def test_overshoot_margin_learns_from_a_cost_rise_the_linear_model_missed() -> None:
    """The batch cost rises by 30 twice while the linear model predicted small changes:
    the measured overshoot becomes a margin that grows with each missed rise."""
    rule = CPOLayer(solver="closed_form", overshoot_margin=True, overshoot_decay=0.5).to(DTYPE)
    plain = CPOLayer(solver="closed_form").to(DTYPE)
    problem = make_problem(rule, episode_costs=(0.0, 0.0))
    ctx = InnerContext(cost_limit=COST_LIMIT, create_graph=False)
    params = [{k: v.requires_grad_() for k, v in dict(problem.theta0).items()}] * 2
    state = rule.init_state(2, DTYPE)
    margins = []
    for k, cost in enumerate((COST_LIMIT - 5.0, COST_LIMIT + 25.0, COST_LIMIT + 55.0)):
        data = [replace(d, episode_cost=torch.tensor(cost, dtype=DTYPE)) for d in problem.post_data]
        _, state, metrics = rule.step(problem.policy, params, state, data, ctx)
        margins.append(metrics["overshoot_margin"])
        if k == 0:
            _, _, plain_metrics = plain.step(problem.policy, params, {}, data, ctx)
            assert torch.equal(plain_metrics["case"], metrics["case"])  # no history: no margin
    assert torch.equal(margins[0], torch.zeros(2, dtype=torch.float64))
    assert (margins[1] > 10.0).all() and (margins[2] > margins[1]).all()
    torch.testing.assert_close(
        state["previous_cost"], torch.full((2,), COST_LIMIT + 55.0, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="overshoot_decay=1.0 is invalid"):
        CPOLayer(overshoot_margin=True, overshoot_decay=1.0)


def test_overshoot_hold_keeps_the_largest_recent_miss() -> None:
    """``hold``: ``o_k = max(decay o_{k-1}, miss_k)``, against the moving average
    ``decay o_{k-1} + (1 - decay) miss_k``, on explicitly computed misses."""
    from meta_safe.meta_optimizers import overshoot_margin as overshoot

    state = overshoot.initial_state(2, prior=1.0)
    state["previous_cost"] = torch.tensor([4.0, 20.0], dtype=torch.float64)
    state["predicted_change"] = torch.tensor([2.0, 1.0], dtype=torch.float64)
    cost = torch.tensor([104.0, 15.0])  # misses: 104 - 4 - 2 = 98 and max(0, -6) = 0
    held = overshoot.update_overshoot(state, cost, decay=0.8, hold=True)
    averaged = overshoot.update_overshoot(state, cost, decay=0.8)
    torch.testing.assert_close(held, torch.tensor([98.0, 0.8], dtype=torch.float64))
    torch.testing.assert_close(averaged, torch.tensor([0.8 + 0.2 * 98.0, 0.8], dtype=torch.float64))
    state.update(overshoot=held, previous_cost=cost.double(), predicted_change=torch.zeros(2))
    again = overshoot.update_overshoot(state, torch.tensor([100.0, 15.0]), decay=0.8, hold=True)
    torch.testing.assert_close(again, torch.tensor([0.8 * 98.0, 0.64], dtype=torch.float64))


def test_step_length_overshoot_is_a_discounted_least_squares_fit() -> None:
    """``o = sum w_i miss_i t_i / sum w_i t_i^2``, the prior counting as one full-length
    step; a task without a previous step keeps its moments."""
    from meta_safe.meta_optimizers import overshoot_margin as overshoot

    state = overshoot.initial_state(2, prior=2.0, model="step_length")
    state["previous_cost"] = torch.tensor([10.0, float("nan")], dtype=torch.float64)
    state["predicted_change"] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    state["step_length"] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    o, miss_moment, length_moment = overshoot.update_proportional_overshoot(
        state, torch.tensor([21.0, 3.0]), decay=0.8
    )
    # Task 0: miss 21 - 10 - 1 = 10 at length 0.5.
    expected = (0.8 * 2.0 + 10.0 * 0.5) / (0.8 * 1.0 + 0.25)
    torch.testing.assert_close(o, torch.tensor([expected, 2.0], dtype=torch.float64))
    torch.testing.assert_close(miss_moment, torch.tensor([6.6, 2.0], dtype=torch.float64))
    torch.testing.assert_close(length_moment, torch.tensor([1.05, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="overshoot_model='linear' is unknown"):
        CPOLayer(overshoot_margin=True, overshoot_model="linear")


@pytest.mark.parametrize("overshoot", [0.0, 0.3, 3.0])
def test_step_length_choice_maximises_the_reward_gain_of_the_feasible_steps(
    overshoot: float,
) -> None:
    """Against the steps themselves: for each fraction ``t`` the CPO step with margin
    ``c + o t`` and radius ``delta t^2``; the chosen ``t`` is the feasible one whose step
    has the largest ``g^T x``, and that step meets ``c + o t + b^T x <= 0``."""
    from meta_safe.meta_optimizers import overshoot_margin as om
    from meta_safe.optim.cpo_step import CASE_INFEASIBLE, cpo_step

    generator = torch.Generator().manual_seed(3)
    P, delta = 6, 0.01
    root = torch.randn(P, P, generator=generator, dtype=DTYPE)
    fisher = root @ root.T + P * torch.eye(P, dtype=DTYPE)
    g = torch.randn(3, P, generator=generator, dtype=DTYPE)
    b = torch.randn(3, P, generator=generator, dtype=DTYPE)
    hg, hb = torch.linalg.solve(fisher, g.T).T, torch.linalg.solve(fisher, b.T).T
    c = torch.tensor([-0.3, 0.02, 0.5], dtype=DTYPE)
    o = torch.full((3,), overshoot, dtype=DTYPE)
    chosen = om.choose_step_fractions(
        (g * hg).sum(-1), (g * hb).sum(-1), (b * hb).sum(-1), c, o, delta
    )
    gains, feasible = [], []
    for t in om.STEP_FRACTIONS:
        step, info = cpo_step(g, b, c + o * t, hg, hb, delta * t**2)
        gains.append((g * step).sum(-1))
        feasible.append(info["case"] != CASE_INFEASIBLE)
    gains, feasible = torch.stack(gains), torch.stack(feasible)  # [F, T]
    fractions = torch.tensor(om.STEP_FRACTIONS, dtype=DTYPE)
    for task in range(3):
        if not bool(feasible[:, task].any()):
            assert chosen[task] == 1.0  # full-length recovery
            continue
        best = torch.where(feasible[:, task], gains[:, task], -torch.inf).argmax()
        assert chosen[task] == fractions[best]
        t = float(chosen[task])
        step, _ = cpo_step(g[task], b[task], c[task] + o[task] * t, hg[task], hb[task],
                           delta * t**2)  # fmt: skip
        assert float(c[task] + o[task] * t + b[task] @ step) <= 1e-9
    if overshoot == 0.0:
        assert chosen[0] == 1.0  # nothing to fear: the full step
    if overshoot == 3.0:
        assert chosen[0] < 1.0  # the full step's overshoot would break the limit
