"""The one inner-update interface and the gradient tools every rule shares.

An inner update is a pure function of ``(params, state, data)``::

    new_params, new_state, metrics = rule.step(policy, params, state, data, ctx)

with one parameter dict per task. It never mutates its inputs, so the outer loop
can differentiate ``new_params`` with respect to the meta-parameters (the initial
policy and, for learned rules, the rule's own ``nn.Parameter`` s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meta_safe.optim.fisher import conjugate_gradient, fisher_matvec
from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.optim.gauss_newton import gaussian_fisher_matvec, mlp_layout
from meta_safe.rl.policy import GaussianPolicy, Params, gaussian_kl
from meta_safe.rl.surrogate import PolicyData, surrogates

State = dict[str, Tensor]


@dataclass(frozen=True)
class InnerContext:
    """What an inner step needs besides parameters and data.

    :param cost_limit: per-episode cost limit ``d``.
    :param create_graph: keep the graph for second-order meta-gradients (False: first order).
    """

    cost_limit: float
    create_graph: bool = True


class MetaOptimizer(nn.Module):
    """Base class of inner update rules; learnable rules register ``nn.Parameter`` s."""

    #: Whether the rule has meta-parameters of its own (updated by the outer optimiser).
    learnable: bool = False

    def init_state(self, num_tasks: int, dtype: torch.dtype = torch.float32) -> State:
        """Optimizer state at the start of an adaptation (e.g. multipliers), per task."""
        return {}

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        """One inner update for every task. :return: new params, new state, metrics ``[T]``."""
        raise NotImplementedError


def task_gradients(
    policy: GaussianPolicy, params: Params, data: PolicyData, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Flat gradients ``(g, b)`` ``[P]`` of the reward and cost surrogates at ``params``."""
    reward, cost = surrogates(policy, params, data)
    values = list(params.values())
    g = torch.autograd.grad(reward, values, create_graph=create_graph, retain_graph=True)
    b = torch.autograd.grad(cost, values, create_graph=create_graph)
    return flat_concat(dict(zip(params, g, strict=True))), flat_concat(
        dict(zip(params, b, strict=True))
    )


def stacked_task_gradients(
    policy: GaussianPolicy, params: list[Params], data: list[PolicyData], create_graph: bool
) -> tuple[Tensor, Tensor]:
    """:func:`task_gradients` of every task, stacked: ``(g [T, P], b [T, P])``."""
    pairs = [task_gradients(policy, p, d, create_graph) for p, d in zip(params, data, strict=True)]
    return torch.stack([g for g, _ in pairs]), torch.stack([b for _, b in pairs])


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
    ``theta`` (checked against finite differences in ``tests/test_meta_optimizers.py``).
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


def primal_dual_direction(
    g: Tensor,
    b: Tensor,
    lam: Tensor,
    eta_reward: Tensor | float = 1.0,
    eta_cost: Tensor | float = 1.0,
) -> Tensor:
    """``(eta_R g - lambda eta_C b) / (1 + lambda)`` (Stooke et al.'s normalisation: a large
    multiplier turns the step towards the cost direction without lengthening it).

    :param g, b: ``[..., P]``. :param lam: ``[...]`` multipliers (``>= 0``).
    """
    lam = lam.unsqueeze(-1)
    return (eta_reward * g - lam * eta_cost * b) / (1.0 + lam)


#: Added under the square root of the RMS: keeps the normalisation smooth (and finite
#: to differentiate) at a vanishing gradient, where the normalised step then vanishes too.
RMS_EPS = 1e-12


def rms_normalize(v: Tensor, eps: float = RMS_EPS) -> Tensor:
    """``v / sqrt(mean(v^2) + eps)`` over the last dimension ``[..., P]``.

    RMS rather than the Euclidean norm: each coordinate then moves by about ``eta`` per
    step whatever ``P`` is (the step-size semantics of Adam), so one learning rate suits
    policies of different widths, and reward and cost gradients (whose raw scales differ
    by the horizon and advantage normalisation) enter with equal weight, leaving the
    trade-off to ``lambda``. The scale is *not* detached: the meta-gradient is exact for
    the function computed, including the normalisation's dependence on ``theta``.
    """
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)


#: How the learned rules (pid, lstm) turn the surrogate gradients ``g, b`` into step
#: directions: ``natural`` (each a natural-gradient step of KL ``trust_radius``),
#: ``rms`` (each divided by its root-mean-square over coordinates), ``raw`` (unchanged).
DIRECTIONS = ("natural", "rms", "raw")


@dataclass(frozen=True)
class StepDirections:
    """The learned rules' step directions ``(g_hat, b_hat)`` from ``(g, b)`` (see
    :data:`DIRECTIONS`; the trust-region fields are used by ``natural`` only).

    ``natural``: per task, ``v_hat = sqrt(2 delta / v^T H^-1 v) H^-1 v``, the
    natural-gradient step along ``v`` whose quadratic KL ``0.5 v_hat^T H v_hat`` equals
    ``delta = trust_radius`` (``H``: the task's Fisher, :func:`natural_directions`), so a
    unit step size means one TRPO step whatever the policy's size or the gradients'
    scale. Differentiable (in the graph) when ``create_graph``.
    """

    kind: str = "natural"
    trust_radius: float = 0.01
    damping: float = 0.1
    cg_iters: int = 10
    fisher_stride: int = 5

    def __post_init__(self) -> None:
        if self.kind not in DIRECTIONS:
            raise ValueError(
                f"directions={self.kind!r} is invalid: valid choices are {list(DIRECTIONS)}"
            )
        if not self.trust_radius > 0:
            raise ValueError(f"trust_radius={self.trust_radius} is invalid: must be > 0")
        check_fisher_stride(self.fisher_stride)

    def __call__(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        data: list[PolicyData],
        g: Tensor,
        b: Tensor,
        create_graph: bool,
    ) -> tuple[Tensor, Tensor]:
        """:param g, b: ``[T, P]`` surrogate gradients. :return: ``(g_hat, b_hat)`` ``[T, P]``."""
        if self.kind == "rms":
            return rms_normalize(g), rms_normalize(b)
        if self.kind == "raw":
            return g, b
        g_hat, b_hat = [], []
        delta = self.trust_radius
        for p, d, g_t, b_t in zip(params, data, g, b, strict=True):
            hg, hb = natural_directions(
                policy,
                p,
                d,
                [g_t, b_t],
                self.damping,
                self.cg_iters,
                create_graph,
                self.fisher_stride,
            )
            g_hat.append(trust_region_scale(g_t, hg, delta) * hg)
            b_hat.append(trust_region_scale(b_t, hb, delta) * hb)
        return torch.stack(g_hat), torch.stack(b_hat)


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


def add_flat(params: Params, flat_step: Tensor) -> Params:
    """A new dict ``params + step`` (``flat_step [P]``); the inputs are not modified."""
    step = unflatten_like(flat_step, params)
    return {k: v + step[k] for k, v in params.items()}


def constraint_margin(data: list[PolicyData], cost_limit: float) -> Tensor:
    """``J_C - d`` per task ``[T]`` (``> 0``: violating), from the batch's episode costs."""
    return torch.stack([d.episode_cost.detach() for d in data]) - cost_limit
