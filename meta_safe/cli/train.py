"""Entry point: ``python -m meta_safe.meta_trainer [hydra overrides]``.

Meta-trains on the ``meta_train`` task distribution, then (``evaluate_after``)
adapts on held-out tasks and prints the results table. Writes into the run
directory: ``config.yaml``, ``metrics.csv``, ``tensorboard/``, ``checkpoint.pt``
and ``evaluation.{json,csv,png}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from meta_safe.config import CONFIG_DIR, validate


def run(cfg: DictConfig, run_dir: str) -> None:
    """Train (or resume), then evaluate on held-out tasks and print the table."""
    from meta_safe.evaluation import evaluate_meta_state
    from meta_safe.trainer import train

    trainer = train(cfg, run_dir)
    print(f"run directory: {run_dir}")
    if cfg.evaluate_after:
        report = evaluate_meta_state(trainer.setup, trainer.state, cfg)
        report.write(Path(run_dir))
        dyna = cfg.dyna.name if cfg.dyna is not None else "none"
        title = (
            f"{cfg.meta_optimizer.name} on {cfg.evaluation.tasks} {cfg.evaluation.split} "
            f"tasks ({cfg.env.backend} backend, cost limit {cfg.env.cost_limit:g}, dyna={dyna}, "
            f"{report.env_steps_per_step:,} real steps per task per update)"
        )
        print(report.table(title))


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
