"""Batched, differentiable torch backend of the circle tasks (Point robot).

Many tasks x many envs are stepped as one tensor program; every tensor has a
leading ``[tasks, envs]`` shape. The dynamics are a planar model of
Safety-Gymnasium's Point robot (``assets/xmls/point.xml``), identified from the
real MuJoCo simulator (see :class:`PointDynamics` and ``experiments/identify_point.py``).

Planar state ``[x, y, heading, vx, vy, omega]`` (world frame). One env step is
``substeps`` (10) physics steps of ``dt`` (0.002 s), like the MuJoCo task:

* turning: the velocity actuator on the hinge produces a force
  ``clip(a1 - 0.3 * omega, -0.05, 0.05)``, so
  ``omega <- turn_decay * omega + turn_gain * gear_scale * clip(...)``;
* driving: the motor force along the heading is ``clip(a0, -0.05, 0.05)``; in
  the body frame ``v_fwd <- fwd_decay * v_fwd + drive_gain * gear_scale * clip(a0)``
  and ``v_lat <- lat_decay * v_lat`` (floor friction + joint damping, both
  well described as linear per-step decay at these speeds);
* semi-implicit Euler for position and heading (MuJoCo's Euler integrator).

Reward, cost, observation layout and episode length equal the MuJoCo backend's:
observation = accelerometer(3) | velocimeter(3) | gyro(3) | magnetometer(3) |
circle pseudo-lidar(16), 28 dims.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from stochastic_circle.tasks import CircleTask

OBS_DIM: int = 28
ACTION_DIM: int = 2
LIDAR_BINS: int = 16
LIDAR_MAX_DIST: float = 6.0
REWARD_FACTOR: float = 0.1
EPISODE_STEPS: int = 500
GRAVITY: float = 9.81
#: MuJoCo's default global magnetic field, read by the magnetometer in the body frame.
MAGNETIC_FIELD: tuple[float, float] = (0.0, -0.5)


@dataclass(frozen=True)
class PointDynamics:
    """Constants of the planar Point model, fitted to MuJoCo (per physics step of ``dt``).

    Fitted by least squares on 20,000 env steps of random actions in the stock
    ``SafetyPointCircle1-v0`` simulator (``experiments/identify_point.py``).
    """

    dt: float = 0.002
    substeps: int = 10
    fwd_decay: float = 0.99626
    lat_decay: float = 0.99595
    drive_gain: float = 0.11302
    turn_decay: float = 0.72576
    turn_gain: float = 16.439
    force_limit: float = 0.05
    turn_velocity_gear: float = 0.3


@dataclass(frozen=True)
class TaskTensors:
    """Per-task parameters as tensors, each ``[tasks, 1]`` to broadcast over envs."""

    radius: Tensor
    wall_distance: Tensor
    four_walls: Tensor
    damping_scale: Tensor
    gear_scale: Tensor

    @staticmethod
    def from_tasks(
        tasks: list[CircleTask],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TaskTensors:
        for task in tasks:
            if task.robot != "point":
                raise ValueError(
                    f"robot={task.robot!r} is not available on the torch backend: valid choices "
                    "are ['point'] (use the MuJoCo backend for 'car')"
                )

        def col(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(-1)

        return TaskTensors(
            radius=col([t.radius for t in tasks]),
            wall_distance=col([t.wall_distance for t in tasks]),
            four_walls=col([float(t.num_walls == 4) for t in tasks]),
            damping_scale=col([t.damping_scale for t in tasks]),
            gear_scale=col([t.gear_scale for t in tasks]),
        )


def _decay(base: float, damping_scale: Tensor) -> Tensor:
    """Per-step velocity decay with the dissipation scaled by ``damping_scale``."""
    return 1.0 - (1.0 - base) * damping_scale


def integrate(
    state: Sequence[Tensor], action: Tensor, task: TaskTensors, model: PointDynamics
) -> tuple[list[Tensor], list[Tensor]]:
    """The arithmetic of :func:`physics_step` on separate state channels.

    :param state: the six ``[...]`` channels ``x, y, heading, vx, vy, omega``.
    :param action: ``[..., 2]`` raw actions.
    :return: ``(next state channels, [forward, lateral] body-frame acceleration)``, each
        a list of ``[...]`` tensors.
    """
    x, y, heading, vx, vy, omega = state
    action = action.clamp(-1.0, 1.0)
    drive = action[..., 0].clamp(-model.force_limit, model.force_limit) * task.gear_scale
    turn_target = action[..., 1]
    gear = task.gear_scale
    damping = task.damping_scale
    fwd_decay = _decay(model.fwd_decay, damping)
    lat_decay = _decay(model.lat_decay, damping)
    turn_decay = _decay(model.turn_decay, damping)
    fwd = lat = fwd_prev = lat_prev = x  # placeholders, assigned in the loop
    for _ in range(model.substeps):
        turn_force = (turn_target - model.turn_velocity_gear * omega).clamp(
            -model.force_limit, model.force_limit
        )
        omega = turn_decay * omega + model.turn_gain * gear * turn_force
        heading = heading + model.dt * omega
        cos, sin = torch.cos(heading), torch.sin(heading)
        fwd_prev = cos * vx + sin * vy
        lat_prev = -sin * vx + cos * vy
        fwd = fwd_decay * fwd_prev + model.drive_gain * drive
        lat = lat_decay * lat_prev
        vx = cos * fwd - sin * lat
        vy = sin * fwd + cos * lat
        x = x + model.dt * vx
        y = y + model.dt * vy
    accel = [(fwd - fwd_prev) / model.dt, (lat - lat_prev) / model.dt]
    return [x, y, heading, vx, vy, omega], accel


def physics_step(
    state: Tensor, action: Tensor, task: TaskTensors, model: PointDynamics = PointDynamics()
) -> tuple[Tensor, Tensor]:
    """Advance one env step (``model.substeps`` physics steps). Differentiable.

    :param state: ``[..., 6]`` planar state ``[x, y, heading, vx, vy, omega]``.
    :param action: ``[..., 2]`` raw actions (clipped to [-1, 1] as MuJoCo's ctrlrange does).
    :param task: per-task tensors broadcastable to ``state[..., 0]``.
    :return: ``(next_state [..., 6], body_accel [..., 2])`` where ``body_accel`` is the
        body-frame linear acceleration over the last physics step (accelerometer reading).
    """
    next_state, accel = integrate(state.unbind(-1), action, task, model)
    return torch.stack(next_state, -1), torch.stack(accel, -1)


def circle_reward(state: Tensor, task: TaskTensors) -> Tensor:
    """Safety-Gymnasium circle reward ``0.1 * ((-u*y + v*x)/r) / (1 + |r - R|)``.

    :param state: ``[..., 6]`` state after the step. :return: ``[...]``.
    """
    x, y, _, vx, vy, _ = state.unbind(-1)
    # The stock reward divides by r; guard the (measure-zero) origin against NaN.
    r = torch.sqrt(x * x + y * y).clamp_min(1e-9)
    return REWARD_FACTOR * ((-vx * y + vy * x) / r) / (1.0 + (r - task.radius).abs())


def wall_cost(state: Tensor, task: TaskTensors) -> Tensor:
    """1 when the agent is beyond a wall (``|x| > d``, or ``|y| > d`` with 4 walls), else 0."""
    wall = task.wall_distance
    outside_x = state[..., 0].abs() > wall
    outside_y = (state[..., 1].abs() > wall) & (task.four_walls > 0.5)
    return (outside_x | outside_y).to(state.dtype)


def _lidar_geometry(x: Tensor, y: Tensor, heading: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where the circle centre falls in the pseudo-lidar: ``(bin_index, alias, sensor)``,
    each ``[...]``: the bin (as a float), the fraction of the way into it, and the reading
    ``max(0, max_dist - dist) / max_dist``."""
    # Centre (0, 0) in the agent's ego frame.
    cos, sin = torch.cos(heading), torch.sin(heading)
    ego_x = cos * (-x) + sin * (-y)
    ego_y = -sin * (-x) + cos * (-y)
    dist = torch.sqrt(ego_x * ego_x + ego_y * ego_y)
    angle = torch.remainder(torch.atan2(ego_y, ego_x), 2 * math.pi)
    bin_size = 2 * math.pi / LIDAR_BINS
    bin_index = torch.floor(angle / bin_size).clamp(0, LIDAR_BINS - 1)
    alias = angle / bin_size - bin_index
    sensor = (LIDAR_MAX_DIST - dist).clamp_min(0.0) / LIDAR_MAX_DIST
    return bin_index, alias, sensor


def body_sensor_channels(
    heading: Tensor, vx: Tensor, vy: Tensor, omega: Tensor, body_accel: Sequence[Tensor]
) -> list[Tensor]:
    """The first 12 observation entries, one ``[...]`` tensor each: accelerometer,
    velocimeter, gyro and magnetometer in the body frame (``body_accel``: forward and
    lateral channels)."""
    cos, sin = torch.cos(heading), torch.sin(heading)
    zeros = torch.zeros_like(heading)
    mx, my = MAGNETIC_FIELD
    return [
        body_accel[0], body_accel[1], zeros + GRAVITY,  # accelerometer
        cos * vx + sin * vy, -sin * vx + cos * vy, zeros,  # velocimeter
        zeros, zeros, omega,  # gyro
        cos * mx + sin * my, -sin * mx + cos * my, zeros,  # magnetometer
    ]  # fmt: skip


def circle_lidar(state: Tensor) -> Tensor:
    """16-bin pseudo-lidar of the circle centre with aliasing, as Safety-Gymnasium.

    :param state: ``[..., 6]``. :return: ``[..., 16]`` readings in [0, 1].
    """
    bin_index, alias, sensor = _lidar_geometry(state[..., 0], state[..., 1], state[..., 2])
    bins = torch.arange(LIDAR_BINS, device=state.device, dtype=state.dtype)
    idx = bin_index.unsqueeze(-1)
    hit = (bins == idx).to(state.dtype)
    plus = (bins == torch.remainder(idx + 1, LIDAR_BINS)).to(state.dtype)
    minus = (bins == torch.remainder(idx - 1, LIDAR_BINS)).to(state.dtype)
    s = sensor.unsqueeze(-1)
    reading = torch.maximum(hit * s, plus * alias.unsqueeze(-1) * s)
    return torch.maximum(reading, minus * (1 - alias).unsqueeze(-1) * s)


def observe(state: Tensor, body_accel: Tensor) -> Tensor:
    """Observation vector with the MuJoCo task's layout.

    :param state: ``[..., 6]``. :param body_accel: ``[..., 2]``. :return: ``[..., 28]``.
    """
    _, _, heading, vx, vy, omega = state.unbind(-1)
    sensors = body_sensor_channels(heading, vx, vy, omega, body_accel.unbind(-1))
    return torch.cat([torch.stack(sensors, -1), circle_lidar(state)], -1)


def lidar_channels(x: Tensor, y: Tensor, heading: Tensor) -> list[Tensor]:
    """The 16 readings of :func:`circle_lidar`, one ``[...]`` tensor per bin, with the
    same arithmetic. Every operation is elementwise over the envs, so a compiler fuses
    them into one vectorised loop (the ``[..., 16]`` form recomputes the angle per bin)."""
    bin_index, alias, sensor = _lidar_geometry(x, y, heading)
    following = torch.remainder(bin_index + 1, LIDAR_BINS)
    preceding = torch.remainder(bin_index - 1, LIDAR_BINS)
    readings = []
    for bin in range(LIDAR_BINS):
        hit = (bin_index == bin).to(x.dtype)
        plus = (following == bin).to(x.dtype)
        minus = (preceding == bin).to(x.dtype)
        reading = torch.maximum(hit * sensor, plus * alias * sensor)
        readings.append(torch.maximum(reading, minus * (1 - alias) * sensor))
    return readings


def observation_channels(state: Sequence[Tensor], body_accel: Sequence[Tensor]) -> list[Tensor]:
    """The 28 entries of :func:`observe`, one ``[...]`` tensor each.

    :param state: the six state channels. :param body_accel: forward and lateral channels.
    """
    x, y, heading, vx, vy, omega = state
    sensors = body_sensor_channels(heading, vx, vy, omega, body_accel)
    return [*sensors, *lidar_channels(x, y, heading)]


def channel_major(values: Tensor) -> Tensor:
    """A copy of ``values [..., C]`` stored channel by channel: each of the ``C`` channels
    is one contiguous ``[...]`` plane (a ``[C, ...]`` buffer seen as ``[..., C]``). The
    compiled step reads and writes this layout with vector instructions."""
    *lead, channels = values.shape
    strides, size = [], 1
    for extent in reversed(lead):
        strides.insert(0, size)
        size *= extent
    # allocated with these strides rather than as a view of a [C, ...] buffer: the compiled
    # step's outputs have no base tensor, and its guards tell the two apart
    planes = torch.empty_strided(
        values.shape, (*strides, size), dtype=values.dtype, device=values.device
    )
    return planes.copy_(values)


def env_step(
    state: Tensor, action: Tensor, task: TaskTensors, model: PointDynamics = PointDynamics()
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One env step as a single tensor program: physics, observation, reward and cost.

    :return: ``(next_state [..., 6], obs [..., 28], reward [...], cost [...])``.
    """
    next_state, accel = physics_step(state, action, task, model)
    obs = observe(next_state, accel)
    return next_state, obs, circle_reward(next_state, task), wall_cost(next_state, task)


def clocked_env_step(
    state: Tensor,
    action: Tensor,
    elapsed: Tensor,
    episode_steps: int,
    task: TaskTensors,
    model: PointDynamics,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`env_step` plus the episode clock, everything :meth:`BatchedCircleEnv.step` computes.

    :return: ``(next_state, obs, reward, cost, elapsed + 1, terminated, truncated)``.
    """
    next_state, obs, reward, cost = env_step(state, action, task, model)
    elapsed = elapsed + 1
    truncated = elapsed >= episode_steps
    return next_state, obs, reward, cost, elapsed, torch.zeros_like(truncated), truncated


def fused_env_step(
    state: Tensor,
    action: Tensor,
    elapsed: Tensor,
    episode_steps: int,
    task: TaskTensors,
    model: PointDynamics,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`clocked_env_step` written channel by channel, the form :class:`FastEnvStep`
    compiles: the same arithmetic, and ``next_state`` and ``obs`` come out in
    :func:`channel_major` layout.

    :return: ``(next_state [..., 6], obs [..., 28], reward, cost, elapsed + 1, terminated,
        truncated)``.
    """
    channels, accel = integrate(state.unbind(-1), action, task, model)
    next_state = torch.stack(channels, 0).movedim(0, -1)
    obs = torch.stack(observation_channels(channels, accel), 0).movedim(0, -1)
    elapsed = elapsed + 1
    truncated = elapsed >= episode_steps
    reward, cost = circle_reward(next_state, task), wall_cost(next_state, task)
    return next_state, obs, reward, cost, elapsed, torch.zeros_like(truncated), truncated


#: Compiled variants (shapes, dtypes, dynamics constants) one process may build per thread
#: count before it steps eagerly.
RECOMPILE_LIMIT: int = 64

#: Compile the step with the number of tasks (dim 0) as a dynamic size from the first call
#: (``STOCHASTIC_CIRCLE_DYNAMIC_TASKS=0``: static first, as dynamo does by default).
DYNAMIC_TASKS: bool = os.environ.get("STOCHASTIC_CIRCLE_DYNAMIC_TASKS", "1") != "0"

#: Elements per step from which the compiled step runs on all of torch's threads (below
#: it, one thread, like torch's own elementwise kernels).
PARALLEL_STEP_ELEMENTS: int = 4096


class FastEnvStep:
    """:func:`fused_env_step` compiled by ``torch.compile`` (inductor) into one C++ kernel.

    Eager, a step is ~300 tiny torch ops whose dispatch overhead (~1 ms) dominates at
    small batches; the compiled kernel is one call with the same arithmetic as
    :func:`clocked_env_step` (equal up to float rounding, e.g. vectorised vs scalar
    ``sin``). Inputs in :func:`channel_major` layout (as :class:`BatchedCircleEnv` keeps
    its state) are read with vector loads. No autograd: use :func:`physics_step` to
    differentiate. Its first compile treats the number of tasks as a dynamic size
    (:data:`DYNAMIC_TASKS`), so any number of tasks of the same envs per task shares one
    kernel; another number of envs per task, a single task or another dtype compiles once
    more. A compile takes tens of seconds on 2 cores, a few seconds once
    inductor's disk cache holds the kernel. If compiling fails it warns once and steps eagerly
    (:func:`clocked_env_step`) from then on. ``STOCHASTIC_CIRCLE_COMPILE=0`` in the
    environment skips compiling altogether. Below :data:`PARALLEL_STEP_ELEMENTS` envs
    the kernel runs on one thread, as eager torch would, since an OpenMP kernel stalls
    for milliseconds when other processes hold the cores; from there on it uses all of
    torch's threads.
    """

    def __init__(self) -> None:
        self.enabled = os.environ.get("STOCHASTIC_CIRCLE_COMPILE", "1") != "0"
        self._compiled: dict[int, Callable[..., tuple[Tensor, ...]]] = {}

    def compiled(self, threads: int) -> Callable[..., tuple[Tensor, ...]]:
        """The compiled step for ``threads`` threads (compiled on first use)."""
        if threads not in self._compiled:
            self._compiled[threads] = torch.compile(
                fused_env_step,
                fullgraph=True,
                # its own cache: shapes, dtypes and models in one process add up
                recompile_limit=RECOMPILE_LIMIT,
                isolate_recompiles=True,
                # the C++ wrapper launches the kernel without a Python frame per buffer
                options={"cpp.threads": threads, "cpp_wrapper": True},
            )
        return self._compiled[threads]

    @torch.no_grad()
    def __call__(
        self,
        state: Tensor,
        action: Tensor,
        elapsed: Tensor,
        episode_steps: int,
        task: TaskTensors,
        model: PointDynamics,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        args = (state, action, elapsed, episode_steps, task, model)
        if self.enabled:
            try:
                parallel = elapsed.numel() >= PARALLEL_STEP_ELEMENTS and state.device.type == "cpu"
                threads = torch.get_num_threads() if parallel else 1
                if threads not in self._compiled and DYNAMIC_TASKS:
                    # the first trace: one kernel for any number of tasks (training's 3,
                    # evaluation's 20) instead of a static one and then a dynamic one
                    for tensor in (state, action, elapsed, *vars(task).values()):
                        torch._dynamo.maybe_mark_dynamic(tensor, 0)
                return self.compiled(threads)(*args)
            except Exception as exc:  # any compiler failure: fall back to eager
                self.enabled = False
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                warnings.warn(
                    "torch.compile of the env step failed, stepping eagerly instead: "
                    f"{type(exc).__name__}: {reason}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return clocked_env_step(*args)


#: Process-wide compiled step shared by all :class:`BatchedCircleEnv` instances.
fast_env_step = FastEnvStep()


class BatchedCircleEnv:
    """``len(tasks)`` x ``num_envs`` Point circle envs stepped together.

    Episodes last :data:`EPISODE_STEPS` steps and end with ``truncated=True``
    (never ``terminated``); ended envs reset automatically and the observation
    they ended on is kept in :attr:`final_obs` for value bootstrapping.

    :param tasks: one :class:`CircleTask` per task row.
    :param num_envs: envs per task.
    :param seed: seeds the start-state generator (reset(seed=...) reseeds).
    :param placement: half-width of the square the agent starts in (0.2 as Meta-CPO).
    :param fast: step with the compiled kernel :data:`fast_env_step` (same numbers up to
        float rounding, ~10x faster at small batches); False steps eagerly.
    :param fused_rollout: collectors may run whole stretches of steps between episode
        ends as one compiled program of policy and env (:meth:`resume` hands the state
        back); worth its compile time for an env collected from many times.
    """

    def __init__(
        self,
        tasks: list[CircleTask],
        num_envs: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        placement: float = 0.2,
        episode_steps: int = EPISODE_STEPS,
        model: PointDynamics | None = None,
        fast: bool = True,
        fused_rollout: bool = False,
    ) -> None:
        if not tasks:
            raise ValueError("tasks is empty: give at least one CircleTask")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} is invalid: must be >= 1")
        if episode_steps < 1:
            raise ValueError(f"episode_steps={episode_steps} is invalid: must be >= 1")
        self.tasks = list(tasks)
        self.num_tasks = len(tasks)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.placement = placement
        self.episode_steps = episode_steps
        self.model = model or PointDynamics()
        self.fast = fast
        self.fused_rollout = fast and fused_rollout
        self.task_tensors = TaskTensors.from_tasks(self.tasks, dtype, self.device)
        shape = (self.num_tasks, num_envs)
        # Per-env copies of the task parameters: every tensor of a step is then [tasks, envs],
        # one elementwise program that the compiler fuses into a single loop.
        self.env_task_tensors = TaskTensors(
            **{
                f.name: getattr(self.task_tensors, f.name).expand(shape).contiguous()
                for f in fields(TaskTensors)
            }
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        # channel-major (see channel_major), the layout the compiled step reads and writes
        self.state = channel_major(torch.zeros(*shape, 6, dtype=dtype, device=self.device))
        self.elapsed = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.final_obs = torch.zeros(*shape, OBS_DIM, dtype=dtype, device=self.device)
        self.final_state = torch.zeros(*shape, 6, dtype=dtype, device=self.device)
        self._obs = torch.zeros(*shape, OBS_DIM, dtype=dtype, device=self.device)

    @property
    def obs_dim(self) -> int:
        return OBS_DIM

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    def _start_states(self, count: int) -> Tensor:
        """``[count, 6]`` start states: uniform position in the placement box, random heading."""
        u = torch.rand(count, 3, generator=self.generator, device=self.device, dtype=self.dtype)
        state = torch.zeros(count, 6, dtype=self.dtype, device=self.device)
        state[:, :2] = (2 * u[:, :2] - 1) * self.placement
        state[:, 2] = (2 * u[:, 2] - 1) * math.pi
        return state

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset every env. :return: obs ``[tasks, envs, 28]``."""
        if seed is not None:
            self.generator.manual_seed(seed)
        n = self.num_tasks * self.num_envs
        # the step outputs' layout, so the compiled step's guards keep holding
        self.state = channel_major(self._start_states(n).view(self.num_tasks, self.num_envs, 6))
        self.elapsed.zero_()
        zero_accel = torch.zeros(*self.state.shape[:-1], 2, dtype=self.dtype, device=self.device)
        self._obs = observe(self.state, zero_accel)
        return self._obs

    def planar_states(self) -> Tensor:
        """``[T, E, 6]`` ``[x, y, heading, vx, vy, omega]`` of every agent (a copy)."""
        return self.state.clone()

    def set_state(self, state: Tensor) -> None:
        """Overwrite the planar state ``[tasks, envs, 6]`` (for tests and model rollouts)."""
        self.state = channel_major(state.to(self.dtype))

    def resume(self, state: Tensor, obs: Tensor, elapsed: Tensor) -> None:
        """Continue from where a compiled stretch of steps left off (no episode ended in
        it): planar state ``[T, E, 6]``, observation ``[T, E, 28]``, clock ``[T, E]``."""
        self.state = channel_major(state)
        self.final_state = state
        self.final_obs = self._obs = obs
        self.elapsed = elapsed

    def _kernel_layout(self, action: Tensor) -> Tensor:
        """``action`` as the compiled step reads it fastest: channel-major from
        :data:`PARALLEL_STEP_ELEMENTS` envs on (vector loads), as given below (where a
        copy would cost more than it saves)."""
        if self.fast and action.shape[:-1].numel() >= PARALLEL_STEP_ELEMENTS:
            return channel_major(action)
        return action

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Step all envs.

        :param action: ``[tasks, envs, 2]``.
        :return: ``obs [T, E, 28]`` (of the new episode where one ended), ``reward [T, E]``,
            ``cost [T, E]``, ``terminated [T, E]`` (always False), ``truncated [T, E]``.
        """
        expected = (self.num_tasks, self.num_envs, ACTION_DIM)
        if tuple(action.shape) != expected:
            raise ValueError(f"action shape {tuple(action.shape)} is invalid: expected {expected}")
        step = fast_env_step if self.fast else clocked_env_step
        next_state, obs, reward, cost, self.elapsed, terminated, truncated = step(
            self.state,
            self._kernel_layout(action.to(self.dtype)),
            self.elapsed,
            self.episode_steps,
            self.env_task_tensors,
            self.model,
        )
        self.final_obs = obs
        self.final_state = next_state
        if bool(truncated.any()):
            done = truncated.nonzero(as_tuple=True)
            next_state = next_state.clone()
            fresh = self._start_states(len(done[0]))
            next_state[done] = fresh
            obs = obs.clone()
            zero_accel = torch.zeros(len(done[0]), 2, dtype=self.dtype, device=self.device)
            obs[done] = observe(fresh, zero_accel)
            self.elapsed[done] = 0
        self.state = next_state
        self._obs = obs
        return obs, reward, cost, terminated, truncated
