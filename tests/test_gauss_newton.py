"""The analytic Fisher operator equals the KL Hessian, in value and in derivatives."""

import pytest
import torch
from torch import nn

from meta_safe.optim.gauss_newton import gaussian_fisher_matvec, mlp_layout
from meta_safe.optim.natural import kl_hessian_matvec
from meta_safe.rl.policy import GaussianPolicy


def perturbed_policy(activation: str, seed: int = 0):
    torch.manual_seed(seed)
    policy = GaussianPolicy(5, 2, [7, 6], activation, -0.3).double()
    params = {
        k: (v.detach() + 0.2 * torch.randn_like(v)).requires_grad_()
        for k, v in policy.init_params().items()
    }
    obs = torch.randn(40, 5, dtype=torch.float64)
    return policy, params, obs


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_products_match_the_kl_hessian(activation: str) -> None:
    policy, params, obs = perturbed_policy(activation)
    size = sum(v.numel() for v in params.values())
    vectors = torch.randn(3, size, dtype=torch.float64)
    reference = kl_hessian_matvec(policy, params, obs, 0.1, create_graph=True)
    analytic = gaussian_fisher_matvec(mlp_layout(policy, params), params, obs, 0.1)
    torch.testing.assert_close(analytic(vectors), reference(vectors), rtol=1e-10, atol=1e-12)
    # A single vector gives the same as the batch's first row.
    torch.testing.assert_close(analytic(vectors[0]), analytic(vectors)[0])


@pytest.mark.parametrize("activation", ["tanh", "elu"])
def test_derivatives_match_the_kl_hessian(activation: str) -> None:
    """d/dtheta <u, F(theta) v(theta)>: the meta-gradient sees F's whole dependence on theta."""
    policy, params, obs = perturbed_policy(activation, seed=1)
    size = sum(v.numel() for v in params.values())
    weights = torch.randn(size, dtype=torch.float64)
    probe = torch.randn(size, dtype=torch.float64)
    values = list(params.values())

    def derivative(matvec_of) -> list[torch.Tensor]:
        # v depends on theta too, as CG directions do inside an inner step.
        direction = weights * torch.cat([v.reshape(-1) for v in values]).sin()
        product = matvec_of(params)(direction)
        grads = torch.autograd.grad((product * probe).sum(), values, allow_unused=True)
        return [torch.zeros_like(v) if g is None else g for v, g in zip(values, grads, strict=True)]

    reference = derivative(lambda p: kl_hessian_matvec(policy, p, obs, 0.1, create_graph=True))
    layout = mlp_layout(policy, params)
    analytic = derivative(lambda p: gaussian_fisher_matvec(layout, p, obs, 0.1))
    for a, r in zip(analytic, reference, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)
    assert max(float(r.abs().max()) for r in reference) > 1e-3  # not a trivial comparison


def test_fisher_is_positive_definite_and_rejects_bad_shapes() -> None:
    policy, params, obs = perturbed_policy("tanh", seed=2)
    layout = mlp_layout(policy, params)
    matvec = gaussian_fisher_matvec(layout, params, obs, 0.0)
    size = sum(v.numel() for v in params.values())
    vectors = torch.randn(5, size, dtype=torch.float64)
    assert bool(((matvec(vectors) * vectors).sum(-1) >= 0).all())
    with pytest.raises(ValueError, match=f"shape \\[{size}\\]"):
        matvec(torch.randn(size + 1, dtype=torch.float64))


def test_layout_refuses_policies_it_cannot_differentiate_analytically() -> None:
    policy = GaussianPolicy(4, 2, [8], "tanh", 0.0)
    params = policy.init_params()
    assert mlp_layout(policy, params) is not None
    policy.mean_net.insert(1, nn.LayerNorm(8))
    assert mlp_layout(policy, policy.init_params()) is None


def test_fisher_stride_uses_every_kth_sample_and_rejects_bad_values() -> None:
    from dataclasses import replace

    from meta_safe.meta_optimizers.trpo import TRPO
    from meta_safe.optim.natural import natural_directions
    from meta_safe.rl.surrogate import PolicyData

    policy, params, obs = perturbed_policy("tanh", seed=3)
    n = obs.shape[0]
    data = PolicyData(
        obs,
        obs[:, :2],
        torch.zeros(n),
        torch.zeros(n),
        torch.zeros(n),
        torch.tensor(0.0),
        torch.tensor(0.0),
        horizon=500,
    )
    size = sum(v.numel() for v in params.values())
    rhs = [torch.randn(size, dtype=torch.float64)]
    strided = natural_directions(policy, params, data, rhs, 0.1, 50, False, fisher_stride=3)
    subsampled = natural_directions(
        policy, params, replace(data, obs=obs[::3]), rhs, 0.1, 50, False
    )
    full = natural_directions(policy, params, data, rhs, 0.1, 50, False)
    torch.testing.assert_close(strided[0], subsampled[0])
    assert not torch.allclose(strided[0], full[0])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"fisher_stride={bad!r} is invalid"):
            TRPO(fisher_stride=bad)
