"""Natural-gradient directions ``H^-1 v`` and the trust-region scale (TRPO, CPO).

``H`` is the Fisher matrix of the Gaussian policy at the given parameters: the analytic
Gauss-Newton product for the MLP policy (:mod:`meta_safe.optim.gauss_newton`), or the
Hessian of the KL by reverse-over-reverse for any other policy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from meta_safe.optim.fisher import conjugate_gradient, fisher_matvec
from meta_safe.optim.gauss_newton import gaussian_fisher_matvec, mlp_layout
from meta_safe.rl.policy import GaussianPolicy, Params, gaussian_kl
from meta_safe.rl.surrogate import PolicyData


def natural_directions(
    policy: GaussianPolicy,
    params: Params,
    data: PolicyData,
    vectors: list[Tensor],
    damping: float,
    cg_iters: int,
    create_graph: bool,
    fisher_stride: int = 1,
) -> list[Tensor]:
    """``H^-1 v`` for each ``v`` ``[P]``; ``H`` is the Fisher of the policy at ``params``.

    ``fisher_stride = k`` averages the Fisher over every ``k``-th sample of the batch only
    (the gradients ``v`` still use every sample): the usual TRPO economy (OpenAI
    baselines' TRPO estimates Fisher-vector products on every 5th sample, OmniSafe's CPO
    on every 4th), ``k`` times fewer operations in every conjugate-gradient product and
    in its part of the meta-gradient.

    All right-hand sides are solved as one batched conjugate gradient. The Fisher
    operator is the analytic Gauss-Newton product of :mod:`meta_safe.optim.gauss_newton` for
    the Gaussian MLP policy, or, for any other policy, the KL Hessian by
    reverse-over-reverse (:func:`kl_hessian_matvec`). With ``create_graph`` the products
    stay in the autograd graph, so the meta-gradient sees ``H``'s whole dependence on
    ``theta`` (checked against finite differences in the tests).
    """
    obs = data.obs[:: check_fisher_stride(fisher_stride)]
    layout = mlp_layout(policy, params)
    if layout is not None:
        point = params if create_graph else {k: v.detach() for k, v in params.items()}
        matvec = gaussian_fisher_matvec(layout, point, obs, damping)
    else:
        matvec = kl_hessian_matvec(policy, params, obs, damping, create_graph)
    solutions = conjugate_gradient(matvec, torch.stack(vectors), iters=cg_iters)
    return list(solutions.unbind(0))


def trust_region_scale(v: Tensor, h_inv_v: Tensor, trust_radius: float | Tensor) -> Tensor:
    """``sqrt(2 delta / v^T H^-1 v)`` over the last dimension: the factor that makes
    ``H^-1 v`` a step of quadratic KL ``0.5 x^T H x = delta`` (Schulman et al. 2015,
    appendix C). ``v, h_inv_v`` ``[..., P]`` -> ``[...]``."""
    return torch.sqrt(2 * trust_radius / (v * h_inv_v).sum(-1).clamp_min(1e-12))


def kl_hessian_matvec(
    policy: GaussianPolicy, params: Params, obs: Tensor, damping: float, create_graph: bool
) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with ``H`` the Hessian of the KL averaged over ``obs [N, D]``
    (any policy).

    ``H(theta)`` is the Hessian in ``p`` of ``KL(pi_theta || pi_p)`` at ``p = theta``, so it
    depends on ``theta`` through *both* arguments. With ``create_graph`` the reference stays
    in the graph and the Hessian is taken at a fresh node ``point`` (same values): autograd
    w.r.t. ``point`` gives ``H``, and the meta-gradient sees all of ``H``'s dependence on
    ``theta`` (a detached reference drops part of it).
    """
    if create_graph:
        point = {k: v.view_as(v) for k, v in params.items()}
        old_mean, old_std = policy.distribution(params, obs)
    else:
        point = params
        with torch.no_grad():
            old_mean, old_std = policy.distribution({k: v.detach() for k, v in params.items()}, obs)

    def kl_fn(p: Params) -> Tensor:
        mean, std = policy.distribution(p, obs)
        return gaussian_kl(old_mean, old_std, mean, std).mean()

    return fisher_matvec(kl_fn, point, damping, create_graph=create_graph)


def check_fisher_stride(fisher_stride: int) -> int:
    """Validate a rule's ``fisher_stride`` (every k-th sample estimates the Fisher)."""
    if isinstance(fisher_stride, bool) or int(fisher_stride) != fisher_stride or fisher_stride < 1:
        raise ValueError(f"fisher_stride={fisher_stride!r} is invalid: must be an integer >= 1")
    return int(fisher_stride)
