"""Generalised advantage estimation (Schulman et al. 2016) for reward and cost.

Episode ends are handled the way the reference code did not:

* ``terminated``: the episode really ended; no bootstrap (``V(s') = 0``).
* ``truncated``: time limit; bootstrap from ``V(s')`` of the *final* observation.
* batch end without either: bootstrap from ``V(s')`` and stop the recursion.

Either end cuts the GAE recursion, so advantages never leak across episodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.rl.discounting import reverse_discounted_sum


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and value targets along the last (time) dimension.

    :param rewards: ``[..., N]`` per-step rewards (or costs).
    :param values: ``[..., N]`` ``V(s_t)``.
    :param next_values: ``[..., N]`` ``V(s_{t+1})`` where ``s_{t+1}`` is the final
        observation when the episode ended at ``t``.
    :param terminated: ``[..., N]`` bool. :param truncated: ``[..., N]`` bool.
    :return: ``(advantages [..., N], returns [..., N])`` with ``returns = advantages + values``.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma={gamma}, lam={lam} are invalid: both must lie in [0, 1]")
    not_terminated = (~terminated).to(values.dtype)
    continues = (~(terminated | truncated)).to(values.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    # At the batch end (t = N-1) the recursion starts from zero: bootstrap via delta only.
    advantages = reverse_discounted_sum(deltas, continues, gamma * lam).to(values.dtype)
    return advantages, advantages + values


def discounted_episode_cost(
    costs: Tensor, terminated: Tensor, truncated: Tensor, gamma: float
) -> Tensor:
    """Mean discounted cost ``sum_t gamma^t c_t`` of the completed episodes in a batch.

    :param costs: ``[..., E, N]``. :return: ``[...]`` (NaN where no episode completed).
    """
    done = terminated | truncated
    discount = torch.ones_like(costs[..., 0])
    running = torch.zeros_like(costs[..., 0])
    total = torch.zeros_like(costs[..., 0])
    count = torch.zeros_like(costs[..., 0])
    for t in range(costs.shape[-1]):
        running = running + discount * costs[..., t]
        discount = discount * gamma
        ended = done[..., t].to(costs.dtype)
        total = total + ended * running
        count = count + ended
        running = running * (1 - ended)
        discount = torch.where(done[..., t], torch.ones_like(discount), discount)
    episodes = count.sum(-1)
    return torch.where(episodes > 0, total.sum(-1) / episodes.clamp_min(1), torch.nan)
