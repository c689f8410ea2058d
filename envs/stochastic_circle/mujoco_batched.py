"""The MuJoCo backend behind the batched ``[tasks, envs]`` tensor interface.

:class:`MujocoBatchedEnv` holds ``tasks x envs`` :class:`MujocoCircleEnv` instances
in-process (on 2 cores a process pool costs more in communication than it saves,
see ``experiments/bench_envs.py``). A step runs only the physics env by env,
optionally on several threads (``mj_step`` and ``mj_forward`` release the GIL), and
computes observations, rewards, costs and states for all envs at once from the
gathered ``mjData`` fields (:mod:`stochastic_circle.mujoco_vectorized`). It exposes
the same API as :class:`stochastic_circle.torch_backend.BatchedCircleEnv`, so
training code can switch backend with one config value.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from stochastic_circle.mujoco_backend import MujocoCircleEnv, advance_physics, planar_state_of
from stochastic_circle.mujoco_vectorized import (
    body_velocity,
    circle_lidar,
    circle_reward,
    planar_state,
    quat_to_rotation,
    wall_cost,
)
from stochastic_circle.tasks import CircleTask


class MujocoBatchedEnv:
    """``len(tasks)`` x ``num_envs`` MuJoCo circle envs with tensor in/out.

    Ended episodes reset automatically; :attr:`final_obs` holds the observation
    each env ended on. Env ``(t, e)`` is seeded ``seed + t * num_envs + e``. The member
    envs (:attr:`envs`) are stepped through their ``mjData`` directly, so their own step
    counters are not used; step them only through this class.

    :param step_threads: threads that step disjoint blocks of the envs; results do not
        depend on it (each env has its own model, data and random generator).
    :param track_states: keep :attr:`state` (``[T, E, 6]`` planar state of every agent,
        after any auto-reset) and :attr:`final_state` (the state each step ended in,
        before any reset), as the torch backend does; both stay ``None`` otherwise.
        Model-based data sources need them.
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
        self._flat_envs = [env for row in self.envs for env in row]  # index t * E + e
        self._episode_steps = episode_steps
        self._elapsed = np.zeros(len(self._flat_envs), dtype=np.int64)
        self._cache_views()
        threads = min(step_threads, len(self._flat_envs))
        # Contiguous blocks of flat env indices, one per thread; each writes only its rows.
        bounds = np.linspace(0, len(self._flat_envs), threads + 1).round().astype(int)
        self._blocks = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._pool = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def _cache_views(self) -> None:
        """Keep, per env, numpy views of the ``mjData`` fields a step reads and writes
        (they stay valid: the envs never rebuild their model), and per-env task arrays."""
        first = self._flat_envs[0]
        body = first._agent_body
        root = int(first.model.body_rootid[body])
        self._physics = [(env.model, env.data, env.data.ctrl) for env in self._flat_envs]
        self._sensordata_views = [env.data.sensordata for env in self._flat_envs]
        self._position_views = [env.data.xpos[body] for env in self._flat_envs]
        self._xmat_views = [env.data.xmat[body] for env in self._flat_envs]
        self._cvel_views = [env.data.cvel[body] for env in self._flat_envs]
        self._com_views = [env.data.subtree_com[root] for env in self._flat_envs]
        self._sensor_columns = np.concatenate(
            [np.arange(s.start, s.stop) for s in first._sensor_slices]
        )
        self._ballquat_slices = list(first._ballquat_slices)
        self._ctrl_low, self._ctrl_high = first._ctrl_low, first._ctrl_high
        tasks = [env.task for env in self._flat_envs]
        self._radius = np.array([t.radius for t in tasks])
        self._wall = np.array([t.wall_distance for t in tasks])
        self._four_walls = np.array([t.num_walls == 4 for t in tasks])

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
        self._elapsed[:] = 0
        if self.track_states:
            self.state = self.planar_states()
            self.final_state = self.state.clone()
        return self._tensor(obs)

    def planar_states(self) -> Tensor:
        """``[T, E, 6]`` world-frame ``[x, y, heading, vx, vy, omega]`` of every agent."""
        states = [[planar_state_of(env.model, env.data) for env in row] for row in self.envs]
        return self._tensor(np.asarray(states))

    def _gather(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copy the post-``mj_forward`` fields of the envs ``rows`` (flat ``t * E + e``) that
        the observation, reward, cost and state need. :return: ``sensordata [n, nsensordata]``,
        agent ``position [n, 3]``, ``xmat [n, 9]`` and world-frame ``velocity [n, 6]``."""
        count = rows.stop - rows.start
        # concatenate of the 1-D views then reshape: one C loop per field (np.stack is ~5x slower)
        sensordata = np.concatenate(self._sensordata_views[rows]).reshape(count, -1)
        position = np.concatenate(self._position_views[rows]).reshape(count, 3)
        xmat = np.concatenate(self._xmat_views[rows]).reshape(count, 9)
        cvel = np.concatenate(self._cvel_views[rows]).reshape(count, 6)
        com = np.concatenate(self._com_views[rows]).reshape(count, 3)
        return sensordata, position, xmat, body_velocity(cvel, position, com)

    def _observe(
        self, sensordata: np.ndarray, position: np.ndarray, xmat: np.ndarray
    ) -> np.ndarray:
        """Stock observations ``[n, obs_dim]`` from :meth:`_gather`'s arrays."""
        blocks = [sensordata[:, self._sensor_columns]]
        blocks += [quat_to_rotation(sensordata[:, s]) for s in self._ballquat_slices]
        blocks.append(circle_lidar(position, xmat))
        return np.concatenate(blocks, axis=1)

    def _step_rows(self, rows: slice, controls: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """One env step of the envs ``rows``: the physics env by env (write the controls,
        ``mj_step`` x 10, ``mj_forward``; both MuJoCo calls release the GIL), then their
        observation, reward, cost (and state) at once, written into ``out``'s ``rows``."""
        physics = self._physics
        for i in range(rows.start, rows.stop):
            model, data, ctrl = physics[i]
            ctrl[:] = controls[i]
            advance_physics(model, data)
        sensordata, position, xmat, velocity = self._gather(rows)
        out["obs"][rows] = self._observe(sensordata, position, xmat)
        out["reward"][rows] = circle_reward(position, velocity, self._radius[rows])
        out["cost"][rows] = wall_cost(position, self._wall[rows], self._four_walls[rows])
        if self.track_states:
            out["state"][rows] = planar_state(position, xmat, velocity)

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Step every env. :param action: ``[T, E, 2]``.

        The physics runs env by env (on ``step_threads`` threads); observation, reward,
        cost and state are computed for all envs at once (:mod:`.mujoco_vectorized`).

        :return: ``obs [T, E, obs_dim]`` (new episode's first obs where one ended),
            ``reward``, ``cost``, ``terminated``, ``truncated`` each ``[T, E]``.
        """
        expected = (self.num_tasks, self.num_envs, 2)
        if tuple(action.shape) != expected:
            raise ValueError(f"action shape {tuple(action.shape)} is invalid: expected {expected}")
        if not self._seeded:
            raise RuntimeError("the envs were never reset: call reset() first")
        actions = action.detach().cpu().double().numpy().reshape(-1, 2)
        controls = np.minimum(np.maximum(actions, self._ctrl_low), self._ctrl_high)
        count = len(self._flat_envs)
        out = {
            "obs": np.empty((count, self._obs_dim)),
            "reward": np.empty(count),
            "cost": np.empty(count),
            "state": np.empty((count, 6)) if self.track_states else np.empty(0),
        }
        # The calling thread steps the first block of envs while the pool steps the others
        # (all of them itself once close() has stopped the pool).
        first, *others = self._blocks
        if self._pool is None:
            parts = []
            for rows in others:
                self._step_rows(rows, controls, out)
        else:
            parts = [self._pool.submit(self._step_rows, rows, controls, out) for rows in others]
        self._step_rows(first, controls, out)
        for done in parts:
            done.result()  # re-raises a worker's exception here
        final, reward, cost = out["obs"], out["reward"], out["cost"]
        self._elapsed += 1
        truncated = self._elapsed >= self._episode_steps
        obs = final.copy()
        ended = np.flatnonzero(truncated)
        for i in ended:  # auto-reset; env i's own step counter is not used here
            env = self._flat_envs[i]
            obs[i], _ = env.reset()
            self._elapsed[i] = 0
        shape = (self.num_tasks, self.num_envs)
        self.final_obs = self._tensor(final.reshape(*shape, -1))
        if self.track_states:
            final_states = out["state"]
            states = final_states.copy()
            for i in ended:
                env = self._flat_envs[i]
                states[i] = planar_state_of(env.model, env.data)
            self.final_state = self._tensor(final_states.reshape(*shape, 6))
            self.state = self._tensor(states.reshape(*shape, 6))
        return (
            self._tensor(obs.reshape(*shape, -1)),
            self._tensor(reward.reshape(shape)),
            self._tensor(cost.reshape(shape)),
            torch.zeros(shape, dtype=torch.bool, device=self.device),
            torch.as_tensor(truncated.reshape(shape), device=self.device),
        )
