"""Entry point: ``python -m meta_safe.evaluate checkpoint=<run dir or file> [overrides]``.

Adapts a meta-trained policy on held-out tasks and reports return and cost
before and after each inner step. Overrides:

* ``env.backend=mujoco`` evaluates a torch-trained checkpoint on the real simulator;
* ``evaluation.tasks=N``, ``evaluation.inner_steps=K``, ``evaluation.seed=S``,
  ``evaluation.split=held_out|meta_train|fixed``;
* ``tasks=[[radius,wall_distance],...]`` explicit task parameters instead of sampling;
* ``evaluation.policy=sample|fresh|mean``, ``evaluation.cost_discount=0.99``: what is
  measured after each step (the reference protocol: ``mean`` and ``0.99``);
* ``evaluation.step_check_tries=N``, ``meta.step_check_margin=M``: the measured step
  check of adaptation (default: as meta-trained);
* ``out=<dir>``: where to write ``evaluation.{json,csv,png}`` (default: the run directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from meta_safe.config import validate
from meta_safe.evaluation import evaluate_meta_state

OVERRIDABLE = (
    "meta.step_check_shrink",
    "meta.step_check_margin",
    "env.backend",
    "env.cost_limit",
    "env.held_out",
    "env.meta_train",
    "evaluation",
    "runtime",
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
        if k not in ("checkpoint", "tasks", "out", "stem", "env", "evaluation", "runtime", "meta")
    ]
    unknown += [f"meta.{k}" for k in cli.get("meta", {}) if f"meta.{k}" not in OVERRIDABLE]
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
        cfg, {k: v for k, v in cli.items() if k in ("env", "evaluation", "runtime", "meta")}
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
    report = evaluate_meta_state(trainer.setup, trainer.state, cfg, cli.get("tasks"))
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
