"""MuJoCo backend of the stochastic circle task family, on Safety-Gymnasium's simulator.

:class:`MujocoCircleEnv` runs the same robot models (Safety-Gymnasium's
``assets/xmls/point.xml`` and ``car.xml``), the same observation and the same
reward as stock ``SafetyPointCircle1-v0`` / ``SafetyCarCircle1-v0``, but

* builds and compiles the MuJoCo model **once**: ``reset`` only resets ``mjData``
  and sets the agent pose (stock rebuilds the whole world from XML on every
  reset, 0.6-6 s, mostly loading skybox textures that only rendering uses);
* takes its circle radius, walls and physics scales from a :class:`CircleTask`
  that can change between episodes without a rebuild (only a robot change
  rebuilds);
* seeds per episode through ``reset(seed=...)`` like any gymnasium env (passes
  ``gymnasium.utils.env_checker.check_env``; stock does not).

Observation (float64), flattened in stock order. Point, 28 dims::

    [0:3]   accelerometer   (agent site frame)
    [3:6]   velocimeter     (agent site frame)
    [6:9]   gyro            (agent site frame)
    [9:12]  magnetometer    (agent site frame)
    [12:28] circle_lidar    16-bin pseudo-lidar of the circle centre, max_dist 6

Car, 40 dims::

    [0:3] accelerometer, [3:6] velocimeter, [6:9] gyro, [9:12] magnetometer,
    [12:15] ballangvel_rear, [15:24] ballquat_rear as a row-major 3x3 rotation matrix,
    [24:40] circle_lidar

Step API: :meth:`MujocoCircleEnv.step` returns the gymnasium 5-tuple
``(obs, reward, terminated, truncated, info)`` with the cost in ``info["cost"]``;
:meth:`MujocoCircleEnv.step_with_cost` returns Safety-Gymnasium's 6-tuple
``(obs, reward, cost, terminated, truncated, info)``. Episodes last
``episode_steps`` (500) steps and end with ``truncated=True``; ``terminated`` is
always False (the circle task has no terminal states).

This module imports mujoco but never ``safety_gymnasium`` itself: it only reads
the robot XML files from the installed package directory.
"""

from __future__ import annotations

import importlib.util
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from stochastic_circle.tasks import ARENA_HALF_WIDTH, ROBOTS, CircleTask

#: Stock Safety-Gymnasium settings of the circle tasks (circle_level0.py, base_task.py).
EPISODE_LENGTH: int = 500
PHYSICS_STEPS_PER_ENV_STEP: int = 10  # SimulationConf.frameskip_binom_n with p = 1
LIDAR_NUM_BINS: int = 16
LIDAR_MAX_DIST: float = 6.0
REWARD_FACTOR: float = 0.1
REWARD_CLIP: float = 10.0
FLOOR_SIZE: tuple[float, float, float] = (3.5, 3.5, 0.1)
#: Half-width of the agent's start square, as Meta-CPO; stock uses 0.8.
DEFAULT_PLACEMENT: float = 0.2

#: Sensor blocks of the observation, in stock order, per robot (see module docstring).
_SENSOR_NAMES: dict[str, tuple[str, ...]] = {
    "point": ("accelerometer", "velocimeter", "gyro", "magnetometer"),
    "car": ("accelerometer", "velocimeter", "gyro", "magnetometer", "ballangvel_rear"),
}
#: Ball-joint quaternion sensors, observed as a flattened 3x3 rotation matrix after the above.
_BALLQUAT_NAMES: dict[str, tuple[str, ...]] = {"point": (), "car": ("ballquat_rear",)}


def safety_gymnasium_asset_dir() -> str:
    """Directory of Safety-Gymnasium's robot XMLs, found without importing the package.

    Importing ``safety_gymnasium`` costs ~0.5 s and pulls gymnasium_robotics and
    pettingzoo; we only need its data files.
    """
    spec = importlib.util.find_spec("safety_gymnasium")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("safety_gymnasium is not installed: the MuJoCo backend needs its XMLs")
    return os.path.join(list(spec.submodule_search_locations)[0], "assets", "xmls")


def robot_mjcf(robot: str) -> str:
    """MJCF text of the circle world for ``robot``, physically identical to stock.

    Starts from Safety-Gymnasium's robot XML and applies the physics-relevant
    edits its ``World.build`` makes (radian angles, floor size). Left out, because
    they only serve rendering or are non-colliding static bodies without degrees
    of freedom: the skybox and floor textures, lights, extra cameras, and the
    circle / sigwall marker geoms. The agent body is compiled at the origin; its
    start pose is written into the compiled model at each reset (see
    :meth:`MujocoCircleEnv.set_planar_state`).
    """
    if robot not in ROBOTS:
        raise ValueError(f"robot={robot!r} is unknown: valid choices are {list(ROBOTS)}")
    root = ET.parse(os.path.join(safety_gymnasium_asset_dir(), f"{robot}.xml")).getroot()
    compiler = root.find("compiler")
    if compiler is None:
        compiler = ET.SubElement(root, "compiler")
    compiler.set("angle", "radian")
    for geom in root.find("worldbody").findall("geom"):
        if geom.get("name") == "floor":
            geom.set("size", " ".join(str(s) for s in FLOOR_SIZE))
    return ET.tostring(root, encoding="unicode")


def _build_model(robot: str) -> mujoco.MjModel:
    """Compile the MuJoCo model of ``robot`` (the only compile an env does per robot)."""
    return mujoco.MjModel.from_xml_string(robot_mjcf(robot))


def yaw_quat(theta: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by ``theta`` about z; shape [4]."""
    return np.array([math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)])


def planar_state_of(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """World-frame planar state of the body named ``agent`` in any circle-world model.

    Works on stock Safety-Gymnasium models too (used to copy a stock state into
    ours). Positions and velocities are those of the body frame origin, as the
    reward uses them; ``heading`` is the yaw of the body x axis (the Point's
    forward direction; the Car drives along its body -y axis).

    :return: ``[x, y, heading, vx, vy, omega]``, shape [6].
    """
    body_id = model.body("agent").id
    xmat = data.xmat[body_id]
    velocity = np.zeros(6)  # [angular(3), linear(3)] in the world frame
    mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_XBODY, body_id, velocity, 0)
    x, y = data.xpos[body_id, :2]
    heading = math.atan2(xmat[3], xmat[0])
    return np.array([x, y, heading, velocity[3], velocity[4], velocity[2]])


def advance_physics(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """The physics of one env step, with the controls already in ``data.ctrl``:
    ``mj_step`` x :data:`PHYSICS_STEPS_PER_ENV_STEP`, then ``mj_forward``. ``mj_step``
    leaves sensors and kinematics at the pre-integration state; stock calls
    ``mj_forward`` once more to read them at the new state. Both calls release the GIL."""
    mujoco.mj_step(model, data, nstep=PHYSICS_STEPS_PER_ENV_STEP)
    mujoco.mj_forward(model, data)


def sim_state_of(model: mujoco.MjModel, data: mujoco.MjData) -> dict[str, np.ndarray]:
    """Copy of everything that determines a circle world's future given the actions.

    Works on stock Safety-Gymnasium models too. Keys: ``agent_body_pos`` [3] and
    ``agent_body_quat`` [4] (the agent body's reference frame; stock bakes the
    start pose there), ``qpos`` [nq], ``qvel`` [nv]. The models have no
    actuator activations (``na == 0``) and ``mj_resetData`` clears warm starts.
    """
    body_id = model.body("agent").id
    return {
        "agent_body_pos": model.body_pos[body_id].copy(),
        "agent_body_quat": model.body_quat[body_id].copy(),
        "qpos": data.qpos.copy(),
        "qvel": data.qvel.copy(),
    }


def start_box(placement: float | Sequence[float]) -> tuple[float, float, float, float]:
    """Start-position box ``(xmin, ymin, xmax, ymax)`` from a half-width or an explicit box."""
    box = (-placement, -placement, placement, placement) if np.isscalar(placement) else placement
    if len(box) != 4:
        raise ValueError(
            f"placement={placement!r} is invalid: expected a half-width or (xmin, ymin, xmax, ymax)"
        )
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    if not all(math.isfinite(v) and abs(v) < ARENA_HALF_WIDTH for v in (xmin, ymin, xmax, ymax)):
        raise ValueError(f"placement={placement!r} is invalid: bounds must lie inside the arena")
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"placement={placement!r} is invalid: need xmin <= xmax and ymin <= ymax")
    return xmin, ymin, xmax, ymax


class MujocoCircleEnv(gymnasium.Env):
    """Circle task on Safety-Gymnasium's MuJoCo robots, with a model compiled once.

    :param task: the task; default ``CircleTask(robot=robot or "point")``.
    :param robot: optional robot name; must agree with ``task.robot`` when both are given
        (lets ``gymnasium.make`` ids fix the robot).
    :param placement: where the agent starts, uniformly: a half-width ``h`` (the square
        ``[-h, h]^2``; stock uses 0.8) or a box ``(xmin, ymin, xmax, ymax)``. The
        heading is uniform in [0, 2 pi).
    :param episode_steps: steps per episode, after which ``truncated`` is True.
    :param seed: seeds the env's generator at construction, so that even unseeded
        ``reset()`` calls are reproducible; ``reset(seed=...)`` re-seeds.
    :param render_mode: ``None`` or ``"rgb_array"`` (:meth:`render`; its renderer is built
        on the first call, so resets cost the same either way).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: CircleTask | None = None,
        robot: str | None = None,
        placement: float | Sequence[float] = DEFAULT_PLACEMENT,
        episode_steps: int = EPISODE_LENGTH,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode={render_mode!r} is unsupported: valid are None, "
                f"{self.metadata['render_modes']}"
            )
        if task is None:
            task = CircleTask(robot="point" if robot is None else robot)
        self._check_task(task)
        if robot is not None and robot != task.robot:
            raise ValueError(
                f"robot={robot!r} disagrees with task.robot={task.robot!r}: "
                f"this env id is for robot {robot!r}"
            )
        if not (isinstance(episode_steps, int) and episode_steps > 0):
            raise ValueError(f"episode_steps={episode_steps!r} is invalid: must be an int > 0")
        self.placement_box = start_box(placement)
        self.episode_steps = episode_steps
        self.render_mode = render_mode
        self._renderer: Any = None  # built on the first render(): resets stay fast
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float64)
        self._task = task
        self._build(task.robot)
        self._apply_physics_scales(task)
        self._elapsed_steps: int | None = None  # None until the first reset
        if seed is not None:
            self._np_random, _ = gymnasium.utils.seeding.np_random(seed)

    # ------------------------------------------------------------------ model
    def _build(self, robot: str) -> None:
        """Compile the model of ``robot`` and cache what stepping needs (no name lookups later)."""
        model = _build_model(robot)
        self.model: mujoco.MjModel = model
        self.data: mujoco.MjData = mujoco.MjData(model)
        self._robot = robot
        self._agent_body = model.body("agent").id
        self._stock_damping = model.dof_damping.copy()
        self._stock_gear = model.actuator_gear.copy()
        self._ctrl_low = model.actuator_ctrlrange[:, 0].copy()
        self._ctrl_high = model.actuator_ctrlrange[:, 1].copy()
        self._sensor_slices = [self._sensor_slice(n) for n in _SENSOR_NAMES[robot]]
        self._ballquat_slices = [self._sensor_slice(n) for n in _BALLQUAT_NAMES[robot]]
        self._z_height = float(model.body_pos[self._agent_body, 2])
        self._jacp = np.zeros((3, model.nv))
        self._rot9 = np.zeros(9)
        sensor_dim = sum(s.stop - s.start for s in self._sensor_slices)
        sensor_dim += 9 * len(self._ballquat_slices)
        self._lidar_start = sensor_dim
        low = np.concatenate([np.full(sensor_dim, -np.inf), np.zeros(LIDAR_NUM_BINS)])
        high = np.concatenate([np.full(sensor_dim, np.inf), np.ones(LIDAR_NUM_BINS)])
        self.observation_space = spaces.Box(low, high, dtype=np.float64)

    def _sensor_slice(self, name: str) -> slice:
        sensor = self.model.sensor(name)
        start = int(self.model.sensor_adr[sensor.id])
        return slice(start, start + int(self.model.sensor_dim[sensor.id]))

    def _apply_physics_scales(self, task: CircleTask) -> None:
        """Scale damping and gears in place, relative to stock (no recompile needed)."""
        self.model.dof_damping[:] = self._stock_damping * task.damping_scale
        # Column 0 holds the transmission's gear ratio for joint/site actuators.
        self.model.actuator_gear[:, 0] = self._stock_gear[:, 0] * task.gear_scale

    # ------------------------------------------------------------------- task
    @staticmethod
    def _check_task(task: Any) -> None:
        if not isinstance(task, CircleTask):
            raise ValueError(f"task={task!r} is invalid: expected a stochastic_circle.CircleTask")

    @property
    def task(self) -> CircleTask:
        """The current task."""
        return self._task

    def set_task(self, task: CircleTask) -> None:
        """Switch to ``task``; takes effect immediately, meant to be called between episodes.

        Radius and walls are not physical (the walls never collide, the circle is
        only seen through the lidar of its centre), so they change nothing in the
        model; damping and gear scales are edited in the compiled model. Only a
        different robot recompiles (and ends the current episode).
        """
        self._check_task(task)
        if task.robot != self._robot:
            self._build(task.robot)
            self._elapsed_steps = None
        self._task = task
        self._apply_physics_scales(task)

    # ------------------------------------------------------------------- state
    def get_planar_state(self) -> np.ndarray:
        """``[x, y, heading, vx, vy, omega]`` of the agent in the world frame; shape [6]."""
        return planar_state_of(self.model, self.data)

    def set_planar_state(self, state: Sequence[float]) -> None:
        """Set the agent's planar state ``[x, y, heading, vx, vy, omega]`` and run mj_forward.

        Point: like stock, the pose is written into the agent body's frame
        (``model.body_pos`` / ``model.body_quat``, edited in place) and qpos is
        zeroed, so qpos = (x, y, heading) offsets *in that anchor frame* and
        qvel = (R(-heading) @ (vx, vy), omega). We keep stock's anchoring rather
        than a world-frame qpos because the Point's frictional floor contact
        amplifies rounding differences ~10x per step: a rotated parametrisation
        of the same physics drifts from stock by 1e-3 within ~20 steps, while the
        anchored one stays bit-close over whole episodes.

        Car: the free joint (world frame) gets position (x, y, current z), a
        yaw-only orientation, linear velocity (vx, vy, 0) and angular velocity
        (0, 0, omega); wheel and castor joints keep their state.
        """
        x, y, heading, vx, vy, omega = (float(v) for v in np.asarray(state).reshape(6))
        qpos, qvel = self.data.qpos, self.data.qvel
        if self._robot == "point":
            self._anchor_agent(x, y, heading)
            qpos[:3] = 0.0
            cos, sin = math.cos(heading), math.sin(heading)
            qvel[:3] = (cos * vx + sin * vy, -sin * vx + cos * vy, omega)
        else:
            qpos[:2] = (x, y)
            qpos[3:7] = yaw_quat(heading)
            # Free-joint angular velocity is in the body frame; for a yaw-only
            # orientation its z axis is the world z axis.
            qvel[:6] = (vx, vy, 0.0, 0.0, 0.0, omega)
        mujoco.mj_forward(self.model, self.data)

    def _anchor_agent(self, x: float, y: float, heading: float) -> None:
        """Move the agent body's reference frame (Point: where qpos = 0 puts it)."""
        self.model.body_pos[self._agent_body, :2] = (x, y)
        self.model.body_quat[self._agent_body] = yaw_quat(heading)

    def get_sim_state(self) -> dict[str, np.ndarray]:
        """Full MuJoCo state needed to replay a trajectory exactly; see :func:`sim_state_of`."""
        return sim_state_of(self.model, self.data)

    def set_sim_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :func:`sim_state_of` state (ours or a stock env's, same robot)."""
        if state["qpos"].shape != (self.model.nq,) or state["qvel"].shape != (self.model.nv,):
            raise ValueError(
                f"state has qpos {state['qpos'].shape}, qvel {state['qvel'].shape}: "
                f"this {self._robot} model needs ({self.model.nq},), ({self.model.nv},)"
            )
        self.model.body_pos[self._agent_body] = state["agent_body_pos"]
        self.model.body_quat[self._agent_body] = state["agent_body_quat"]
        self.data.qpos[:] = state["qpos"]
        self.data.qvel[:] = state["qvel"]
        mujoco.mj_forward(self.model, self.data)

    def _place_agent(self) -> None:
        """Reset mjData and put the agent at a random start pose (uniform box, heading)."""
        mujoco.mj_resetData(self.model, self.data)
        xmin, ymin, xmax, ymax = self.placement_box
        x = self.np_random.uniform(xmin, xmax)
        y = self.np_random.uniform(ymin, ymax)
        heading = self.np_random.uniform(0.0, 2.0 * math.pi)
        if self._robot == "point":
            self._anchor_agent(x, y, heading)  # qpos stays 0 after mj_resetData
        else:
            self.data.qpos[:3] = (x, y, self._z_height)
            self.data.qpos[3:7] = yaw_quat(heading)
        mujoco.mj_forward(self.model, self.data)

    # --------------------------------------------------------- obs/reward/cost
    def _observation(self) -> np.ndarray:
        """Flattened stock observation; shape [obs_dim] (see module docstring)."""
        sensordata = self.data.sensordata
        blocks = [sensordata[s] for s in self._sensor_slices]
        for s in self._ballquat_slices:
            mujoco.mju_quat2Mat(self._rot9, sensordata[s])
            blocks.append(self._rot9.copy())
        blocks.append(self._circle_lidar())
        return np.concatenate(blocks)

    def _circle_lidar(self) -> np.ndarray:
        """Stock pseudo-lidar (with aliasing) of the circle centre at the origin; shape [16].

        Mirrors ``BaseTask._obs_lidar_pseudo`` for one position: bin value
        ``max(0, max_dist - dist) / max_dist`` in the bin of the egocentric angle,
        shared linearly with the two neighbouring bins.
        """
        pos = self.data.xpos[self._agent_body]
        # Egocentric vector to the centre: (centre - agent) expressed in the body frame.
        ego = np.matmul(-pos, self.data.xmat[self._agent_body].reshape(3, 3))
        dist = math.hypot(ego[0], ego[1])
        angle = math.atan2(ego[1], ego[0]) % (2.0 * math.pi)
        bin_size = 2.0 * math.pi / LIDAR_NUM_BINS
        index = int(angle / bin_size)
        sensor = max(0.0, LIDAR_MAX_DIST - dist) / LIDAR_MAX_DIST
        alias = (angle - bin_size * index) / bin_size
        lidar = np.zeros(LIDAR_NUM_BINS)
        lidar[index] = sensor
        plus, minus = (index + 1) % LIDAR_NUM_BINS, (index - 1) % LIDAR_NUM_BINS
        lidar[plus] = max(lidar[plus], alias * sensor)
        lidar[minus] = max(lidar[minus], (1.0 - alias) * sensor)
        return lidar

    def _reward(self) -> float:
        """``0.1 * ((-u y + v x) / r) / (1 + |r - R|)``, clipped to +-10 like stock."""
        x, y = self.data.xpos[self._agent_body, :2]
        # Stock takes the body-origin velocity as jacobian @ qvel; do the same.
        mujoco.mj_jacBody(self.model, self.data, self._jacp, None, self._agent_body)
        u, v = self._jacp[:2] @ self.data.qvel
        radius = math.sqrt(x * x + y * y)
        tangential_speed = (-u * y + v * x) / radius
        reward = REWARD_FACTOR * tangential_speed / (1.0 + abs(radius - self._task.radius))
        # min/max on a Python float: np.clip costs ~4 us a call, a tenth of a whole step.
        return min(max(float(reward), -REWARD_CLIP), REWARD_CLIP)

    def _cost(self) -> float:
        """1 outside the walls (``|x|``, and ``|y|`` with four walls, beyond wall_distance)."""
        x, y = self.data.xpos[self._agent_body, :2]
        wall = self._task.wall_distance
        outside = abs(x) > wall or (self._task.num_walls == 4 and abs(y) > wall)
        return float(outside)

    # -------------------------------------------------------------------- API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``options={"task": CircleTask}`` switches task first.

        :return: ``(obs [obs_dim], info)``; ``info["task"]`` is the current task.
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"task"}
        if unknown:
            raise ValueError(f"reset options {sorted(unknown)} are unknown: valid key is 'task'")
        if "task" in options:
            self.set_task(options["task"])
        self._place_agent()
        self._elapsed_steps = 0
        return self._observation(), {"task": self._task}

    def step_with_cost(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, float, bool, bool, dict[str, Any]]:
        """Safety-Gymnasium style step.

        :param action: shape [2], clipped to [-1, 1] (the actuators' control range).
        :return: ``(obs [obs_dim], reward, cost, terminated, truncated, info)``;
            terminated is always False, truncated True at the episode's last step.
        """
        if self._elapsed_steps is None or self._elapsed_steps >= self.episode_steps:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"action shape {action.shape} is invalid: expected (2,)")
        self.data.ctrl[:] = np.minimum(np.maximum(action, self._ctrl_low), self._ctrl_high)
        advance_physics(self.model, self.data)
        self._elapsed_steps += 1
        reward, cost = self._reward(), self._cost()
        truncated = self._elapsed_steps >= self.episode_steps
        return self._observation(), reward, cost, False, truncated, {"cost": cost}

    def render(self) -> np.ndarray | None:
        """``render_mode="rgb_array"``: a top view ``[H, W, 3]`` uint8 of the robot with the
        circle and the walls drawn (:mod:`stochastic_circle.rendering`, built on first use)."""
        if self.render_mode is None:
            return None
        if self._renderer is None:
            from stochastic_circle.rendering import CircleRenderer

            self._renderer = CircleRenderer(self.model)
        return self._renderer.render(self.data, self._task)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Gymnasium step: ``(obs [obs_dim], reward, terminated, truncated, info)``.

        The cost is in ``info["cost"]`` (0.0 or 1.0).
        """
        obs, reward, _, terminated, truncated, info = self.step_with_cost(action)
        return obs, reward, terminated, truncated, info


def make_env(task: CircleTask, seed: int | None = None, **kwargs: Any) -> MujocoCircleEnv:
    """One env for ``task`` (picklable through ``functools.partial`` for AsyncVectorEnv)."""
    return MujocoCircleEnv(task=task, seed=seed, **kwargs)


def make_vector_env(
    tasks: Sequence[CircleTask],
    seed: int = 0,
    asynchronous: bool = False,
    **kwargs: Any,
) -> gymnasium.vector.VectorEnv:
    """A vector env with one sub-env per task (sub-env ``i`` seeded with ``seed + i``).

    Observations are stacked to ``[len(tasks), obs_dim]``; the cost is in
    ``info["cost"]`` (shape [len(tasks)]). Sub-envs auto-reset at episode end, as
    gymnasium vector envs do. All tasks must share one robot (one obs space).

    :param asynchronous: one worker process per task (AsyncVectorEnv) instead of in-process.
    :param kwargs: passed to :class:`MujocoCircleEnv` (e.g. ``placement``).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty: need at least one CircleTask")
    robots = {t.robot for t in tasks if isinstance(t, CircleTask)}
    if len(robots) > 1:
        raise ValueError(f"tasks mix robots {sorted(robots)}: a vector env needs one robot")
    env_fns = [partial(make_env, task, seed + i, **kwargs) for i, task in enumerate(tasks)]
    if asynchronous:
        return gymnasium.vector.AsyncVectorEnv(env_fns)
    return gymnasium.vector.SyncVectorEnv(env_fns)
