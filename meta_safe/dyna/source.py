"""Dyna's data source: a small real batch plus imagined rollouts of the model.

* paths start from real states: by default real episode-start states (a pool kept from
  all real data, shared by tasks: the start distribution does not depend on the task)
  and run whole episodes; ``branch_from=visited`` branches from any state of the batch
  just collected, with its episode clock (MBPO);
* paths end (``truncated``: GAE bootstraps from the value of the last imagined state)
  at ``max_length`` steps, when their accumulated ensemble disagreement passes the limit
  calibrated after the first model fit (CMBPO), or where the real episode would end;
* values are fitted on real and imagined data together (:func:`merge`);
* the share of model samples follows the model's current versus initial uncertainty,
  with a floor of real data (:func:`meta_safe.dyna.model_env.model_fraction`);
* the episode cost ``J_C`` the update sees is the mean over the real episodes and the
  complete imagined episodes; every number reported as a measurement is real only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meta_safe.data_source import InnerBatch, RealRollouts
from meta_safe.dyna.model_env import ModelEnv, model_fraction
from meta_safe.dyna.settings import DynaSettings
from meta_safe.dyna.state import DynaState, transitions
from meta_safe.dyna.transitions import ACCEL_DIM, STATE_DIM, accelerometer
from meta_safe.rl.advantages import gae
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, BatchedEnv, collect
from meta_safe.rl.surrogate import AdvantageConfig, PolicyData, policy_data
from meta_safe.rl.value_baseline import discounted_returns, fit_linear_values, predict_values
from stochastic_circle.tasks import CircleTask


class DynaRollouts:
    """A small real batch plus imagined rollouts of ``state.model`` (see module docstring).

    :param real_env: env with ``settings.real_envs_per_task`` envs per task.
    :param tasks: the tasks of ``real_env`` (reward and cost functions of imagined steps).
    """

    def __init__(
        self,
        real_env: BatchedEnv,
        tasks: list[CircleTask],
        state: DynaState,
        settings: DynaSettings,
        steps_per_env: int,
        adv_cfg: AdvantageConfig,
        horizon: int,
    ) -> None:
        self.real = RealRollouts(real_env, steps_per_env, adv_cfg, horizon)
        self.tasks, self.state, self.settings = tasks, state, settings
        self.adv_cfg, self.horizon = adv_cfg, horizon
        self.num_tasks = real_env.num_tasks

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch:
        real = self.real.collect(policy, params, normalizer, generator, seed)
        if not self.state.ready:
            return self.real.wrap(real)
        share = self.model_share(real)
        real_samples = real.rewards[0].numel()
        wanted = share / (1 - share) * real_samples
        steps = self.settings.model_steps
        envs = max(1, min(self.settings.model_envs_per_task, round(wanted / steps)))
        T = real.rewards.shape[0]
        if self.settings.branch_from == "visited":
            starts = real.states.flatten(1, 2)
            accels = accelerometer(real.raw_obs).flatten(1, 2)
            clocks = real.timestep.flatten(1, 2)
        else:
            # the pool of earlier real episode starts plus this batch's own
            first = real.timestep == 0
            pool_states = torch.cat(
                [self.state.start_states.to(real.states.dtype), real.states[first]]
            )
            pool_accels = torch.cat(
                [self.state.start_accels.to(real.states.dtype), accelerometer(real.raw_obs)[first]]
            )
            pool_size = len(pool_states)
            starts = pool_states.expand(T, pool_size, STATE_DIM)
            accels = pool_accels.expand(T, pool_size, ACCEL_DIM)
            clocks = torch.zeros(T, pool_size, dtype=torch.long)
        model_env = ModelEnv(
            self.state.model,
            self.tasks,
            starts,
            accels,
            clocks,
            envs,
            self.settings.max_length,
            self.state.disagreement_limit,
            self.horizon,
            seed=seed,
        )
        imagined = collect(model_env, policy, params, normalizer, steps, generator, True, seed)
        data = merge(real, imagined, self.adv_cfg, self.horizon)
        returns, costs, count = complete_episodes(imagined, self.horizon)
        total = real.episodes.double() + count
        for t, d in enumerate(data):
            if count[t] > 0:
                real_count = real.episodes[t].double()
                real_r = torch.nan_to_num(real.episode_return[t]) * real_count
                real_c = torch.nan_to_num(real.episode_cost[t]) * real_count
                d.episode_return = (real_r + returns[t]) / total[t]
                d.episode_cost = (real_c + costs[t]) / total[t]
        info = {
            "model_share": imagined.rewards[0].numel() / data[0].obs.shape[0],
            "imagined_episodes": float(count.float().mean()),
        }
        info.update({f"imagined_{k}": v for k, v in model_env.path_stats().items()})
        return InnerBatch(data, real, info)

    def model_share(self, real: Batch) -> float:
        """Share of model samples for this update, from the model's disagreement on ``real``."""
        data = transitions(real, self.tasks)
        current = self.state.mean_disagreement(data.states, data.actions, data.context)
        if not math.isfinite(self.state.initial_disagreement):
            return self.settings.max_model_fraction  # exact model: no uncertainty to follow
        return model_fraction(
            current,
            self.state.initial_disagreement,
            self.settings.real_floor,
            self.settings.max_model_fraction,
        )


@torch.no_grad()
def merge(
    real: Batch, imagined: Batch, cfg: AdvantageConfig, horizon: int, value_rounds: int = 1
) -> list[PolicyData]:
    """Per-task policy data of real and imagined samples together.

    Values: fitted per task on the Monte-Carlo returns of both batches (exact for whole
    episodes, truncated for imagined paths stopped early), then ``value_rounds`` times
    refitted on the GAE-lambda returns of both (fitted value iteration: the lambda-returns
    of stopped paths bootstrap from the previous values). Measured: values fitted on one
    real episode alone turn the gradient of real + imagined data almost orthogonal to
    that of the same samples treated as one batch (cosine 0.1). GAE runs on each batch
    separately (paths end where they end); reward advantages are then normalised and
    cost advantages centred over the union.
    """
    adv: dict[str, list[Tensor]] = {"real": [], "imagined": []}
    batches = (("real", real), ("imagined", imagined))
    for signal, gamma, lam in (
        ("rewards", cfg.gamma, cfg.lam),
        ("costs", cfg.cost_gamma, cfg.cost_lam),
    ):
        targets = [
            discounted_returns(getattr(b, signal), b.terminated, b.truncated, gamma).flatten(1, 2)
            for _, b in batches
        ]
        weights = fit_linear_values(
            torch.cat([b.obs.flatten(1, 2) for _, b in batches], 1).unsqueeze(1),
            torch.cat([b.timestep.flatten(1, 2) for _, b in batches], 1).unsqueeze(1),
            torch.cat(targets, 1).unsqueeze(1),
            horizon,
        )
        for round_ in range(value_rounds + 1):
            results = {}
            for name, batch in batches:
                values = predict_values(weights, batch.obs, batch.timestep, horizon)
                next_values = predict_values(weights, batch.next_obs, batch.timestep + 1, horizon)
                advantage, returns = gae(
                    getattr(batch, signal).double(),
                    values,
                    next_values,
                    batch.terminated,
                    batch.truncated,
                    gamma,
                    lam,
                )
                results[name] = (advantage, returns)
            if round_ == value_rounds:
                break
            weights = fit_linear_values(
                torch.cat([b.obs.flatten(1, 2) for _, b in batches], 1).unsqueeze(1),
                torch.cat([b.timestep.flatten(1, 2) for _, b in batches], 1).unsqueeze(1),
                torch.cat([results[n][1].flatten(1, 2) for n, _ in batches], 1).unsqueeze(1),
                horizon,
            )
        for name, batch in batches:
            adv[name].append(results[name][0].to(batch.rewards.dtype))
    joined = join_batches(real, imagined)
    adv_r = torch.cat([adv["real"][0].flatten(1, 2), adv["imagined"][0].flatten(1, 2)], 1)
    adv_c = torch.cat([adv["real"][1].flatten(1, 2), adv["imagined"][1].flatten(1, 2)], 1)
    return policy_data(joined, adv_r.unsqueeze(2), adv_c.unsqueeze(2), horizon)


@torch.no_grad()
def complete_episodes(batch: Batch, horizon: int) -> tuple[Tensor, Tensor, Tensor]:
    """Summed return, summed cost and count ``[T]`` of the imagined paths that are whole
    episodes: started at step 0 and ended at the time limit (``timestep == horizon - 1``).
    """
    T, E, N = batch.rewards.shape
    run_r = torch.zeros(T, E, dtype=torch.float64)
    run_c = torch.zeros(T, E, dtype=torch.float64)
    from_start = torch.zeros(T, E, dtype=torch.bool)
    sums_r = torch.zeros(T, dtype=torch.float64)
    sums_c = torch.zeros(T, dtype=torch.float64)
    count = torch.zeros(T, dtype=torch.float64)
    for n in range(N):
        step = batch.timestep[..., n]
        from_start = torch.where(step == 0, torch.ones_like(from_start), from_start)
        run_r += batch.rewards[..., n].double()
        run_c += batch.costs[..., n].double()
        done = batch.terminated[..., n] | batch.truncated[..., n]
        whole = done & from_start & (step == horizon - 1)
        sums_r += (run_r * whole).sum(1)
        sums_c += (run_c * whole).sum(1)
        count += whole.sum(1)
        run_r = run_r * ~done
        run_c = run_c * ~done
        from_start = from_start & ~done
    return sums_r, sums_c, count


def join_batches(real: Batch, imagined: Batch) -> Batch:
    """Samples of both batches as one ``[T, 1, M_real + M_imagined]`` batch.

    Episode statistics (return, cost, count) are the real batch's.
    """
    joined = {}
    for name in ("obs", "actions", "log_probs", "rewards", "costs"):
        a, b = getattr(real, name), getattr(imagined, name)
        joined[name] = torch.cat([a.flatten(1, 2), b.flatten(1, 2)], 1).unsqueeze(1)
    placeholder = joined["rewards"]
    return Batch(
        raw_obs=joined["obs"],
        obs=joined["obs"],
        next_obs=joined["obs"],
        actions=joined["actions"],
        log_probs=joined["log_probs"],
        rewards=joined["rewards"],
        costs=joined["costs"],
        terminated=torch.zeros_like(placeholder, dtype=torch.bool),
        truncated=torch.zeros_like(placeholder, dtype=torch.bool),
        timestep=torch.zeros_like(placeholder, dtype=torch.long),
        episode_return=real.episode_return,
        episode_cost=real.episode_cost,
        episodes=real.episodes,
    )
