"""The sampler: shapes, exact episode statistics, per-task policies."""

import pytest
import torch

from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, stack_params
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv

TASKS = [CircleTask(radius=1.2, wall_distance=0.3), CircleTask(radius=1.4, wall_distance=0.9)]


def make(episode_steps: int = 20):
    env = BatchedCircleEnv(TASKS, num_envs=3, seed=0, episode_steps=episode_steps)
    policy = GaussianPolicy(env.obs_dim, env.action_dim, hidden=(16,), log_std_init=0.5)
    return env, policy


@pytest.mark.slow
def test_batch_shapes_and_exact_episode_statistics() -> None:
    env, policy = make()
    batch = collect(
        env,
        policy,
        policy.init_params(),
        ObsNormalizer(env.obs_dim),
        steps=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert batch.obs.shape == (2, 3, 50, 28) and batch.actions.shape == (2, 3, 50, 2)
    assert batch.truncated[..., 19].all() and batch.truncated[..., 39].all()
    assert batch.episodes.tolist() == [
        6,
        6,
    ]  # 2 full episodes per env; the partial third is excluded
    expected_return = batch.rewards[..., :40].double().sum((1, 2)) / 6
    expected_cost = batch.costs[..., :40].double().sum((1, 2)) / 6
    torch.testing.assert_close(batch.episode_return, expected_return)
    torch.testing.assert_close(batch.episode_cost, expected_cost)
    assert not batch.terminated.any()
    # final observation stored at truncation, not the new episode's first observation
    assert not torch.equal(batch.next_obs[..., 19, :], batch.obs[..., 20, :])
    torch.testing.assert_close(batch.next_obs[..., 18, :], batch.obs[..., 19, :])


def test_per_task_parameters_are_used_per_task() -> None:
    env, policy = make()
    base = policy.init_params()
    shifted = {k: v.clone() for k, v in base.items()}
    shifted["log_std"] = shifted["log_std"] - 5.0  # task 1: nearly deterministic
    params = stack_params([base, shifted])
    batch = collect(
        env,
        policy,
        params,
        ObsNormalizer(env.obs_dim),
        steps=10,
        generator=torch.Generator().manual_seed(0),
        per_task=True,
    )
    norm = ObsNormalizer(env.obs_dim)
    mean0, _ = policy.distribution(base, batch.obs[0])
    mean1, _ = policy.distribution(shifted, batch.obs[1])
    assert (batch.actions[1] - mean1).abs().max() < 0.05
    assert (batch.actions[0] - mean0).abs().max() > 0.5
    assert norm.count == 0


def test_same_seed_same_batch() -> None:
    def run():
        torch.manual_seed(0)  # same policy initialisation
        env, policy = make()
        return collect(
            env,
            policy,
            policy.init_params(),
            ObsNormalizer(env.obs_dim),
            steps=30,
            generator=torch.Generator().manual_seed(3),
            seed=4,
        )

    a, b = run(), run()
    assert torch.equal(a.obs, b.obs) and torch.equal(a.actions, b.actions)


def test_completed_episode_sums_with_unaligned_episode_ends() -> None:
    """Envs whose episodes end at different steps (as model envs started mid-episode do):
    only steps of episodes that end inside the batch count."""
    from meta_safe.rl.rollout import completed_episode_sums

    signal = torch.arange(1.0, 7.0).repeat(1, 2, 1)  # [T=1, E=2, N=6]: 1..6 in each env
    done = torch.zeros(1, 2, 6, dtype=torch.bool)
    done[0, 0, 1] = done[0, 0, 4] = True  # env 0: episodes [1,2] and [3,4,5]; 6 is partial
    done[0, 1, 5] = True  # env 1: one episode of all six steps
    sums, episodes = completed_episode_sums(signal, done)
    assert episodes.tolist() == [3]
    assert sums.tolist() == [(1 + 2) + (3 + 4 + 5) + (1 + 2 + 3 + 4 + 5 + 6)]
    assert sums.dtype == torch.float64
