"""The MuJoCo backend behind the batched ``[tasks, envs]`` tensor interface.

:class:`MujocoBatchedEnv` steps ``tasks x envs`` :class:`MujocoCircleEnv` instances
in-process (on 2 cores a process pool costs more in communication than it saves,
see ``experiments/bench_envs.py``), optionally on several threads: ``mj_step`` and
``mj_forward`` release the GIL, and the physics is most of a step's time. It exposes
the same API as
:class:`stochastic_circle.torch_backend.BatchedCircleEnv`, so training code can
switch backend with one config value.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from stochastic_circle.mujoco_backend import MujocoCircleEnv, planar_state_of
from stochastic_circle.tasks import CircleTask


class MujocoBatchedEnv:
    """``len(tasks)`` x ``num_envs`` MuJoCo circle envs with tensor in/out.

    Ended episodes reset automatically; :attr:`final_obs` holds the observation
    each env ended on. Env ``(t, e)`` is seeded ``seed + t * num_envs + e``.

    :param step_threads: threads that step disjoint slices of the envs; results do not
        depend on it (each env has its own model, data and random generator).
    :param track_states: keep :attr:`state` (``[T, E, 6]`` planar state of every agent,
        after any auto-reset) and :attr:`final_state` (the state each step ended in,
        before any reset), as the torch backend does; both stay ``None`` otherwise.
        Model-based data sources need them; they cost one velocity query per step.
    """

    def __init__(
        self,
        tasks: Sequence[CircleTask],
        num_envs: int,
        seed: int = 0,
        placement: float = 0.2,
        episode_steps: int = 500,
        dtype: torch.dtype = torch.float32,
        step_threads: int = 1,
        device: str | torch.device = "cpu",
        track_states: bool = False,
    ) -> None:
        if not tasks:
            raise ValueError("tasks is empty: give at least one CircleTask")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} is invalid: must be >= 1")
        if step_threads < 1:
            raise ValueError(f"step_threads={step_threads} is invalid: must be >= 1")
        robots = {t.robot for t in tasks}
        if len(robots) > 1:
            raise ValueError(f"tasks mix robots {sorted(robots)}: one robot per batched env")
        self.tasks = list(tasks)
        self.num_tasks, self.num_envs, self.dtype = len(self.tasks), num_envs, dtype
        self.seed = seed
        self.device = torch.device(device)  # MuJoCo steps on the CPU; batches move here
        self.envs = [
            [
                MujocoCircleEnv(task, placement=placement, episode_steps=episode_steps)
                for _ in range(num_envs)
            ]
            for task in self.tasks
        ]
        self._obs_dim = int(self.envs[0][0].observation_space.shape[0])
        self.final_obs = torch.zeros(self.num_tasks, num_envs, self._obs_dim, dtype=dtype)
        self._seeded = False
        self.track_states = track_states
        self.state: Tensor | None = None
        self.final_state: Tensor | None = None
        flat = [(t, e) for t in range(self.num_tasks) for e in range(num_envs)]
        threads = min(step_threads, len(flat))
        # Interleaved slices, one per thread; each writes only its own entries of the outputs.
        self._slices = [flat[i::threads] for i in range(threads)]
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def close(self) -> None:
        """Stop the stepping threads (the envs hold no other resources)."""
        pool = getattr(self, "_pool", None)  # absent when __init__ raised early
        if pool is not None:
            pool.shutdown(wait=False)
            self._pool = None

    def __del__(self) -> None:
        self.close()

    @property
    def obs_dim(self) -> int:
        return self._obs_dim

    @property
    def action_dim(self) -> int:
        return 2

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; the first call seeds them. :return: obs ``[T, E, obs_dim]``."""
        if seed is None and not self._seeded:
            seed = self.seed
        obs = np.empty((self.num_tasks, self.num_envs, self._obs_dim))
        for t, row in enumerate(self.envs):
            for e, env in enumerate(row):
                env_seed = None if seed is None else seed + t * self.num_envs + e
                obs[t, e], _ = env.reset(seed=env_seed)
        self._seeded = True
        if self.track_states:
            self.state = self.planar_states()
            self.final_state = self.state.clone()
        return self._tensor(obs)

    def planar_states(self) -> Tensor:
        """``[T, E, 6]`` world-frame ``[x, y, heading, vx, vy, omega]`` of every agent."""
        states = [[planar_state_of(env.model, env.data) for env in row] for row in self.envs]
        return self._tensor(np.asarray(states))

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Step every env. :param action: ``[T, E, 2]``.

        :return: ``obs [T, E, obs_dim]`` (new episode's first obs where one ended),
            ``reward``, ``cost``, ``terminated``, ``truncated`` each ``[T, E]``.
        """
        expected = (self.num_tasks, self.num_envs, 2)
        if tuple(action.shape) != expected:
            raise ValueError(f"action shape {tuple(action.shape)} is invalid: expected {expected}")
        actions = action.detach().cpu().double().numpy()
        shape = (self.num_tasks, self.num_envs)
        obs = np.empty((*shape, self._obs_dim))
        final = np.empty_like(obs)
        reward, cost = np.empty(shape), np.empty(shape)
        terminated, truncated = np.zeros(shape, bool), np.zeros(shape, bool)
        track = self.track_states
        if track:
            states, final_states = np.empty((*shape, 6)), np.empty((*shape, 6))

        def step_slice(indices: list[tuple[int, int]]) -> None:
            for t, e in indices:
                env = self.envs[t][e]
                o, r, c, term, trunc, _ = env.step_with_cost(actions[t, e])
                final[t, e], reward[t, e], cost[t, e] = o, r, c
                terminated[t, e], truncated[t, e] = term, trunc
                ended = term or trunc
                if track:
                    final_states[t, e] = planar_state_of(env.model, env.data)
                obs[t, e] = env.reset()[0] if ended else o
                if track:
                    states[t, e] = (
                        planar_state_of(env.model, env.data) if ended else final_states[t, e]
                    )

        if self._pool is None:
            step_slice(self._slices[0])
        else:
            for done in [self._pool.submit(step_slice, part) for part in self._slices]:
                done.result()  # re-raises a worker's exception here
        self.final_obs = self._tensor(final)
        if track:
            self.state, self.final_state = self._tensor(states), self._tensor(final_states)
        return (
            self._tensor(obs),
            self._tensor(reward),
            self._tensor(cost),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
        )
