"""Gaussian MLP policy, value critics and observation normalisation.

The policy's parameters live in a plain ``dict[str, Tensor]`` and every policy
function takes them explicitly (``torch.func.functional_call``), so inner
updates produce *new* dicts and never alias or mutate the meta-parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def mlp(sizes: Sequence[int], activation: str = "tanh", output_gain: float = 1.0) -> nn.Sequential:
    """MLP with orthogonal init; no activation after the last layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is unknown: valid choices are {list(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=output_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian policy with a state-independent log standard deviation.

    Use it functionally: ``params = policy.init_params()``, then
    ``policy.distribution(params, obs)``; the module's own parameters are only
    the template for shapes and initial values.

    :param obs_dim: observation size. :param act_dim: action size.
    :param hidden: hidden layer sizes (Meta-CPO uses ``(24, 12)``).
    :param log_std_init: initial log standard deviation of every action dimension.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = -0.5,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean_net = mlp([obs_dim, *hidden, act_dim], activation, output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def init_params(self) -> Params:
        """A fresh, detached copy of the initial parameters (leaf tensors)."""
        return {k: v.detach().clone() for k, v in self.named_parameters()}

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """:param obs: ``[..., obs_dim]``. :return: ``(mean [..., act_dim], log_std [act_dim])``."""
        return self.mean_net(obs), self.log_std

    def distribution(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``[..., act_dim]`` and std ``[act_dim]`` under ``params``."""
        mean, log_std = functional_call(self, params, (obs,))
        return mean, log_std.exp()

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """Log-density of ``actions [..., act_dim]`` at ``obs [..., obs_dim]``; ``[...]``."""
        mean, std = self.distribution(params, obs)
        return gaussian_log_prob(mean, std, actions)


def gaussian_log_prob(mean: Tensor, std: Tensor, actions: Tensor) -> Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension."""
    z = (actions - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(old_mean: Tensor, old_std: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``KL(old || new)`` of diagonal Gaussians, summed over the last dimension. ``[...]``."""
    var_ratio = (old_std / std).pow(2)
    return 0.5 * (var_ratio + ((mean - old_mean) / std).pow(2) - 1.0 - var_ratio.log()).sum(-1)


class ObsNormalizer(nn.Module):
    """Running mean/std observation normaliser (Welford), clipped, freezable.

    Frozen during inner loops so that every inner step and the meta-gradient see
    one fixed input transformation; updated between meta-iterations.
    """

    def __init__(self, obs_dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(obs_dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.frozen = False

    @contextmanager
    def frozen_statistics(self) -> Iterator[ObsNormalizer]:
        """Within the block, collections leave the statistics unchanged (restored on exit,
        also on an exception)."""
        previous, self.frozen = self.frozen, True
        try:
            yield self
        finally:
            self.frozen = previous

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        """Add a batch ``[..., obs_dim]`` to the running statistics (no-op when frozen)."""
        if self.frozen:
            return
        flat = obs.reshape(-1, obs.shape[-1]).to(torch.float64)
        n = flat.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var = (
            self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        ) / total
        self.count = total

    def forward(self, obs: Tensor) -> Tensor:
        """Normalise ``obs [..., obs_dim]`` with the current statistics."""
        return self.affine(obs.dtype)(obs)

    def statistics(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(mean, std)``, each ``[obs_dim]`` in ``dtype``: what :meth:`affine` applies."""
        return self.mean.to(dtype), (self.var + self.eps).sqrt().to(dtype)

    def affine(self, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
        """The normalisation with the current statistics, converted to ``dtype`` once:
        for loops that normalise many observations before the next :meth:`update`."""
        mean, std = self.statistics(dtype)
        clip = self.clip

        def normalize(obs: Tensor) -> Tensor:
            return ((obs - mean) / std).clamp(-clip, clip)

        return normalize
