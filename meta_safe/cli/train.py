"""Entry point: ``python -m meta_safe.meta_trainer [--cfg job] [key=value ...]``.

Meta-trains on the ``meta_train`` task distribution, then (``evaluate_after``)
adapts on unseen tasks of ``evaluation.split`` (held-out tasks by default) and of
``evaluation.also_splits`` (unseen tasks from the training ranges, where the walls cut
the circle) and prints a results table for each. Writes into the run directory:
``config.yaml``, ``metrics.csv``, ``tensorboard/``, ``checkpoint.pt``,
``evaluation.{json,csv,png}`` and ``evaluation_<split>.{json,csv,png}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from meta_safe.cli.errors import run_cli
from meta_safe.config import CONFIG_DIR, SPLIT_NAMES, compose_config
from meta_safe.errors import ConfigError

RUNS_DIR = "runs"
"""Where a run without ``run_dir=`` goes: ``runs/<date>_<time>_<meta_optimizer>``."""

EXAMPLES = """\
examples:
  python -m meta_safe.meta_trainer                          # cpo_layer, then both tables
  python -m meta_safe.meta_trainer meta_optimizer=pid seed=3 meta.iterations=100
  python -m meta_safe.meta_trainer env=point_circle_mujoco  # the MuJoCo simulator
  python -m meta_safe.meta_trainer run_dir=runs/a resume=true   # continue a stopped run
  python -m meta_safe.meta_trainer --cfg job env.cost_limit=25  # print the config only"""


def group_options() -> dict[str, list[str]]:
    """Each config group and its options (``group=option`` on the command line)."""
    from meta_safe.dyna.registry import DYNA_MODELS
    from meta_safe.meta_optimizers import META_OPTIMIZERS

    envs = sorted(p.stem for p in (Path(CONFIG_DIR) / "env").glob("*.yaml"))
    return {
        "env": envs,
        "meta_optimizer": list(META_OPTIMIZERS),
        "dyna": ["none", *DYNA_MODELS],
    }


def usage() -> str:
    groups = "\n".join(f"  {g}: {', '.join(o)}" for g, o in group_options().items())
    return (
        "usage: python -m meta_safe.meta_trainer [--help] [--cfg job] [key=value ...]\n\n"
        f"{__doc__.splitlines()[2]}\n{' '.join(__doc__.splitlines()[3:6])}\n\n"
        "options:\n"
        "  -h, --help   show this help and exit\n"
        "  --cfg job    print the resolved configuration and exit\n\n"
        f"config groups (group=option):\n{groups}\n\n"
        "Any key of the configuration can be overridden (key=value); print them all with\n"
        "--cfg job. A new run refuses an existing run directory: pass resume=true to\n"
        "continue it, or overwrite=true to replace it.\n\n"
        f"{EXAMPLES}"
    )


def default_run_dir(cfg: DictConfig) -> str:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return str(Path(RUNS_DIR) / f"{stamp}_{cfg.meta_optimizer.name}")


def run(cfg: DictConfig, run_dir: str) -> None:
    """Train (or resume), then adapt on unseen tasks of ``evaluation.split`` and of each
    of ``evaluation.also_splits`` and print a table for each."""
    from meta_safe.evaluation import evaluate_meta_state
    from meta_safe.trainer import train
    from meta_safe.trajectories import adaptation_trajectories, figure_envs_per_task

    trainer = train(cfg, run_dir)
    print(f"run directory: {run_dir}")
    if not cfg.evaluate_after:
        return
    splits = [cfg.evaluation.split] + [
        s for s in cfg.evaluation.also_splits if s != cfg.evaluation.split
    ]
    for index, split in enumerate(splits):
        split_cfg = OmegaConf.merge(cfg, {"evaluation": {"split": split}})
        report = evaluate_meta_state(trainer.setup, trainer.state, split_cfg)
        dyna = cfg.dyna.name if cfg.dyna is not None else "none"
        title = (
            f"{cfg.meta_optimizer.name} on {cfg.evaluation.tasks} {SPLIT_NAMES[split]} "
            f"({cfg.env.backend} backend, cost limit {cfg.env.cost_limit:g}, dyna={dyna}, "
            f"{report.env_steps_per_step:,} real steps per task per update)"
        )
        # the table first: the files and figures below take seconds more
        print(("\n" if index else "") + report.table(title), flush=True)
        stem = "evaluation" if index == 0 else f"evaluation_{split}"
        report.write(Path(run_dir), stem=stem)
        adaptation_trajectories(
            cfg.env, trainer.setup.policy, trainer.state.normalizer, report.tasks,
            report.policies, Path(run_dir) / f"{stem}_trajectories.png",
            seed=cfg.evaluation.seed,
            title=f"{cfg.meta_optimizer.name} on {SPLIT_NAMES[split]}: mean-action episodes "
            f"before and after {cfg.evaluation.inner_steps} inner steps",
            envs_per_task=figure_envs_per_task(cfg.env, cfg.evaluation.envs_per_task),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The command: parse ``argv`` (default ``sys.argv[1:]``), train, evaluate, print."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    print_config = argv[:2] == ["--cfg", "job"]
    overrides = argv[2:] if print_config else argv
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise ConfigError(f"unknown option {flags[0]!r}: valid options are --help, --cfg job")
    cfg = compose_config(overrides)
    if print_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    run(cfg, cfg.run_dir or default_run_dir(cfg))
    return 0


if __name__ == "__main__":
    run_cli(main)
