"""Collecting on-policy batches from a batched env (either backend).

Every batch has shape ``[tasks, envs, steps, ...]``. Each call resets the env
and collects ``steps`` steps per env, so episodes never straddle two batches;
per-episode return and cost are summed exactly over completed episodes only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from meta_safe.optim.gauss_newton import MLPLayout, activate, batched_layers, mlp_layout
from meta_safe.rl.fused_rollout import fused_rollout
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params, gaussian_log_prob


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


def behaviour_params(params: list[Params]) -> Params:
    """The per-task policies as detached ``[T, ...]`` tensors, to collect data with."""
    return stack_params([{n: v.detach() for n, v in p.items()} for p in params])


def policy_layout(policy: GaussianPolicy, params: Params, per_task: bool) -> MLPLayout | None:
    """:func:`mlp_layout` of ``policy`` for parameters that are ``[T, ...]`` per task with
    ``per_task`` (the layout of one task's), else as given."""
    return mlp_layout(policy, {k: v[0] for k, v in params.items()} if per_task else params)


def action_means(
    policy: GaussianPolicy, params: Params, per_task: bool
) -> Callable[[Tensor], Tensor]:
    """``obs [T, E, obs_dim] -> mean [T, E, act_dim]`` without autograd bookkeeping.

    For the plain Gaussian MLP the per-task layers run as batched matrix products
    (``baddbmm``) on the stacked parameters, a few kernels per step; any other policy
    goes through ``vmap`` of :meth:`GaussianPolicy.distribution`.

    :param params: policy parameters; with ``per_task`` each tensor is ``[T, ...]``.
    """
    layout = policy_layout(policy, params, per_task)
    if layout is None:
        if per_task:
            return lambda obs: vmap(policy.distribution)(params, obs)[0]
        return lambda obs: policy.distribution(params, obs)[0]
    if per_task:  # [T, in, out] weights and [T, 1, out] biases, transposed once
        weights, biases = batched_layers(layout, params)
    else:
        weights = [params[w] for w, _ in layout.layers]
        biases = [params[b] for _, b in layout.layers]
    last = len(weights) - 1

    def mean(obs: Tensor) -> Tensor:
        h = obs
        for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(bias, h, weight) if per_task else F.linear(h, weight, bias)
            if index < last:
                h = activate(h, layout.activation)
        return h

    return mean


def _std(params: Params, per_task: bool, dtype: torch.dtype) -> Tensor:
    """Action standard deviation, ``[T, 1, act_dim]`` per task or ``[act_dim]``."""
    std = params["log_std"].detach().exp().to(dtype)
    return std.unsqueeze(1) if per_task else std


def completed_episode_sums(signal: Tensor, done: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task sums of ``signal`` over completed episodes, and the episode count.

    A step belongs to a completed episode when its env ends an episode at that step or
    later in the batch (a reverse running maximum of ``done`` over steps).

    :param signal: ``[T, E, N]``. :param done: ``[T, E, N]`` bool (terminated or truncated).
    :return: ``(sums [T] float64, episodes [T] long)``.
    """
    ends_later = done.flip(-1).cummax(-1).values.flip(-1)
    return (signal.double() * ends_later).sum((1, 2)), done.sum((1, 2))


def collect(
    env: BatchedEnv,
    policy: GaussianPolicy,
    params: Params,
    normalizer: ObsNormalizer,
    steps: int,
    generator: torch.Generator,
    per_task: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
) -> Batch:
    """Run the policy for ``steps`` steps in every env of ``env`` and return the batch.

    :param params: policy parameters; with ``per_task`` each tensor is ``[T, ...]``.
    :param normalizer: observation normaliser; updated from raw observations unless frozen.
    :param generator: action-noise generator (reproducibility).
    :param seed: reseeds the env's start states when given.
    :param deterministic: act with the policy's mean (no noise; log-probs still those of
        the Gaussian), as evaluation protocols that report the mean policy do.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: must be >= 1")
    T, E = env.num_tasks, env.num_envs
    raw_obs = env.reset(seed=seed)
    dtype = raw_obs.dtype
    names = [
        "raw_obs", "obs", "next_obs", "actions", "rewards", "costs", "terminated",
        "truncated", "timestep",
    ]  # fmt: skip
    elapsed = torch.zeros(T, E, dtype=torch.long)
    # Envs that keep an episode clock (model envs start mid-episode) report it.
    clock = getattr(env, "elapsed", None)
    track_states = getattr(env, "state", None) is not None and hasattr(env, "final_state")
    if track_states:
        names += ["states", "next_states", "next_raw_obs"]
    means = action_means(policy, params, per_task)
    action_dtype = params["log_std"].dtype  # the policy's: means and actions come out in it
    std = _std(params, per_task, action_dtype)
    # All action noise in one draw: one generator call per batch, not per step.
    noise = torch.randn((steps, T, E, policy.act_dim), generator=generator, dtype=action_dtype)
    if deterministic:
        noise.zero_()
    noise = std * noise  # scaled once for the batch: the same products as step by step
    raw_obs_seen, means_seen = [raw_obs.unsqueeze(0)], []
    normalize = normalizer.affine(dtype)  # the statistics are fixed until the batch ends
    layout = policy_layout(policy, params, per_task)
    mean_stat, std_stat = normalizer.statistics(dtype)  # (for fused segments)
    # every entry a chunk [T, E, n, ...] of n consecutive steps, concatenated at the end
    chunks: dict[str, list[Tensor]] = {name: [] for name in names}
    step = 0
    while step < steps:
        length = fused_rollout.segment_length(env, layout, steps - step)
        if length:
            out = fused_rollout.run(
                env, layout, params, per_task, raw_obs, mean_stat, std_stat,
                normalizer.clip, noise[step : step + length],
            )  # fmt: skip
            if out is not None:
                for name in names:
                    chunks[name].append(out["next_obs" if name == "next_raw_obs" else name])
                means_seen.append(out["means"])
                raw_obs = out["next_obs"][:, :, -1]
                raw_obs_seen.append(out["next_obs"].movedim(2, 0))
                step += length
                continue
        obs = normalize(raw_obs)
        with torch.no_grad():
            mean = means(obs)
            actions = mean + noise[step]
        timestep = env.elapsed.clone() if clock is not None else elapsed
        if track_states:
            chunks["states"].append(env.state.clone().unsqueeze(2))
        next_raw, reward, cost, terminated, truncated = env.step(actions)
        done = terminated | truncated
        # Where an episode ended, next_raw already starts a new one: keep the final obs.
        final_raw = torch.where(done.unsqueeze(-1), env.final_obs, next_raw)
        for name, value in (
            ("raw_obs", raw_obs),
            ("obs", obs),
            ("next_obs", final_raw),
            ("actions", actions),
            ("rewards", reward),
            ("costs", cost),
            ("terminated", terminated),
            ("truncated", truncated),
            ("timestep", timestep),
        ):
            chunks[name].append(value.unsqueeze(2))
        means_seen.append(mean.unsqueeze(2))
        if track_states:
            chunks["next_states"].append(env.final_state.clone().unsqueeze(2))
            chunks["next_raw_obs"].append(final_raw.unsqueeze(2))
        if clock is None:
            elapsed = (elapsed + 1) * ~done
        raw_obs = next_raw
        raw_obs_seen.append(next_raw.unsqueeze(0))
        step += 1
    batch = {k: torch.cat(v, dim=2) for k, v in chunks.items()}
    # Whole-batch transforms instead of per-step ones: normalised next observations (with
    # the statistics the steps used, so before the update) and behaviour log-probs.
    batch["next_obs"] = normalizer(batch["next_obs"])
    normalizer.update(torch.cat(raw_obs_seen))
    means_all = torch.cat(means_seen, dim=2)
    batch["log_probs"] = gaussian_log_prob(means_all, std.unsqueeze(-2), batch["actions"])
    done = batch["terminated"] | batch["truncated"]
    sum_return, episodes = completed_episode_sums(batch["rewards"], done)
    sum_cost, _ = completed_episode_sums(batch["costs"], done)
    count = episodes.clamp_min(1).double()
    nan = torch.full((T,), float("nan"), dtype=torch.float64)
    return Batch(
        **batch,
        episode_return=torch.where(episodes > 0, sum_return / count, nan),
        episode_cost=torch.where(episodes > 0, sum_cost / count, nan),
        episodes=episodes,
    )


def discounted_episode_cost(batch: Batch, discount: float) -> Tensor:
    """Mean over completed episodes of ``sum_t discount^t c_t`` (``t`` from each episode's
    start), per task ``[T]`` float64; NaN where no episode completed. ``discount=1``
    gives ``batch.episode_cost``."""
    weights = torch.as_tensor(discount, dtype=torch.float64) ** batch.timestep.double()
    sums, episodes = completed_episode_sums(
        batch.costs.double() * weights, batch.terminated | batch.truncated
    )
    nan = torch.full_like(sums, float("nan"))
    return torch.where(episodes > 0, sums / episodes.clamp_min(1).double(), nan)
