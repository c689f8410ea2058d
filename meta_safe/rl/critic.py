"""A persistent neural value function, for training that runs over many batches.

The per-batch linear values of :mod:`meta_safe.rl.value_baseline` forget everything
between batches. For the cost that matters: cost on the circle task is 0 until the
agent crosses a wall, so a batch from a nearly safe policy holds few cost events and
the linearised constraint cannot see the walls; CPO then steps straight through
them (measured in the README). A critic that keeps learning across batches
remembers which states led to crossings and turns the sparse cost into a dense
advantage signal near the walls, the job of the "cost shaping" of Achiam et al.
(2017, section 6.2), learned instead of hand-made.

It regresses Monte-Carlo returns-to-go on the same time-aware features as the
linear baseline, with a few epochs of Adam per batch, reproducibly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from meta_safe.device import seeded_generator
from meta_safe.rl.value_baseline import features

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class MLPCritic:
    """A value MLP over ``features(obs, t)`` trained on every batch it is given.

    :param obs_dim: observation size ``D`` (features are ``2D + 4``).
    :param hidden: hidden layer sizes. :param lr: Adam step size.
    :param epochs: passes over each batch. :param minibatch: samples per Adam step.
    :param seed: seeds the initial weights and the minibatch order.
    """

    def __init__(
        self,
        obs_dim: int,
        hidden: tuple[int, ...] = (64, 64),
        lr: float = 1e-3,
        epochs: int = 10,
        minibatch: int = 256,
        activation: str = "tanh",
        seed: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown: valid choices are {list(ACTIVATIONS)}"
            )
        for name, value in (("epochs", epochs), ("minibatch", minibatch)):
            if value < 1:
                raise ValueError(f"{name}={value} is invalid: must be >= 1")
        if not lr > 0:
            raise ValueError(f"lr={lr} is invalid: must be > 0")
        with torch.random.fork_rng():  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            size = 2 * obs_dim + 4
            for width in hidden:
                layers += [nn.Linear(size, width), ACTIVATIONS[activation]()]
                size = width
            layers.append(nn.Linear(size, 1))
            self.net = nn.Sequential(*layers).double()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.epochs, self.minibatch = epochs, minibatch
        self.generator = seeded_generator(seed)

    def fit(self, obs: Tensor, timestep: Tensor, targets: Tensor, horizon: int) -> float:
        """Regress ``targets`` on ``(obs, timestep)``.

        :param obs: ``[..., D]``. :param timestep: ``[...]``. :param targets: ``[...]``.
        :return: mean squared error of the last epoch.
        """
        x = features(obs, timestep, horizon).reshape(-1, 2 * obs.shape[-1] + 4)
        y = targets.to(torch.float64).reshape(-1)
        loss_sum, count = 0.0, 0
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=self.generator)
            loss_sum, count = 0.0, 0
            for start in range(0, x.shape[0], self.minibatch):
                idx = order[start : start + self.minibatch]
                loss = (self.net(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                loss_sum += float(loss.detach()) * idx.numel()
                count += idx.numel()
        return loss_sum / max(count, 1)

    @torch.no_grad()
    def predict(self, obs: Tensor, timestep: Tensor, horizon: int) -> Tensor:
        """:param obs: ``[..., D]``. :param timestep: ``[...]``. :return: ``[...]`` float64."""
        return self.net(features(obs, timestep, horizon)).squeeze(-1)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, not views of the live tensors)."""
        return copy.deepcopy(
            {
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
