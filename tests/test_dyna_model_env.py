"""Imagined rollouts: ModelEnv against the real env, path ends, the sampler end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from meta_safe.dyna import DynaState
from meta_safe.dyna.model_env import ModelEnv, model_fraction
from meta_safe.dyna.models import (
    EnsembleModel,
    KnownModel,
    Prediction,
    Transitions,
    context_from_tasks,
)
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, stack_params
from meta_safe.rl.surrogate import AdvantageConfig, prepare
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv, observe

# walls close to the start box so that some steps cost; different physics per task
TASKS = [
    CircleTask(radius=1.0, wall_distance=0.25, damping_scale=1.2, gear_scale=0.8),
    CircleTask(radius=1.4, wall_distance=0.3, num_walls=4, damping_scale=0.9, gear_scale=1.1),
]


class ConstantDisagreement:
    """The known physics reporting a constant disagreement per step."""

    def __init__(self, value: float) -> None:
        self.known, self.value = KnownModel(), value

    def predict(self, states, actions, context, generator=None) -> Prediction:
        pred = self.known.predict(states, actions, context)
        return Prediction(
            pred.next_states, pred.next_accels, torch.full(states.shape[:-1], self.value)
        )


def real_starts(steps: int = 30, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the real env a few random steps: ``(states [T,1,6], accels, timesteps, obs)``."""
    env = BatchedCircleEnv(TASKS, num_envs=1, seed=seed, fast=False)
    obs = env.reset()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        obs, *_ = env.step(torch.randn(len(TASKS), 1, 2, generator=g))
    return env.state.clone(), obs[..., :2].clone(), env.elapsed.clone(), obs


def make_env(model=None, starts=None, **kwargs) -> ModelEnv:
    states, accels, timesteps, _ = starts if starts is not None else real_starts()
    defaults = {"num_envs": 4, "max_length": 100}
    defaults.update(kwargs)
    return ModelEnv(model or KnownModel(), TASKS, states, accels, timesteps, **defaults)


def test_known_model_paths_reproduce_the_real_env() -> None:
    starts = real_starts()
    states, _, timesteps, real_obs = starts
    env = make_env(starts=starts, num_envs=4, max_length=60)
    obs = env.reset()
    torch.testing.assert_close(obs, real_obs.expand(2, 4, 28), rtol=0, atol=1e-6)
    assert torch.equal(env.elapsed, timesteps.expand(2, 4))
    replica = BatchedCircleEnv(TASKS, num_envs=4, fast=False)
    replica.reset()
    replica.set_state(states.expand(2, 4, 6))
    replica.elapsed = timesteps.expand(2, 4).clone()
    g = torch.Generator().manual_seed(1)
    costs = []
    for _ in range(59):
        action = 1.5 * torch.randn(2, 4, 2, generator=g)
        got = env.step(action)
        want = replica.step(action)
        for name, a, b in zip(("obs", "reward", "cost"), got[:3], want[:3], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
        assert not got[3].any() and not got[4].any()
        assert torch.equal(env.elapsed, replica.elapsed)
        costs.append(got[2])
    assert 0 < torch.stack(costs).mean() < 1  # the comparison covers both cost values


def test_truncation_at_max_length_and_path_stats() -> None:
    env = make_env(max_length=3)
    env.reset()
    ends = [env.step(torch.zeros(2, 4, 2))[4] for _ in range(9)]
    for i, truncated in enumerate(ends):
        assert bool(truncated.all()) == (i % 3 == 2) and bool(truncated.any()) == (i % 3 == 2)
    stats = env.path_stats()
    assert stats["paths_ended"] == 24 and stats["mean_path_length"] == 3
    assert stats["stopped_by_length"] == 1 and stats["stopped_by_uncertainty"] == 0
    assert stats["mean_step_disagreement"] == 0
    env.reset()
    assert math.isnan(env.path_stats()["mean_path_length"])  # statistics restart at reset


def test_truncation_at_disagreement_limit() -> None:
    env = make_env(ConstantDisagreement(1.0), max_length=10, disagreement_limit=2.5)
    env.reset()
    ends = [env.step(torch.zeros(2, 4, 2))[4] for _ in range(6)]
    assert [bool(t.all()) for t in ends] == [False, False, True, False, False, True]
    assert not any(bool(t.any()) for i, t in enumerate(ends) if i % 3 != 2)
    stats = env.path_stats()
    assert stats["stopped_by_uncertainty"] == 1 and stats["stopped_by_length"] == 0
    assert stats["mean_step_disagreement"] == 1.0
    # no limit: only max_length ends paths
    env = make_env(ConstantDisagreement(1.0), max_length=10)
    env.reset()
    assert not any(bool(env.step(torch.zeros(2, 4, 2))[4].any()) for _ in range(9))


def test_truncation_at_episode_end() -> None:
    states, accels, _, _ = real_starts()
    timesteps = torch.tensor([[8], [0]])  # task 0 starts 2 steps before its episode ends
    env = make_env(starts=(states, accels, timesteps, None), episode_steps=10, max_length=50)
    env.reset()
    ends = torch.stack([env.step(torch.zeros(2, 4, 2))[4] for _ in range(10)])  # [10, T, E]
    assert ends[:, 0].all(-1).tolist() == [False, True] * 5  # 8 -> 10, again from 8
    assert ends[:, 1].any(-1).tolist() == [False] * 9 + [True]  # 0 -> 10
    assert env.path_stats()["stopped_by_episode_end"] == 1
    with pytest.raises(ValueError, match="start_timesteps must lie in"):
        make_env(starts=(states, accels, timesteps + 2, None), episode_steps=10)


def test_auto_reset_restores_a_start_state_and_keeps_final_obs() -> None:
    real = [real_starts(steps=s, seed=s) for s in (10, 20, 30)]
    states = torch.cat([r[0] for r in real], 1)  # [T, 3, 6]
    accels = torch.cat([r[1] for r in real], 1)
    timesteps = torch.cat([r[2] for r in real], 1)
    env = make_env(starts=(states, accels, timesteps, None), num_envs=5, max_length=2)
    env.reset(seed=3)
    env.step(torch.zeros(2, 5, 2))
    before = env.state.clone()
    action = torch.ones(2, 5, 2)
    obs, *_, truncated = env.step(action)
    assert truncated.all()
    expected = KnownModel().predict(
        before, action, context_from_tasks(TASKS).unsqueeze(1).expand(2, 5, 2)
    )
    torch.testing.assert_close(env.final_obs, observe(expected.next_states, expected.next_accels))
    assert not torch.allclose(env.final_obs, obs)
    start_obs = observe(states, accels)  # [T, 3, 28]
    for t in range(2):
        for e in range(5):
            match = (env.state[t, e] == states[t]).all(-1).nonzero()
            assert len(match) == 1, "the path restarted from one of its task's start states"
            k = int(match[0, 0])
            assert torch.equal(obs[t, e], start_obs[t, k])
            assert env.elapsed[t, e] == timesteps[t, k] and env.path_steps[t, e] == 0


def test_collect_runs_on_model_env_end_to_end() -> None:
    env = make_env(ConstantDisagreement(0.5), num_envs=3, max_length=5, disagreement_limit=1.7)
    policy = GaussianPolicy(env.obs_dim, env.action_dim, hidden=(16,))
    params = stack_params([policy.init_params(), policy.init_params()])
    batch = collect(
        env,
        policy,
        params,
        ObsNormalizer(env.obs_dim),
        steps=12,
        generator=torch.Generator().manual_seed(0),
        per_task=True,
    )
    assert batch.obs.shape == (2, 3, 12, 28) and batch.actions.shape == (2, 3, 12, 2)
    # disagreement 0.5 per step exceeds 1.7 at the 4th step of every path
    expected = torch.zeros(12, dtype=torch.bool)
    expected[[3, 7, 11]] = True
    assert torch.equal(batch.truncated, expected.expand(2, 3, 12))
    assert not batch.terminated.any()
    assert torch.equal(batch.episodes, torch.tensor([9, 9]))
    # the real-episode clock of every step: the start states were 30 steps into an episode
    clock = (30 + torch.arange(12) % 4).expand(2, 3, 12)
    assert torch.equal(env.step_timesteps(), clock)
    assert torch.equal(batch.timestep, clock)  # collect reads env.elapsed
    assert torch.isfinite(batch.episode_return).all() and torch.isfinite(batch.episode_cost).all()
    data = prepare(batch, AdvantageConfig(), horizon=500)
    assert len(data) == 2
    for task in data:
        assert task.obs.shape == (36, 28) and task.reward_adv.shape == (36,)
        assert torch.isfinite(task.reward_adv).all() and torch.isfinite(task.cost_adv).all()
    assert env.path_stats()["stopped_by_uncertainty"] == 1


def test_collect_with_a_learned_ensemble_and_calibrated_limit() -> None:
    """The whole model side: real data -> ensemble -> calibrated limit -> imagined batch."""
    real = BatchedCircleEnv(TASKS, num_envs=4, seed=0, fast=False)
    real.reset()
    g = torch.Generator().manual_seed(0)
    context = context_from_tasks(TASKS).unsqueeze(1).expand(2, 4, 2)
    parts, starts, accels, clocks = [], [], [], []
    for _ in range(150):
        state = real.state.clone()
        action = torch.randn(2, 4, 2, generator=g)
        obs, *_ = real.step(action)
        parts.append(Transitions.flatten(state, action, context, real.state, obs[..., :2]))
        starts.append(real.state)
        accels.append(obs[..., :2])
        clocks.append(real.elapsed)
    data = Transitions.cat(parts)
    model = EnsembleModel(members=4, elites=3, hidden=(32, 32), max_updates=300)
    model.add(data)
    metrics = model.train_model(torch.Generator().manual_seed(0))
    assert metrics["model/holdout_mse"] < metrics["model/holdout_mse_start"]
    limit = 5.0 * DynaState(model, needs_training=True).mean_disagreement(
        data.states, data.actions, data.context
    )
    assert 0 < limit < math.inf
    env = ModelEnv(
        model,
        TASKS,
        torch.cat(starts, 1),
        torch.cat(accels, 1),
        torch.cat(clocks, 1),
        num_envs=6,
        max_length=20,
        disagreement_limit=limit,
    )
    policy = GaussianPolicy(env.obs_dim, env.action_dim, hidden=(16,))
    batch = collect(
        env,
        policy,
        policy.init_params(),
        ObsNormalizer(env.obs_dim),
        steps=40,
        generator=torch.Generator().manual_seed(1),
    )
    assert not batch.terminated.any() and batch.truncated.any()
    assert torch.isfinite(batch.obs).all() and torch.isfinite(batch.rewards).all()
    stats = env.path_stats()
    assert 1 <= stats["mean_path_length"] <= 20 and stats["stopped_by_uncertainty"] > 0
    for task in prepare(batch, AdvantageConfig(), horizon=500):
        assert torch.isfinite(task.reward_adv).all() and torch.isfinite(task.cost_adv).all()


def test_model_env_is_reproducible_from_its_seed() -> None:
    states, accels, timesteps, _ = real_starts()
    spread = torch.arange(4.0)[None, :, None] * 0.1  # 4 distinct start states per task
    starts = (states + spread, accels.expand(2, 4, 2), timesteps.expand(2, 4), None)

    def run(seed: int, reset_seed: int | None = None) -> Tensor:
        env = make_env(starts=starts, num_envs=3, max_length=4, seed=seed)
        out = [env.reset(seed=reset_seed)]
        g = torch.Generator().manual_seed(0)
        out += [env.step(torch.randn(2, 3, 2, generator=g))[0] for _ in range(9)]
        return torch.stack(out)

    assert torch.equal(run(0), run(0))
    assert torch.equal(run(0, reset_seed=5), run(1, reset_seed=5))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_envs": 0}, "num_envs=0"),
        ({"max_length": 0}, "max_length=0"),
        ({"disagreement_limit": 0.0}, "disagreement_limit=0.0"),
        ({"disagreement_limit": float("nan")}, "disagreement_limit=nan"),
        ({"episode_steps": 0}, "episode_steps=0"),
    ],
)
def test_invalid_model_env_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_env(**kwargs)


def test_invalid_start_data_and_actions() -> None:
    states, accels, timesteps, _ = real_starts()
    with pytest.raises(ValueError, match="start_accels has shape"):
        ModelEnv(KnownModel(), TASKS, states, accels[:, :, :1], timesteps, 2, 5)
    with pytest.raises(ValueError, match="start_states has shape"):
        ModelEnv(KnownModel(), TASKS[:1], states, accels, timesteps, 2, 5)
    with pytest.raises(ValueError, match="integer dtype"):
        ModelEnv(KnownModel(), TASKS, states, accels, timesteps.float(), 2, 5)
    env = make_env()
    env.reset()
    with pytest.raises(ValueError, match="action shape"):
        env.step(torch.zeros(2, 3, 2))


def test_model_fraction_is_monotone_and_bounded() -> None:
    currents = [0.0, 0.5, 1.0, 2.0, 4.0, 100.0]
    fractions = [model_fraction(c, 1.0, real_floor=0.2, max_model_fraction=0.9) for c in currents]
    assert fractions[:3] == [0.8, 0.8, 0.8]  # confident: capped by the real floor (1 - 0.2)
    assert fractions[3] == pytest.approx(0.4) and fractions[4] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(fractions, fractions[1:], strict=False))
    assert all(0 <= f <= 0.8 for f in fractions)
    initials = [0.0, 0.5, 1.0, 2.0]
    by_initial = [model_fraction(1.0, i, 0.0, 0.5) for i in initials]
    assert by_initial == [0.0, 0.25, 0.5, 0.5]  # more initial uncertainty: trust more now
    assert model_fraction(1.0, 1.0, real_floor=1.0, max_model_fraction=1.0) == 0.0
    for args, message in [
        ((-1.0, 1.0, 0.2, 0.5), "current_disagreement=-1.0"),
        ((1.0, math.nan, 0.2, 0.5), "initial_disagreement=nan"),
        ((1.0, 1.0, 1.5, 0.5), "real_floor=1.5"),
        ((1.0, 1.0, 0.2, -0.1), "max_model_fraction=-0.1"),
    ]:
        with pytest.raises(ValueError, match=message):
            model_fraction(*args)
