"""Batched torch backend: shapes, episodes, differentiability and agreement with MuJoCo."""

import math

import numpy as np
import pytest
import torch

from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import (
    EPISODE_STEPS,
    OBS_DIM,
    PARALLEL_STEP_ELEMENTS,
    BatchedCircleEnv,
    PointDynamics,
    TaskTensors,
    circle_lidar,
    circle_reward,
    clocked_env_step,
    env_step,
    fast_env_step,
    fused_env_step,
    lidar_channels,
    observation_channels,
    observe,
    physics_step,
    wall_cost,
)

TASKS = [
    CircleTask(radius=1.2, wall_distance=0.8),
    CircleTask(radius=1.4, wall_distance=0.9, num_walls=4),
]


def test_shapes_truncation_and_autoreset() -> None:
    env = BatchedCircleEnv(TASKS, num_envs=3, seed=0)
    obs = env.reset()
    assert obs.shape == (2, 3, OBS_DIM)
    action = torch.zeros(2, 3, 2)
    for step in range(1, EPISODE_STEPS + 1):
        obs, reward, cost, terminated, truncated = env.step(action)
        assert reward.shape == cost.shape == truncated.shape == (2, 3)
        assert not terminated.any()
        if step < EPISODE_STEPS:
            assert not truncated.any()
    assert truncated.all()
    assert not torch.equal(env.final_obs, obs), "final_obs keeps the last obs of the ended episode"
    assert (env.elapsed == 0).all()
    assert env.state[..., :2].abs().max() <= 0.2 + 1e-6, "new episodes start in the placement box"


def test_same_seed_same_rollout() -> None:
    def rollout(seed: int) -> torch.Tensor:
        env = BatchedCircleEnv(TASKS, num_envs=2, seed=seed)
        obs = [env.reset()]
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            obs.append(env.step(torch.rand(2, 2, 2, generator=gen) * 2 - 1)[0])
        return torch.stack(obs)

    assert torch.equal(rollout(5), rollout(5))
    assert not torch.equal(rollout(5), rollout(6))


def test_reward_and_cost_formulas() -> None:
    task = TaskTensors.from_tasks(
        [CircleTask(radius=1.0, wall_distance=0.5, num_walls=4)], torch.float64
    )
    # On the circle, moving counter-clockwise at unit speed: reward = 0.1 * 1 / (1 + 0).
    state = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]], dtype=torch.float64)
    assert circle_reward(state, task).item() == pytest.approx(0.1)
    assert wall_cost(state, task).item() == 1.0  # |x| = 1 > 0.5
    inside = torch.tensor([[[0.4, 0.3, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    assert wall_cost(inside, task).item() == 0.0
    above = torch.tensor([[[0.1, 0.6, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    assert wall_cost(above, task).item() == 1.0, "four walls also bound |y|"


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="robot='car' is not available on the torch backend"):
        BatchedCircleEnv([CircleTask(robot="car")], num_envs=1)
    env = BatchedCircleEnv(TASKS, num_envs=2)
    env.reset()
    with pytest.raises(ValueError, match=r"action shape \(2, 2\) is invalid: expected \(2, 2, 2\)"):
        env.step(torch.zeros(2, 2))


def test_dynamics_are_differentiable_wrt_actions_and_state() -> None:
    task = TaskTensors.from_tasks([CircleTask()], torch.float64)
    state = torch.tensor(
        [[[0.9, 0.3, 0.4, 0.1, -0.05, 0.2]]], dtype=torch.float64, requires_grad=True
    )
    # Actions inside the actuators' force limits, where the dynamics are smooth.
    actions = (0.03 * torch.randn(5, 1, 1, 2, dtype=torch.float64)).requires_grad_()

    def total_reward(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for action in actions:
            state, _ = physics_step(state, action, task)
            total = total + circle_reward(state, task).sum()
        return total

    assert torch.autograd.gradcheck(total_reward, (state, actions), eps=1e-6, atol=1e-5)


def random_states(gen: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
    """Positions inside and outside the walls, any heading, fast and slow motion."""
    u = torch.rand(*shape, 6, generator=gen) * 2 - 1
    scale = torch.tensor([2.0, 2.0, 4 * math.pi, 1.5, 1.5, 8.0])
    return u * scale


def test_fast_step_equals_eager_reference() -> None:
    """Compiled step == eager physics_step/observe/reward/cost up to float32 rounding."""
    tasks = [
        CircleTask(radius=1.2, wall_distance=0.8, damping_scale=0.7, gear_scale=1.3),
        CircleTask(radius=1.5, wall_distance=1.1, num_walls=4, damping_scale=1.4, gear_scale=0.8),
        CircleTask(),
    ]
    task = TaskTensors.from_tasks(tasks)
    env_task = TaskTensors(
        *(t.expand(3, 64).contiguous() for t in vars(task).values())  # per-env layout
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        state = random_states(gen, (3, 64))
        # actions in [-2, 2]: outside the ctrl range, the force limits and inside (smooth)
        action = (torch.rand(3, 64, 2, generator=gen) * 4 - 2) * torch.rand(3, 64, 1, generator=gen)
        elapsed = torch.randint(0, 500, (3, 64), generator=gen)
        ref_state, ref_accel = physics_step(state, action, task)
        ref_obs = env_step(state, action, task)[1]
        fast = fast_env_step(state, action, elapsed, 500, env_task, PointDynamics())
        next_state, obs, reward, cost, new_elapsed, terminated, truncated = fast
        tol = {"rtol": 1e-6, "atol": 1e-6}
        torch.testing.assert_close(next_state, ref_state, **tol)
        # the accelerometer is a velocity difference / dt: its rounding is 1 / dt larger
        torch.testing.assert_close(obs[..., :2] * 0.002, ref_accel * 0.002, **tol)
        torch.testing.assert_close(obs[..., 2:12], ref_obs[..., 2:12], **tol)
        # lidar aliasing uses the angle in bin units (up to 16): 16x the rounding of an angle
        torch.testing.assert_close(obs[..., 12:], ref_obs[..., 12:], rtol=0, atol=1e-5)
        torch.testing.assert_close(reward, circle_reward(ref_state, task), **tol)
        assert torch.equal(cost, wall_cost(ref_state, task)) or (
            # a position within rounding of a wall may flip the 0/1 cost
            (cost != wall_cost(ref_state, task)).sum() <= 1
        )
        assert torch.equal(new_elapsed, elapsed + 1)
        assert torch.equal(truncated, elapsed + 1 >= 500) and not terminated.any()
    eager = clocked_env_step(state, action, elapsed, 500, env_task, PointDynamics())
    for a, b in zip(fast, eager, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_channel_form_computes_what_the_stacked_form_computes() -> None:
    """The per-channel lidar, observation and step that the compiler fuses give the very
    numbers of the ``[..., C]`` forms, eagerly; the step's state and observation come out
    channel-major."""
    tasks = [CircleTask(radius=1.2, wall_distance=0.8, damping_scale=0.7), CircleTask()]
    env_task = TaskTensors(
        *(t.expand(2, 32).contiguous() for t in vars(TaskTensors.from_tasks(tasks)).values())
    )
    gen = torch.Generator().manual_seed(4)
    state = random_states(gen, (2, 32))
    accel = torch.randn(2, 32, 2, generator=gen)
    x, y, heading = state.unbind(-1)[:3]
    assert torch.equal(torch.stack(lidar_channels(x, y, heading), -1), circle_lidar(state))
    channels = observation_channels(state.unbind(-1), accel.unbind(-1))
    assert torch.equal(torch.stack(channels, -1), observe(state, accel))
    action = torch.rand(2, 32, 2, generator=gen) * 2 - 1
    elapsed = torch.randint(0, 500, (2, 32), generator=gen)
    fused = fused_env_step(state, action, elapsed, 500, env_task, PointDynamics())
    eager = clocked_env_step(state, action, elapsed, 500, env_task, PointDynamics())
    for a, b in zip(fused, eager, strict=True):
        assert torch.equal(a, b)
    assert fused[0].stride() == (32, 1, 64) and fused[1].stride() == (32, 1, 64)


def test_large_batches_step_channel_major_on_all_threads_as_eager_does() -> None:
    """From PARALLEL_STEP_ELEMENTS envs the compiled step reads channel-major actions and
    runs on all threads: it still agrees with the eager env, episodes and resets
    included, and the state stays channel-major."""
    num_envs = PARALLEL_STEP_ELEMENTS // 2
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:

        def rollout(fast: bool) -> list[torch.Tensor]:
            env = BatchedCircleEnv(TASKS, num_envs, seed=5, episode_steps=3, fast=fast)
            out = [env.reset()]
            gen = torch.Generator().manual_seed(2)
            for _ in range(7):
                action = torch.rand(2, num_envs, 2, generator=gen) * 2 - 1
                out += [*env.step(action), env.state]
                if fast and fast_env_step.enabled:  # (compiled: else it steps eagerly)
                    assert env.state.stride()[-1] == 2 * num_envs
            return out

        for a, b in zip(rollout(True), rollout(False), strict=True):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_fast_env_trajectories_equal_eager_env() -> None:
    """Whole episodes incl. auto-reset: fast and eager envs agree step by step."""

    def rollout(fast: bool) -> list[torch.Tensor]:
        env = BatchedCircleEnv(TASKS, num_envs=4, seed=3, episode_steps=60, fast=fast)
        out = [env.reset()]
        gen = torch.Generator().manual_seed(1)
        for _ in range(130):
            action = torch.rand(2, 4, 2, generator=gen) * 2 - 1
            obs, reward, cost, terminated, truncated = env.step(action)
            out += [obs, reward, cost, terminated, truncated, env.final_obs, env.state]
        return out

    for a, b in zip(rollout(True), rollout(False), strict=True):
        assert a.dtype == b.dtype
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(a, b)


@pytest.mark.mujoco
def test_open_loop_trajectories_track_mujoco() -> None:
    """Same start state and random action sequence: torch vs the stock MuJoCo Point physics.

    Measured here (6 episodes each, mean position error in metres, seed 0):
    uniform random actions 0.0032 after 100 steps, 0.0117 after 500;
    smooth random-walk actions 0.0345 after 100, 0.127 after 500.
    The bounds leave about 2x headroom.
    """
    import mujoco

    from stochastic_circle.compat import import_safety_gymnasium

    env = import_safety_gymnasium().make("SafetyPointCircle1-v0")
    env.reset(seed=0)
    model, data = env.unwrapped.task.model, env.unwrapped.task.data
    task = TaskTensors.from_tasks([CircleTask()], torch.float64)
    rng = np.random.default_rng(0)
    bounds = {"uniform": {100: 0.006, 500: 0.04}, "smooth": {100: 0.06, 500: 0.25}}
    for style, limits in bounds.items():
        errors: dict[int, list[float]] = {100: [], 500: []}
        for _ in range(6):
            mujoco.mj_resetData(model, data)
            data.qpos[2] = rng.uniform(-math.pi, math.pi)
            mujoco.mj_forward(model, data)
            state = torch.tensor([[[0.0, 0.0, data.qpos[2], 0.0, 0.0, 0.0]]], dtype=torch.float64)
            action = np.zeros(2)
            for t in range(1, 501):
                if style == "uniform":
                    action = rng.uniform(-1, 1, 2)
                else:
                    action = np.clip(action + rng.normal(0, 0.1, 2), -1, 1)
                data.ctrl[:] = action
                for _ in range(10):
                    mujoco.mj_step(model, data)
                state, _ = physics_step(state, torch.tensor(action)[None, None], task)
                if t in errors:
                    errors[t].append(float(np.linalg.norm(state[0, 0, :2].numpy() - data.qpos[:2])))
        for horizon, limit in limits.items():
            mean_error = float(np.mean(errors[horizon]))
            assert mean_error < limit, (
                f"{style}: mean position error {mean_error:.4f} m after {horizon}"
            )
    env.close()


def test_fast_step_falls_back_to_eager_when_compile_fails(monkeypatch) -> None:
    from stochastic_circle.torch_backend import FastEnvStep

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = FastEnvStep()
    task = TaskTensors.from_tasks([CircleTask()])
    state, action, elapsed = torch.zeros(1, 2, 6), torch.ones(1, 2, 2), torch.zeros(1, 2).long()
    with pytest.warns(RuntimeWarning, match="RuntimeError: no compiler$"):
        out = step(state, action, elapsed, 500, task, PointDynamics())
    assert not step.enabled
    expected = clocked_env_step(state, action, elapsed, 500, task, PointDynamics())
    assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))


def test_one_compiled_step_serves_any_number_of_tasks(monkeypatch) -> None:
    """The step compiles with the number of tasks as a dynamic size: training's and
    evaluation's task counts (same envs per task) share one kernel, and its numbers for
    the second count are the eager step's."""
    from stochastic_circle import torch_backend

    monkeypatch.setattr(torch_backend, "DYNAMIC_TASKS", True)
    step = torch_backend.FastEnvStep()
    step.enabled = True  # (whatever STOCHASTIC_CIRCLE_COMPILE says)
    counters = torch._dynamo.utils.counters["stats"]
    graphs_before = counters["unique_graphs"]
    gen = torch.Generator().manual_seed(4)
    for num_tasks in (3, 5):
        tasks = [CircleTask(radius=1.0 + 0.1 * t, wall_distance=0.7) for t in range(num_tasks)]
        task = BatchedCircleEnv(tasks, num_envs=4).env_task_tensors  # [tasks, envs] each
        state = torch.rand(num_tasks, 4, 6, generator=gen) - 0.5
        action = torch.rand(num_tasks, 4, 2, generator=gen) * 2 - 1
        elapsed = torch.zeros(num_tasks, 4, dtype=torch.long)
        args = (state, action, elapsed, 500, task, PointDynamics())
        for a, b in zip(step(*args), clocked_env_step(*args), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert step.enabled
    assert counters["unique_graphs"] - graphs_before == 1
