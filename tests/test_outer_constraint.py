"""The outer step's per-task cost constraint: mean, worst task and CVaR over tasks."""

import math

import pytest
import torch

from meta_safe.optim.flat_params import flat_gradient
from meta_safe.outer_constraint import outer_constraint_weights, outer_cost_constraint


def test_weights_select_the_costliest_tasks() -> None:
    margin = torch.tensor([-3.0, 5.0, 1.0, 5.0, -1.0, 2.0])
    mean = outer_constraint_weights(margin, "mean", 0.5)
    assert torch.allclose(mean, torch.full((6,), 1 / 6))
    worst = outer_constraint_weights(margin, "worst", 0.5)
    assert worst.tolist() == [0, 1, 0, 0, 0, 0]  # tie between tasks 1 and 3: the first
    cvar = outer_constraint_weights(margin, "cvar", 0.5)  # the 3 largest margins: 1, 3, 5
    assert torch.allclose(cvar, torch.tensor([0, 1, 0, 1, 0, 1]) / 3)
    for fraction in (0.01, 0.2, 0.34, 0.99, 1.0):
        weights = outer_constraint_weights(margin, "cvar", fraction)
        assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)
        assert int((weights > 0).sum()) == max(1, math.ceil(fraction * 6))
    assert torch.allclose(outer_constraint_weights(margin, "cvar", 1.0), mean)
    with pytest.raises(ValueError, match="unknown"):
        outer_constraint_weights(margin, "median", 0.5)


def test_worst_step_weights_the_costliest_step_over_its_tasks() -> None:
    """Step-major margins of 3 steps x 2 tasks: the step whose mean margin is largest
    (step 1: mean 2.5, though step 2 holds the single largest margin 6) gets 1/2 on each
    of its tasks; with one group it is the mean; a size that does not split is refused."""
    margin = torch.tensor([-3.0, -1.0, 4.0, 1.0, 6.0, -5.0])
    weights = outer_constraint_weights(margin, "worst_step", 0.5, num_tasks=2)
    assert weights.tolist() == [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]
    assert torch.allclose(
        outer_constraint_weights(margin, "worst_step", 0.5),
        outer_constraint_weights(margin, "mean", 0.5),
    )
    tied = torch.tensor([1.0, 1.0, 2.0, 0.0])  # both steps' means are 1: the first
    assert outer_constraint_weights(tied, "worst_step", 0.5, num_tasks=2).tolist() == [
        0.5, 0.5, 0.0, 0.0,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="groups of 4"):
        outer_constraint_weights(margin, "worst_step", 0.5, num_tasks=4)


def _task_costs() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Three differentiable per-task cost surrogates of a two-tensor parameter dict."""
    torch.manual_seed(0)
    params = {
        "w": torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        "b": torch.randn(2, dtype=torch.float64, requires_grad=True),
    }
    centres = torch.randn(3, 3, 2, dtype=torch.float64)
    cost_sur = torch.stack(
        [
            ((params["w"] - c) ** 2).sum() * (t + 1) + params["b"].sum() * t
            for t, c in enumerate(centres)
        ]
    )
    return params, cost_sur


@pytest.mark.parametrize("aggregate", ["mean", "worst", "cvar"])
def test_outer_constraint_equals_the_explicit_one(aggregate: str) -> None:
    """``b`` and ``c`` equal the gradient and margin computed by hand for each aggregate:
    the mean task, the task with the largest measured margin, and the mean of the two
    costliest (CVaR at fraction 0.5 of 3 tasks)."""
    params, cost_sur = _task_costs()
    margin = torch.tensor([4.0, -2.0, 7.0], dtype=torch.float64)
    b, c = outer_cost_constraint(cost_sur, margin, params, aggregate, 0.5, 1.5, retain_graph=True)
    if aggregate == "mean":
        expected_b = flat_gradient(cost_sur.mean(), params, retain_graph=True)
        expected_c = margin.mean() + 1.5
    elif aggregate == "worst":
        expected_b = flat_gradient(cost_sur[2], params, retain_graph=True)
        expected_c = margin[2] + 1.5
    else:
        expected_b = flat_gradient((cost_sur[0] + cost_sur[2]) / 2, params, retain_graph=True)
        expected_c = (margin[0] + margin[2]) / 2 + 1.5
    assert torch.allclose(b, expected_b)
    assert torch.allclose(c, expected_c)
    assert not torch.allclose(b, flat_gradient(cost_sur[1], params, retain_graph=True))


def test_worst_step_constraint_equals_the_explicit_one() -> None:
    """Six costs read as 2 steps x 3 tasks: ``b`` and ``c`` are the gradient and margin
    of the mean over the 3 tasks of the step with the larger mean margin (step 1)."""
    params, first = _task_costs()
    cost_sur = torch.cat([first, 2.0 * first + params["b"].sum()])
    margin = torch.tensor([4.0, -2.0, 7.0, 1.0, 5.0, 6.0], dtype=torch.float64)
    b, c = outer_cost_constraint(
        cost_sur, margin, params, "worst_step", 0.5, 1.5, retain_graph=True, num_tasks=3
    )
    expected_b = flat_gradient(cost_sur[3:].mean(), params, retain_graph=True)
    assert torch.allclose(b, expected_b)
    assert torch.allclose(c, margin[3:].mean() + 1.5)
    assert not torch.allclose(b, flat_gradient(cost_sur.mean(), params, retain_graph=True))


def _adaptation(num_tasks: int = 2, inner_steps: int = 2):
    """A hand-built adaptation: per-task parameters after k steps, in the graph of theta_0."""
    from meta_safe.adaptation import AdaptationResult
    from meta_safe.rl.policy import GaussianPolicy
    from meta_safe.rl.surrogate import PolicyData

    torch.manual_seed(1)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=[4]).double()
    meta = {k: v.requires_grad_() for k, v in policy.init_params().items()}
    trajectory, data = [], []
    for k in range(inner_steps + 1):
        trajectory.append([{n: v * (1 + 0.1 * k * (t + 1)) for n, v in meta.items()}
                           for t in range(num_tasks)])  # fmt: skip
        batch = []
        for t in range(num_tasks):
            obs = torch.randn(16, 3, dtype=torch.float64)
            mean, std = policy.distribution(
                {n: v.detach() for n, v in trajectory[k][t].items()}, obs
            )
            actions = mean + std * torch.randn_like(mean)
            batch.append(PolicyData(
                obs=obs, actions=actions,
                log_probs=policy.log_prob({n: v.detach() for n, v in trajectory[k][t].items()},
                                          obs, actions).detach(),
                reward_adv=torch.randn(16, dtype=torch.float64),
                cost_adv=torch.randn(16, dtype=torch.float64),
                episode_return=torch.tensor(0.0, dtype=torch.float64),
                episode_cost=torch.tensor(10.0 * k + t, dtype=torch.float64), horizon=10,
            ))  # fmt: skip
        data.append(batch)
    result = AdaptationResult(trajectory[-1], [], data, [], trajectory=trajectory)
    return policy, meta, result


def test_constrained_costs_cover_the_chosen_batches() -> None:
    """``pre``: the meta-policy's own cost on the first batches (its gradient the plain
    policy gradient); ``every``: all K + 1 collections, step-major; ``post`` unchanged."""
    from meta_safe.adaptation import meta_objectives
    from meta_safe.outer_constraint import constrained_costs
    from meta_safe.rl.surrogate import surrogates

    policy, meta, result = _adaptation()
    post_cost = meta_objectives(policy, result.adapted, result.data[-1])[1]
    post_margin = torch.tensor([20.0 - 5, 21.0 - 5], dtype=torch.float64)
    costs, margins = constrained_costs(policy, result, post_cost, post_margin, "post", 5.0)
    assert costs is post_cost and margins is post_margin
    costs, margins = constrained_costs(policy, result, post_cost, post_margin, "pre", 5.0)
    assert margins.tolist() == [-5.0, -4.0]
    for t in range(2):
        expected = torch.autograd.grad(surrogates(policy, meta, result.data[0][t])[1],
                                       list(meta.values()))  # fmt: skip
        got = torch.autograd.grad(costs[t], list(meta.values()), retain_graph=True)
        assert all(torch.allclose(a, e) for a, e in zip(got, expected, strict=True))
    costs, margins = constrained_costs(policy, result, post_cost, post_margin, "every", 5.0)
    assert margins.tolist() == [-5.0, -4.0, 5.0, 6.0, 15.0, 16.0]
    middle = surrogates(policy, result.trajectory[1][1], result.data[1][1])[1]
    assert torch.allclose(costs[3], middle)
    assert torch.equal(costs[4:], post_cost)


def test_measured_line_search_backtracks_on_the_measured_cost() -> None:
    """The outer step's measured line search takes the first candidate whose measured
    cost is within the limit, and keeps theta_0 when none is."""
    from meta_safe.env_factory import make_batched_env, task_distribution
    from meta_safe.optim.flat_params import flat_concat
    from meta_safe.outer_constraint import measured_line_search
    from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
    from meta_safe.rl.rollout import collect
    from tests.tiny import compose_cfg

    cfg = compose_cfg("env.episode_steps=200")
    tasks = task_distribution(cfg.env, "meta_train").sample(2, seed=0)
    env = make_batched_env(cfg.env, tasks, 2, seed=0)
    torch.manual_seed(0)
    policy = GaussianPolicy(env.obs_dim, 2, [8], "tanh", -1.0)
    old = policy.init_params()
    bias = [k for k in old if k.endswith("bias")][-1]
    new = dict(old)
    new[bias] = old[bias] + torch.tensor([0.2, 0.0])  # drives the robot through a wall
    normalizer = ObsNormalizer(env.obs_dim)
    normalizer.frozen = True

    def cost_of(scale: float) -> torch.Tensor:
        params = {k: old[k] + scale * (new[k] - old[k]) for k in old}
        batch = collect(env, policy, params, normalizer, 200, torch.Generator().manual_seed(7),
                        seed=7)  # fmt: skip
        return batch.episode_cost

    full, half = float(cost_of(1.0).max()), float(cost_of(0.5).max())
    assert full > half
    zeros = torch.zeros(2)
    args = (env, normalizer, zeros)
    tail = ("worst", 0.5, 0.0, 3, 0.5, 200, 7)
    kept, scale, used = measured_line_search(policy, old, new, *args, full + 1, *tail)
    assert scale == 1.0 and used == 2 * 2 * 200
    assert torch.allclose(flat_concat(kept), flat_concat(new))
    kept, scale, used = measured_line_search(policy, old, new, *args, half, *tail)
    assert scale == 0.5 and used == 2 * 2 * 2 * 200
    two_steps = ("worst", 0.5, 0.0, 2, 0.5, 200, 7)
    kept, scale, used = measured_line_search(policy, old, new, *args, 0.0, *two_steps)
    assert scale == 0.0 and used == 2 * 2 * 2 * 200
    assert torch.allclose(flat_concat(kept), flat_concat(old))


def test_every_step_constraint_gradient_matches_finite_differences() -> None:
    """``b`` of the ``every`` constraint (mean over steps and tasks) against central
    finite differences of the same function of theta_0, data held fixed."""
    from meta_safe.adaptation import AdaptationResult, meta_objectives
    from meta_safe.optim.flat_params import flat_concat, unflatten_like
    from meta_safe.outer_constraint import constrained_costs

    policy, meta, result = _adaptation()
    data = result.data

    def trajectory_of(theta: dict) -> list[list[dict]]:
        return [[{n: v * (1 + 0.1 * k * (t + 1)) for n, v in theta.items()} for t in range(2)]
                for k in range(len(data))]  # fmt: skip

    def mean_cost(theta: dict) -> torch.Tensor:
        traj = trajectory_of(theta)
        res = AdaptationResult(traj[-1], [], data, [], trajectory=traj)
        post = meta_objectives(policy, traj[-1], data[-1])[1]
        costs, _ = constrained_costs(policy, res, post, torch.zeros(2, dtype=post.dtype),
                                     "every", 5.0)  # fmt: skip
        return costs.mean()

    traj = trajectory_of(meta)
    res = AdaptationResult(traj[-1], [], data, [], trajectory=traj)
    post = meta_objectives(policy, traj[-1], data[-1])[1]
    costs, margins = constrained_costs(policy, res, post, torch.zeros(2, dtype=post.dtype),
                                       "every", 5.0)  # fmt: skip
    b, _ = outer_cost_constraint(costs, margins, meta, "mean", 0.5, 0.0, retain_graph=False)
    flat = flat_concat({k: v.detach() for k, v in meta.items()})
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = torch.randn(flat.shape, generator=generator, dtype=flat.dtype)
        eps = 1e-6
        plus = mean_cost(unflatten_like(flat + eps * direction, meta))
        minus = mean_cost(unflatten_like(flat - eps * direction, meta))
        numeric = (plus - minus) / (2 * eps)
        assert torch.allclose(b @ direction, numeric, rtol=1e-5, atol=1e-8)
