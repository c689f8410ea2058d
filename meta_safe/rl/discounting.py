"""Discounted sums to go, the recursion behind returns and GAE, without a Python loop.

``y_t = x_t + c * k_t * y_{t+1}`` along the last dimension (``y`` is zero past the end),
with a constant ``c`` and ``k_t`` in {0, 1} (0 where an episode ends at ``t``). Between
two cuts this is ``y_t = c^-t * sum_{j=t..e} c^j x_j``: two reverse cumulative sums over
the whole batch instead of one small kernel per time step. Every term of a suffix sum is
at most ``c^t`` times the largest ``|x|``, so after the rescaling by ``c^-t`` the error
stays near float64 precision; where ``c^N`` would underflow the loop runs instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Below this ``c^(N-1)`` the closed form is not used (float64 keeps ~1e-308).
SMALLEST_WEIGHT: float = 1e-200


def reverse_discounted_sum(values: Tensor, continues: Tensor, discount: float) -> Tensor:
    """``y_t = values_t + discount * continues_t * y_{t+1}`` along the last dimension.

    :param values: ``[..., N]``. :param continues: ``[..., N]`` 0/1 (bool or float): 0 cuts
        the sum after ``t``. :param discount: ``c`` in [0, 1].
    :return: ``[..., N]`` in float64.
    """
    x = values.to(torch.float64)
    keep = continues.to(torch.float64)
    n = x.shape[-1]
    if n == 0:
        return x.clone()
    if discount <= 0.0 or discount ** (n - 1) < SMALLEST_WEIGHT:
        return _loop(x, keep, discount)
    steps = torch.arange(n, device=x.device)
    weights = torch.as_tensor(discount, dtype=torch.float64, device=x.device) ** steps.double()
    suffix = torch.flip(torch.cumsum(torch.flip(weights * x, [-1]), -1), [-1])  # sum_{j>=t}
    # end_t: the first cut at or after t (n if none); the sum stops there
    cut_index = torch.where(keep > 0, n, steps.expand_as(keep))
    end = torch.flip(torch.cummin(torch.flip(cut_index, [-1]), -1).values, [-1])
    padded = torch.cat([suffix, suffix.new_zeros((*suffix.shape[:-1], 2))], -1)  # at n, n+1: 0
    return (suffix - padded.gather(-1, end + 1)) / weights


def _loop(x: Tensor, keep: Tensor, discount: float) -> Tensor:
    """The recursion step by step (float64 in, float64 out)."""
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1] - 1, -1, -1):
        running = x[..., t] + discount * keep[..., t] * running
        out[..., t] = running
    return out
