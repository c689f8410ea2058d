"""Where the inner loop's data comes from: real rollouts, or real plus model rollouts.

The inner loop (:func:`meta_safe.maml.adapt`) asks a data source for one batch of
:class:`~meta_safe.rl.surrogate.PolicyData` per task and never learns which kind it
got. :class:`RealRollouts` collects every sample in the env. :class:`DynaRollouts`
collects a small real batch and adds imagined rollouts of a dynamics model
(:mod:`meta_safe.dyna`) branched from the real states:

* paths start from real states (``branch_from``): by default real *episode-start*
  states (a pool kept from all real data, shared by tasks: the start distribution does
  not depend on the task) and run up to whole episodes; ``visited`` branches from any
  state of the batch just collected, with its episode clock (MBPO). Measured with the
  exact model: 3,200 imagined samples on 10-50-step branches from one real episode
  did not bring the policy gradient closer to a large-batch gradient than the real
  episode alone (cosine 0.20 vs 0.18; 8 real episodes: 0.53), while 8 imagined whole
  episodes from pooled starts did (0.39);
* paths end (``truncated``: GAE bootstraps from the value of the last imagined state,
  nothing leaks across paths) at ``max_length`` steps, when their accumulated ensemble
  disagreement passes a limit calibrated on real data after the first model fit
  (``uncertainty_steps`` steps' worth of the mean one-step disagreement, CMBPO), or
  where the real episode would end;
* values are fitted on the real batch (complete episodes), then refitted on the
  lambda-returns of real and imagined data together (:func:`merge`);
* the share of model samples follows the model's current versus initial uncertainty,
  with a floor of real data (:func:`meta_safe.dyna.model_env.model_fraction`);
* the episode cost ``J_C`` of the constraint (and return) the update sees is the mean
  over the real episodes and the *complete* imagined episodes (start to time limit);
  every number reported as a measurement (:attr:`InnerBatch.real`) is real only.

The post-adaptation batch of the meta-objective is always real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from meta_safe.dyna.model_env import ModelEnv, model_fraction
from meta_safe.dyna.models import DynamicsModel, Transitions, context_from_tasks
from meta_safe.rl.advantages import gae
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, BatchedEnv, collect
from meta_safe.rl.surrogate import AdvantageConfig, PolicyData, policy_data, prepare
from meta_safe.rl.value_baseline import discounted_returns, fit_linear_values, predict_values
from stochastic_circle.tasks import CircleTask


@dataclass
class InnerBatch:
    """What a data source returns for one inner step.

    :ivar data: per-task policy data (real and, for Dyna, imagined samples).
    :ivar real: the real batch (``[T, E, N]``): its episodes measure the policy.
    :ivar info: scalars to log (model share, imagined path lengths, ...).
    """

    data: list[PolicyData]
    real: Batch
    info: dict[str, float]


class InnerDataSource(Protocol):
    """One batch per task for inner step ``k`` with the behaviour policies ``params``."""

    num_tasks: int

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch: ...


class RealRollouts:
    """Every sample from the env: ``env.num_envs x steps_per_env`` steps per task."""

    def __init__(
        self, env: BatchedEnv, steps_per_env: int, adv_cfg: AdvantageConfig, horizon: int
    ) -> None:
        self.env, self.steps_per_env = env, steps_per_env
        self.num_tasks = env.num_tasks
        self.adv_cfg, self.horizon = adv_cfg, horizon

    def collect(
        self,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> Batch:
        """A fresh real batch ``[T, E, steps_per_env]`` with per-task ``params``."""
        return collect(
            self.env, policy, params, normalizer, self.steps_per_env, generator, True, seed
        )

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch:
        """:param params: behaviour parameters, each tensor ``[T, ...]`` (detached)."""
        return self.wrap(self.collect(policy, params, normalizer, generator, seed))

    def wrap(self, batch: Batch) -> InnerBatch:
        """Policy data of a real batch alone."""
        return InnerBatch(prepare(batch, self.adv_cfg, self.horizon), batch, {})


#: Where imagined paths branch: real episode-start states (paths then run whole
#: episodes: measured, short branches from one episode's states do not improve the
#: gradient even with the exact model), or any real state visited (MBPO's branching).
BRANCH_FROM = ("episode_starts", "visited")


@dataclass
class DynaSettings:
    """The ``dyna`` config section without the model (see ``configs/dyna/*.yaml``)."""

    real_envs_per_task: int = 1
    model_envs_per_task: int = 7
    model_steps: int = 500
    max_length: int = 500
    uncertainty_steps: float = 500.0
    real_floor: float = 0.1
    max_model_fraction: float = 0.9
    train_every: int = 1
    branch_from: str = "episode_starts"
    start_pool_size: int = 4096

    def __post_init__(self) -> None:
        if self.branch_from not in BRANCH_FROM:
            raise ValueError(
                f"dyna.branch_from={self.branch_from!r} is invalid: valid choices are "
                f"{list(BRANCH_FROM)}"
            )
        if self.start_pool_size < 1:
            raise ValueError(f"dyna.start_pool_size={self.start_pool_size} must be >= 1")
        for name in ("real_envs_per_task", "model_envs_per_task", "model_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"dyna.{name}={getattr(self, name)} is invalid: must be >= 1")
        if not self.uncertainty_steps > 0:
            raise ValueError(f"dyna.uncertainty_steps={self.uncertainty_steps} must be > 0")
        if not 0 < self.real_floor <= 1:
            raise ValueError(f"dyna.real_floor={self.real_floor} is invalid: must be in (0, 1]")
        if not 0 <= self.max_model_fraction < 1:
            raise ValueError(
                f"dyna.max_model_fraction={self.max_model_fraction} is invalid: must be in [0, 1)"
            )
        if self.train_every < 1:
            raise ValueError(f"dyna.train_every={self.train_every} is invalid: must be >= 1")


class DynaState:
    """The learned part of Dyna that persists across meta-iterations (checkpointed).

    :ivar model: the dynamics model. :ivar disagreement_limit: per-path accumulated
        disagreement limit (``inf`` until calibrated; stays ``inf`` for an exact model).
    :ivar initial_disagreement: mean one-step disagreement at calibration.
    :ivar fits: how many times the model was trained.
    """

    def __init__(self, model: DynamicsModel, needs_training: bool) -> None:
        self.model = model
        self.needs_training = needs_training
        self.disagreement_limit = math.inf
        self.initial_disagreement = math.nan
        self.fits = 0
        self.start_states = torch.zeros(0, 6)
        self.start_accels = torch.zeros(0, 2)

    def remember_starts(self, batch: Batch, capacity: int) -> None:
        """Keep the real episode-start states of ``batch`` (FIFO, at most ``capacity``).

        The start distribution of the circle family does not depend on the task, so the
        pool is shared by all tasks.
        """
        first = batch.timestep == 0  # [T, E, N]
        states = batch.states[first].to(self.start_states.dtype)
        accels = batch.raw_obs[..., :2][first].to(self.start_accels.dtype)
        self.start_states = torch.cat([self.start_states, states])[-capacity:]
        self.start_accels = torch.cat([self.start_accels, accels])[-capacity:]

    @property
    def ready(self) -> bool:
        """Whether imagined data may be used (a learned model must have been fitted)."""
        return not self.needs_training or self.fits > 0

    def mean_disagreement(self, states: Tensor, actions: Tensor, context: Tensor) -> float:
        """Mean one-step disagreement on real ``states [M, 6]``, ``actions [M, 2]``."""
        with torch.no_grad():
            return float(self.model.predict(states, actions, context).disagreement.mean())

    def fit(
        self,
        batches: list[Batch],
        tasks: list[CircleTask],
        generator: torch.Generator,
        steps: float,
        capacity: int = 4096,
        train: bool = True,
    ) -> dict[str, float]:
        """Add the real transitions of ``batches`` and (``train``, learned model) retrain.

        After the first fit, the disagreement limit is calibrated to ``steps`` x the mean
        one-step disagreement on these transitions.
        """
        data = Transitions.cat([transitions(b, tasks) for b in batches])
        self.model.add(data)
        for batch in batches:
            self.remember_starts(batch, capacity)
        if not (train and self.needs_training):
            return {}
        metrics = self.model.train_model(generator)
        self.fits += 1
        if self.fits == 1:
            mean = self.mean_disagreement(data.states, data.actions, data.context)
            self.initial_disagreement = mean
            self.disagreement_limit = steps * mean if mean > 0 else math.inf
        return {k if k.startswith("model") else f"model/{k}": float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "disagreement_limit": self.disagreement_limit,
            "initial_disagreement": self.initial_disagreement,
            "fits": self.fits,
            "start_states": self.start_states.clone(),
            "start_accels": self.start_accels.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.disagreement_limit = state["disagreement_limit"]
        self.initial_disagreement = state["initial_disagreement"]
        self.fits = state["fits"]
        self.start_states = state["start_states"].clone()
        self.start_accels = state["start_accels"].clone()


def transitions(batch: Batch, tasks: list[CircleTask]) -> Transitions:
    """The real transitions of ``batch`` flattened over tasks, envs and steps."""
    if batch.states is None or batch.next_states is None or batch.next_raw_obs is None:
        raise ValueError(
            "Dyna needs planar states in the batch: env.backend='torch' provides them "
            "(valid choices for dyna other than 'none': env.backend=['torch'])"
        )
    T, E, N = batch.rewards.shape
    context = context_from_tasks(tasks, batch.states.dtype)[:, None, None, :].expand(T, E, N, -1)
    return Transitions(
        states=batch.states.reshape(-1, 6),
        actions=batch.actions.reshape(-1, batch.actions.shape[-1]),
        context=context.reshape(-1, context.shape[-1]),
        next_states=batch.next_states.reshape(-1, 6),
        next_accels=batch.next_raw_obs[..., :2].reshape(-1, 2),
    )


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
            accels = real.raw_obs[..., :2].flatten(1, 2)
            clocks = real.timestep.flatten(1, 2)
        else:
            # the pool of earlier real episode starts plus this batch's own
            first = real.timestep == 0
            pool_states = torch.cat(
                [self.state.start_states.to(real.states.dtype), real.states[first]]
            )
            pool_accels = torch.cat(
                [self.state.start_accels.to(real.states.dtype), real.raw_obs[..., :2][first]]
            )
            pool_size = len(pool_states)
            starts = pool_states.expand(T, pool_size, 6)
            accels = pool_accels.expand(T, pool_size, 2)
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


def build_dyna(dyna_cfg: Any, env_cfg: Any) -> tuple[DynaState | None, DynaSettings | None]:
    """The Dyna state and settings of the ``dyna`` config group (``None`` for ``none``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if dyna_cfg is None or dyna_cfg.get("name", "none") == "none":
        return None, None
    if env_cfg.backend != "torch" or env_cfg.robot != "point":
        raise ValueError(
            f"dyna={dyna_cfg.name!r} with env.backend={env_cfg.backend!r}, "
            f"env.robot={env_cfg.robot!r}: model rollouts need planar states, valid with "
            "env.backend='torch' and env.robot='point' (or use dyna=none)"
        )
    spec = OmegaConf.to_container(dyna_cfg)
    model = instantiate(spec.pop("model"))
    learned = bool(spec.pop("learned", True))
    spec.pop("name", None)
    return DynaState(model, needs_training=learned), DynaSettings(**spec)


def adaptation_info(infos: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each data-source scalar over the collections that reported it."""
    keys = sorted({k for info in infos for k in info})
    return {k: sum(i[k] for i in infos if k in i) / sum(k in i for i in infos) for k in keys}


def held_out_errors(
    model: DynamicsModel,
    batch: Batch,
    tasks: list[CircleTask],
    horizon: int = 25,
    starts: tuple[int, ...] = (100, 300),
) -> dict[str, float]:
    """Model errors on real trajectory segments of ``batch`` (not yet trained on).

    Segments of ``horizon`` steps start at each of ``starts`` in every env; segments
    that cross an episode end are skipped. :return: ``model_err/<name>`` metrics.
    """
    if batch.states is None or batch.next_states is None:
        return {}
    T, E, N = batch.rewards.shape
    context = context_from_tasks(tasks, batch.states.dtype)
    states, actions, contexts = [], [], []
    for start in starts:
        stop = start + horizon
        if stop > N:
            continue
        ended = (batch.terminated | batch.truncated)[:, :, start : stop - 1].any(-1)  # [T, E]
        keep = ~ended
        path = torch.cat(
            [batch.states[:, :, start:stop], batch.next_states[:, :, stop - 1 : stop]], 2
        )
        states.append(path[keep])
        actions.append(batch.actions[:, :, start:stop][keep])
        contexts.append(context[:, None, :].expand(T, E, -1)[keep])
    if not states or sum(len(s) for s in states) == 0:
        return {}
    from meta_safe.dyna.metrics import prediction_errors

    errors = prediction_errors(
        model,
        torch.cat(states),
        torch.cat(actions),
        torch.cat(contexts),
        horizons=(1, 5, horizon),
        generator=torch.Generator().manual_seed(0),
    )
    return {f"model_err/{k}": v for k, v in errors.items()}
