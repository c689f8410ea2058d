"""GAE for reward and cost: episode boundaries, bootstrapping, batch ends."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meta_safe.rl.advantages import discounted_episode_cost, gae
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, stack_params
from meta_safe.rl.surrogate import AdvantageConfig, advantages, prepare
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv


def reference_gae(r, v, nv, term, trunc, gamma, lam):
    """Textbook definition: A_t = sum_k (gamma*lam)^k delta_{t+k} within the episode/batch."""
    n = len(r)
    deltas = [r[t] + gamma * (0.0 if term[t] else nv[t]) - v[t] for t in range(n)]
    adv = np.zeros(n)
    for t in range(n):
        total, factor = 0.0, 1.0
        for k in range(t, n):
            total += factor * deltas[k]
            if term[k] or trunc[k]:
                break
            factor *= gamma * lam
        adv[t] = total
    return adv


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    seed=st.integers(0, 10_000),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_matches_textbook_definition(n: int, seed: int, gamma: float, lam: float) -> None:
    rng = np.random.default_rng(seed)
    r, v, nv = rng.normal(size=(3, n))
    term, trunc = rng.random(n) < 0.1, rng.random(n) < 0.1
    adv, ret = gae(*(torch.tensor(x) for x in (r, v, nv, term, trunc)), gamma=gamma, lam=lam)
    np.testing.assert_allclose(
        adv.numpy(), reference_gae(r, v, nv, term, trunc, gamma, lam), atol=1e-10
    )
    np.testing.assert_allclose(ret.numpy(), adv.numpy() + v, atol=1e-12)


def test_terminated_does_not_bootstrap_but_truncated_does() -> None:
    r = torch.tensor([1.0])
    v = torch.tensor([0.0])
    nv = torch.tensor([10.0])
    adv_term, _ = gae(r, v, nv, torch.tensor([True]), torch.tensor([False]), 0.9, 1.0)
    adv_trunc, _ = gae(r, v, nv, torch.tensor([False]), torch.tensor([True]), 0.9, 1.0)
    assert adv_term.item() == pytest.approx(1.0)
    assert adv_trunc.item() == pytest.approx(1.0 + 0.9 * 10.0)


def test_no_leak_across_episodes_and_batched_shapes() -> None:
    gen = torch.Generator().manual_seed(0)
    r, v, nv = torch.randn(3, 2, 4, 10, generator=gen)
    term = torch.zeros(2, 4, 10, dtype=torch.bool)
    trunc = torch.zeros_like(term)
    trunc[..., 4] = True  # first episode ends at t=4
    adv, _ = gae(r, v, nv, term, trunc, 0.99, 0.95)
    r2 = r.clone()
    r2[..., 5:] += 100.0  # changing the second episode...
    adv2, _ = gae(r2, v, nv, term, trunc, 0.99, 0.95)
    torch.testing.assert_close(adv[..., :5], adv2[..., :5])  # ...leaves the first untouched
    assert adv.shape == (2, 4, 10)


def test_discounted_episode_cost_counts_completed_episodes_only() -> None:
    costs = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    trunc = torch.tensor(
        [[False, True, False, False, False]]
    )  # one episode of 2 steps, then partial
    term = torch.zeros_like(trunc)
    assert discounted_episode_cost(costs, term, trunc, 0.5).item() == pytest.approx(1.5)
    assert torch.isnan(discounted_episode_cost(costs, term, torch.zeros_like(trunc), 0.5)).all()


def test_invalid_discount_is_rejected() -> None:
    x = torch.zeros(3)
    b = torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma=1.5"):
        gae(x, x, x, b, b, 1.5, 0.9)


def test_reward_scale_puts_the_reward_surrogate_in_episode_units() -> None:
    """``reward_scale * reward_adv`` is ``horizon`` times the centred raw reward advantages,
    the same units as the cost surrogate (``horizon * centred cost advantages``)."""
    tasks = [CircleTask(radius=1.2, wall_distance=0.8), CircleTask(radius=1.4, wall_distance=0.9)]
    env = BatchedCircleEnv(tasks, num_envs=3, seed=0, fast=False)
    policy = GaussianPolicy(obs_dim=env.obs_dim, act_dim=2, hidden=[8])
    params = stack_params([policy.init_params()] * len(tasks))
    batch = collect(
        env,
        policy,
        params,
        ObsNormalizer(env.obs_dim),
        steps=20,
        generator=torch.Generator().manual_seed(0),
        per_task=True,
    )
    raw_reward, _ = advantages(batch, AdvantageConfig(), horizon=500)
    for t, task in enumerate(prepare(batch, AdvantageConfig(), horizon=500)):
        centred = raw_reward[t].reshape(-1) - raw_reward[t].mean()
        torch.testing.assert_close(
            task.reward_scale * task.reward_adv, 500 * centred, rtol=1e-4, atol=1e-6
        )
