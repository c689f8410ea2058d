"""Imagined rollouts: a dynamics model behind the batched env interface of the sampler.

:class:`ModelEnv` implements :class:`meta_safe.rl.rollout.BatchedEnv`, so
:func:`meta_safe.rl.rollout.collect` samples imagined rollouts unchanged. A *path* is one
imagined trajectory: it starts from a real state (a branch point, as MBPO) of its task,
the model predicts every next state, and observation, reward and cost are the *known*
functions of the predicted state and the task (``observe``, ``circle_reward``,
``wall_cost`` of :mod:`stochastic_circle.torch_backend`). A path ends (``truncated``)
when it has taken ``max_length`` steps, when its accumulated model disagreement exceeds
``disagreement_limit`` (CMBPO's uncertainty-based stopping), or when the real episode it
branched from would have ended (``episode_steps``); it then restarts from a fresh start
state, like :class:`~stochastic_circle.torch_backend.BatchedCircleEnv`, keeping the
observation it ended on in :attr:`ModelEnv.final_obs` so GAE bootstraps from the value
of the last imagined state and never leaks across paths. ``terminated`` is always
False: circle tasks never terminate.

Also here: :func:`model_fraction`, CMBPO's rule for how much to trust the model (the
disagreement limit is calibrated by :meth:`meta_safe.dyna.state.DynaState.fit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from meta_safe.device import seeded_generator
from meta_safe.dyna.transitions import (
    ACCEL_DIM,
    ACTION_DIM,
    STATE_DIM,
    DynamicsModel,
    context_from_tasks,
)
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import (
    EPISODE_STEPS,
    OBS_DIM,
    TaskTensors,
    circle_reward,
    observe,
    wall_cost,
)

__all__ = ["ModelEnv", "model_fraction"]


class ModelEnv:
    """``len(tasks)`` x ``num_envs`` imagined paths stepped together by a dynamics model.

    :param model: any :class:`~meta_safe.dyna.models.DynamicsModel`.
    :param tasks: one :class:`CircleTask` per task row (Point robot: the known reward,
        cost and observation functions are the torch backend's).
    :param start_states: ``[T, S, 6]`` real states to branch from, ``S >= 1`` per task.
    :param start_accels: ``[T, S, 2]`` the accelerometer reading observed with each.
    :param start_timesteps: ``[T, S]`` long, each start state's step index within its real
        episode, in ``[0, episode_steps)``.
    :param num_envs: paths per task stepped in parallel.
    :param max_length: steps after which a path ends (``>= 1``).
    :param disagreement_limit: a path ends once its accumulated disagreement exceeds this
        (``> 0``; ``math.inf`` disables uncertainty stopping).
    :param episode_steps: real episode length; a path ends when its real-episode clock
        :attr:`elapsed` reaches it.
    :param seed: seeds the start-state draws and the model's sampling.

    :ivar elapsed: ``[T, E]`` long, the real-episode timestep of every path's current
        state (start timestep + steps taken).
    :ivar path_steps: ``[T, E]`` long, steps taken by every path so far.
    :ivar path_disagreement: ``[T, E]`` accumulated disagreement of every path.
    :ivar final_obs: ``[T, E, 28]`` the observation of the last step before any reset.
    """

    def __init__(
        self,
        model: DynamicsModel,
        tasks: Sequence[CircleTask],
        start_states: Tensor,
        start_accels: Tensor,
        start_timesteps: Tensor,
        num_envs: int,
        max_length: int,
        disagreement_limit: float = math.inf,
        episode_steps: int = EPISODE_STEPS,
        seed: int = 0,
    ) -> None:
        if not tasks:
            raise ValueError("tasks is empty: give at least one CircleTask")
        T = len(tasks)
        if start_states.dim() != 3 or start_states.shape[0] != T or start_states.shape[2] != 6:
            raise ValueError(
                f"start_states has shape {tuple(start_states.shape)}: expected [T={T}, S, 6]"
            )
        S = start_states.shape[1]
        if S < 1:
            raise ValueError("start_states holds no state: give at least one per task (S >= 1)")
        if tuple(start_accels.shape) != (T, S, ACCEL_DIM):
            raise ValueError(
                f"start_accels has shape {tuple(start_accels.shape)}: expected {(T, S, 2)}"
            )
        if tuple(start_timesteps.shape) != (T, S):
            raise ValueError(
                f"start_timesteps has shape {tuple(start_timesteps.shape)}: expected {(T, S)}"
            )
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} is invalid: must be >= 1")
        if max_length < 1:
            raise ValueError(f"max_length={max_length} is invalid: must be >= 1")
        if not disagreement_limit > 0:  # also rejects NaN
            raise ValueError(
                f"disagreement_limit={disagreement_limit} is invalid: must be > 0 (inf: no limit)"
            )
        if episode_steps < 1:
            raise ValueError(f"episode_steps={episode_steps} is invalid: must be >= 1")
        if start_timesteps.dtype.is_floating_point or start_timesteps.dtype == torch.bool:
            raise ValueError(
                f"start_timesteps has dtype {start_timesteps.dtype}: expected an integer dtype"
            )
        if bool((start_timesteps < 0).any() | (start_timesteps >= episode_steps).any()):
            raise ValueError(
                f"start_timesteps must lie in [0, episode_steps={episode_steps}): got values in "
                f"[{int(start_timesteps.min())}, {int(start_timesteps.max())}]"
            )
        self.model = model
        self.tasks = list(tasks)
        self.num_tasks, self.num_envs = T, num_envs
        self.max_length = int(max_length)
        self.disagreement_limit = float(disagreement_limit)
        self.episode_steps = int(episode_steps)
        self.dtype = start_states.dtype
        self.start_states = start_states.detach().clone()
        self.start_accels = start_accels.detach().to(self.dtype).clone()
        self.start_timesteps = start_timesteps.detach().long().clone()
        self.task_tensors = TaskTensors.from_tasks(self.tasks, self.dtype)  # [T, 1] each
        self.context = (
            context_from_tasks(self.tasks, self.dtype).unsqueeze(1).expand(T, num_envs, 2)
        )
        self.generator = seeded_generator(seed)
        shape = (T, num_envs)
        self.state = torch.zeros(*shape, STATE_DIM, dtype=self.dtype)
        self.elapsed = torch.zeros(shape, dtype=torch.long)
        self.path_steps = torch.zeros(shape, dtype=torch.long)
        self.path_disagreement = torch.zeros(shape, dtype=self.dtype)
        self.final_obs = torch.zeros(*shape, OBS_DIM, dtype=self.dtype)
        self._clock_log: list[Tensor] = []
        self._reset_stats()

    @property
    def obs_dim(self) -> int:
        return OBS_DIM

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    # ------------------------------------------------------------------ starts
    def _draw_starts(self, task_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Start states for paths of tasks ``task_index [K]``, uniform with replacement.

        :return: ``(states [K, 6], accels [K, 2], timesteps [K])``.
        """
        pick = torch.randint(self.start_states.shape[1], task_index.shape, generator=self.generator)
        return (
            self.start_states[task_index, pick],
            self.start_accels[task_index, pick],
            self.start_timesteps[task_index, pick],
        )

    def reset(self, seed: int | None = None) -> Tensor:
        """Start every path from a random start state of its task. :return: obs ``[T, E, 28]``."""
        if seed is not None:
            self.generator.manual_seed(seed)
        rows = torch.arange(self.num_tasks).repeat_interleave(self.num_envs)
        states, accels, timesteps = self._draw_starts(rows)
        shape = (self.num_tasks, self.num_envs)
        self.state = states.reshape(*shape, STATE_DIM)
        self.elapsed = timesteps.reshape(shape)
        self.path_steps.zero_()
        self.path_disagreement.zero_()
        self._reset_stats()
        self._clock_log = []
        return observe(self.state, accels.reshape(*shape, ACCEL_DIM))

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Advance every path one imagined step.

        :param action: ``[T, E, 2]`` raw policy actions.
        :return: ``obs [T, E, 28]`` (of the fresh path where one ended), ``reward [T, E]``,
            ``cost [T, E]``, ``terminated [T, E]`` (always False), ``truncated [T, E]``.
        """
        expected = (self.num_tasks, self.num_envs, ACTION_DIM)
        if tuple(action.shape) != expected:
            raise ValueError(f"action shape {tuple(action.shape)} is invalid: expected {expected}")
        self._clock_log.append(self.elapsed.clone())
        pred = self.model.predict(
            self.state, action.to(self.dtype), self.context, generator=self.generator
        )
        next_state = pred.next_states.to(self.dtype)
        obs = observe(next_state, pred.next_accels.to(self.dtype))
        reward = circle_reward(next_state, self.task_tensors)
        cost = wall_cost(next_state, self.task_tensors)
        self.path_steps = self.path_steps + 1
        self.elapsed = self.elapsed + 1
        self.path_disagreement = self.path_disagreement + pred.disagreement.to(self.dtype)
        self.final_obs = obs
        by_length = self.path_steps >= self.max_length
        by_uncertainty = self.path_disagreement > self.disagreement_limit
        by_episode = self.elapsed >= self.episode_steps
        truncated = by_length | by_uncertainty | by_episode
        terminated = torch.zeros_like(truncated)
        self._steps += action.shape[0] * action.shape[1]
        self._disagreement_sum += float(pred.disagreement.double().sum())
        if bool(truncated.any()):
            done = truncated.nonzero(as_tuple=True)
            self._ended += len(done[0])
            self._ended_steps += int(self.path_steps[done].sum())
            self._by_length += int(by_length[done].sum())
            self._by_uncertainty += int(by_uncertainty[done].sum())
            self._by_episode += int(by_episode[done].sum())
            states, accels, timesteps = self._draw_starts(done[0])
            next_state = next_state.clone()
            next_state[done] = states
            obs = obs.clone()
            obs[done] = observe(states, accels)
            self.elapsed[done] = timesteps
            self.path_steps[done] = 0
            self.path_disagreement[done] = 0.0
        self.state = next_state
        return obs, reward, cost, terminated, truncated

    def step_timesteps(self) -> Tensor:
        """Real-episode timestep of the state every step since :meth:`reset` acted in.

        :func:`meta_safe.rl.rollout.collect` records this same clock (:attr:`elapsed` before
        each step) as ``Batch.timestep``: the real-episode timestep (start timestep + steps
        taken), which the time-aware value features need.

        :return: ``[T, E, N]`` long for the ``N`` steps since the last reset (same layout
            as ``Batch.timestep``).
        """
        if not self._clock_log:
            return torch.zeros(self.num_tasks, self.num_envs, 0, dtype=torch.long)
        return torch.stack(self._clock_log, 2)

    # ------------------------------------------------------------------ statistics
    def _reset_stats(self) -> None:
        self._steps = 0
        self._disagreement_sum = 0.0
        self._ended = self._ended_steps = 0
        self._by_length = self._by_uncertainty = self._by_episode = 0

    def path_stats(self) -> dict[str, float]:
        """Statistics of the paths ended since the last :meth:`reset` (for logging).

        ``paths_ended``; ``mean_path_length`` (steps per ended path, NaN if none ended);
        ``stopped_by_uncertainty`` / ``stopped_by_length`` / ``stopped_by_episode_end``:
        the share of ended paths whose condition held at the end (several can hold at
        once, so the shares may sum to more than 1; NaN if none ended);
        ``mean_step_disagreement``: mean one-step disagreement over all steps taken.
        """
        nan = float("nan")
        ended = self._ended
        return {
            "paths_ended": float(ended),
            "mean_path_length": self._ended_steps / ended if ended else nan,
            "stopped_by_uncertainty": self._by_uncertainty / ended if ended else nan,
            "stopped_by_length": self._by_length / ended if ended else nan,
            "stopped_by_episode_end": self._by_episode / ended if ended else nan,
            "mean_step_disagreement": self._disagreement_sum / self._steps if self._steps else nan,
        }


def model_fraction(
    current_disagreement: float,
    initial_disagreement: float,
    real_floor: float,
    max_model_fraction: float,
) -> float:
    """Share of imagined samples in an update, following the model's uncertainty.

    ``fraction = min(max_model_fraction, 1 - real_floor) * min(1, initial / current)``

    A model at most as uncertain as after its initial training (``current <= initial``)
    gets the full share; one that became more uncertain (e.g. the policy moved away from
    the data) gets proportionally less. The real share ``1 - fraction`` never falls
    below ``real_floor``. Conventions: ``current == 0`` counts as fully confident (ratio
    1); ``initial == 0 < current`` gives 0.

    :param current_disagreement: mean one-step disagreement now, ``>= 0``.
    :param initial_disagreement: the same measured after initial training, ``>= 0``.
    :param real_floor: minimal share of real samples, in ``[0, 1]``.
    :param max_model_fraction: maximal share of model samples, in ``[0, 1]``.
    :return: the model share, in ``[0, min(max_model_fraction, 1 - real_floor)]``.
    """
    for name, value in (
        ("current_disagreement", current_disagreement),
        ("initial_disagreement", initial_disagreement),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value!r} is invalid: must be a finite number >= 0")
    for name, value in (("real_floor", real_floor), ("max_model_fraction", max_model_fraction)):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name}={value!r} is invalid: valid range is [0, 1]")
    cap = min(max_model_fraction, 1.0 - real_floor)
    if current_disagreement == 0:
        return cap
    return cap * min(1.0, initial_disagreement / current_disagreement)
