"""Per-task policy data, surrogate objectives and their gradients.

Everything here is a pure function of a parameter dict, so a caller can ask for
gradients with ``create_graph=True`` and differentiate an inner update again
(exact MAML meta-gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meta_safe.rl.advantages import gae
from meta_safe.rl.critic import MLPCritic
from meta_safe.rl.policy import GaussianPolicy, Params, gaussian_kl
from meta_safe.rl.rollout import Batch
from meta_safe.rl.value_baseline import discounted_returns, fit_linear_values, predict_values


@dataclass
class PolicyData:
    """One task's on-policy data flattened over envs and steps (constants: no graph).

    :ivar obs: ``[M, obs_dim]`` normalised observations. :ivar actions: ``[M, act_dim]``.
    :ivar log_probs: ``[M]`` behaviour log-probs. :ivar reward_adv: ``[M]`` (normalised).
    :ivar cost_adv: ``[M]`` (centred, unscaled: the constraint is linearised in cost units).
    :ivar episode_return, episode_cost: ``[]`` mean undiscounted per-episode return / cost.
    :ivar horizon: episode length; ``horizon * mean(ratio * cost_adv)`` approximates the
        change in per-episode cost (performance-difference lemma, Achiam et al. 2017, eq. 2).
    :ivar reward_scale: ``[]`` ``horizon * std`` of the raw reward advantages, so
        ``reward_scale * mean(ratio * reward_adv)`` approximates the change in per-episode
        return: the reward surrogate in the cost surrogate's (episode) units.
    """

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    reward_adv: Tensor
    cost_adv: Tensor
    episode_return: Tensor
    episode_cost: Tensor
    horizon: int
    reward_scale: Tensor | float = 1.0


@dataclass
class AdvantageConfig:
    """Discounts for the two GAE estimators (config group key ``advantage``)."""

    gamma: float = 0.99  # reward discount
    lam: float = 0.95  # reward GAE lambda
    cost_gamma: float = 0.99  # cost discount
    cost_lam: float = 0.95  # cost GAE lambda


Critics = dict[str, MLPCritic]


@torch.no_grad()
def advantages(
    batch: Batch, cfg: AdvantageConfig, horizon: int, critics: Critics | None = None
) -> tuple[Tensor, Tensor]:
    """Reward and cost GAE ``[T, E, N]``.

    :param critics: persistent critics by signal (``"reward"``, ``"cost"``), trained on
        ``batch`` first; a signal without one gets per-task linear values fitted on
        ``batch`` (:mod:`meta_safe.rl.value_baseline`).
    """
    critics = critics or {}
    result = []
    for name, signal, gamma, lam in (
        ("reward", batch.rewards, cfg.gamma, cfg.lam),
        ("cost", batch.costs, cfg.cost_gamma, cfg.cost_lam),
    ):
        targets = discounted_returns(signal, batch.terminated, batch.truncated, gamma)
        if name in critics:
            critic = critics[name]
            with torch.enable_grad():
                critic.fit(batch.obs, batch.timestep, targets, horizon)
            values = critic.predict(batch.obs, batch.timestep, horizon)
            next_values = critic.predict(batch.next_obs, batch.timestep + 1, horizon)
        else:
            weights = fit_linear_values(batch.obs, batch.timestep, targets, horizon)
            values = predict_values(weights, batch.obs, batch.timestep, horizon)
            next_values = predict_values(weights, batch.next_obs, batch.timestep + 1, horizon)
        adv, _ = gae(
            signal.double(), values, next_values, batch.terminated, batch.truncated, gamma, lam
        )
        result.append(adv.to(batch.rewards.dtype))
    return result[0], result[1]


def prepare(
    batch: Batch, cfg: AdvantageConfig, horizon: int, critics: Critics | None = None
) -> list[PolicyData]:
    """Advantages + per-task :class:`PolicyData` from a freshly collected batch."""
    adv_r, adv_c = advantages(batch, cfg, horizon, critics)
    return policy_data(batch, adv_r, adv_c, horizon)


def policy_data(batch: Batch, adv_r: Tensor, adv_c: Tensor, horizon: int) -> list[PolicyData]:
    """Split a ``[T, E, N]`` batch into per-task :class:`PolicyData`."""
    tasks = []
    for t in range(batch.obs.shape[0]):
        reward_adv = adv_r[t].reshape(-1)
        cost_adv = adv_c[t].reshape(-1)
        reward_std = reward_adv.std()
        tasks.append(
            PolicyData(
                obs=batch.obs[t].reshape(-1, batch.obs.shape[-1]),
                actions=batch.actions[t].reshape(-1, batch.actions.shape[-1]),
                log_probs=batch.log_probs[t].reshape(-1),
                reward_adv=(reward_adv - reward_adv.mean()) / (reward_std + 1e-8),
                cost_adv=cost_adv - cost_adv.mean(),
                episode_return=batch.episode_return[t],
                episode_cost=batch.episode_cost[t],
                horizon=horizon,
                reward_scale=horizon * reward_std,
            )
        )
    return tasks


def surrogates(policy: GaussianPolicy, params: Params, data: PolicyData) -> tuple[Tensor, Tensor]:
    """Importance-weighted surrogates ``(reward, cost)`` (scalars, differentiable in params).

    The cost surrogate is in per-episode cost units: its gradient at the behaviour
    policy is ``b``, the linearised constraint's slope.
    """
    ratio = torch.exp(policy.log_prob(params, data.obs, data.actions) - data.log_probs)
    reward = (ratio * data.reward_adv).mean()
    cost = data.horizon * (ratio * data.cost_adv).mean()
    return reward, cost


def mean_kl(policy: GaussianPolicy, params: Params, reference: Params, obs: Tensor) -> Tensor:
    """Mean ``KL(pi_reference || pi_params)`` over ``obs [M, obs_dim]``; reference detached."""
    with torch.no_grad():
        old_mean, old_std = policy.distribution({k: v.detach() for k, v in reference.items()}, obs)
    mean, std = policy.distribution(params, obs)
    return gaussian_kl(old_mean, old_std, mean, std).mean()
