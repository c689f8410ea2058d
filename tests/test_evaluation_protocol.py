"""Evaluation options: discounted episode cost and mean-action (deterministic) episodes."""

import torch

from meta_safe.env_factory import make_batched_env, task_distribution
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, discounted_episode_cost
from tests.tiny import compose_cfg


def _setup(envs: int = 2):
    cfg = compose_cfg("env.episode_steps=20")
    tasks = task_distribution(cfg.env, "meta_train").sample(2, seed=3)
    env = make_batched_env(cfg.env, tasks, envs, seed=0)
    torch.manual_seed(0)
    policy = GaussianPolicy(env.obs_dim, 2, [16], "tanh", 0.0)
    return env, policy, policy.init_params()


def test_discounted_cost_matches_an_explicit_loop() -> None:
    env, policy, params = _setup()
    batch = collect(env, policy, params, ObsNormalizer(env.obs_dim), 50, torch.Generator())
    batch.costs[:] = torch.rand(batch.costs.shape, generator=torch.Generator().manual_seed(1))
    gamma = 0.9
    got = discounted_episode_cost(batch, gamma)
    done = (batch.terminated | batch.truncated).numpy()
    for t in range(batch.costs.shape[0]):
        totals = []
        for e in range(batch.costs.shape[1]):
            total, power = 0.0, 0
            for n in range(batch.costs.shape[2]):
                total += gamma**power * float(batch.costs[t, e, n])
                power += 1
                if done[t, e, n]:
                    totals.append(total)
                    total, power = 0.0, 0
        assert abs(float(got[t]) - sum(totals) / len(totals)) < 1e-9
    undiscounted = discounted_episode_cost(batch, 1.0)
    assert not torch.allclose(got, undiscounted)


def test_deterministic_collection_acts_with_the_mean() -> None:
    """Mean-action episodes ignore the noise generator; the stochastic ones do not."""
    env, policy, params = _setup()
    normalizer = ObsNormalizer(env.obs_dim)
    normalizer.frozen = True
    runs = [
        collect(env, policy, params, normalizer, 30, torch.Generator().manual_seed(s), seed=5,
                deterministic=det)
        for det in (True, False) for s in (0, 1)
    ]  # fmt: skip
    assert torch.equal(runs[0].actions, runs[1].actions)
    assert not torch.equal(runs[2].actions, runs[3].actions)
    mean, _ = policy.distribution(params, runs[0].obs)
    assert torch.allclose(runs[0].actions, mean, atol=1e-6)


def test_mean_policy_evaluation_reports_mean_action_episodes() -> None:
    """``evaluation.policy=mean``: before adapting, the report is the mean action's
    discounted cost on the evaluation envs; after adapting, the stochastic batches that
    drove the updates are not what is reported."""
    from meta_safe import evaluate_meta_state, init_meta
    from meta_safe.evaluation import SEPARATE_EPISODES_SEED_OFFSET, evaluation_tasks
    from tests.tiny import tiny_cfg

    overrides = ["evaluation.tasks=2", "evaluation.inner_steps=1", "evaluation.envs_per_task=2",
                 "evaluation.steps_per_env=40", "evaluation.split=meta_train"]  # fmt: skip
    cfg = tiny_cfg(*overrides, "evaluation.policy=mean", "evaluation.cost_discount=0.95")
    setup, state = init_meta(cfg)
    report = evaluate_meta_state(setup, state, cfg)
    sampled = evaluate_meta_state(setup, state, tiny_cfg(*overrides))
    assert len(report.returns[0]) == 2
    tasks = evaluation_tasks(cfg)
    seed = cfg.evaluation.seed + SEPARATE_EPISODES_SEED_OFFSET
    env = make_batched_env(cfg.env, tasks, 2, seed)
    with state.normalizer.frozen_statistics():
        batch = collect(env, setup.policy, state.meta_params, state.normalizer, 40,
                        torch.Generator(), seed=seed, deterministic=True)  # fmt: skip
    expected = discounted_episode_cost(batch, 0.95)
    assert torch.allclose(torch.tensor(report.costs)[:, 0], expected.float(), atol=1e-5)
    assert torch.allclose(
        torch.tensor(report.returns)[:, 0], batch.episode_return.float(), atol=1e-5
    )
    assert report.returns != sampled.returns


def test_measure_episodes_sets_the_separate_episodes_per_task() -> None:
    """``evaluation.measure_episodes=N`` measures each policy on ``N`` separate episodes
    per task (``auto`` then means ``fresh``), while adaptation keeps its own batch size:
    the k = 0 report equals an explicit collection of ``N`` stochastic episodes of the
    meta-policy, and after one step it differs from the 2-episode measurement."""
    from meta_safe import evaluate_meta_state, init_meta
    from meta_safe.device import seeded_generator
    from meta_safe.evaluation import SEPARATE_EPISODES_SEED_OFFSET, evaluation_tasks
    from tests.tiny import tiny_cfg

    overrides = ["evaluation.tasks=2", "evaluation.inner_steps=1", "evaluation.envs_per_task=2",
                 "evaluation.steps_per_env=40", "evaluation.split=meta_train"]  # fmt: skip
    cfg = tiny_cfg(*overrides, "evaluation.measure_episodes=5")
    setup, state = init_meta(cfg)
    report = evaluate_meta_state(setup, state, cfg)
    fresh2 = evaluate_meta_state(setup, state, tiny_cfg(*overrides, "evaluation.policy=fresh"))
    assert report.env_steps_per_step == fresh2.env_steps_per_step == 2 * 40
    tasks = evaluation_tasks(cfg)
    seed = cfg.evaluation.seed + SEPARATE_EPISODES_SEED_OFFSET
    env = make_batched_env(cfg.env, tasks, 5, seed)
    stacked = {k: v.detach().expand(len(tasks), *v.shape) for k, v in state.meta_params.items()}
    with state.normalizer.frozen_statistics():
        batch = collect(env, setup.policy, stacked, state.normalizer, 40,
                        seeded_generator(cfg.evaluation.seed), True, seed=seed)  # fmt: skip
    assert batch.obs.shape[1] == 5
    assert torch.allclose(
        torch.tensor(report.costs)[:, 0], discounted_episode_cost(batch, 1.0).float(), atol=1e-5
    )
    assert torch.allclose(
        torch.tensor(report.returns)[:, 0], batch.episode_return.float(), atol=1e-5
    )
    assert report.returns[0][1] != fresh2.returns[0][1]
