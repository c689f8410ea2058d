"""Policy, critics and observation normalisation."""

import torch
from torch.distributions import Independent, Normal, kl_divergence

from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, gaussian_kl


def test_functional_params_and_log_prob_match_torch_distributions() -> None:
    policy = GaussianPolicy(5, 2, hidden=(8,))
    params = policy.init_params()
    obs, actions = torch.randn(7, 5), torch.randn(7, 2)
    mean, std = policy.distribution(params, obs)
    expected = Independent(Normal(mean, std.expand_as(mean)), 1).log_prob(actions)
    torch.testing.assert_close(policy.log_prob(params, obs, actions), expected)


def test_inner_update_never_mutates_meta_parameters() -> None:
    policy = GaussianPolicy(5, 2, hidden=(8,))
    meta = {k: v.requires_grad_() for k, v in policy.init_params().items()}
    snapshot = {k: v.detach().clone() for k, v in meta.items()}
    obs, actions = torch.randn(7, 5), torch.randn(7, 2)
    loss = policy.log_prob(meta, obs, actions).mean()
    grads = torch.autograd.grad(loss, list(meta.values()), create_graph=True)
    adapted = {k: v + 0.1 * g for (k, v), g in zip(meta.items(), grads, strict=True)}
    assert all(adapted[k] is not meta[k] for k in meta)
    for k in meta:
        torch.testing.assert_close(meta[k].detach(), snapshot[k])
    # the adapted parameters still depend on the meta-parameters (second order graph)
    outer = policy.log_prob(adapted, obs, actions).mean()
    meta_grads = torch.autograd.grad(outer, list(meta.values()))
    assert any(g.abs().sum() > 0 for g in meta_grads)


def test_gaussian_kl_matches_torch() -> None:
    m0, m1 = torch.randn(2, 4, 3)
    s0, s1 = torch.rand(2, 3) + 0.3
    expected = kl_divergence(Independent(Normal(m0, s0), 1), Independent(Normal(m1, s1), 1))
    torch.testing.assert_close(gaussian_kl(m0, s0, m1, s1), expected)
    assert torch.allclose(gaussian_kl(m0, s0, m0, s0), torch.zeros(4))


def test_normalizer_running_stats_and_freeze() -> None:
    norm = ObsNormalizer(3)
    a, b = torch.randn(50, 3) * 2 + 1, torch.randn(2, 30, 3) - 4
    norm.update(a)
    norm.update(b)
    everything = torch.cat([a, b.reshape(-1, 3)]).double()
    torch.testing.assert_close(norm.mean, everything.mean(0))
    torch.testing.assert_close(norm.var, everything.var(0, unbiased=False))
    norm.frozen = True
    norm.update(torch.randn(10, 3) + 100)
    torch.testing.assert_close(norm.mean, everything.mean(0))
    assert norm(torch.full((1, 3), 1e6)).max() == norm.clip
