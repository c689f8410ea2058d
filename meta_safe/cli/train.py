"""Entry point: ``python -m meta_safe.meta_trainer [hydra overrides]``.

Meta-trains on the ``meta_train`` task distribution, then (``evaluate_after``)
adapts on unseen tasks of ``evaluation.split`` (held-out tasks by default) and of
``evaluation.also_splits`` (unseen tasks from the training ranges, where the walls cut
the circle) and prints a results table for each. Writes into the run directory:
``config.yaml``, ``metrics.csv``, ``tensorboard/``, ``checkpoint.pt``,
``evaluation.{json,csv,png}`` and ``evaluation_<split>.{json,csv,png}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from meta_safe.config import CONFIG_DIR, SPLIT_NAMES, validate


def run(cfg: DictConfig, run_dir: str) -> None:
    """Train (or resume), then adapt on unseen tasks of ``evaluation.split`` and of each
    of ``evaluation.also_splits`` and print a table for each."""
    from meta_safe.evaluation import evaluate_meta_state
    from meta_safe.trainer import train

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
        report.write(Path(run_dir), stem="evaluation" if index == 0 else f"evaluation_{split}")
        dyna = cfg.dyna.name if cfg.dyna is not None else "none"
        title = (
            f"{cfg.meta_optimizer.name} on {cfg.evaluation.tasks} {SPLIT_NAMES[split]} "
            f"({cfg.env.backend} backend, cost limit {cfg.env.cost_limit:g}, dyna={dyna}, "
            f"{report.env_steps_per_step:,} real steps per task per update)"
        )
        print(("\n" if index else "") + report.table(title))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        cfg = validate(cfg)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run(cfg, cfg.run_dir or HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
