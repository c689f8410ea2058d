"""Fisher-vector products and conjugate gradient: values and derivatives (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from meta_safe.optim.fisher import conjugate_gradient, fisher_matvec, fisher_vector_product
from meta_safe.optim.flat_params import flat_concat, unflatten_like

DTYPE = torch.float64
OBS_DIM, ACT_DIM, BATCH = 3, 2, 16


def _gaussian_params(seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(ACT_DIM, OBS_DIM, generator=gen, dtype=DTYPE),
        "bias": torch.randn(ACT_DIM, generator=gen, dtype=DTYPE),
        "log_std": 0.3 * torch.randn(ACT_DIM, generator=gen, dtype=DTYPE),
    }


def _make_kl_fn(old: dict[str, Tensor], obs: Tensor):
    """Mean KL(pi_old || pi_params) of a linear-Gaussian policy; the old policy is detached."""
    old = {k: v.detach() for k, v in old.items()}

    def dist(params: dict[str, Tensor]) -> torch.distributions.Normal:
        mean = obs @ params["weight"].T + params["bias"]
        return torch.distributions.Normal(mean, params["log_std"].exp())

    def kl_fn(params: dict[str, Tensor]) -> Tensor:
        kl = torch.distributions.kl_divergence(dist(old), dist(params))
        return kl.sum(-1).mean()

    return kl_fn


@pytest.fixture()
def policy():
    params = _gaussian_params(0)
    obs = torch.randn(BATCH, OBS_DIM, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    return params, _make_kl_fn(params, obs)


def _explicit_hessian(kl_fn, params: dict[str, Tensor]) -> Tensor:
    def kl_of_flat(flat: Tensor) -> Tensor:
        return kl_fn(unflatten_like(flat, params))

    return torch.autograd.functional.hessian(kl_of_flat, flat_concat(params))


def test_flat_concat_roundtrip(policy):
    params, _ = policy
    flat = flat_concat(params)
    assert flat.shape == (ACT_DIM * OBS_DIM + 2 * ACT_DIM,)
    back = unflatten_like(flat, params)
    assert list(back) == list(params)
    for name in params:
        torch.testing.assert_close(back[name], params[name])
    with pytest.raises(ValueError, match="flat vector"):
        unflatten_like(flat[:-1], params)


@pytest.mark.parametrize("at_old_policy", [True, False])
def test_fvp_matches_explicit_hessian(policy, at_old_policy):
    params, kl_fn = policy
    if not at_old_policy:  # the product is the KL Hessian anywhere, not only at the old policy
        params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}
    hessian = _explicit_hessian(kl_fn, params)
    damping = 0.1
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        vector = torch.randn(hessian.shape[0], generator=gen, dtype=DTYPE)
        fvp = fisher_vector_product(kl_fn, params, vector, damping=damping)
        torch.testing.assert_close(fvp, hessian @ vector + damping * vector, rtol=1e-10, atol=1e-12)
    assert not fvp.requires_grad  # create_graph=False returns a constant


def test_fvp_is_fisher_at_old_policy(policy):
    """At params == old the KL Hessian is the Fisher matrix E[grad log pi grad log pi^T]."""
    params, kl_fn = policy
    obs = torch.randn(4000, OBS_DIM, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    kl_fn = _make_kl_fn(params, obs)
    hessian = _explicit_hessian(kl_fn, params)
    # Gaussian Fisher w.r.t. (mean, log_std) is diag(1/sigma^2, 2); check the log_std block.
    torch.testing.assert_close(hessian[-ACT_DIM:, -ACT_DIM:], 2 * torch.eye(ACT_DIM, dtype=DTYPE))


def test_fvp_differentiable_wrt_params_and_vector(policy):
    params, kl_fn = policy
    flat0 = flat_concat(params).clone().requires_grad_()
    vector = torch.randn(flat0.shape[0], dtype=DTYPE, requires_grad=True)

    def fvp_of(flat: Tensor, vec: Tensor) -> Tensor:
        return fisher_vector_product(
            kl_fn, unflatten_like(flat, params), vec, 0.05, create_graph=True
        )

    # third derivatives of the KL appear here: exact MAML through the inner step needs them
    assert torch.autograd.gradcheck(fvp_of, (flat0, vector), eps=1e-6, atol=1e-7)


def _spd(n: int, seed: int, cond_shift: float = 0.5) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=gen, dtype=DTYPE)
    return m @ m.T / n + cond_shift * torch.eye(n, dtype=DTYPE)


def test_cg_solves_spd_system():
    a = _spd(20, 4)
    b = torch.randn(20, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    x = conjugate_gradient(lambda v: a @ v, b, iters=60, residual_tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert (a @ x - b).norm() < 1e-10


def test_cg_early_exit_equals_masked_and_vmaps():
    a = _spd(6, 6)
    bs = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
    exact = torch.linalg.solve(a, bs.T).T
    early = torch.stack([conjugate_gradient(lambda v: a @ v, b, iters=20) for b in bs])
    masked = torch.func.vmap(
        lambda b: conjugate_gradient(lambda v: a @ v, b, iters=20, early_exit=False)
    )(bs)
    torch.testing.assert_close(early, exact, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(masked, exact, rtol=1e-8, atol=1e-9)


def test_cg_zero_rhs_has_finite_gradient():
    m = torch.randn(4, 4, dtype=DTYPE, requires_grad=True)
    b = torch.zeros(4, dtype=DTYPE, requires_grad=True)
    x = conjugate_gradient(lambda v: (m @ m.T + torch.eye(4, dtype=DTYPE)) @ v, b, iters=5)
    assert torch.equal(x, torch.zeros_like(x))
    x.sum().backward()  # no iteration ran (already converged): still differentiable, no NaN
    assert torch.isfinite(b.grad).all()
    assert m.grad is None or torch.isfinite(m.grad).all()


def test_cg_gradient_wrt_rhs_and_matrix():
    n = 5
    m0 = torch.randn(n, n, generator=torch.Generator().manual_seed(8), dtype=DTYPE)
    b0 = torch.randn(n, generator=torch.Generator().manual_seed(9), dtype=DTYPE)

    def solve(m: Tensor, b: Tensor) -> Tensor:
        def matvec(v: Tensor) -> Tensor:  # param-dependent SPD operator, as a FVP would be
            return m @ (m.T @ v) / n + 0.5 * v

        # n iterations solve an n x n system exactly (up to round-off); more are frozen
        return conjugate_gradient(matvec, b, iters=n + 3, residual_tol=1e-26)

    m, b = m0.clone().requires_grad_(), b0.clone().requires_grad_()
    assert torch.autograd.gradcheck(solve, (m, b), eps=1e-6, atol=1e-6, rtol=1e-5)
    # and the gradient is that of the exact solve A(m)^-1 b
    jac_cg = torch.autograd.functional.jacobian(solve, (m0, b0))
    jac_exact = torch.autograd.functional.jacobian(
        lambda m, b: torch.linalg.solve(m @ m.T / n + 0.5 * torch.eye(n, dtype=DTYPE), b),
        (m0, b0),
    )
    for got, want in zip(jac_cg, jac_exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


def test_cg_with_fvp_recovers_natural_gradient(policy):
    params, kl_fn = policy
    damping = 0.1
    hessian = _explicit_hessian(kl_fn, params) + damping * torch.eye(10, dtype=DTYPE)
    g = torch.randn(10, generator=torch.Generator().manual_seed(10), dtype=DTYPE)
    x = conjugate_gradient(
        lambda v: fisher_vector_product(kl_fn, params, v, damping), g, iters=30, residual_tol=1e-22
    )
    torch.testing.assert_close(x, torch.linalg.solve(hessian, g), rtol=1e-8, atol=1e-9)


def test_batched_cg_and_fisher_matvec_match_one_system_at_a_time() -> None:
    """[K, P] right-hand sides (one vmapped Fisher product per CG step) = K separate solves."""
    torch.manual_seed(3)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    obs = torch.randn(32, 4, dtype=torch.float64)
    old = (obs @ weight.T).detach()

    def kl_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * ((obs @ p["w"].T - old) ** 2).sum(-1).mean()

    params = {"w": weight}
    rhs = torch.randn(2, 12, dtype=torch.float64)
    matvec = fisher_matvec(kl_fn, params, damping=0.1, create_graph=True)
    batched = conjugate_gradient(matvec, rhs, iters=12)
    for k in range(2):
        single = conjugate_gradient(matvec, rhs[k], iters=12)
        torch.testing.assert_close(batched[k], single, rtol=1e-10, atol=1e-12)
        expected = fisher_vector_product(kl_fn, params, rhs[k], 0.1)
        torch.testing.assert_close(matvec(rhs)[k], expected)
    # still differentiable with respect to the parameters the Fisher depends on
    (grad,) = torch.autograd.grad(batched.sum(), [weight])
    assert torch.isfinite(grad).all()
