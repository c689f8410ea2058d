"""Data sources of the inner loop: real rollouts, and real plus model (Dyna) rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from meta_safe.dyna import (
    DynaRollouts,
    DynaSettings,
    DynaState,
    build_dyna,
    held_out_errors,
    merge,
    transitions,
)
from meta_safe.dyna.model_env import ModelEnv
from meta_safe.dyna.models import EnsembleModel, KnownModel
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, stack_params
from meta_safe.rl.surrogate import AdvantageConfig
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv

HORIZON = 60
TASKS = [CircleTask(radius=1.0, wall_distance=0.7), CircleTask(radius=1.4, wall_distance=0.9)]


def setup(envs: int = 2, steps: int = HORIZON):
    torch.manual_seed(0)
    policy = GaussianPolicy(28, 2, [16], "tanh", -0.5)
    params = stack_params([policy.init_params() for _ in TASKS])
    env = BatchedCircleEnv(TASKS, envs, seed=0, episode_steps=HORIZON, fast=False)
    normalizer = ObsNormalizer(28)
    real = collect(env, policy, params, normalizer, steps, torch.Generator().manual_seed(1), True)
    return policy, params, normalizer, real


def test_real_batches_record_planar_states_consistent_with_observations() -> None:
    _, _, _, real = setup()
    assert real.states is not None and real.states.shape == (2, 2, HORIZON, 6)
    # next state of step n is the state of step n + 1 (no episode ends inside the batch)
    torch.testing.assert_close(real.next_states[:, :, :-1], real.states[:, :, 1:])
    data = transitions(real, TASKS)
    assert len(data) == 2 * 2 * HORIZON
    # the accelerometer targets are the first two entries of the next raw observation
    torch.testing.assert_close(data.next_accels, real.next_raw_obs[..., :2].reshape(-1, 2))


def imagined_batch(policy, params, normalizer, real, max_length=7):
    model_env = ModelEnv(
        KnownModel(),
        TASKS,
        real.states.flatten(1, 2),
        real.raw_obs[..., :2].flatten(1, 2),
        real.timestep.flatten(1, 2),
        num_envs=3,
        max_length=max_length,
        episode_steps=HORIZON,
        seed=0,
    )
    generator = torch.Generator().manual_seed(2)
    return collect(model_env, policy, params, normalizer, 20, generator, True)


def test_merge_uses_real_episode_statistics_and_keeps_imagined_paths_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, params, normalizer, real = setup()
    imagined = imagined_batch(policy, params, normalizer, real)
    assert imagined.truncated.any() and not imagined.terminated.any()
    cfg = AdvantageConfig()
    data = merge(real, imagined, cfg, HORIZON)
    per_task_real = real.rewards[0].numel()
    per_task_imagined = imagined.rewards[0].numel()
    for t, d in enumerate(data):
        assert d.obs.shape[0] == per_task_real + per_task_imagined
        assert torch.equal(d.episode_cost, real.episode_cost[t])
        assert abs(float(d.reward_adv.mean())) < 1e-5  # normalised over the union
    # Changing rewards after the first path end of an env row must not change the
    # advantages before it: GAE does not leak across imagined paths. Values are pinned
    # to zero here: fitted values legitimately couple all samples.
    import meta_safe.dyna.source as sources

    monkeypatch.setattr(
        sources,
        "fit_linear_values",
        lambda obs, *a, **k: torch.zeros(obs.shape[0], 60, dtype=torch.float64),
    )
    row_end = int(imagined.truncated[0, 0].nonzero()[0])
    changed = imagined.task(0)
    changed.rewards = changed.rewards.clone()
    changed.rewards[0, 0, row_end + 1 :] += 100.0
    before = merge(real.task(0), imagined.task(0), cfg, HORIZON, value_rounds=0)[0]
    after = merge(real.task(0), changed, cfg, HORIZON, value_rounds=0)[0]
    # un-normalise: compare ranks of the affected row's prefix through differences
    offset = per_task_real  # imagined samples follow the real ones
    prefix = slice(offset, offset + row_end + 1)
    scale_before = before.reward_adv[prefix] - before.reward_adv[prefix].mean()
    scale_after = after.reward_adv[prefix] - after.reward_adv[prefix].mean()
    ratio = scale_after.norm() / scale_before.norm()
    torch.testing.assert_close(scale_after, scale_before * ratio, rtol=1e-4, atol=1e-6)


def test_dyna_rollouts_mix_a_small_real_batch_with_model_data() -> None:
    policy, params, normalizer, _ = setup()
    real_env = BatchedCircleEnv(TASKS, 1, seed=0, episode_steps=HORIZON, fast=False)
    settings = DynaSettings(model_envs_per_task=4, model_steps=30, max_length=10)
    state = DynaState(KnownModel(), needs_training=False)
    source = DynaRollouts(real_env, TASKS, state, settings, HORIZON, AdvantageConfig(), HORIZON)
    inner = source.inner_batch(0, policy, params, normalizer, torch.Generator(), seed=3)
    assert inner.real.rewards.shape == (2, 1, HORIZON)
    assert inner.data[0].obs.shape[0] == HORIZON + 4 * 30
    assert inner.info["model_share"] == pytest.approx(120 / 180)
    assert inner.info["imagined_mean_path_length"] <= 10


def test_learned_model_is_unused_until_fitted_then_limit_is_calibrated() -> None:
    policy, params, normalizer, real = setup(envs=4)
    model = EnsembleModel(members=3, elites=2, hidden=[32], max_updates=50, eval_every=25)
    state = DynaState(model, needs_training=True)
    assert not state.ready and math.isinf(state.disagreement_limit)
    real_env = BatchedCircleEnv(TASKS, 1, seed=0, episode_steps=HORIZON, fast=False)
    source = DynaRollouts(
        real_env, TASKS, state, DynaSettings(), HORIZON, AdvantageConfig(), HORIZON
    )
    inner = source.inner_batch(0, policy, params, normalizer, torch.Generator(), seed=3)
    assert inner.info == {} and inner.data[0].obs.shape[0] == HORIZON  # real data only
    metrics = state.fit([real], TASKS, torch.Generator().manual_seed(0), steps=5.0)
    assert state.ready and state.fits == 1 and metrics
    data = transitions(real, TASKS)
    mean = state.mean_disagreement(data.states, data.actions, data.context)
    assert state.disagreement_limit == pytest.approx(5.0 * mean)
    errors = held_out_errors(model, real, TASKS, horizon=10, starts=(0, 20))
    assert errors["model_err/one_step/pos_rmse"] < errors["model_err/h10/pos_rmse"]


def test_dyna_needs_the_point_robot() -> None:
    from omegaconf import OmegaConf

    dyna = OmegaConf.create({"name": "known", "learned": False, "model": {"_target_": "x"}})
    env = OmegaConf.create({"backend": "mujoco", "robot": "car"})
    with pytest.raises(ValueError, match="env.robot='car'.*valid robots are \\['point'\\]"):
        build_dyna(dyna, env)
    assert build_dyna(OmegaConf.create({"name": "none"}), env) == (None, None)


@pytest.mark.parametrize(
    "field, value", [("real_envs_per_task", 0), ("real_floor", 0.0), ("max_model_fraction", 1.0)]
)
def test_invalid_dyna_settings_are_clear_errors(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DynaSettings(**{field: value})


def test_complete_episodes_counts_only_whole_imagined_episodes() -> None:
    from meta_safe.dyna import complete_episodes
    from meta_safe.rl.rollout import Batch

    # one task, two paths of 4 steps each in a horizon-4 world; path 2 starts mid-episode
    timestep = torch.tensor([[[0, 1, 2, 3, 2, 3, 0, 1]]])
    truncated = torch.tensor([[[0, 0, 0, 1, 0, 1, 0, 0]]], dtype=torch.bool)
    rewards = torch.arange(8.0).reshape(1, 1, 8)
    costs = torch.ones(1, 1, 8)
    zeros = torch.zeros(1, 1, 8)
    batch = Batch(
        raw_obs=zeros,
        obs=zeros,
        next_obs=zeros,
        actions=zeros,
        log_probs=zeros,
        rewards=rewards,
        costs=costs,
        terminated=torch.zeros_like(truncated),
        truncated=truncated,
        timestep=timestep,
        episode_return=torch.zeros(1),
        episode_cost=torch.zeros(1),
        episodes=torch.zeros(1),
    )
    returns, cost, count = complete_episodes(batch, horizon=4)
    assert count.tolist() == [1.0]  # the mid-episode path and the unfinished one do not count
    assert returns.tolist() == [0.0 + 1 + 2 + 3] and cost.tolist() == [4.0]


def test_episode_start_branching_runs_whole_episodes_and_updates_use_them() -> None:
    policy, params, normalizer, _ = setup()
    real_env = BatchedCircleEnv(TASKS, 1, seed=0, episode_steps=HORIZON, fast=False)
    settings = DynaSettings(model_envs_per_task=3, model_steps=HORIZON, max_length=HORIZON)
    state = DynaState(KnownModel(), needs_training=False)
    source = DynaRollouts(real_env, TASKS, state, settings, HORIZON, AdvantageConfig(), HORIZON)
    inner = source.inner_batch(0, policy, params, normalizer, torch.Generator(), seed=3)
    assert inner.info["imagined_episodes"] == 3.0  # every imagined path is a whole episode
    assert inner.info["imagined_mean_path_length"] == HORIZON
    # the constraint sees real + imagined episodes; the measurement stays real
    for t, d in enumerate(inner.data):
        assert torch.isfinite(d.episode_cost)
        assert inner.real.episodes[t] == 1
    state.fit([inner.real], TASKS, torch.Generator(), steps=5.0)
    assert len(state.start_states) == 2  # one real episode start per task remembered


class ScaledDisagreement(KnownModel):
    """The exact model reporting a constant disagreement ``level`` (to steer the share)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def predict(self, states, actions, context, generator=None):
        prediction = super().predict(states, actions, context, generator)
        prediction.disagreement = torch.full_like(prediction.disagreement, self.level)
        return prediction


def test_model_share_follows_uncertainty_with_a_real_floor() -> None:
    policy, params, normalizer, _ = setup()
    real_env = BatchedCircleEnv(TASKS, 1, seed=0, episode_steps=HORIZON, fast=False)
    settings = DynaSettings(
        model_envs_per_task=8, model_steps=HORIZON, max_length=HORIZON, max_model_fraction=0.8
    )
    shares = {}
    for level in (1.0, 4.0):
        state = DynaState(ScaledDisagreement(level), needs_training=True)
        state.fits, state.initial_disagreement, state.disagreement_limit = 1, 1.0, 1e9
        source = DynaRollouts(real_env, TASKS, state, settings, HORIZON, AdvantageConfig(), HORIZON)
        real = collect(real_env, policy, params, normalizer, HORIZON, torch.Generator(), True)
        shares[level] = source.model_share(real)
    assert shares[1.0] == pytest.approx(0.8)  # as confident as at calibration: the cap
    assert shares[4.0] == pytest.approx(0.2)  # 4x the initial disagreement: a quarter


def test_real_data_is_kept_on_iterations_without_a_model_fit() -> None:
    _, _, _, real = setup()
    model = EnsembleModel(members=2, elites=1, hidden=[8], max_updates=5, eval_every=5)
    state = DynaState(model, needs_training=True)
    assert state.fit([real], TASKS, torch.Generator(), steps=5.0, train=False) == {}
    assert len(model.buffer) == real.rewards.numel() and state.fits == 0
    assert len(state.start_states) == 2 * 2  # 2 tasks x 2 envs, one episode start each
