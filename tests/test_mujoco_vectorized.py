"""The batched MuJoCo env's all-envs-at-once observation, reward, cost and state equal the
single env's, step by step, through auto-resets, for both robots and any thread count."""

import mujoco
import numpy as np
import pytest
import torch

from stochastic_circle.mujoco_backend import MujocoCircleEnv, planar_state_of
from stochastic_circle.mujoco_batched import MujocoBatchedEnv
from stochastic_circle.mujoco_vectorized import (
    body_velocity,
    circle_lidar,
    planar_state,
    quat_to_rotation,
)
from stochastic_circle.tasks import CircleTask

pytestmark = pytest.mark.mujoco


def test_quat_to_rotation_matches_mujoco() -> None:
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(50, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats[0] = (1.0, 0.0, 0.0, 0.0)
    expected = np.empty((50, 9))
    for quat, row in zip(quats, expected, strict=True):
        mujoco.mju_quat2Mat(row, quat)
    np.testing.assert_allclose(quat_to_rotation(quats), expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(quat_to_rotation(quats[:1])[0], np.eye(3).reshape(9))


@pytest.mark.parametrize("robot", ["point", "car"])
def test_lidar_and_state_match_the_single_env_at_random_states(robot: str) -> None:
    env = MujocoCircleEnv(CircleTask(robot=robot), seed=0)
    env.reset(seed=0)
    model, data, body = env.model, env.data, env._agent_body
    root = model.body_rootid[body]
    rng = np.random.default_rng(1)
    for _ in range(100):
        state = np.r_[rng.uniform(-2.5, 2.5, 2), rng.uniform(-np.pi, np.pi), rng.normal(0, 1, 3)]
        env.set_planar_state(state)
        position, xmat = data.xpos[body][None], data.xmat[body][None]
        lidar = circle_lidar(position, xmat)[0]
        np.testing.assert_allclose(lidar, env._circle_lidar(), rtol=0, atol=1e-14)
        velocity = body_velocity(data.cvel[body][None], position, data.subtree_com[root][None])
        np.testing.assert_allclose(
            planar_state(position, xmat, velocity)[0],
            planar_state_of(model, data),
            rtol=0,
            atol=1e-14,
        )


@pytest.mark.parametrize(("robot", "threads"), [("point", 1), ("point", 2), ("car", 2)])
def test_batched_steps_equal_single_env_steps(robot: str, threads: int) -> None:
    """Every output of 45 batched steps (two auto-resets) against one MujocoCircleEnv per
    (task, env) stepped with the same actions; walls close enough that cost is paid."""
    tasks = [
        CircleTask(robot=robot, radius=1.2, wall_distance=0.05),
        CircleTask(robot=robot, radius=1.4, wall_distance=0.1, num_walls=4, damping_scale=1.3),
    ]
    envs_per_task, seed, steps = 2, 3, 20
    batched = MujocoBatchedEnv(
        tasks,
        envs_per_task,
        seed=seed,
        episode_steps=steps,
        dtype=torch.float64,
        step_threads=threads,
        track_states=True,
    )
    singles = [
        [MujocoCircleEnv(t, episode_steps=steps) for _ in range(envs_per_task)] for t in tasks
    ]
    first = batched.reset().numpy()
    for t, row in enumerate(singles):
        for e, env in enumerate(row):
            np.testing.assert_array_equal(first[t, e], env.reset(seed=seed + t * 2 + e)[0])
    actions = np.random.default_rng(0).uniform(-1.3, 1.3, (45, len(tasks), envs_per_task, 2))
    total_cost = 0.0
    for action in actions:
        obs, reward, cost, terminated, truncated = (
            x.numpy() for x in batched.step(torch.from_numpy(action))
        )
        for t, row in enumerate(singles):
            for e, env in enumerate(row):
                o, r, c, term, trunc, _ = env.step_with_cost(action[t, e])
                np.testing.assert_allclose(batched.final_obs[t, e].numpy(), o, atol=1e-13)
                expected_final = planar_state_of(env.model, env.data)
                np.testing.assert_allclose(
                    batched.final_state[t, e].numpy(), expected_final, atol=1e-13
                )
                assert reward[t, e] == pytest.approx(r, abs=1e-14)
                assert cost[t, e] == c
                assert (terminated[t, e], truncated[t, e]) == (term, trunc)
                if trunc:
                    o, _ = env.reset()
                np.testing.assert_allclose(obs[t, e], o, atol=1e-13)
                state = planar_state_of(env.model, env.data)
                np.testing.assert_allclose(batched.state[t, e].numpy(), state, atol=1e-13)
                total_cost += c
    assert total_cost > 0  # the cost comparison saw both values
    batched.close()
    after_close = [x.clone() for x in batched.step(torch.from_numpy(actions[0]))]
    for t, row in enumerate(singles):  # after close() every block still steps
        for e, env in enumerate(row):
            o, r, *_ = env.step_with_cost(actions[0, t, e])
            np.testing.assert_allclose(after_close[0][t, e].numpy(), o, atol=1e-13)


def test_step_before_reset_is_a_clear_error() -> None:
    env = MujocoBatchedEnv([CircleTask()], num_envs=1)
    with pytest.raises(RuntimeError, match="call reset\\(\\) first"):
        env.step(torch.zeros(1, 1, 2))


def test_share_benchmark_times_physics_and_env_on_the_same_steps() -> None:
    from meta_safe.benchmarks.envs import bench_batched_share, share_table

    row = bench_batched_share("point", threads=2, episodes=1, seed=0)
    assert row.physics.env_steps == row.env.env_steps == 3 * 8 * 500
    assert row.physics.num_envs == row.env.num_envs == 24
    assert row.share == row.env.steps_per_second / row.physics.steps_per_second > 0
    assert "| point | 2 |" in share_table([row])
