"""Collecting on-policy batches from a batched env (either backend).

Every batch has shape ``[tasks, envs, steps, ...]``. Each call resets the env
and collects ``steps`` steps per env, so episodes never straddle two batches;
per-episode return and cost are summed exactly over completed episodes only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor
from torch.func import vmap

from meta_safe.policy import GaussianPolicy, ObsNormalizer, Params, gaussian_log_prob


class BatchedEnv(Protocol):
    """What the sampler needs from an environment backend (tasks x envs)."""

    num_tasks: int
    num_envs: int
    final_obs: Tensor

    @property
    def obs_dim(self) -> int: ...

    @property
    def action_dim(self) -> int: ...

    def reset(self, seed: int | None = None) -> Tensor:
        """:return: obs ``[tasks, envs, obs_dim]``."""
        ...

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``action [T, E, act]`` -> ``obs, reward, cost, terminated, truncated`` (``[T, E]``)."""
        ...


@dataclass
class Batch:
    """On-policy data. Observations are already normalised (normaliser frozen).

    :ivar raw_obs: ``[T, E, N, obs_dim]`` observations before normalisation.
    :ivar obs: ``[T, E, N, obs_dim]``. :ivar next_obs: ``[T, E, N, obs_dim]`` (the final
        observation of an episode where it ended, for bootstrapping).
    :ivar actions: ``[T, E, N, act_dim]``. :ivar log_probs: ``[T, E, N]`` behaviour log-probs.
    :ivar rewards, costs: ``[T, E, N]``. :ivar terminated, truncated: ``[T, E, N]`` bool.
    :ivar timestep: ``[T, E, N]`` long, the step's index within its episode (0-based).
    :ivar episode_return, episode_cost: ``[T]`` mean over completed episodes (NaN if none).
    :ivar episodes: ``[T]`` number of completed episodes per task.
    :ivar states, next_states: ``[T, E, N, 6]`` planar physics states before and after
        each step (``next_states`` before any auto-reset), when the env exposes them
        (``state`` / ``final_state``: the torch backend and model envs); else ``None``.
        Dynamics models train on them, with ``next_raw_obs [T, E, N, obs_dim]`` (the
        un-normalised observation after each step, before any auto-reset).
    """

    raw_obs: Tensor
    obs: Tensor
    next_obs: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    costs: Tensor
    terminated: Tensor
    truncated: Tensor
    timestep: Tensor
    episode_return: Tensor
    episode_cost: Tensor
    episodes: Tensor
    states: Tensor | None = None
    next_states: Tensor | None = None
    next_raw_obs: Tensor | None = None

    @property
    def num_steps(self) -> int:
        """Env steps in the batch (all tasks)."""
        return self.rewards.numel()

    def task(self, index: int) -> Batch:
        """The slice of one task, keeping a leading task dim of size 1."""
        return Batch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name)[index : index + 1]
                for f in fields(self)
            }
        )


def stack_params(params: list[Params]) -> Params:
    """``[dict]`` of length T -> dict of ``[T, ...]`` tensors (for per-task policies)."""
    return {k: torch.stack([p[k] for p in params]) for k in params[0]}


def policy_sample(
    policy: GaussianPolicy, params: Params, obs: Tensor, per_task: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Sample actions for ``obs [T, E, obs_dim]``; ``per_task`` params carry a leading T dim."""
    with torch.no_grad():
        if per_task:
            mean, std = vmap(policy.distribution)(params, obs)
            std = std.unsqueeze(1)
        else:
            mean, std = policy.distribution(params, obs)
        actions = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return actions, gaussian_log_prob(mean, std, actions)


def collect(
    env: BatchedEnv,
    policy: GaussianPolicy,
    params: Params,
    normalizer: ObsNormalizer,
    steps: int,
    generator: torch.Generator,
    per_task: bool = False,
    seed: int | None = None,
) -> Batch:
    """Run the policy for ``steps`` steps in every env of ``env`` and return the batch.

    :param params: policy parameters; with ``per_task`` each tensor is ``[T, ...]``.
    :param normalizer: observation normaliser; updated from raw observations unless frozen.
    :param generator: action-noise generator (reproducibility).
    :param seed: reseeds the env's start states when given.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: must be >= 1")
    T, E = env.num_tasks, env.num_envs
    raw_obs = env.reset(seed=seed)
    dtype = raw_obs.dtype
    store = {
        name: []
        for name in (
            "raw_obs",
            "obs",
            "next_obs",
            "actions",
            "log_probs",
            "rewards",
            "costs",
            "terminated",
            "truncated",
            "timestep",
        )
    }
    running_return = torch.zeros(T, E, dtype=torch.float64)
    running_cost = torch.zeros(T, E, dtype=torch.float64)
    sum_return = torch.zeros(T, dtype=torch.float64)
    sum_cost = torch.zeros(T, dtype=torch.float64)
    episodes = torch.zeros(T, dtype=torch.long)
    elapsed = torch.zeros(T, E, dtype=torch.long)
    # Envs that keep an episode clock (model envs start mid-episode) report it.
    clock = getattr(env, "elapsed", None)
    track_states = hasattr(env, "state") and hasattr(env, "final_state")
    if track_states:
        store["states"], store["next_states"], store["next_raw_obs"] = [], [], []
    raw_obs_seen = [raw_obs]
    for _ in range(steps):
        obs = normalizer(raw_obs)
        actions, log_prob = policy_sample(policy, params, obs.to(dtype), per_task, generator)
        timestep = env.elapsed.clone() if clock is not None else elapsed.clone()
        if track_states:
            store["states"].append(env.state.clone())
        next_raw, reward, cost, terminated, truncated = env.step(actions)
        done = terminated | truncated
        # Where an episode ended, next_raw already starts a new one: keep the final obs.
        final_raw = torch.where(done.unsqueeze(-1), env.final_obs, next_raw)
        store["raw_obs"].append(raw_obs)
        store["obs"].append(obs)
        store["next_obs"].append(normalizer(final_raw))
        store["actions"].append(actions)
        store["log_probs"].append(log_prob)
        store["rewards"].append(reward)
        store["costs"].append(cost)
        store["terminated"].append(terminated)
        store["truncated"].append(truncated)
        store["timestep"].append(timestep)
        if track_states:
            store["next_states"].append(env.final_state.clone())
            store["next_raw_obs"].append(final_raw)
        elapsed = (elapsed + 1) * ~done
        running_return += reward.double()
        running_cost += cost.double()
        sum_return += (running_return * done).sum(1)
        sum_cost += (running_cost * done).sum(1)
        episodes += done.sum(1)
        running_return *= ~done
        running_cost *= ~done
        raw_obs = next_raw
        raw_obs_seen.append(next_raw)
    normalizer.update(torch.stack(raw_obs_seen))
    batch = {k: torch.stack(v, dim=2) for k, v in store.items()}
    count = episodes.clamp_min(1).double()
    nan = torch.full((T,), float("nan"), dtype=torch.float64)
    return Batch(
        **batch,
        episode_return=torch.where(episodes > 0, sum_return / count, nan),
        episode_cost=torch.where(episodes > 0, sum_cost / count, nan),
        episodes=episodes,
    )
