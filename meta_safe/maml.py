"""MAML through constrained inner updates (Finn et al. 2017; Meta-CPO, Cho & Sun 2024).

One meta-iteration, :func:`meta_step`, top to bottom:

1. sample tasks; start every task from the meta-parameters ``theta_0``;
2. K times: collect a fresh batch per task with the current adapted policies, and
   apply the meta-optimizer's inner step (kept in the autograd graph unless first-order);
3. collect the post-adaptation batch;
4. meta-objective per task: reward surrogate ``L_R`` and cost surrogate ``L_C`` of
   the adapted policy on post-adaptation data, constraint margin ``c = J_C - d``;
5. exact meta-gradients ``g = d mean(L_R) / d theta_0`` and ``b = d sum_t w_t L_C,t / d theta_0``
   through all K inner steps (``torch.autograd`` on the inner graph);
6. learnable meta-optimizers: one Adam step on their own parameters for
   ``-(mean s L_R - mu * mean max(0, c + L_C))``, with ``s = PolicyData.reward_scale``
   putting the normalised reward surrogate in per-episode units like ``L_C``;
7. outer step on ``theta_0`` with the Fisher of the *pre-adaptation* policy: the CPO step
   under the linearised cost constraint: the post-adaptation cost (or, with
   ``meta.outer_cost_batches``, the meta-policy's own or that of every step) of the
   tasks combined by ``meta.outer_constraint`` (their mean, the worst, a CVaR, or the
   mean of the costliest step) and
   tightened by ``meta.outer_cost_margin``; or, for a meta-optimizer that
   ignores cost (Meta-TRPO), the unconstrained natural-gradient step; then the checks
   that the new state is finite, the normaliser update and (Dyna) the model fit.

:class:`MetaState` is everything this learns and exactly what a checkpoint holds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from meta_safe.adaptation import adapt, meta_objectives
from meta_safe.data_source import InnerDataSource, RealRollouts, adaptation_info
from meta_safe.device import seeded_generator
from meta_safe.dyna import DynaRollouts, DynaSettings, DynaState, build_dyna, held_out_errors
from meta_safe.env_factory import make_batched_env, task_distribution
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.meta_optimizers.gradients import constraint_margin
from meta_safe.optim.cpo_step import cpo_step
from meta_safe.optim.flat_params import flat_concat, flat_gradient, unflatten_like
from meta_safe.optim.natural import natural_directions, trust_region_scale
from meta_safe.outer_constraint import (
    constrained_costs,
    measured_line_search,
    outer_cost_constraint,
)
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch
from meta_safe.rl.surrogate import AdvantageConfig, PolicyData, mean_kl
from meta_safe.step_check import StepCheck
from stochastic_circle.tasks import CircleTask, TaskDistribution

OUTER_CASE_UNCONSTRAINED = -1
"""``case`` reported by the unconstrained (``trpo``) outer step."""


def iteration_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 31-bit seed for ``(run seed, iteration, stream)``: independent streams per use."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0] >> 1)


@dataclass
class MetaSetup:
    """What a meta-iteration needs but does not learn (built once from the config)."""

    cfg: DictConfig
    policy: GaussianPolicy
    train_tasks: TaskDistribution
    adv_cfg: AdvantageConfig
    dyna_settings: DynaSettings | None

    @property
    def constrained_outer_step(self) -> bool:
        """The outer step constrains the post-adaptation cost (``meta.outer_step``)."""
        return self.cfg.meta.outer_step == "cpo"


@dataclass
class MetaState:
    """Everything meta-training learns; :meth:`state_dict` is the checkpoint's content.

    The meta-optimizer, its Adam state, the normaliser and the Dyna state are torch
    objects that :func:`meta_step` updates in place; ``meta_params`` and ``iteration``
    are replaced.
    """

    iteration: int
    meta_params: Params
    normalizer: ObsNormalizer
    meta_optimizer: MetaOptimizer
    outer_adam: torch.optim.Adam | None
    dyna: DynaState | None

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "meta_params": {k: v.detach().clone() for k, v in self.meta_params.items()},
            "normalizer": self.normalizer.state_dict(),
            "rule": self.meta_optimizer.state_dict(),
            "rule_optimizer": self.outer_adam.state_dict() if self.outer_adam else None,
            "dyna": self.dyna.state_dict() if self.dyna is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.meta_params = {k: v.clone() for k, v in state["meta_params"].items()}
        self.normalizer.load_state_dict(state["normalizer"])
        self.meta_optimizer.load_state_dict(state["rule"])
        if self.outer_adam is not None and state["rule_optimizer"] is not None:
            self.outer_adam.load_state_dict(state["rule_optimizer"])
        if self.dyna is not None and state.get("dyna") is not None:
            self.dyna.load_state_dict(state["dyna"])


def probe_obs_dim(env_cfg: Any) -> int:
    """Observation size of the configured robot/backend."""
    task = task_distribution(env_cfg, "fixed").sample(1, seed=0)
    return make_batched_env(env_cfg, task, 1, seed=0).obs_dim


def init_meta(cfg: DictConfig) -> tuple[MetaSetup, MetaState]:
    """The setup and the initial state of a validated config (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    train_tasks = task_distribution(cfg.env, "meta_train")
    obs_dim = probe_obs_dim(cfg.env)
    policy = GaussianPolicy(
        obs_dim, 2, cfg.policy.hidden, cfg.policy.activation, cfg.policy.log_std_init
    )
    meta_params = policy.init_params()
    meta_optimizer = build_meta_optimizer(cfg.meta_optimizer)
    if cfg.meta.outer_step == "auto":
        cfg.meta.outer_step = "trpo" if meta_optimizer.ignores_cost else "cpo"
    outer_adam = None
    if meta_optimizer.learnable:
        lr = cfg.meta.learned_rule_lr or meta_optimizer.default_outer_lr or 1e-3
        outer_adam = torch.optim.Adam(meta_optimizer.parameters(), lr=lr)
    adv_cfg = AdvantageConfig(**OmegaConf.to_container(cfg.advantage))
    dyna, dyna_settings = build_dyna(cfg.dyna, cfg.env)
    setup = MetaSetup(cfg, policy, train_tasks, adv_cfg, dyna_settings)
    state = MetaState(0, meta_params, ObsNormalizer(obs_dim), meta_optimizer, outer_adam, dyna)
    return setup, state


def step_check_of(cfg: DictConfig, evaluation: bool = False) -> StepCheck | None:
    """The measured step check of adaptation: ``meta.step_check_tries`` in meta-training;
    in evaluation ``evaluation.step_check_tries`` where set, else the same."""
    tries = cfg.meta.step_check_tries
    if evaluation and cfg.evaluation.get("step_check_tries") is not None:
        tries = cfg.evaluation.step_check_tries
    if tries <= 0:
        return None
    meta = cfg.meta
    return StepCheck(tries, meta.step_check_shrink, cfg.env.cost_limit, meta.step_check_margin)


def inner_cost_margin_of(cfg: DictConfig, evaluation: bool = False) -> float:
    """The inner rule's margin below the limit: ``meta.inner_cost_margin`` in
    meta-training; in evaluation ``evaluation.inner_cost_margin`` where set, else the same."""
    if evaluation and cfg.evaluation.get("inner_cost_margin") is not None:
        return float(cfg.evaluation.inner_cost_margin)
    return float(cfg.meta.inner_cost_margin)


def learned_rule_step(
    meta_optimizer: MetaOptimizer,
    outer_adam: torch.optim.Adam,
    reward_sur: Tensor,
    cost_sur: Tensor,
    margin: Tensor,
    post: list[PolicyData],
    cost_penalty: float,
) -> float:
    """One Adam step on a learnable meta-optimizer's parameters for
    ``-(mean s L_R - mu mean max(0, c + L_C))``; returns the gradient norm.

    :param reward_sur, cost_sur, margin: ``[T]``.
    """
    scale = torch.stack([torch.as_tensor(d.reward_scale) for d in post]).to(reward_sur)
    penalised = scale * reward_sur - cost_penalty * torch.relu(margin + cost_sur)
    outer_adam.zero_grad()
    rule_params = [p for p in meta_optimizer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(-penalised.mean(), rule_params, allow_unused=True)
    for p, grad in zip(rule_params, grads, strict=True):
        p.grad = torch.zeros_like(p) if grad is None else grad
    grad_norm = float(torch.sqrt(sum((p.grad**2).sum() for p in rule_params)))
    outer_adam.step()
    return grad_norm


def outer_step(
    policy: GaussianPolicy,
    meta_params: Params,
    pre_data: list[PolicyData],
    g: Tensor,
    b: Tensor | None,
    margin: Tensor,
    trust_radius: float,
    damping: float,
    cg_iters: int,
    fisher_stride: int = 1,
) -> tuple[Params, dict[str, Tensor]]:
    """Trust-region step on ``theta_0`` with the pre-adaptation Fisher ``H``.

    With ``b`` given: the CPO step (closed form) under the linearised post-adaptation
    cost constraint ``b^T x + margin <= 0``. With ``b=None``: the unconstrained natural
    gradient step ``x = sqrt(2 delta / g^T H^-1 g) H^-1 g`` (cost ignored), reported as
    ``case = OUTER_CASE_UNCONSTRAINED``.

    :param g, b: ``[P]`` meta-gradients of the mean reward and cost surrogates.
    :param margin: ``[]`` the combined post-adaptation ``J_C - d`` (plus the outer cost
        margin) that ``b`` linearises (unused when ``b=None``).
    """
    detached = {k: v.detach().requires_grad_() for k, v in meta_params.items()}
    merged = PolicyData(
        obs=torch.cat([d.obs for d in pre_data]),
        actions=torch.cat([d.actions for d in pre_data]),
        log_probs=torch.cat([d.log_probs for d in pre_data]),
        reward_adv=torch.cat([d.reward_adv for d in pre_data]),
        cost_adv=torch.cat([d.cost_adv for d in pre_data]),
        episode_return=torch.stack([d.episode_return for d in pre_data]).mean(),
        episode_cost=torch.stack([d.episode_cost for d in pre_data]).mean(),
        horizon=pre_data[0].horizon,
    )
    if b is None:
        (hg,) = natural_directions(
            policy, detached, merged, [g], damping, cg_iters, False, fisher_stride
        )
        step = trust_region_scale(g, hg, trust_radius) * hg
        info = {"case": torch.tensor(OUTER_CASE_UNCONSTRAINED), "q": (g * hg).sum()}
    else:
        hg, hb = natural_directions(
            policy, detached, merged, [g, b], damping, cg_iters, False, fisher_stride
        )
        step, info = cpo_step(g, b, margin.to(g.dtype), hg, hb, trust_radius, solver="closed_form")
    scale = kl_backtrack(policy, detached, step.detach(), merged.obs, KL_TOLERANCE * trust_radius)
    new = unflatten_like(flat_concat(detached).detach() + scale * step.detach(), meta_params)
    return new, {**{k: v.detach() for k, v in info.items()}, "kl_scale": torch.tensor(scale)}


KL_TOLERANCE = 4.0
"""An outer step whose measured KL exceeds ``KL_TOLERANCE * delta`` is shrunk: a guard
against steps far outside the trust region (regular outer steps measured up to about
2.2 delta in the published runs, which this leaves untouched)."""


@torch.no_grad()
def kl_backtrack(
    policy: GaussianPolicy,
    params: Params,
    step: Tensor,
    obs: Tensor,
    max_kl: float,
    shrink: float = 0.5,
    max_halvings: int = 40,
) -> float:
    """Largest ``shrink^j`` (``j < max_halvings``, else 0) whose step keeps the *measured*
    mean KL on ``obs [N, D]`` finite and within ``max_kl``.

    The CPO step stays inside the quadratic trust region only when ``[[q, r], [r, s]]``
    is a true Gram matrix; with conjugate-gradient solutions it can be indefinite when
    ``g`` and ``b`` are nearly parallel, and the closed form then divides by a vanishing
    multiplier (a step that moved parameters by 1e4 was seen). Normal steps pass at ``j = 0``.
    """
    base = flat_concat(params)
    scale = 1.0
    for _ in range(max_halvings):
        kl = mean_kl(policy, unflatten_like(base + scale * step, params), params, obs)
        if bool(torch.isfinite(kl)) and float(kl) <= max_kl:
            return scale
        scale *= shrink
    return 0.0


def check_finite(
    params: Params, outer_kl: float, meta_optimizer: MetaOptimizer, iteration: int
) -> None:
    """Stop with a clear error before a diverged meta-iteration reaches a checkpoint.

    :raises FloatingPointError: the new meta-parameters, the meta-optimizer's parameters
        or the outer step's KL are not finite.
    """
    bad = [name for name, value in params.items() if not torch.isfinite(value).all()]
    bad += [
        f"rule.{n}" for n, v in meta_optimizer.named_parameters() if not torch.isfinite(v).all()
    ]
    if bad or not math.isfinite(outer_kl):
        raise FloatingPointError(
            f"meta-iteration {iteration} diverged: outer_kl={outer_kl}, non-finite: "
            f"{bad or 'none'}. The checkpoint of the previous iteration is intact; lower "
            "meta.outer_trust_radius or meta.learned_rule_lr and resume."
        )


def inner_source(
    setup: MetaSetup, dyna: DynaState | None, tasks: list[CircleTask], real: RealRollouts, seed: int
) -> InnerDataSource:
    """The inner loop's data: ``real`` without Dyna (or with Dyna kept to adaptation:
    ``dyna.imagined_in_meta_training=false``), else a small real batch + model."""
    if dyna is None or not setup.dyna_settings.imagined_in_meta_training:
        return real
    cfg = setup.cfg
    env = make_batched_env(
        cfg.env, tasks, setup.dyna_settings.real_envs_per_task, seed, track_states=True
    )
    return DynaRollouts(
        env, tasks, dyna, setup.dyna_settings, cfg.meta.steps_per_env, setup.adv_cfg,
        cfg.env.episode_steps,
    )  # fmt: skip


def update_model(
    setup: MetaSetup, state: MetaState, batches: list[Batch], tasks: list[CircleTask], seed: int
) -> dict[str, float]:
    """Log the model's errors on the (unseen) post-adaptation batch, then store the real
    data and (every ``train_every`` iterations) fit the model."""
    dyna, settings = state.dyna, setup.dyna_settings
    if dyna is None:
        return {}
    metrics = held_out_errors(dyna.model, batches[-1], tasks) if dyna.ready else {}
    metrics |= dyna.fit(
        batches,
        tasks,
        seeded_generator(seed),
        settings.uncertainty_steps,
        settings.start_pool_size,
        train=state.iteration % settings.train_every == 0,
    )
    metrics["model_disagreement_limit"] = dyna.disagreement_limit
    return metrics


def meta_step(setup: MetaSetup, state: MetaState) -> tuple[MetaState, dict[str, float]]:
    """One meta-iteration (the seven steps of this module's docstring).

    Every source of randomness is derived from ``(cfg.seed, state.iteration)``, so a run
    resumed from a checkpoint continues exactly as an uninterrupted one.

    :return: the state after the outer step, and the iteration's metrics row.
    """
    cfg, meta_cfg, i, policy = setup.cfg, setup.cfg.meta, state.iteration, setup.policy
    # 1. tasks and their environments
    tasks = setup.train_tasks.sample(meta_cfg.tasks_per_iteration, iteration_seed(cfg.seed, i, 0))
    env = make_batched_env(
        cfg.env,
        tasks,
        meta_cfg.envs_per_task,
        iteration_seed(cfg.seed, i, 1),
        track_states=state.dyna is not None,  # the model learns from the post batch too
        fused_rollout=cfg.runtime.fused_rollout,
    )
    post_source = RealRollouts(env, meta_cfg.steps_per_env, setup.adv_cfg, cfg.env.episode_steps)
    source = inner_source(setup, state.dyna, tasks, post_source, iteration_seed(cfg.seed, i, 1))
    generator = seeded_generator(iteration_seed(cfg.seed, i, 2))
    inner_limit = cfg.env.cost_limit - meta_cfg.inner_cost_margin
    ctx = InnerContext(cost_limit=inner_limit, create_graph=not meta_cfg.first_order)
    meta = {k: v.detach().requires_grad_() for k, v in state.meta_params.items()}
    # 2-3. K inner steps and the post-adaptation batch, one input transformation throughout
    with state.normalizer.frozen_statistics():
        result = adapt(
            policy, meta, state.meta_optimizer, source, post_source, state.normalizer,
            meta_cfg.inner_steps, ctx, generator, seed=iteration_seed(cfg.seed, i, 3),
            step_check=step_check_of(cfg),
        )  # fmt: skip
        # 4. post-adaptation objectives
        start = time.perf_counter()
        post = result.data[-1]
        reward_sur, cost_sur = meta_objectives(policy, result.adapted, post)
        margin = constraint_margin(post, cfg.env.cost_limit).to(reward_sur.dtype)
        # 5. exact meta-gradients (Meta-TRPO's outer step never needs the cost one)
        learnable = state.outer_adam is not None
        constrained = setup.constrained_outer_step
        g = flat_gradient(reward_sur.mean(), meta, retain_graph=constrained or learnable)
        b, outer_margin = None, margin.mean()
        if constrained:
            costs, margins = constrained_costs(
                policy, result, cost_sur, margin, meta_cfg.outer_cost_batches, cfg.env.cost_limit
            )
            b, outer_margin = outer_cost_constraint(
                costs, margins, meta, meta_cfg.outer_constraint,
                meta_cfg.outer_cvar_fraction, meta_cfg.outer_cost_margin, retain_graph=learnable,
                num_tasks=margin.shape[0],
            )  # fmt: skip
        # 6. the learnable meta-optimizer's own step
        rule_grad_norm = 0.0
        if learnable:
            rule_grad_norm = learned_rule_step(
                state.meta_optimizer, state.outer_adam, reward_sur, cost_sur, margin, post,
                meta_cfg.cost_penalty,
            )  # fmt: skip
        meta_gradient_time = time.perf_counter() - start
        # 7. outer step on theta_0, with the pre-adaptation Fisher
        start = time.perf_counter()
        new_params, info = outer_step(
            policy, meta, result.data[0], g, b, outer_margin, meta_cfg.outer_trust_radius,
            meta_cfg.outer_damping, meta_cfg.outer_cg_iters, meta_cfg.outer_fisher_stride,
        )  # fmt: skip
        obs = result.batches[0].obs.reshape(-1, policy.obs_dim)
        with torch.no_grad():
            outer_kl = float(mean_kl(policy, new_params, state.meta_params, obs))
        check_finite(new_params, outer_kl, state.meta_optimizer, i + 1)
        outer_scale, search_steps = 1.0, 0
        if meta_cfg.outer_line_search_steps > 0:
            new_params, outer_scale, search_steps = measured_line_search(
                policy, state.meta_params, new_params, env, state.normalizer,
                result.batches[0].episode_cost, cfg.env.cost_limit, meta_cfg.outer_constraint,
                meta_cfg.outer_cvar_fraction, meta_cfg.outer_cost_margin,
                meta_cfg.outer_line_search_steps, meta_cfg.outer_line_search_shrink,
                meta_cfg.steps_per_env, iteration_seed(cfg.seed, i, 5),
            )  # fmt: skip
            with torch.no_grad():  # the KL of the step actually taken
                outer_kl = float(mean_kl(policy, new_params, state.meta_params, obs))
    for batch in result.batches:
        state.normalizer.update(batch.raw_obs)
    outer_time = time.perf_counter() - start
    start = time.perf_counter()
    model_metrics = update_model(
        setup, state, result.batches, tasks, iteration_seed(cfg.seed, i, 4)
    )
    model_time = time.perf_counter() - start
    new_state = MetaState(
        i + 1, new_params, state.normalizer, state.meta_optimizer, state.outer_adam, state.dyna
    )
    pre, post_batch = result.batches[0], result.batches[-1]
    lam = [m["lambda"].float().mean() for m in result.metrics if "lambda" in m]
    row = {
        "iteration": new_state.iteration,
        "pre_return": float(pre.episode_return.mean()),
        "pre_cost": float(pre.episode_cost.mean()),
        "post_return": float(post_batch.episode_return.mean()),
        "post_cost": float(post_batch.episode_cost.mean()),
        "post_within_limit": float((post_batch.episode_cost <= cfg.env.cost_limit).float().mean()),
        "post_worst_cost": float(post_batch.episode_cost.max()),
        "multiplier": float(torch.stack(lam).mean()) if lam else math.nan,
        "outer_kl": outer_kl,
        "outer_case": float(info["case"]),
        "outer_kl_scale": float(info["kl_scale"]),
        "rule_grad_norm": rule_grad_norm,
        "outer_step_scale": outer_scale,
        "env_steps": float(
            sum(b.num_steps for b in result.batches)
            + search_steps
            + sum(c.extra_steps for c in result.checks)
        ),
        "rejected_steps": float(sum(c.rejected.sum() for c in result.checks)),
        "model_steps": float(
            sum(len(d.obs) for data in result.data for d in data)
            - sum(b.num_steps for b in result.batches)
        ),
        "time_sampling": result.times["sampling"],
        "time_inner_update": result.times["inner_update"],
        "time_meta_gradient": meta_gradient_time,
        "time_outer_step": outer_time,
        "time_model": model_time,
        **adaptation_info(result.infos),
        **model_metrics,
    }
    return new_state, row
