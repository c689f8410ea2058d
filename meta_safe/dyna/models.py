"""Dynamics models for Dyna-style imagined rollouts: the known physics and a learned ensemble.

What a model predicts (design decisions):

* **Physics state, not observations.** A model maps the planar state
  ``[x, y, heading, vx, vy, omega]`` (world frame, as :mod:`stochastic_circle.torch_backend`),
  the action and the task context to the next state and the accelerometer reading
  ``body_accel [..., 2]`` that :func:`~stochastic_circle.torch_backend.observe` needs.
  Observation, reward and cost are then *known* functions of the predicted next state
  and the task (``observe``, ``circle_reward``, ``wall_cost``), as CMBPO computes cost
  from a known function: radius and wall distance change only reward and cost, never the
  dynamics, so the model does not have to learn them.
* **One model for all tasks.** The task context is ``(damping_scale, gear_scale)``
  ``[..., 2]``, the only task parameters the dynamics depend on; data from every
  meta-training task trains one model, which therefore transfers to held-out tasks whose
  physics lie in (or near) the training range.
* **Point robot only** (the torch backend's robot); the integrator rejects other robots.

Two implementations of :class:`DynamicsModel`:

* :class:`KnownModel`: the backend's own :func:`~stochastic_circle.torch_backend.physics_step`
  (exact; disagreement 0). An oracle for tests and ablations.
* :class:`EnsembleModel`: a probabilistic ensemble (PETS, Chua et al. 2018; MBPO, Janner
  et al. 2019) of ``members`` MLPs, each giving a diagonal Gaussian over the targets below,
  trained by Gaussian negative log-likelihood; the ``elites`` members with the lowest
  held-out MSE are used for prediction.

Ensemble inputs and targets use the dynamics' invariances (translation and rotation of
the plane): with body-frame velocities ``v_fwd = cos(h) vx + sin(h) vy`` and
``v_lat = -sin(h) vx + cos(h) vy``,

* inputs ``[INPUT_DIM=7]``: ``v_fwd, v_lat, omega, clip(a0, -1, 1), clip(a1, -1, 1),
  damping_scale, gear_scale`` (no position, no heading: they do not change the dynamics);
* targets ``[TARGET_DIM=8]``: ``v_fwd' - v_fwd, v_lat' - v_lat`` (next velocity in the
  *next* body frame minus the current body-frame velocity), ``omega' - omega``,
  ``h' - h`` (wrapped to (-pi, pi]), the displacement ``(dx, dy)`` expressed in the
  *current* body frame, and the next ``body_accel`` (2).

:func:`apply_targets` converts targets back to a world-frame next state. Inputs and
targets are standardised with statistics of the training data of the last
:meth:`EnsembleModel.train_model` call.

An irreducible error: the torch backend's turning dynamics are chaotic within one env
step. In the unsaturated band ``|a1 - 0.3 omega| < 0.05`` one physics substep maps
``omega -> (0.726 - 16.44 * 0.3) omega + ...``, a slope of about -4.2, so omega bounces
between the force limits and the next omega changes by up to 1 rad/s when ``a1``
changes by 0.002. No smooth model can follow that: the ensemble learns its conditional mean and
(as aleatoric variance) its spread, and its one-step omega RMSE stays near 0.4 rad/s
(predicting no change: 1.2 rad/s) while position and velocity are learned closely.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from meta_safe.dyna.metrics import prediction_errors
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import PointDynamics, TaskTensors, physics_step

__all__ = [
    "ACCEL_DIM",
    "ACTION_DIM",
    "CONTEXT_DIM",
    "INPUT_DIM",
    "STATE_DIM",
    "TARGET_DIM",
    "DynamicsModel",
    "EnsembleModel",
    "KnownModel",
    "Prediction",
    "Standardizer",
    "Transitions",
    "apply_targets",
    "context_from_tasks",
    "mean_pairwise_kl",
    "model_inputs",
    "model_targets",
    "prediction_errors",
]

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


# --------------------------------------------------------------------------- known model


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


# --------------------------------------------------------------------------- ensemble


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


class _EnsembleNet(nn.Module):
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


@dataclass(frozen=True)
class EnsembleConfig:
    """Hyper-parameters of :class:`EnsembleModel` (see its docstring)."""

    members: int = 7
    elites: int = 5
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 3e-2
    weight_decay: float = 1e-5
    batch_size: int = 256
    max_updates: int = 2000
    epochs: int = 100
    holdout_fraction: float = 0.2
    max_holdout: int = 5000
    eval_every: int = 250
    patience: int = 5
    buffer_size: int = 200_000
    sample_noise: bool = False
    logvar_bound_weight: float = 0.01
    final_lr_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, low: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {low}")

        for name in (
            "members",
            "batch_size",
            "epochs",
            "max_holdout",
            "eval_every",
            "patience",
            "buffer_size",
        ):
            positive_int(name)
        positive_int("max_updates", 0)
        if not isinstance(self.elites, int) or not 1 <= self.elites <= self.members:
            raise ValueError(
                f"elites={self.elites!r} is invalid: valid range is [1, members={self.members}]"
            )
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden={self.hidden!r} is invalid: give one or more layer sizes >= 1"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} is invalid: must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r} is invalid: must be >= 0")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                f"holdout_fraction={self.holdout_fraction!r} is invalid: valid range is (0, 1)"
            )
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError(
                f"final_lr_fraction={self.final_lr_fraction!r} is invalid: valid range is (0, 1]"
            )
        if not (math.isfinite(self.logvar_bound_weight) and self.logvar_bound_weight >= 0):
            raise ValueError(
                f"logvar_bound_weight={self.logvar_bound_weight!r} is invalid: must be >= 0"
            )


class EnsembleModel:
    """Probabilistic ensemble of MLPs learning the Point dynamics across tasks.

    Inputs and targets: see the module docstring. Every member is an MLP (SiLU, sizes
    ``[7, *hidden, 16]``) outputting a Gaussian mean and a softly bounded log-variance
    over the 8 standardised targets; all members are evaluated at once with batched
    weights ``[members, in, out]``.

    Training (:meth:`train_model`): standardisers are refit on the training split of the
    buffer; a random ``holdout_fraction`` (at most ``max_holdout``) of the buffer is held
    out; every member draws its own random minibatches (diversity from initialisation
    and data order) and minimises the Gaussian NLL plus ``logvar_bound_weight *
    (sum max_logvar - sum min_logvar)`` with AdamW, warm-started from the previous call,
    for at most ``max_updates`` updates or ``epochs`` passes. The learning rate decays
    linearly from ``lr`` to ``lr * final_lr_fraction`` over ``max_updates`` in every call:
    the actuators saturate (the drive force is ``clip(a0, -0.05, 0.05)``, a near-step
    function of the action), and a high initial rate learns that kink far faster than
    the usual constant ``1e-3`` (measured on 20k random-action transitions: one-step
    velocity RMSE 0.002 m/s after 2,000 updates vs 0.024 m/s with ``lr=1e-3`` and
    ``hidden=(200, 200)`` after 1,000 updates); the decay then settles the fit. The
    default ``hidden=(128, 128)`` is as accurate as ``(200, 200)`` at half the time per
    update; ``(64, 64)`` with ``lr=4e-2`` is twice as fast again and about as good on 20k
    transitions. Every ``eval_every`` updates
    (and at the end) each member's held-out MSE is measured and its best weights kept;
    training stops early once no member improved by more than 1 % for ``patience``
    evaluations. Each member ends at its best weights, and the ``elites`` members with the
    lowest held-out MSE are selected. Everything random comes from the given generator,
    so training is reproducible.

    Prediction (:meth:`predict`, TS-1): each row uses one uniformly drawn elite, its
    Gaussian mean plus (``sample_noise=True``) a draw of its noise. Disagreement:
    :func:`mean_pairwise_kl` over the elites.

    :param members: ensemble size. :param elites: members used for prediction.
    :param hidden: hidden layer sizes. :param lr: AdamW learning rate.
    :param weight_decay: AdamW decoupled weight decay on the weight matrices.
    :param batch_size: minibatch size per member. :param max_updates: gradient steps per
        :meth:`train_model` call (0: only refit the statistics and reselect elites).
    :param epochs: maximum passes over the training split per call.
    :param holdout_fraction: share of the buffer held out for validation, in (0, 1).
    :param max_holdout: cap on held-out samples. :param eval_every: updates between
        held-out evaluations. :param patience: evaluations without improvement before
        stopping. :param buffer_size: FIFO capacity in transitions.
    :param final_lr_fraction: learning-rate multiplier reached at ``max_updates``, (0, 1].
    :param logvar_bound_weight: weight of the soft log-variance bound penalty.
    :param sample_noise: add the aleatoric Gaussian noise to predictions.
    :param seed: seeds the weight initialisation.
    """

    def __init__(
        self,
        members: int = EnsembleConfig.members,
        elites: int = EnsembleConfig.elites,
        hidden: Sequence[int] = EnsembleConfig.hidden,
        lr: float = EnsembleConfig.lr,
        weight_decay: float = EnsembleConfig.weight_decay,
        batch_size: int = EnsembleConfig.batch_size,
        max_updates: int = EnsembleConfig.max_updates,
        epochs: int = EnsembleConfig.epochs,
        holdout_fraction: float = EnsembleConfig.holdout_fraction,
        max_holdout: int = EnsembleConfig.max_holdout,
        eval_every: int = EnsembleConfig.eval_every,
        patience: int = EnsembleConfig.patience,
        buffer_size: int = EnsembleConfig.buffer_size,
        sample_noise: bool = EnsembleConfig.sample_noise,
        final_lr_fraction: float = EnsembleConfig.final_lr_fraction,
        logvar_bound_weight: float = EnsembleConfig.logvar_bound_weight,
        seed: int = EnsembleConfig.seed,
    ) -> None:
        self.config = cfg = EnsembleConfig(
            members=members,
            elites=elites,
            hidden=tuple(hidden),
            lr=float(lr),
            weight_decay=float(weight_decay),
            batch_size=batch_size,
            max_updates=max_updates,
            epochs=epochs,
            holdout_fraction=float(holdout_fraction),
            max_holdout=max_holdout,
            eval_every=eval_every,
            patience=patience,
            buffer_size=buffer_size,
            sample_noise=bool(sample_noise),
            final_lr_fraction=float(final_lr_fraction),
            logvar_bound_weight=float(logvar_bound_weight),
            seed=seed,
        )
        init = torch.Generator().manual_seed(cfg.seed)
        self.net = _EnsembleNet(cfg.members, [INPUT_DIM, *cfg.hidden, 2 * TARGET_DIM], init)
        self.input_scaler = Standardizer(INPUT_DIM)
        self.target_scaler = Standardizer(TARGET_DIM)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.net.weights), "weight_decay": cfg.weight_decay},
                {
                    "params": [*self.net.biases, self.net.max_logvar, self.net.min_logvar],
                    "weight_decay": 0.0,
                },
            ],
            lr=cfg.lr,
        )
        self.buffer = Transitions.empty()
        self.elite_indices = torch.arange(cfg.elites)
        self.holdout_mse = torch.full((cfg.members,), float("nan"))
        self.trained = False

    # ------------------------------------------------------------------ data
    def add(self, transitions: Transitions) -> None:
        """Append real transitions, dropping the oldest beyond ``buffer_size`` (FIFO)."""
        merged = Transitions.cat([self.buffer, transitions.to(torch.float32)])
        self.buffer = merged[-self.config.buffer_size :] if len(merged) else merged

    def _arrays(self, data: Transitions) -> tuple[Tensor, Tensor]:
        x = model_inputs(data.states, data.actions, data.context)
        y = model_targets(data.states, data.next_states, data.next_accels)
        return x, y

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _member_mse(self, x: Tensor, y: Tensor, chunk: int = 8192) -> Tensor:
        """Per-member MSE ``[members]`` of the means on standardised ``x [N, 7]``, ``y [N, 8]``."""
        total = torch.zeros(self.config.members, dtype=torch.float64)
        for start in range(0, x.shape[0], chunk):
            mean, _ = self.net(x[start : start + chunk])
            total += (mean - y[start : start + chunk]).pow(2).mean(-1).sum(-1).double()
        return (total / max(x.shape[0], 1)).float()

    def evaluate(self, data: Transitions) -> Tensor:
        """Per-member MSE ``[members]`` on ``data``, in standardised target units."""
        x, y = self._arrays(data.to(torch.float32))
        return self._member_mse(self.input_scaler(x), self.target_scaler(y))

    def select_elites(self, data: Transitions) -> Tensor:
        """Make the ``elites`` members with the lowest MSE on ``data`` the elites.

        :return: their indices ``[elites]``, best first.
        """
        self.holdout_mse = self.evaluate(data)
        self.elite_indices = torch.argsort(self.holdout_mse, stable=True)[: self.config.elites]
        return self.elite_indices

    # ------------------------------------------------------------------ training
    def train_model(self, generator: torch.Generator) -> dict[str, float]:
        """Fit on the buffer (see the class docstring). :return: metrics for logging."""
        cfg = self.config
        n = len(self.buffer)
        if n < 2:
            raise ValueError(
                f"the model buffer holds {n} transitions: need at least 2 to train "
                "(call add() with real data first)"
            )
        start_time = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        n_hold = max(1, min(int(round(n * cfg.holdout_fraction)), cfg.max_holdout, n - 1))
        x_all, y_all = self._arrays(self.buffer)
        train_x, train_y = x_all[perm[n_hold:]], y_all[perm[n_hold:]]
        self.input_scaler.fit(train_x)
        self.target_scaler.fit(train_y)
        train_x, train_y = self.input_scaler(train_x), self.target_scaler(train_y)
        hold_x = self.input_scaler(x_all[perm[:n_hold]])
        hold_y = self.target_scaler(y_all[perm[:n_hold]])
        n_train = train_x.shape[0]
        members = cfg.members

        best = self._member_mse(hold_x, hold_y)
        initial_mse = best.clone()
        snapshot = [p.detach().clone() for p in self._member_params()]
        stale = 0
        updates = epochs = 0
        batch = min(cfg.batch_size, n_train)
        order = self._orders(members, n_train, generator)
        pos = 0
        nll_sum = mse_sum = 0.0
        while updates < cfg.max_updates and epochs < cfg.epochs and stale < cfg.patience:
            if pos + batch > n_train:
                epochs += 1
                order = self._orders(members, n_train, generator)
                pos = 0
                continue
            idx = order[:, pos : pos + batch]
            pos += batch
            frac = 1.0 - (1.0 - cfg.final_lr_fraction) * updates / max(cfg.max_updates, 1)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * frac
            mean, logvar = self.net(train_x[idx])
            target = train_y[idx]
            sq = (mean - target).pow(2)
            nll = (sq * (-logvar).exp() + logvar).mean((1, 2)).sum()
            bound = self.net.max_logvar.sum() - self.net.min_logvar.sum()
            loss = nll + cfg.logvar_bound_weight * bound
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            updates += 1
            nll_sum += float(nll.detach()) / members
            mse_sum += float(sq.detach().mean())
            if updates % cfg.eval_every == 0:
                best, improved = self._checkpoint_members(snapshot, best, hold_x, hold_y)
                stale = 0 if improved else stale + 1
        if updates % cfg.eval_every:
            self._checkpoint_members(snapshot, best, hold_x, hold_y)
        # each member ends at its best held-out weights
        self._restore(snapshot)
        self.holdout_mse = self._member_mse(hold_x, hold_y)
        self.elite_indices = torch.argsort(self.holdout_mse, stable=True)[: cfg.elites]
        self.trained = True
        elite_mse = self.holdout_mse[self.elite_indices]
        return {
            "model/updates": float(updates),
            "model/epochs": float(epochs),
            "model/train_nll": nll_sum / max(updates, 1),
            "model/train_mse": mse_sum / max(updates, 1),
            "model/holdout_mse_start": float(initial_mse[self.elite_indices].mean()),
            "model/holdout_mse": float(elite_mse.mean()),
            "model/holdout_mse_best": float(elite_mse.min()),
            "model/holdout_mse_worst_member": float(self.holdout_mse.max()),
            "model/buffer": float(n),
            "model/seconds": time.perf_counter() - start_time,
        }

    def _checkpoint_members(
        self, snapshot: list[Tensor], best: Tensor, hold_x: Tensor, hold_y: Tensor
    ) -> tuple[Tensor, bool]:
        """Keep the weights of members that beat their best held-out MSE.

        :return: ``(new best [members], whether any member improved by more than 1 %)``.
        """
        mse = self._member_mse(hold_x, hold_y)
        improved = (best - mse) / best.clamp_min(1e-12) > 0.01
        self._keep_best(snapshot, mse < best)
        return torch.minimum(best, mse), bool(improved.any())

    @staticmethod
    def _orders(members: int, n: int, generator: torch.Generator) -> Tensor:
        """An independent random permutation of ``range(n)`` per member: ``[members, n]``."""
        return torch.argsort(torch.rand(members, n, generator=generator), dim=1)

    def _member_params(self) -> list[Tensor]:
        return [*self.net.weights, *self.net.biases]

    @torch.no_grad()
    def _keep_best(self, snapshot: list[Tensor], better: Tensor) -> None:
        for saved, param in zip(snapshot, self._member_params(), strict=True):
            saved[better] = param[better]

    @torch.no_grad()
    def _restore(self, snapshot: list[Tensor]) -> None:
        for saved, param in zip(snapshot, self._member_params(), strict=True):
            param.copy_(saved)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(
        self,
        states: Tensor,
        actions: Tensor,
        context: Tensor,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """One step for ``[..., 6]`` states (see the class docstring for TS-1 and noise).

        :param generator: draws the elite of every row (and the noise); the global RNG
            when ``None``.
        """
        _check_inputs(states, actions, context)
        lead = states.shape[:-1]
        flat_states = states.reshape(-1, STATE_DIM).float()
        x = self.input_scaler(
            model_inputs(
                flat_states,
                actions.reshape(-1, ACTION_DIM).float(),
                context.reshape(-1, CONTEXT_DIM).float(),
            )
        )
        rows = x.shape[0]
        mean, logvar = self.net(x, self.elite_indices)  # [K, B, D]
        choice = torch.randint(mean.shape[0], (rows,), generator=generator)
        arange = torch.arange(rows)
        target = mean[choice, arange]
        if self.config.sample_noise:
            noise = torch.randn(target.shape, generator=generator)
            target = target + (0.5 * logvar[choice, arange]).exp() * noise
        next_states, accels = apply_targets(flat_states, self.target_scaler.inverse(target))
        dtype = states.dtype
        return Prediction(
            next_states.reshape(*lead, STATE_DIM).to(dtype),
            accels.reshape(*lead, ACCEL_DIM).to(dtype),
            mean_pairwise_kl(mean, logvar).reshape(lead).to(dtype),
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights, optimiser, scalers, elites, buffer)."""
        return {
            "config": self.config.__dict__.copy(),
            "net": copy.deepcopy(self.net.state_dict()),
            "input_scaler": copy.deepcopy(self.input_scaler.state_dict()),
            "target_scaler": copy.deepcopy(self.target_scaler.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "buffer": {f.name: getattr(self.buffer, f.name).clone() for f in fields(Transitions)},
            "elite_indices": self.elite_indices.clone(),
            "holdout_mse": self.holdout_mse.clone(),
            "trained": self.trained,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. ``members``, ``elites`` and ``hidden`` must match;
        the other hyper-parameters are this model's (the buffer is cut to ``buffer_size``).
        """
        saved = dict(state["config"])
        saved["hidden"] = tuple(saved["hidden"])
        mine = self.config.__dict__
        diff = [k for k in ("members", "elites", "hidden") if saved[k] != mine[k]]
        if diff:
            raise ValueError(
                f"checkpointed ensemble has {', '.join(f'{k}={saved[k]!r}' for k in diff)} but "
                f"this one has {', '.join(f'{k}={mine[k]!r}' for k in diff)}: build it alike"
            )
        self.net.load_state_dict(state["net"])
        self.input_scaler.load_state_dict(state["input_scaler"])
        self.target_scaler.load_state_dict(state["target_scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        buffer = Transitions(**{k: v.clone() for k, v in state["buffer"].items()})
        self.buffer = buffer[-self.config.buffer_size :] if len(buffer) else buffer
        self.elite_indices = state["elite_indices"].clone()
        self.holdout_mse = state["holdout_mse"].clone()
        self.trained = bool(state["trained"])
