"""The learned part of Dyna that persists across meta-iterations, and building it from
the config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from meta_safe.device import seeded_generator
from meta_safe.dyna.settings import DynaSettings
from meta_safe.dyna.transitions import (
    ACCEL_DIM,
    STATE_DIM,
    DynamicsModel,
    Transitions,
    accelerometer,
    context_from_tasks,
)
from meta_safe.rl.rollout import Batch
from stochastic_circle.tasks import CircleTask

#: Robots whose observation is a known function of the planar state and accelerometer
#: (:func:`stochastic_circle.torch_backend.observe`, on both backends).
DYNA_ROBOTS: tuple[str, ...] = ("point",)


class DynaState:
    """The learned part of Dyna that persists across meta-iterations (checkpointed).

    :ivar model: the dynamics model. :ivar disagreement_limit: per-path accumulated
        disagreement limit (``inf`` until calibrated; stays ``inf`` for an exact model).
    :ivar initial_disagreement: mean one-step disagreement at calibration.
    :ivar fits: how many times the model was trained.
    """

    def __init__(self, model: DynamicsModel, needs_training: bool) -> None:
        self.model = model
        self.needs_training = needs_training
        self.disagreement_limit = math.inf
        self.initial_disagreement = math.nan
        self.fits = 0
        self.start_states = torch.zeros(0, STATE_DIM)
        self.start_accels = torch.zeros(0, ACCEL_DIM)

    def remember_starts(self, batch: Batch, capacity: int) -> None:
        """Keep the real episode-start states of ``batch`` (FIFO, at most ``capacity``).

        The start distribution of the circle family does not depend on the task, so the
        pool is shared by all tasks.
        """
        first = batch.timestep == 0  # [T, E, N]
        states = batch.states[first].to(self.start_states.dtype)
        accels = accelerometer(batch.raw_obs)[first].to(self.start_accels.dtype)
        self.start_states = torch.cat([self.start_states, states])[-capacity:]
        self.start_accels = torch.cat([self.start_accels, accels])[-capacity:]

    @property
    def ready(self) -> bool:
        """Whether imagined data may be used (a learned model must have been fitted)."""
        return not self.needs_training or self.fits > 0

    def mean_disagreement(self, states: Tensor, actions: Tensor, context: Tensor) -> float:
        """Mean one-step disagreement on real ``states [M, STATE_DIM]``, ``actions [M, 2]``."""
        with torch.no_grad():
            return float(self.model.predict(states, actions, context).disagreement.mean())

    def fit(
        self,
        batches: list[Batch],
        tasks: list[CircleTask],
        generator: torch.Generator,
        steps: float,
        capacity: int = 4096,
        train: bool = True,
    ) -> dict[str, float]:
        """Add the real transitions of ``batches`` and (``train``, learned model) retrain.

        After the first fit, the disagreement limit is calibrated to ``steps`` x the mean
        one-step disagreement on these transitions.
        """
        data = Transitions.cat([transitions(b, tasks) for b in batches])
        self.model.add(data)
        for batch in batches:
            self.remember_starts(batch, capacity)
        if not (train and self.needs_training):
            return {}
        metrics = self.model.train_model(generator)
        self.fits += 1
        if self.fits == 1:
            mean = self.mean_disagreement(data.states, data.actions, data.context)
            self.initial_disagreement = mean
            self.disagreement_limit = steps * mean if mean > 0 else math.inf
        return {k if k.startswith("model") else f"model/{k}": float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "disagreement_limit": self.disagreement_limit,
            "initial_disagreement": self.initial_disagreement,
            "fits": self.fits,
            "start_states": self.start_states.clone(),
            "start_accels": self.start_accels.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.disagreement_limit = state["disagreement_limit"]
        self.initial_disagreement = state["initial_disagreement"]
        self.fits = state["fits"]
        self.start_states = state["start_states"].clone()
        self.start_accels = state["start_accels"].clone()


def transitions(batch: Batch, tasks: list[CircleTask]) -> Transitions:
    """The real transitions of ``batch`` flattened over tasks, envs and steps."""
    if batch.states is None or batch.next_states is None or batch.next_raw_obs is None:
        raise ValueError(
            "Dyna needs planar states in the batch: build the env with track_states=True "
            "(make_batched_env)"
        )
    T, E, N = batch.rewards.shape
    context = context_from_tasks(tasks, batch.states.dtype)[:, None, None, :].expand(T, E, N, -1)
    return Transitions(
        states=batch.states.reshape(-1, STATE_DIM),
        actions=batch.actions.reshape(-1, batch.actions.shape[-1]),
        context=context.reshape(-1, context.shape[-1]),
        next_states=batch.next_states.reshape(-1, STATE_DIM),
        next_accels=accelerometer(batch.next_raw_obs).reshape(-1, ACCEL_DIM),
    )


def build_dyna(dyna_cfg: Any, env_cfg: Any) -> tuple[DynaState | None, DynaSettings | None]:
    """The Dyna state and settings of the ``dyna`` config group (``None`` for ``none``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if dyna_cfg is None or dyna_cfg.get("name", "none") == "none":
        return None, None
    if env_cfg.robot not in DYNA_ROBOTS:
        raise ValueError(
            f"dyna={dyna_cfg.name!r} with env.robot={env_cfg.robot!r}: model rollouts need "
            f"the robot's observation as a function of its planar state, valid robots are "
            f"{list(DYNA_ROBOTS)} (or use dyna=none)"
        )
    spec = OmegaConf.to_container(dyna_cfg)
    model = instantiate(spec.pop("model"))
    learned = bool(spec.pop("learned", True))
    spec.pop("name", None)
    return DynaState(model, needs_training=learned), DynaSettings(**spec)


def held_out_errors(
    model: DynamicsModel,
    batch: Batch,
    tasks: list[CircleTask],
    horizon: int = 25,
    starts: tuple[int, ...] = (100, 300),
) -> dict[str, float]:
    """Model errors on real trajectory segments of ``batch`` (not yet trained on).

    Segments of ``horizon`` steps start at each of ``starts`` in every env; segments
    that cross an episode end are skipped. :return: ``model_err/<name>`` metrics.
    """
    if batch.states is None or batch.next_states is None:
        return {}
    T, E, N = batch.rewards.shape
    context = context_from_tasks(tasks, batch.states.dtype)
    states, actions, contexts = [], [], []
    for start in starts:
        stop = start + horizon
        if stop > N:
            continue
        ended = (batch.terminated | batch.truncated)[:, :, start : stop - 1].any(-1)  # [T, E]
        keep = ~ended
        path = torch.cat(
            [batch.states[:, :, start:stop], batch.next_states[:, :, stop - 1 : stop]], 2
        )
        states.append(path[keep])
        actions.append(batch.actions[:, :, start:stop][keep])
        contexts.append(context[:, None, :].expand(T, E, -1)[keep])
    if not states or sum(len(s) for s in states) == 0:
        return {}
    from meta_safe.dyna.metrics import prediction_errors

    errors = prediction_errors(
        model,
        torch.cat(states),
        torch.cat(actions),
        torch.cat(contexts),
        horizons=(1, 5, horizon),
        generator=seeded_generator(0),
    )
    return {f"model_err/{k}": v for k, v in errors.items()}
