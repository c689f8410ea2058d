"""Fisher-vector products and a differentiable conjugate-gradient solver.

Used by the CPO inner step (Achiam et al. 2017, "Constrained Policy Optimization",
sections 6.1 and appendix 10.2; the TRPO machinery of Schulman et al. 2015,
appendix C): the Fisher matrix ``H`` is never formed, only products ``H v``,
and ``H^-1 g`` / ``H^-1 b`` come from a few conjugate-gradient iterations.

Everything here is a pure function of tensors, so an exact MAML meta-gradient can
differentiate through the whole inner step (``create_graph=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from meta_safe.optim.flat_params import flat_concat, unflatten_like

__all__ = [
    "conjugate_gradient",
    "fisher_matvec",
    "fisher_vector_product",
    "flat_concat",
    "unflatten_like",
]


def fisher_vector_product(
    kl_fn: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    vector: Tensor,
    damping: float,
    create_graph: bool = False,
) -> Tensor:
    """Damped Fisher-vector product ``(H + damping * I) v`` with ``H`` the Hessian of the KL.

    ``kl_fn(params)`` must return the mean KL divergence between a *detached* old policy
    and the policy at ``params``; at ``params == old`` its Hessian is the Fisher
    information matrix (Schulman et al. 2015, appendix C.1), and its gradient is zero,
    so only second-order terms contribute.

    Implementation: reverse-over-reverse (Pearlmutter's trick): ``H v = d/dθ (∇KL(θ)·v)``.
    Chosen over forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``) because
    it works for any ``kl_fn`` that ordinary autograd supports (no forward-mode formula
    or functorch-compatibility requirement, distributions and in-place ops inside the
    policy are fine), it composes with an outer ``torch.autograd.grad`` exactly as the
    MAML outer loop needs, and for the small policies here (P ~ 1e3-1e4) its cost,
    about two backward passes, is not the bottleneck.

    :param kl_fn: ``dict[str, Tensor] -> scalar`` mean KL (old policy detached inside).
    :param params: policy parameters at which the Hessian is taken; tensors that do not
        require grad are treated as fresh leaves (the result then depends on them only
        through ``vector``).
    :param vector: ``[P]`` flat vector in :func:`flat_concat` order of ``params``.
    :param damping: added multiple of the identity (Tikhonov damping, keeps CG stable).
    :param create_graph: keep the graph so the result can be differentiated with respect
        to ``params`` and ``vector`` (exact meta-gradients, third-order terms included).
    :return: ``[P]`` damped Fisher-vector product.
    """
    return fisher_matvec(kl_fn, params, damping, create_graph)(vector)


def fisher_matvec(
    kl_fn: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    damping: float,
    create_graph: bool = False,
) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with the KL gradient computed once and reused.

    Conjugate gradient calls the product ~10 times at the same ``params``: building the
    KL and its (graph-carrying) gradient once saves two passes per call and, with
    ``create_graph``, keeps one copy of that graph instead of one per call.
    The returned function takes ``v [P]`` or a batch ``V [K, P]`` (``K`` products in one
    vmapped backward pass, ``is_grads_batched``).
    """
    names = list(params)
    tensors = [
        params[n] if params[n].requires_grad else params[n].detach().requires_grad_() for n in names
    ]
    expected = sum(t.numel() for t in tensors)
    with torch.enable_grad():
        kl = kl_fn(dict(zip(names, tensors, strict=True)))
        if kl.dim() != 0:
            raise ValueError(f"kl_fn must return a scalar, got shape {tuple(kl.shape)}")
        # create_graph=True on the first pass is always needed: the second pass
        # differentiates this gradient.
        grads = torch.autograd.grad(kl, tensors, create_graph=True, allow_unused=True)
        flat_grad = torch.cat(
            [
                torch.zeros_like(t).reshape(-1) if g is None else g.reshape(-1)
                for g, t in zip(grads, tensors, strict=True)
            ]
        )

    def matvec(vector: Tensor) -> Tensor:
        if vector.dim() not in (1, 2) or vector.shape[-1] != expected:
            raise ValueError(
                f"fisher_vector_product: vector must have shape [{expected}] or [K, {expected}], "
                f"got {tuple(vector.shape)}"
            )
        if not flat_grad.requires_grad:  # KL does not depend on params (constant policy): H = 0
            return damping * vector
        batched = vector.dim() == 2
        with torch.enable_grad():
            # H v as the vector-Jacobian product of the KL gradient with grad_outputs=v,
            # NOT as d(grad . v)/d theta: when v itself depends on theta (CG directions
            # built with create_graph=True), the latter would also backpropagate through
            # v's history (every earlier CG iteration, exponential cost) and add the term
            # grad_KL^T dv/dtheta, which does not belong to H v. With grad_outputs, v is a
            # constant of this backward pass, yet the result stays differentiable in v.
            hvp = torch.autograd.grad(
                flat_grad,
                tensors,
                grad_outputs=vector,
                retain_graph=True,
                create_graph=create_graph,
                allow_unused=True,
                is_grads_batched=batched,
            )
        lead = (vector.shape[0],) if batched else ()
        flat_hvp = torch.cat(
            [
                torch.zeros(*lead, t.numel(), dtype=vector.dtype, device=vector.device)
                if h is None
                else h.reshape(*lead, -1)
                for h, t in zip(hvp, tensors, strict=True)
            ],
            dim=-1,
        )
        return flat_hvp + damping * vector

    return matvec


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
    early_exit: bool = True,
) -> Tensor:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    Differentiable: every update is out-of-place, and convergence is handled by
    *freezing* the iterate (step sizes set to zero with ``torch.where`` once
    ``||r||^2 <= residual_tol``) rather than by data-dependent arithmetic, so autograd
    (to any order, if ``matvec`` is) differentiates exactly the function computed.
    Converged lanes never divide by a vanishing ``p^T A p`` (safe denominators), so no
    NaN leaks into gradients.

    :param matvec: ``[P] -> [P]`` product with an SPD matrix (e.g. a damped
        :func:`fisher_vector_product`); may depend on tensors requiring grad.
    :param b: ``[P]`` right-hand side.
    :param iters: maximum number of CG iterations (= matvec calls).
    :param residual_tol: convergence threshold on the *squared* residual norm
        ``||b - A x||^2`` (the convention of the TRPO/CPO reference implementations).
    :param early_exit: stop the Python loop once converged, saving matvecs. This reads
        one scalar per iteration (a host sync, harmless for autograd) but is not
        ``torch.func.vmap``-compatible; pass ``False`` under ``vmap`` to always run
        ``iters`` masked iterations.
    :return: ``[P]`` approximate solution ``A^-1 b``.
    """
    if b.dim() not in (1, 2):
        raise ValueError(
            f"conjugate_gradient: b must be [P] or a batch of systems [K, P], got {tuple(b.shape)}"
        )
    # 0 * b rather than zeros_like: the result stays connected to b's graph even when no
    # iteration runs (b ~ 0), so callers can always backpropagate through it.
    x = 0.0 * b
    residual = b
    direction = b

    # Row-wise dot products: each row of a [K, P] batch is an independent system.
    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(-1, keepdim=True)

    res_sq = dot(residual, residual)
    one = torch.ones((), dtype=b.dtype, device=b.device)
    for _ in range(iters):
        if early_exit and bool((res_sq <= residual_tol).all()):
            break
        active = res_sq > residual_tol
        a_dir = matvec(direction)
        curvature = dot(direction, a_dir)
        alpha = torch.where(active, res_sq / torch.where(active, curvature, one), 0.0)
        x = x + alpha * direction
        residual = residual - alpha * a_dir
        new_res_sq = dot(residual, residual)
        beta = torch.where(active, new_res_sq / torch.where(active, res_sq, one), 0.0)
        direction = residual + beta * direction
        res_sq = torch.where(active, new_res_sq, res_sq)
    return x
