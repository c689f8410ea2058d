"""The torch and MuJoCo backends agree: reward/cost at identical states, batched API."""

import numpy as np
import pytest
import torch

from stochastic_circle.mujoco_backend import MujocoCircleEnv
from stochastic_circle.mujoco_batched import MujocoBatchedEnv
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv, TaskTensors, circle_reward, wall_cost
from stochastic_circle.torch_backend import observe as torch_observe

pytestmark = pytest.mark.mujoco


@pytest.mark.parametrize("num_walls", [2, 4])
def test_identical_states_give_identical_reward_cost_and_observation(num_walls: int) -> None:
    task = CircleTask(radius=1.3, wall_distance=0.8, num_walls=num_walls)
    env = MujocoCircleEnv(task, seed=0)
    env.reset(seed=0)
    tensors = TaskTensors.from_tasks([task], torch.float64)
    rng = np.random.default_rng(0)
    for _ in range(200):
        state = np.r_[rng.uniform(-1.6, 1.6, 2), rng.uniform(-np.pi, np.pi), rng.normal(0, 0.5, 3)]
        env.set_planar_state(state)
        mj_reward, mj_cost = env._reward(), env._cost()
        mj_obs = env._observation()
        s = torch.tensor(state)[None, None]
        assert circle_reward(s, tensors).item() == pytest.approx(mj_reward, abs=1e-12)
        assert wall_cost(s, tensors).item() == mj_cost
        torch_obs = torch_observe(s, torch.zeros(1, 1, 2, dtype=torch.float64))[0, 0].numpy()
        # velocimeter, gyro, magnetometer and lidar are functions of the planar state alone
        np.testing.assert_allclose(torch_obs[3:], mj_obs[3:], atol=1e-9)


@pytest.mark.slow
def test_batched_mujoco_env_matches_torch_env_interface() -> None:
    tasks = [CircleTask(radius=1.2, wall_distance=0.7), CircleTask(radius=1.4, wall_distance=1.0)]
    mj = MujocoBatchedEnv(tasks, num_envs=2, seed=0, episode_steps=30)
    th = BatchedCircleEnv(tasks, num_envs=2, seed=0, episode_steps=30)
    obs_mj, obs_th = mj.reset(), th.reset()
    assert obs_mj.shape == obs_th.shape == (2, 2, 28)
    action = torch.zeros(2, 2, 2)
    action[..., 0] = 1.0
    for step in range(1, 31):
        out_mj, out_th = mj.step(action), th.step(action)
        for a, b in zip(out_mj, out_th, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
        assert bool(out_mj[4].all()) == (step == 30)
    assert mj.final_obs.shape == (2, 2, 28)
    with pytest.raises(ValueError, match="tasks mix robots"):
        MujocoBatchedEnv([CircleTask(), CircleTask(robot="car")], num_envs=1)


def test_threaded_stepping_gives_the_serial_results() -> None:
    """``step_threads`` only changes who steps which env: outputs are bit-identical."""
    tasks = [CircleTask(radius=1.2, wall_distance=0.7), CircleTask(radius=1.4, wall_distance=1.0)]
    serial = MujocoBatchedEnv(tasks, num_envs=3, seed=4, episode_steps=20)
    threaded = MujocoBatchedEnv(tasks, num_envs=3, seed=4, episode_steps=20, step_threads=2)
    torch.testing.assert_close(serial.reset(), threaded.reset(), rtol=0, atol=0)
    actions = torch.rand(45, 2, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for action in actions:  # 45 steps: episodes end and auto-reset on the way
        for a, b in zip(serial.step(action), threaded.step(action), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(serial.final_obs, threaded.final_obs, rtol=0, atol=0)
    threaded.close()
    with pytest.raises(ValueError, match="step_threads=0 is invalid"):
        MujocoBatchedEnv(tasks, num_envs=1, step_threads=0)
