"""What a dynamics model predicts, and the data it learns from.

A model maps the planar physics state ``[x, y, heading, vx, vy, omega]`` (world frame,
as :mod:`stochastic_circle.torch_backend`), the action and the task context
``(damping_scale, gear_scale)`` to the next state and the accelerometer reading
``body_accel [..., 2]``; observation, reward and cost are known functions of the
predicted state and the task. The learned model's inputs and targets use the dynamics'
invariances (translation and rotation of the plane): with body-frame velocities
``v_fwd = cos(h) vx + sin(h) vy`` and ``v_lat = -sin(h) vx + cos(h) vy``,

* inputs ``[INPUT_DIM=7]``: ``v_fwd, v_lat, omega, clip(a0, -1, 1), clip(a1, -1, 1),
  damping_scale, gear_scale``;
* targets ``[TARGET_DIM=8]``: ``v_fwd' - v_fwd, v_lat' - v_lat`` (next velocity in the
  *next* body frame minus the current body-frame velocity), ``omega' - omega``,
  ``h' - h`` (wrapped to (-pi, pi]), the displacement ``(dx, dy)`` in the *current*
  body frame, and the next ``body_accel`` (2).

:func:`apply_targets` converts targets back to a world-frame next state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from stochastic_circle.tasks import CircleTask

STATE_DIM: int = 6
ACCEL_DIM: int = 2
ACTION_DIM: int = 2
CONTEXT_DIM: int = 2
INPUT_DIM: int = 7
TARGET_DIM: int = 8


# --------------------------------------------------------------------------- data


@dataclass
class Transitions:
    """Real transitions, flat over a leading sample dim ``M`` (all float tensors).

    :ivar states: ``[M, 6]``. :ivar actions: ``[M, 2]`` raw policy actions (not clipped).
    :ivar context: ``[M, 2]`` ``(damping_scale, gear_scale)``.
    :ivar next_states: ``[M, 6]``. :ivar next_accels: ``[M, 2]`` body-frame accelerometer
        reading after the step.
    """

    states: Tensor
    actions: Tensor
    context: Tensor
    next_states: Tensor
    next_accels: Tensor

    def __post_init__(self) -> None:
        widths = {
            "states": STATE_DIM,
            "actions": ACTION_DIM,
            "context": CONTEXT_DIM,
            "next_states": STATE_DIM,
            "next_accels": ACCEL_DIM,
        }
        count = self.states.shape[0] if self.states.dim() == 2 else -1
        for name, width in widths.items():
            value = getattr(self, name)
            if value.dim() != 2 or value.shape[1] != width or value.shape[0] != count:
                raise ValueError(
                    f"Transitions.{name} has shape {tuple(value.shape)}: expected "
                    f"[M, {width}] with M = len(states) = {count}"
                )

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, index: slice | Tensor) -> Transitions:
        """Rows ``index`` (a slice, an index tensor or a bool mask) of every field."""
        return Transitions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, dtype: torch.dtype) -> Transitions:
        return Transitions(**{f.name: getattr(self, f.name).to(dtype) for f in fields(self)})

    @staticmethod
    def empty(dtype: torch.dtype = torch.float32) -> Transitions:
        return Transitions(
            states=torch.zeros(0, STATE_DIM, dtype=dtype),
            actions=torch.zeros(0, ACTION_DIM, dtype=dtype),
            context=torch.zeros(0, CONTEXT_DIM, dtype=dtype),
            next_states=torch.zeros(0, STATE_DIM, dtype=dtype),
            next_accels=torch.zeros(0, ACCEL_DIM, dtype=dtype),
        )

    @staticmethod
    def cat(parts: Sequence[Transitions]) -> Transitions:
        """Concatenate along the sample dim (``parts`` must not be empty)."""
        if not parts:
            raise ValueError("parts is empty: give at least one Transitions to concatenate")
        return Transitions(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Transitions)}
        )

    @staticmethod
    def flatten(
        states: Tensor, actions: Tensor, context: Tensor, next_states: Tensor, next_accels: Tensor
    ) -> Transitions:
        """Flatten batched data ``[..., d]`` (e.g. ``states [T, E, N, 6]``) into transitions.

        ``context`` is broadcast to the leading shape of ``states``: either per row with as
        many dims as ``states`` (e.g. ``[T, E, N, 2]`` or ``[T, 1, 1, 2]``), or per sequence
        with one dim fewer (e.g. ``[T, E, 2]``), which is repeated over the step dim ``N``.
        """
        lead = states.shape[:-1]
        if context.dim() == states.dim() - 1:
            context = context.unsqueeze(-2)
        elif context.dim() != states.dim():
            raise ValueError(
                f"context has shape {tuple(context.shape)}: expected {states.dim()} dims (per "
                f"row) or {states.dim() - 1} (per sequence) for states {tuple(states.shape)}"
            )
        context = context.expand(*lead, CONTEXT_DIM)
        return Transitions(
            states=states.reshape(-1, STATE_DIM),
            actions=actions.reshape(-1, ACTION_DIM),
            context=context.reshape(-1, CONTEXT_DIM),
            next_states=next_states.reshape(-1, STATE_DIM),
            next_accels=next_accels.reshape(-1, ACCEL_DIM),
        )


@dataclass
class Prediction:
    """One predicted step for ``B`` rows (any leading shape ``[...]`` of the inputs).

    :ivar next_states: ``[..., 6]``. :ivar next_accels: ``[..., 2]``.
    :ivar disagreement: ``[...]`` >= 0, the model's epistemic uncertainty about this step
        (0 for :class:`KnownModel`; see :func:`mean_pairwise_kl` for the ensemble).
    """

    next_states: Tensor
    next_accels: Tensor
    disagreement: Tensor


class DynamicsModel(Protocol):
    """What imagined rollouts and the trainer need from a dynamics model."""

    def predict(
        self,
        states: Tensor,
        actions: Tensor,
        context: Tensor,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """``states [..., 6]``, raw ``actions [..., 2]``, ``context [..., 2]`` -> one step."""
        ...

    def add(self, transitions: Transitions) -> None:
        """Store real data (bounded FIFO buffer; no-op for a known model)."""
        ...

    def train_model(self, generator: torch.Generator) -> dict[str, float]:
        """Fit on the stored data; return scalar metrics for logging (``{}`` if nothing to fit)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def context_from_tasks(tasks: Sequence[CircleTask], dtype: torch.dtype = torch.float32) -> Tensor:
    """``[T, 2]`` dynamics context ``(damping_scale, gear_scale)`` of each task."""
    return torch.tensor([[t.damping_scale, t.gear_scale] for t in tasks], dtype=dtype).reshape(
        -1, CONTEXT_DIM
    )


def _check_inputs(states: Tensor, actions: Tensor, context: Tensor) -> None:
    lead = tuple(states.shape[:-1])
    for name, value, width in (
        ("states", states, STATE_DIM),
        ("actions", actions, ACTION_DIM),
        ("context", context, CONTEXT_DIM),
    ):
        if value.shape[-1:] != (width,) or tuple(value.shape[:-1]) != lead:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}: expected [..., {width}] with the "
                f"leading shape {lead} of states"
            )


# --------------------------------------------------------------------------- features


def _body(heading: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
    """World-frame vector -> body frame of ``heading``: ``(forward, lateral)``."""
    cos, sin = torch.cos(heading), torch.sin(heading)
    return cos * vx + sin * vy, -sin * vx + cos * vy


def _world(heading: Tensor, fwd: Tensor, lat: Tensor) -> tuple[Tensor, Tensor]:
    """Body frame of ``heading`` -> world frame: ``(x, y)`` components."""
    cos, sin = torch.cos(heading), torch.sin(heading)
    return cos * fwd - sin * lat, sin * fwd + cos * lat


def model_inputs(states: Tensor, actions: Tensor, context: Tensor) -> Tensor:
    """Invariant ensemble inputs ``[..., 7]``: body velocities, omega, clipped action, context."""
    heading, vx, vy, omega = states[..., 2], states[..., 3], states[..., 4], states[..., 5]
    fwd, lat = _body(heading, vx, vy)
    return torch.cat([torch.stack([fwd, lat, omega], -1), actions.clamp(-1.0, 1.0), context], -1)


def model_targets(states: Tensor, next_states: Tensor, next_accels: Tensor) -> Tensor:
    """Ensemble targets ``[..., 8]`` of a transition (see the module docstring)."""
    x, y, heading, vx, vy, omega = states.unbind(-1)
    nx, ny, nheading, nvx, nvy, nomega = next_states.unbind(-1)
    fwd, lat = _body(heading, vx, vy)
    nfwd, nlat = _body(nheading, nvx, nvy)
    turn = torch.remainder(nheading - heading + math.pi, 2 * math.pi) - math.pi
    disp_fwd, disp_lat = _body(heading, nx - x, ny - y)
    return torch.cat(
        [
            torch.stack([nfwd - fwd, nlat - lat, nomega - omega, turn, disp_fwd, disp_lat], -1),
            next_accels,
        ],
        -1,
    )


def apply_targets(states: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`model_targets`: ``(next_states [..., 6], next_accels [..., 2])``.

    The next heading is ``heading + turn`` (unwrapped, like the torch backend's state).
    """
    x, y, heading, vx, vy, omega = states.unbind(-1)
    d_fwd, d_lat, d_omega, turn, disp_fwd, disp_lat = targets[..., :6].unbind(-1)
    fwd, lat = _body(heading, vx, vy)
    nheading = heading + turn
    nvx, nvy = _world(nheading, fwd + d_fwd, lat + d_lat)
    dx, dy = _world(heading, disp_fwd, disp_lat)
    next_states = torch.stack([x + dx, y + dy, nheading, nvx, nvy, omega + d_omega], -1)
    return next_states, targets[..., 6:8]


def accelerometer(raw_obs: Tensor) -> Tensor:
    """The planar accelerometer reading ``[..., ACCEL_DIM]`` of raw observations
    ``[..., obs_dim]``: the first entries of the Point observation
    (:func:`stochastic_circle.torch_backend.observe`)."""
    return raw_obs[..., :ACCEL_DIM]
