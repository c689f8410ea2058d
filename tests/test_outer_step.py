"""The outer step on theta_0: the unconstrained form against an explicit Fisher matrix."""

import torch

from meta_safe.maml import OUTER_CASE_UNCONSTRAINED, outer_step
from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, gaussian_kl
from meta_safe.rl.surrogate import PolicyData


def explicit_fisher(policy: GaussianPolicy, params: dict, obs: torch.Tensor) -> torch.Tensor:
    """``[P, P]`` Hessian of the mean KL from the policy at ``params``, at ``params``."""
    old_mean, old_std = (t.detach() for t in policy.distribution(params, obs))

    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        mean, std = policy.distribution(unflatten_like(flat, params), obs)
        return gaussian_kl(old_mean, old_std, mean, std).mean()

    return torch.autograd.functional.hessian(mean_kl, flat_concat(params))


def test_unconstrained_outer_step_is_the_scaled_natural_gradient() -> None:
    """``outer_step(b=None)``: ``x = sqrt(2 delta / g^T H^-1 g) H^-1 g``, checked with the
    explicit Fisher of a tiny policy; with ``b`` it is the CPO step (the margin matters)."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=[4]).double()
    params = policy.init_params()
    n = 64
    obs = torch.randn(n, 3, dtype=torch.float64)
    mean, std = policy.distribution(params, obs)
    actions = (mean + std * torch.randn_like(mean)).detach()
    data = PolicyData(
        obs=obs,
        actions=actions,
        log_probs=policy.log_prob(params, obs, actions).detach(),
        reward_adv=torch.randn(n, dtype=torch.float64),
        cost_adv=torch.randn(n, dtype=torch.float64),
        episode_return=torch.tensor(1.0, dtype=torch.float64),
        episode_cost=torch.tensor(50.0, dtype=torch.float64),
        horizon=10,
    )
    size = flat_concat(params).numel()
    g = torch.randn(size, dtype=torch.float64)
    b = torch.randn(size, dtype=torch.float64)
    delta, damping = 0.01, 0.1
    new, info = outer_step(policy, params, [data], g, None, torch.tensor(40.0), delta, damping, 200)
    assert int(info["case"]) == OUTER_CASE_UNCONSTRAINED
    fisher = explicit_fisher(policy, params, obs) + damping * torch.eye(size, dtype=torch.float64)
    hg = torch.linalg.solve(fisher, g)
    expected = torch.sqrt(2 * delta / (g @ hg)) * hg
    step = flat_concat(new) - flat_concat(params)
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-9)
    cpo_new, cpo_info = outer_step(
        policy, params, [data], g, b, torch.tensor(40.0), delta, damping, 200
    )
    assert int(cpo_info["case"]) in (1, 2)
    assert not torch.allclose(flat_concat(cpo_new), flat_concat(new))


def test_outer_step_is_shrunk_to_the_measured_trust_region() -> None:
    """``kl_backtrack``: a step far outside the trust region (as an indefinite CG Gram
    matrix produces) is halved until its measured KL is within the bound; a step inside
    is taken whole; ``outer_step`` applies it at ``KL_TOLERANCE * delta``."""
    from meta_safe.maml import KL_TOLERANCE

    assert KL_TOLERANCE > 1
    from meta_safe.maml import kl_backtrack

    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=[4]).double()
    params = policy.init_params()
    obs = torch.randn(128, 3, dtype=torch.float64)
    size = flat_concat(params).numel()
    direction = torch.randn(size, dtype=torch.float64)

    def measured_kl(step: torch.Tensor) -> float:
        new = unflatten_like(flat_concat(params) + step, params)
        old_mean, old_std = policy.distribution(params, obs)
        mean, std = policy.distribution(new, obs)
        return float(gaussian_kl(old_mean, old_std, mean, std).mean())

    small = 1e-3 * direction
    assert measured_kl(small) < 0.01
    assert kl_backtrack(policy, params, small, obs, 0.015) == 1.0
    huge = 1e4 * direction
    assert not measured_kl(huge) <= 0.015  # far outside (or not even finite)
    scale = kl_backtrack(policy, params, huge, obs, 0.015)
    assert 0 < scale < 1e-3
    assert measured_kl(scale * huge) <= 0.015
    assert measured_kl(2 * scale * huge) > 0.015  # the largest halving that fits
