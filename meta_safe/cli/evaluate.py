"""Entry point: ``python -m meta_safe.evaluate checkpoint=<run dir or file> [overrides]``.

Adapts a meta-trained policy on held-out tasks and reports return and cost
before and after each inner step. Overrides:

* ``env.backend=mujoco`` evaluates a torch-trained checkpoint on the real simulator;
* ``evaluation.tasks=N``, ``evaluation.inner_steps=K``, ``evaluation.seed=S``,
  ``evaluation.split=held_out|meta_train|fixed``;
* ``tasks=[[radius,wall_distance],...]`` explicit task parameters instead of sampling;
* ``out=<dir>``: where to write ``evaluation.{json,csv,png}`` (default: the run directory).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from meta_safe.config import validate
from meta_safe.env_factory import task_distribution
from meta_safe.evaluation import AdaptationReport, evaluate_adaptation
from meta_safe.rl.surrogate import AdvantageConfig
from stochastic_circle.tasks import CircleTask

OVERRIDABLE = (
    "env.backend",
    "env.cost_limit",
    "env.held_out",
    "env.meta_train",
    "evaluation",
    "runtime",
)


def held_out_tasks(cfg: DictConfig, explicit: Any = None) -> list[CircleTask]:
    """Explicit ``[[radius, wall_distance], ...]`` or a seeded sample of the eval split."""
    if explicit:
        return [
            CircleTask(
                robot=cfg.env.robot,
                radius=float(r),
                wall_distance=float(w),
                num_walls=cfg.env.num_walls,
            )
            for r, w in explicit
        ]
    dist = task_distribution(cfg.env, cfg.evaluation.split)
    return dist.sample(cfg.evaluation.tasks, seed=cfg.evaluation.seed)


def evaluate_trainer(trainer: Any, cfg: DictConfig, explicit: Any = None) -> AdaptationReport:
    """Evaluate a :class:`meta_safe.trainer.MetaTrainer`'s current state under ``cfg``."""
    ev = cfg.evaluation
    return evaluate_adaptation(
        trainer.policy,
        trainer.meta_params,
        trainer.normalizer,
        trainer.rule,
        cfg.env,
        held_out_tasks(cfg, explicit),
        ev.inner_steps,
        ev.envs_per_task,
        ev.steps_per_env,
        AdvantageConfig(**OmegaConf.to_container(cfg.advantage)),
        ev.seed,
        dyna=(trainer.dyna, trainer.dyna_settings) if trainer.dyna is not None else None,
    )


def main(argv: list[str]) -> int:
    from meta_safe.checkpoint import load
    from meta_safe.trainer import MetaTrainer

    cli = OmegaConf.from_dotlist(argv)
    if "checkpoint" not in cli:
        print("error: checkpoint=<run dir or checkpoint.pt> is required", file=sys.stderr)
        return 2
    unknown = [
        k
        for k in cli
        if k not in ("checkpoint", "tasks", "out", "stem", "env", "evaluation", "runtime")
    ]
    if unknown:
        print(
            f"error: unknown keys {unknown}: valid are checkpoint, tasks, out, stem, "
            f"{', '.join(OVERRIDABLE)}",
            file=sys.stderr,
        )
        return 2
    state = load(cli.checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg = OmegaConf.merge(
        cfg, {k: v for k, v in cli.items() if k in ("env", "evaluation", "runtime")}
    )
    try:
        cfg = validate(cfg)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(str(cli.checkpoint))
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    trainer = MetaTrainer(cfg, run_dir)
    trainer.load_state_dict(state)
    report = evaluate_trainer(trainer, cfg, cli.get("tasks"))
    out = Path(str(cli.get("out", run_dir)))
    paths = report.write(out, stem=str(cli.get("stem", f"evaluation_{cfg.env.backend}")))
    print(
        report.table(
            f"{cfg.meta_optimizer.name}: {len(report.tasks)} {cfg.evaluation.split} "
            f"tasks, {cfg.env.backend} backend, after iteration {state['iteration']}"
        )
    )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
