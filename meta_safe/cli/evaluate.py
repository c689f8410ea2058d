"""Entry point: ``python -m meta_safe.evaluate checkpoint=<run dir or file> [overrides]``.

Adapts a meta-trained policy on held-out tasks and reports return and cost
before and after each inner step. Overrides:

* ``env.backend=mujoco`` evaluates a torch-trained checkpoint on the real simulator;
* ``evaluation.tasks=N``, ``evaluation.inner_steps=K``, ``evaluation.seed=S``,
  ``evaluation.split=held_out|meta_train|fixed``;
* ``tasks=[[radius,wall_distance],...]`` explicit task parameters instead of sampling;
* ``evaluation.policy=sample|fresh|mean``, ``evaluation.cost_discount=0.99``: what is
  measured after each step (the reference protocol: ``mean`` and ``0.99``);
* ``evaluation.measure_episodes=N``: separate episodes per task of each measurement;
* ``evaluation.step_check_tries=N``, ``meta.step_check_margin=M``: the measured step
  check of adaptation (default: as meta-trained);
* ``evaluation.inner_cost_margin=M``: adaptation aims at ``J_C <= d - M`` (default: as
  meta-trained);
* ``evaluation.inner_rule.<key>=V``: a cpo_layer checkpoint's step settings at adaptation,
  e.g. ``evaluation.inner_rule.overshoot_model=step_length`` (default: as meta-trained);
* ``out=<dir>``: where to write ``evaluation.{json,csv,png}`` (default: the run directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from meta_safe.cli.errors import run_cli
from meta_safe.config import validate
from meta_safe.errors import ConfigError

OVERRIDABLE = (
    "meta.step_check_shrink",
    "meta.step_check_margin",
    "env.backend",
    "env.cost_limit",
    "env.held_out",
    "env.meta_train",
    "dyna.real_envs_per_task",
    "dyna.model_envs_per_task",
    "evaluation",
    "runtime",
)
"""Keys of the checkpoint's configuration an evaluation may change."""

TOP_LEVEL = ("checkpoint", "tasks", "out", "stem")

EXAMPLES = """\
examples:
  python -m meta_safe.evaluate checkpoint=runs/my_run
  python -m meta_safe.evaluate checkpoint=runs/my_run env.backend=mujoco evaluation.tasks=10
  python -m meta_safe.evaluate checkpoint=runs/my_run tasks=[[2.31,1.409]] \\
      evaluation.inner_steps=50 evaluation.policy=mean evaluation.cost_discount=0.99"""


HELP = """\
usage: python -m meta_safe.evaluate [--help] checkpoint=<run dir or checkpoint.pt> [key=value ...]

Adapt a meta-trained policy on unseen tasks and print return, cost and the share of
tasks within the cost limit before and after each inner step.

keys:
  checkpoint=PATH                the run directory or its checkpoint.pt (required)
  tasks=[[radius,wall],...]      explicit tasks instead of a sample of evaluation.split
  out=DIR, stem=NAME             where to write <stem>.{json,csv,png} (default: the run
                                 directory, evaluation_<backend>)
  env.backend=torch|mujoco       e.g. a torch-trained point policy on the real simulator
  env.cost_limit, env.held_out, env.meta_train
  evaluation.tasks=N, evaluation.inner_steps=K, evaluation.seed=S,
  evaluation.split=held_out|meta_train|fixed
  evaluation.policy=auto|sample|fresh|mean, evaluation.cost_discount=G
                                 what is measured after each step
  evaluation.measure_episodes=N  separate episodes per task of each measurement (fresh,
                                 mean; default: evaluation.envs_per_task)
  evaluation.step_check_tries=N, meta.step_check_shrink, meta.step_check_margin
                                 the measured step check of adaptation
  evaluation.inner_cost_margin=M adaptation aims at cost <= limit - M (default: as trained)
  evaluation.inner_rule.KEY=V    cpo_layer's step settings at adaptation (overshoot_margin,
                                 overshoot_model, overshoot_prior, ..., line_search_steps)
  dyna.real_envs_per_task=E, dyna.model_envs_per_task=M
                                 a Dyna checkpoint's real and imagined envs per update
  runtime.*                      device (cpu, cuda, cuda:N), threads, progress

"""


def usage() -> str:
    return HELP + EXAMPLES


def parse(argv: list[str]) -> OmegaConf:
    """The ``key=value`` arguments as a config; unknown keys are a :class:`ConfigError`."""
    malformed = [a for a in argv if "=" not in a or a.startswith("-")]
    if malformed:
        raise ConfigError(
            f"argument {malformed[0]!r} is invalid: expected key=value "
            "(see python -m meta_safe.evaluate --help)"
        )
    try:
        cli = OmegaConf.from_dotlist(argv)
    except Exception as error:  # omegaconf's parse errors have several types
        raise ConfigError(f"arguments {argv!r} could not be parsed: {error}") from error
    if "checkpoint" not in cli:
        raise ConfigError("checkpoint=<run dir or checkpoint.pt> is required")
    sections = ("env", "evaluation", "runtime", "meta", "dyna")
    unknown = [k for k in cli if k not in TOP_LEVEL + sections]
    for section in sections:
        for key in cli.get(section) or {}:
            name = f"{section}.{key}"
            if section != "evaluation" and section != "runtime" and name not in OVERRIDABLE:
                unknown.append(name)
    if unknown:
        raise ConfigError(
            f"{unknown[0]} cannot be set here: valid keys are "
            f"{', '.join(TOP_LEVEL)}, {', '.join(OVERRIDABLE)}"
        )
    return cli


def main(argv: list[str] | None = None) -> int:
    """The command: evaluate the checkpoint named in ``argv`` and print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    from meta_safe.checkpoint import load
    from meta_safe.evaluation import evaluate_meta_state, evaluation_tasks
    from meta_safe.trainer import MetaTrainer
    from meta_safe.trajectories import adaptation_trajectories, figure_envs_per_task

    cli = parse(argv)
    state = load(cli.checkpoint)
    cfg = OmegaConf.create(state["config"])
    if "dyna" in cli and (cfg.get("dyna") is None or cfg.dyna.get("name") == "none"):
        key = next(iter(cli.dyna))
        raise ConfigError(f"dyna.{key} applies to a Dyna checkpoint: this one has dyna=none")
    cfg = OmegaConf.merge(
        cfg,
        {k: v for k, v in cli.items() if k in ("env", "evaluation", "runtime", "meta", "dyna")},
    )
    cfg = validate(cfg)
    explicit = cli.get("tasks")
    evaluation_tasks(cfg, explicit)  # bad explicit tasks fail before any work
    run_dir = Path(str(cli.checkpoint))
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    trainer = MetaTrainer(cfg, run_dir)
    trainer.load_state_dict(state)
    report = evaluate_meta_state(trainer.setup, trainer.state, cfg, explicit)
    out = Path(str(cli.get("out", run_dir)))
    stem = str(cli.get("stem", f"evaluation_{cfg.env.backend}"))
    paths = report.write(out, stem=stem)
    paths.append(
        adaptation_trajectories(
            cfg.env, trainer.setup.policy, trainer.state.normalizer, report.tasks,
            report.policies, out / f"{stem}_trajectories.png", seed=cfg.evaluation.seed,
            title=f"{cfg.meta_optimizer.name}: mean-action episodes before and after "
            f"{len(report.policies) - 1} inner steps ({cfg.env.backend} backend)",
            envs_per_task=figure_envs_per_task(cfg.env, cfg.evaluation.envs_per_task),
        )
    )  # fmt: skip
    dyna = cfg.dyna.name if cfg.dyna is not None else "none"
    print(
        report.table(
            f"{cfg.meta_optimizer.name}: {len(report.tasks)} {cfg.evaluation.split} "
            f"tasks, {cfg.env.backend} backend, after iteration {state['iteration']} "
            f"(dyna={dyna}, {report.env_steps_per_step:,} real steps per task per update)"
        )
    )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    run_cli(main)
