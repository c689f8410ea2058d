"""The exact model: the torch backend's own physics (disagreement 0), an oracle for
tests and the upper bound of what a model buys."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from meta_safe.dyna.transitions import Prediction, Transitions, _check_inputs
from stochastic_circle.torch_backend import PointDynamics, TaskTensors, physics_step


class KnownModel:
    """The torch backend's exact Point physics as a :class:`DynamicsModel` (an oracle).

    Radius and walls do not enter :func:`physics_step`, so the task tensors it needs are
    built from the context with dummy radius/wall values. Disagreement is always 0.
    """

    def __init__(self, dynamics: PointDynamics | None = None) -> None:
        self.dynamics = dynamics or PointDynamics()

    def predict(
        self,
        states: Tensor,
        actions: Tensor,
        context: Tensor,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        _check_inputs(states, actions, context)
        damping, gear = context[..., 0], context[..., 1]
        ones = torch.ones_like(damping)
        task = TaskTensors(
            radius=ones,
            wall_distance=ones,
            four_walls=0 * ones,
            damping_scale=damping,
            gear_scale=gear,
        )
        next_states, accels = physics_step(states, actions.to(states.dtype), task, self.dynamics)
        return Prediction(next_states, accels, torch.zeros_like(damping))

    def add(self, transitions: Transitions) -> None:
        """No-op: the known model needs no data."""

    def train_model(self, generator: torch.Generator) -> dict[str, float]:
        """Nothing to fit: ``{}``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
