"""Per-task linear value functions fitted in closed form (ridge regression).

The inner loop of meta-RL gets a fresh batch per task and per inner step; a
neural critic would need many optimiser steps per batch, whereas a linear
function of hand-made features is fitted exactly in microseconds and is the
standard baseline of MAML-RL (Duan et al. 2016, "Benchmarking deep RL", section
6.1; Finn et al. 2017). Features of an observation ``o`` at episode step ``t``
(horizon ``H``): ``[o, o^2, t/H, (t/H)^2, (t/H)^3, 1]``. The time features make
the value time-aware, so at the time limit the value correctly tends to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.rl.discounting import reverse_discounted_sum


def features(obs: Tensor, timestep: Tensor, horizon: int) -> Tensor:
    """:param obs: ``[..., D]``. :param timestep: ``[...]``. :return: ``[..., 2D + 4]``."""
    o = obs.to(torch.float64).clamp(-10, 10)
    t = (timestep.to(torch.float64) / horizon).unsqueeze(-1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], -1)


def discounted_returns(
    rewards: Tensor, terminated: Tensor, truncated: Tensor, gamma: float
) -> Tensor:
    """Monte-Carlo returns-to-go ``[..., N]``, restarted at every episode end.

    At a time-limit truncation the remaining value is zero for a time-aware value
    function, so no bootstrap is needed; an episode cut by the batch end is
    under-estimated, which only makes the baseline slightly worse (GAE stays unbiased).
    """
    return reverse_discounted_sum(rewards, ~(terminated | truncated), gamma)


def fit_linear_values(
    obs: Tensor, timestep: Tensor, targets: Tensor, horizon: int, ridge: float = 1e-5
) -> Tensor:
    """Least-squares weights per task.

    :param obs: ``[T, E, N, D]``. :param timestep: ``[T, E, N]``. :param targets: ``[T, E, N]``.
    :return: weights ``[T, 2D + 4]``.
    """
    phi = features(obs, timestep, horizon).flatten(1, 2)  # [T, M, F]
    y = targets.to(torch.float64).flatten(1, 2).unsqueeze(-1)  # [T, M, 1]
    gram = phi.transpose(1, 2) @ phi
    rhs = phi.transpose(1, 2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    # Increase the ridge until the system is well posed (features can be collinear).
    reg = ridge
    for _ in range(6):
        try:
            factor = torch.linalg.cholesky(
                gram
                + reg * gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye
                + 1e-10 * eye
            )
            return torch.cholesky_solve(rhs, factor).squeeze(-1)
        except torch.linalg.LinAlgError:
            reg *= 10
    raise RuntimeError(f"linear value fit failed even with ridge {reg:g}: features are degenerate")


def predict_values(weights: Tensor, obs: Tensor, timestep: Tensor, horizon: int) -> Tensor:
    """:param weights: ``[T, F]``. :param obs: ``[T, ..., D]``. :return: ``[T, ...]`` float64."""
    phi = features(obs, timestep, horizon)
    shape = phi.shape
    flat = phi.reshape(shape[0], -1, shape[-1])
    return (flat @ weights.unsqueeze(-1)).reshape(shape[:-1])
