"""The meta-training loop as a tool: run directory, metrics, checkpoints, resume.

Every source of randomness in meta-iteration ``i`` is derived from
``(cfg.seed, i)``, and the checkpoint holds all learned state (meta-parameters,
normaliser, the rule and its optimiser), so ``resume=true`` reproduces an
uninterrupted run exactly.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from meta_safe.checkpoint import CHECKPOINT_NAME, load, save_atomic
from meta_safe.data_source import (
    DynaRollouts,
    InnerDataSource,
    RealRollouts,
    adaptation_info,
    build_dyna,
    held_out_errors,
)
from meta_safe.env_factory import make_batched_env, task_distribution
from meta_safe.maml import adapt, meta_objectives, outer_step
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, constraint_margin
from meta_safe.optim.flat_params import flat_concat
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params, gaussian_kl
from meta_safe.rl.rollout import Batch
from meta_safe.rl.surrogate import AdvantageConfig
from stochastic_circle.tasks import CircleTask

METRICS_FILE = "metrics.csv"
RULE_META_KEYS = ("name", "learnable_outer_lr", "outer_step")


def iteration_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 31-bit seed for ``(run seed, iteration, stream)``: independent streams per use."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0] >> 1)


def build_rule(rule_cfg: DictConfig) -> MetaOptimizer:
    """Instantiate the meta-optimizer named by ``_target_`` (extra keys stripped)."""
    kwargs = {k: v for k, v in OmegaConf.to_container(rule_cfg).items() if k not in RULE_META_KEYS}
    if "_target_" not in kwargs:
        raise ValueError(f"meta_optimizer config {rule_cfg.get('name')!r} has no _target_")
    rule = instantiate(kwargs)
    if not isinstance(rule, MetaOptimizer):
        raise TypeError(f"meta_optimizer _target_ {kwargs['_target_']!r} is not a MetaOptimizer")
    return rule


def flat_gradient(objective: torch.Tensor, params: Params, retain_graph: bool) -> torch.Tensor:
    """``d objective / d params`` flattened ``[P]``; parameters it does not use get zeros."""
    grads = torch.autograd.grad(
        objective, list(params.values()), retain_graph=retain_graph, allow_unused=True
    )
    filled = [
        torch.zeros_like(v) if g is None else g for v, g in zip(params.values(), grads, strict=True)
    ]
    return flat_concat(dict(zip(params, filled, strict=True)))


def check_finite(params: Params, outer_kl: float, rule: MetaOptimizer, iteration: int) -> None:
    """Stop with a clear error before a diverged meta-iteration reaches a checkpoint.

    :raises FloatingPointError: the new meta-parameters, the rule's parameters or the
        outer step's KL are not finite.
    """
    bad = [name for name, value in params.items() if not torch.isfinite(value).all()]
    bad += [f"rule.{n}" for n, v in rule.named_parameters() if not torch.isfinite(v).all()]
    if bad or not math.isfinite(outer_kl):
        raise FloatingPointError(
            f"meta-iteration {iteration} diverged: outer_kl={outer_kl}, non-finite: "
            f"{bad or 'none'}. The checkpoint of the previous iteration is intact; lower "
            "meta.outer_trust_radius or meta_optimizer.learnable_outer_lr and resume."
        )


def probe_obs_dim(env_cfg: DictConfig) -> int:
    """Observation size of the configured robot/backend."""
    task = task_distribution(env_cfg, "fixed").sample(1, seed=0)
    return make_batched_env(env_cfg, task, 1, seed=0).obs_dim


class MetaTrainer:
    """Holds the learned state and runs meta-iterations. ``cfg`` is validated already."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        torch.set_num_threads(cfg.runtime.torch_threads)
        torch.manual_seed(cfg.seed)
        self.train_tasks = task_distribution(cfg.env, "meta_train")
        obs_dim = probe_obs_dim(cfg.env)
        self.policy = GaussianPolicy(
            obs_dim, 2, cfg.policy.hidden, cfg.policy.activation, cfg.policy.log_std_init
        )
        self.meta_params: Params = self.policy.init_params()
        self.normalizer = ObsNormalizer(obs_dim)
        self.rule = build_rule(cfg.meta_optimizer)
        lr = cfg.meta_optimizer.get("learnable_outer_lr", 1e-3)
        self.rule_optimizer = (
            torch.optim.Adam(self.rule.parameters(), lr=lr) if self.rule.learnable else None
        )
        self.adv_cfg = AdvantageConfig(**OmegaConf.to_container(cfg.advantage))
        self.dyna, self.dyna_settings = build_dyna(cfg.dyna, cfg.env)
        self.iteration = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "meta_params": {k: v.detach().clone() for k, v in self.meta_params.items()},
            "normalizer": self.normalizer.state_dict(),
            "rule": self.rule.state_dict(),
            "rule_optimizer": self.rule_optimizer.state_dict() if self.rule_optimizer else None,
            "config": OmegaConf.to_container(self.cfg),
            "dyna": self.dyna.state_dict() if self.dyna is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.meta_params = {k: v.clone() for k, v in state["meta_params"].items()}
        self.normalizer.load_state_dict(state["normalizer"])
        self.rule.load_state_dict(state["rule"])
        if self.rule_optimizer is not None and state["rule_optimizer"] is not None:
            self.rule_optimizer.load_state_dict(state["rule_optimizer"])
        if self.dyna is not None and state.get("dyna") is not None:
            self.dyna.load_state_dict(state["dyna"])

    def save(self) -> Path:
        return save_atomic(self.state_dict(), self.run_dir / CHECKPOINT_NAME)

    # -------------------------------------------------------------- iteration
    def run_iteration(self) -> dict[str, float]:
        """One meta-iteration (see :mod:`meta_safe.maml`); returns its metrics row."""
        cfg, meta_cfg, i = self.cfg, self.cfg.meta, self.iteration
        tasks = self.train_tasks.sample(
            meta_cfg.tasks_per_iteration, iteration_seed(cfg.seed, i, 0)
        )
        env = make_batched_env(
            cfg.env, tasks, meta_cfg.envs_per_task, iteration_seed(cfg.seed, i, 1)
        )
        post_source = RealRollouts(env, meta_cfg.steps_per_env, self.adv_cfg, cfg.env.episode_steps)
        source = self.inner_source(tasks, post_source, iteration_seed(cfg.seed, i, 1))
        generator = torch.Generator().manual_seed(iteration_seed(cfg.seed, i, 2))
        ctx = InnerContext(cost_limit=cfg.env.cost_limit, create_graph=not meta_cfg.first_order)
        meta = {k: v.detach().requires_grad_() for k, v in self.meta_params.items()}
        self.normalizer.frozen = True  # one input transformation for the whole iteration
        result = adapt(
            self.policy,
            meta,
            self.rule,
            source,
            post_source,
            self.normalizer,
            meta_cfg.inner_steps,
            ctx,
            generator,
            seed=iteration_seed(cfg.seed, i, 3),
        )
        start = time.perf_counter()
        post = result.data[-1]
        reward_sur, cost_sur = meta_objectives(self.policy, result.adapted, post)
        margin = constraint_margin(post, cfg.env.cost_limit).to(reward_sur.dtype)
        learnable = self.rule_optimizer is not None
        constrained = cfg.meta_optimizer.get("outer_step", "cpo") == "cpo"
        g = flat_gradient(reward_sur.mean(), meta, retain_graph=constrained or learnable)
        # Meta-TRPO's outer step ignores cost: its meta-gradient is never needed.
        b = flat_gradient(cost_sur.mean(), meta, retain_graph=learnable) if constrained else None
        rule_grad_norm = 0.0
        if learnable:
            # J_R - mu max(0, J_C - d), both terms in per-episode units (the normalised
            # reward surrogate rescaled by horizon x advantage std).
            scale = torch.stack([torch.as_tensor(d.reward_scale) for d in post]).to(reward_sur)
            penalised = scale * reward_sur - meta_cfg.cost_penalty * torch.relu(margin + cost_sur)
            self.rule_optimizer.zero_grad()
            rule_params = [p for p in self.rule.parameters() if p.requires_grad]
            grads = torch.autograd.grad(-penalised.mean(), rule_params, allow_unused=True)
            for p, grad in zip(rule_params, grads, strict=True):
                p.grad = torch.zeros_like(p) if grad is None else grad
            rule_grad_norm = float(torch.sqrt(sum((p.grad**2).sum() for p in rule_params)))
            self.rule_optimizer.step()
        meta_gradient_time = time.perf_counter() - start
        start = time.perf_counter()
        new_params, info = outer_step(
            self.policy,
            meta,
            result.data[0],
            g,
            b,
            margin.mean(),
            meta_cfg.outer_trust_radius,
            meta_cfg.outer_damping,
            meta_cfg.outer_cg_iters,
            meta_cfg.outer_fisher_stride,
        )
        with torch.no_grad():
            obs = result.batches[0].obs.reshape(-1, self.policy.obs_dim)
            old_mean, old_std = self.policy.distribution(self.meta_params, obs)
            new_mean, new_std = self.policy.distribution(new_params, obs)
            outer_kl = float(gaussian_kl(old_mean, old_std, new_mean, new_std).mean())
        check_finite(new_params, outer_kl, self.rule, i + 1)
        self.meta_params = new_params
        self.normalizer.frozen = False
        for batch in result.batches:
            self.normalizer.update(batch.raw_obs)
        outer_time = time.perf_counter() - start
        start = time.perf_counter()
        model_metrics = self.update_model(result.batches, tasks, iteration_seed(cfg.seed, i, 4))
        model_time = time.perf_counter() - start

        pre, post_batch = result.batches[0], result.batches[-1]
        lam = [m["lambda"].float().mean() for m in result.metrics if "lambda" in m]
        self.iteration += 1
        return {
            "iteration": self.iteration,
            "pre_return": float(pre.episode_return.mean()),
            "pre_cost": float(pre.episode_cost.mean()),
            "post_return": float(post_batch.episode_return.mean()),
            "post_cost": float(post_batch.episode_cost.mean()),
            "post_within_limit": float(
                (post_batch.episode_cost <= cfg.env.cost_limit).float().mean()
            ),
            "multiplier": float(torch.stack(lam).mean()) if lam else math.nan,
            "outer_kl": outer_kl,
            "outer_case": float(info["case"]),
            "rule_grad_norm": rule_grad_norm,
            "env_steps": float(sum(b.num_steps for b in result.batches)),
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

    # -------------------------------------------------------------- dyna
    def inner_source(
        self, tasks: list[CircleTask], real: RealRollouts, seed: int
    ) -> InnerDataSource:
        """The inner loop's data: ``real`` without Dyna, else a small real batch + model."""
        if self.dyna is None:
            return real
        env = make_batched_env(self.cfg.env, tasks, self.dyna_settings.real_envs_per_task, seed)
        return DynaRollouts(
            env,
            tasks,
            self.dyna,
            self.dyna_settings,
            self.cfg.meta.steps_per_env,
            self.adv_cfg,
            self.cfg.env.episode_steps,
        )

    def update_model(
        self, batches: list[Batch], tasks: list[CircleTask], seed: int
    ) -> dict[str, float]:
        """Log the model's errors on the (unseen) post-adaptation batch, then store the real
        data and (every ``train_every`` iterations) fit the model."""
        if self.dyna is None:
            return {}
        metrics = {}
        if self.dyna.ready:
            metrics = held_out_errors(self.dyna.model, batches[-1], tasks)
        metrics |= self.dyna.fit(
            batches,
            tasks,
            torch.Generator().manual_seed(seed),
            self.dyna_settings.uncertainty_steps,
            self.dyna_settings.start_pool_size,
            train=self.iteration % self.dyna_settings.train_every == 0,
        )
        metrics["model_disagreement_limit"] = self.dyna.disagreement_limit
        return metrics


class MetricsLog:
    """CSV (and TensorBoard) of per-iteration metrics; truncated to the checkpoint on resume."""

    def __init__(self, run_dir: Path, resume_iteration: int, tensorboard: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with self.path.open() as handle:
                rows = [
                    r for r in csv.DictReader(handle) if int(r["iteration"]) <= resume_iteration
                ]
        self.rows = rows
        self._rewrite()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=resume_iteration + 1
            )

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            # Columns can appear later in a run (e.g. model errors once a model is fitted).
            fieldnames = list(dict.fromkeys(k for row in self.rows for k in row))
            writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def append(self, row: dict[str, float]) -> None:
        self.rows.append({k: repr(v) if isinstance(v, float) else str(v) for k, v in row.items()})
        self._rewrite()
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration" and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(row["iteration"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(cfg: DictConfig, run_dir: str | Path) -> MetaTrainer:
    """Run (or resume) meta-training in ``run_dir``; returns the trainer."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = MetaTrainer(cfg, run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if cfg.resume:
        if not checkpoint.exists():
            raise FileNotFoundError(
                f"resume=true but {str(checkpoint)!r} does not exist: "
                "set run_dir to the directory of the run to resume"
            )
        trainer.load_state_dict(load(checkpoint))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    log = MetricsLog(run_dir, trainer.iteration)
    total = cfg.meta.iterations
    bar = tqdm(
        total=total,
        initial=trainer.iteration,
        disable=not cfg.runtime.progress,
        desc=f"meta-train [{cfg.meta_optimizer.name}]",
        dynamic_ncols=True,
    )
    try:
        while trainer.iteration < total:
            start = time.perf_counter()
            row = trainer.run_iteration()
            row["time_total"] = time.perf_counter() - start
            log.append(row)
            if trainer.iteration % cfg.checkpoint_every == 0 or trainer.iteration == total:
                trainer.save()
            bar.set_postfix(
                ret=f"{row['post_return']:.2f}",
                cost=f"{row['post_cost']:.1f}",
                safe=f"{row['post_within_limit']:.2f}",
            )
            bar.update(1)
    finally:
        bar.close()
        log.close()
    return trainer
