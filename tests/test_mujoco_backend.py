"""MuJoCo backend of the circle tasks: API, seeding, no-rebuild resets, and stock parity."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from stochastic_circle import CircleTask
from stochastic_circle.mujoco_backend import (
    EPISODE_LENGTH,
    MujocoCircleEnv,
    make_vector_env,
    planar_state_of,
    sim_state_of,
)

pytestmark = pytest.mark.mujoco

STOCK_PLACEMENT = 0.8
STOCK_IDS = {"point": "SafetyPointCircle1-v0", "car": "SafetyCarCircle1-v0"}


@pytest.fixture(scope="module")
def safety_gymnasium() -> ModuleType:
    from stochastic_circle.compat import import_safety_gymnasium

    return import_safety_gymnasium()


@pytest.fixture
def point_env() -> Iterator[MujocoCircleEnv]:
    env = MujocoCircleEnv(CircleTask(robot="point"))
    yield env
    env.close()


def actions(seed: int, n: int) -> np.ndarray:
    """A reproducible action sequence; shape [n, 2]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2))


def rollout(env: MujocoCircleEnv, seed: int, acts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reset with ``seed`` and play ``acts``; returns obs [n+1, d], rewards [n], costs [n]."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, costs = [obs], [], []
    for action in acts:
        obs, reward, _, _, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        costs.append(info["cost"])
    return np.array(observations), np.array(rewards), np.array(costs)


def test_episode_truncates_at_exactly_500_steps(point_env: MujocoCircleEnv) -> None:
    point_env.reset(seed=0)
    for step, action in enumerate(actions(0, EPISODE_LENGTH), start=1):
        obs, reward, terminated, truncated, info = point_env.step(action)
        assert not terminated
        assert truncated == (step == EPISODE_LENGTH)
        assert math.isfinite(reward) and info["cost"] in (0.0, 1.0)
        assert obs.shape == (28,) and np.all(np.isfinite(obs))
    with pytest.raises(RuntimeError, match="reset"):
        point_env.step(np.zeros(2))


def test_reset_and_task_change_keep_the_compiled_model(point_env: MujocoCircleEnv) -> None:
    model, data = point_env.model, point_env.data
    for seed in range(5):
        point_env.reset(seed=seed)
        point_env.step(np.ones(2))
    new_task = CircleTask(radius=2.2, wall_distance=1.3, num_walls=4, damping_scale=2.0)
    point_env.reset(options={"task": new_task})
    point_env.set_task(new_task.with_(gear_scale=0.5))
    assert point_env.model is model and point_env.data is data
    # Only a robot change needs another model.
    point_env.set_task(CircleTask(robot="car"))
    assert point_env.model is not model
    assert point_env.observation_space.shape == (40,)


def test_same_seed_same_observations_and_different_seed_differs() -> None:
    acts = actions(1, 60)
    first = rollout(MujocoCircleEnv(), 7, acts)
    second = rollout(MujocoCircleEnv(), 7, acts)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = rollout(MujocoCircleEnv(), 8, acts)
    assert not np.array_equal(first[0], other[0])


def test_constructor_seed_makes_unseeded_resets_reproducible() -> None:
    obs_a = [MujocoCircleEnv(seed=3).reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(obs_a[0], obs_a[1])


def test_start_pose_lies_in_the_placement_box() -> None:
    assert MujocoCircleEnv(placement=0.3).placement_box == (-0.3, -0.3, 0.3, 0.3)
    env = MujocoCircleEnv(placement=(0.5, -0.3, 0.6, -0.2))
    for seed in range(10):
        env.reset(seed=seed)
        x, y, heading, *velocity = env.get_planar_state()
        assert 0.5 <= x <= 0.6 and -0.3 <= y <= -0.2
        assert np.allclose(velocity, 0.0)


def test_wall_distance_and_wall_count_set_the_cost() -> None:
    acts = actions(2, 200)
    narrow = rollout(MujocoCircleEnv(CircleTask(radius=1.0, wall_distance=0.05)), 4, acts)
    wide = rollout(MujocoCircleEnv(CircleTask(radius=1.0, wall_distance=5.0)), 4, acts)
    assert narrow[2].sum() > 0 and wide[2].sum() == 0
    np.testing.assert_array_equal(narrow[1], wide[1])  # walls do not change the reward
    # At (0, 1): outside a 0.5 box only when the two extra (|y|) walls exist.
    for num_walls, expected in ((2, 0.0), (4, 1.0)):
        env = MujocoCircleEnv(CircleTask(radius=1.0, wall_distance=0.5, num_walls=num_walls))
        env.reset(seed=0)
        env.set_planar_state([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        assert env.step(np.zeros(2))[4]["cost"] == expected


@pytest.mark.parametrize("robot", ["point", "car"])
def test_matches_stock_safety_gymnasium(safety_gymnasium: ModuleType, robot: str) -> None:
    """Same start state and actions as stock Circle1 -> same reward, cost and obs all episode."""
    stock = safety_gymnasium.make(STOCK_IDS[robot])
    stock_obs, _ = stock.reset(seed=11)
    stock_task = stock.unwrapped.task
    env = MujocoCircleEnv(
        CircleTask(robot=robot, radius=1.5, wall_distance=1.125), placement=STOCK_PLACEMENT
    )
    env.reset(seed=11)
    env.set_sim_state(sim_state_of(stock_task.model, stock_task.data))
    np.testing.assert_array_equal(
        env.get_planar_state(), planar_state_of(stock_task.model, stock_task.data)
    )
    for step, action in enumerate(actions(3, EPISODE_LENGTH)):
        stock_obs, s_reward, s_cost, s_term, s_trunc, _ = stock.step(action)
        obs, reward, cost, term, trunc, _ = env.step_with_cost(action)
        assert reward == pytest.approx(s_reward, abs=1e-8), f"reward differs at step {step}"
        assert cost == s_cost, f"cost differs at step {step}"
        assert (term, trunc) == (s_term, s_trunc)
        np.testing.assert_allclose(obs, stock_obs, atol=1e-6, rtol=1e-6)
    assert trunc
    stock.close()


def test_planar_state_round_trip_for_both_robots() -> None:
    state = np.array([0.3, -0.4, 2.5, 0.2, -0.1, 0.7])
    for robot in ("point", "car"):
        env = MujocoCircleEnv(CircleTask(robot=robot))
        env.reset(seed=0)
        env.set_planar_state(state)
        np.testing.assert_allclose(env.get_planar_state(), state, atol=1e-12)


def test_car_runs_a_full_episode() -> None:
    env = gymnasium.make("StochasticCircle-Car-v0", task=CircleTask(robot="car", radius=1.2))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (40,) and env.observation_space.contains(obs)
    steps, truncated = 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert not terminated and math.isfinite(reward)
    assert steps == EPISODE_LENGTH
    rotation = obs[15:24].reshape(3, 3)  # ballquat_rear block
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)


# Unbounded sensor readings are what stock declares too; the checker only warns about them.
@pytest.mark.filterwarnings("ignore:.*infinity")
@pytest.mark.parametrize("env_id", ["StochasticCircle-Point-v0", "StochasticCircle-Car-v0"])
def test_gymnasium_env_checker_passes(env_id: str) -> None:
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


def test_invalid_inputs_raise_clear_value_errors(point_env: MujocoCircleEnv) -> None:
    with pytest.raises(ValueError, match="robot='tank' is unknown"):
        CircleTask(robot="tank")
    with pytest.raises(ValueError, match="expected a stochastic_circle.CircleTask"):
        MujocoCircleEnv(task="point")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disagrees"):
        gymnasium.make("StochasticCircle-Point-v0", task=CircleTask(robot="car"))
    with pytest.raises(ValueError, match="placement"):
        MujocoCircleEnv(placement=(0.5, 0.0, -0.5, 1.0))
    with pytest.raises(ValueError, match="placement"):
        MujocoCircleEnv(placement=7.0)
    with pytest.raises(ValueError, match="expected a stochastic_circle.CircleTask"):
        point_env.reset(options={"task": {"radius": 2.0}})
    with pytest.raises(ValueError, match="unknown"):
        point_env.reset(options={"radius": 2.0})
    point_env.reset(seed=0)
    with pytest.raises(ValueError, match="action shape"):
        point_env.step(np.zeros(3))


def test_set_task_changes_radius_reward_without_rebuild(point_env: MujocoCircleEnv) -> None:
    model = point_env.model
    moving = [1.0, 0.0, math.pi / 2, 0.0, 0.3, 0.0]  # at (1, 0) heading counter-clockwise
    rewards = []
    for radius in (1.0, 2.5):
        point_env.reset(seed=0)
        point_env.set_task(CircleTask(radius=radius, wall_distance=0.5))
        point_env.set_planar_state(moving)
        rewards.append(point_env.step(np.zeros(2))[1])
    assert rewards[0] > rewards[1] > 0  # on the circle pays most
    assert point_env.model is model


def test_damping_and_gear_scales_change_physics_relative_to_stock(
    point_env: MujocoCircleEnv,
) -> None:
    stock_damping = point_env.model.dof_damping.copy()
    stock_gear = point_env.model.actuator_gear[:, 0].copy()
    push = np.tile([1.0, 0.0], (50, 1))

    def speed_after_push(task: CircleTask) -> float:
        point_env.reset(seed=0, options={"task": task})
        for action in push:
            point_env.step(action)
        return float(np.hypot(*point_env.get_planar_state()[3:5]))

    base = speed_after_push(CircleTask())
    assert speed_after_push(CircleTask(gear_scale=3.0)) > base
    assert speed_after_push(CircleTask(damping_scale=20.0)) < base
    np.testing.assert_allclose(point_env.model.dof_damping, 20.0 * stock_damping)
    # Scales apply to the stock values, they do not compound.
    point_env.set_task(CircleTask(damping_scale=20.0))
    point_env.set_task(CircleTask())
    np.testing.assert_array_equal(point_env.model.dof_damping, stock_damping)
    np.testing.assert_array_equal(point_env.model.actuator_gear[:, 0], stock_gear)
    assert speed_after_push(CircleTask()) == base


@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_env_runs_one_env_per_task(asynchronous: bool) -> None:
    tasks = [CircleTask(radius=1.0, wall_distance=0.05), CircleTask(radius=1.5, wall_distance=5.0)]
    envs = make_vector_env(tasks, seed=0, asynchronous=asynchronous)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 28)
        costs = np.zeros(2)
        for _ in range(100):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
            costs += info["cost"]
        assert reward.shape == (2,) and not terminated.any()
        assert costs[0] > 0 and costs[1] == 0
    finally:
        envs.close()


def test_vector_env_rejects_mixed_robots() -> None:
    with pytest.raises(ValueError, match="mix robots"):
        make_vector_env([CircleTask(robot="point"), CircleTask(robot="car")])
