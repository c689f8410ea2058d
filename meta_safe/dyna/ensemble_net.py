"""The ensemble's building blocks: input/target standardisation, the batched-weight
MLP of all members, and their mean pairwise KL (the disagreement)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Standardizer(nn.Module):
    """Per-feature ``(x - mean) / std``; features with ``std < 1e-6`` keep ``std = 1``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Set the statistics from ``data [M, dim]`` (``M >= 1``)."""
        self.mean.copy_(data.mean(0))
        std = data.std(0, unbiased=False) if data.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def forward(self, data: Tensor) -> Tensor:
        return (data - self.mean) / self.std

    def inverse(self, data: Tensor) -> Tensor:
        return data * self.std + self.mean


class EnsembleNet(nn.Module):
    """``members`` MLPs with batched weights ``[members, in, out]`` (one ``baddbmm`` per layer).

    Each member outputs the mean and the log-variance of a diagonal Gaussian, the latter
    softly bounded to ``[min_logvar, max_logvar]`` (learned bounds, PETS).
    """

    def __init__(self, members: int, sizes: Sequence[int], generator: torch.Generator) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            # truncated normal with std 1 / (2 sqrt(fan_in)), as PETS / MBPO
            std = 1.0 / (2.0 * math.sqrt(fan_in))
            w = (torch.randn(members, fan_in, fan_out, generator=generator) * std).clamp(
                -2 * std, 2 * std
            )
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))
        out = sizes[-1] // 2
        self.max_logvar = nn.Parameter(torch.full((out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out,), -10.0))

    def forward(self, x: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:param x: ``[K, B, in]`` (or ``[B, in]``, shared by all members).
        :param members: optional index ``[K]`` of the members to run (default: all).
        :return: ``(mean [K, B, out], logvar [K, B, out])``.
        """
        weights = [w if members is None else w[members] for w in self.weights]
        biases = [b if members is None else b[members] for b in self.biases]
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(weights[0].shape[0], *x.shape)
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = nn.functional.silu(h)
        mean, logvar = h.chunk(2, dim=-1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar


def mean_pairwise_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Disagreement of ``K`` diagonal Gaussians: mean over ordered pairs ``i != j`` of
    ``KL(N_i || N_j)`` summed over the output dims (CMBPO's measure).

    KL is invariant to per-dim affine maps, so computing it on standardised targets gives
    the same value as on raw targets. ``K = 1`` gives 0.

    :param mean: ``[K, B, D]``. :param logvar: ``[K, B, D]``. :return: ``[B]`` >= 0.
    """
    k = mean.shape[0]
    if k < 2:
        return torch.zeros(mean.shape[1], dtype=mean.dtype, device=mean.device)
    var = logvar.exp()
    inv_var = (-logvar).exp()
    # KL(i || j) = 0.5 * sum_d [lv_j - lv_i + (var_i + (mu_i - mu_j)^2) / var_j - 1]
    diff2 = (mean.unsqueeze(1) - mean.unsqueeze(0)).pow(2)  # [K(i), K(j), B, D]
    log_ratio = logvar.unsqueeze(0) - logvar.unsqueeze(1)  # lv_j - lv_i
    kl = 0.5 * (log_ratio + (var.unsqueeze(1) + diff2) * inv_var.unsqueeze(0) - 1.0).sum(-1)
    return kl.sum((0, 1)).clamp_min(0.0) / (k * (k - 1))
