"""The meta-training loop as a tool: run directory, metrics, checkpoints, resume.

The algorithm is :func:`meta_safe.maml.meta_step`; this module only loops, logs and
checkpoints. The checkpoint holds the whole :class:`~meta_safe.maml.MetaState` and every
source of randomness of iteration ``i`` derives from ``(cfg.seed, i)``, so ``resume=true``
reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from meta_safe.checkpoint import CHECKPOINT_NAME, load, save_atomic
from meta_safe.maml import MetaSetup, MetaState, init_meta, meta_step

METRICS_FILE = "metrics.csv"


class MetaTrainer:
    """The setup and learned state of one run. ``cfg`` is validated already."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        torch.set_num_threads(cfg.runtime.torch_threads)
        self.setup: MetaSetup
        self.state: MetaState
        self.setup, self.state = init_meta(cfg)

    @property
    def iteration(self) -> int:
        return self.state.iteration

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the learned state and the configuration that produced it."""
        return {**self.state.state_dict(), "config": OmegaConf.to_container(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)

    def save(self) -> Path:
        return save_atomic(self.state_dict(), self.run_dir / CHECKPOINT_NAME)

    def run_iteration(self) -> dict[str, float]:
        """One meta-iteration; returns its metrics row."""
        self.state, row = meta_step(self.setup, self.state)
        return row


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
