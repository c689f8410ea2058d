"""The meta-training loop as a tool: run directory, metrics, checkpoints, resume.

The algorithm is :func:`meta_safe.maml.meta_step`; this module only loops, logs and
checkpoints. The checkpoint holds the whole :class:`~meta_safe.maml.MetaState` and every
source of randomness of iteration ``i`` derives from ``(cfg.seed, i)``, so ``resume=true``
reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from meta_safe.checkpoint import CHECKPOINT_NAME, load, save_atomic
from meta_safe.device import check_device, on_device, to_device
from meta_safe.errors import RunDirError
from meta_safe.maml import MetaSetup, MetaState, init_meta, meta_step
from meta_safe.provenance import ENVIRONMENT_FILE, describe_differences, record_start

if TYPE_CHECKING:
    from meta_safe.wandb_log import WandbLog

METRICS_FILE = "metrics.csv"


class MetaTrainer:
    """The setup and learned state of one run. ``cfg`` is validated already."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = check_device(cfg.runtime.device)
        torch.set_num_threads(cfg.runtime.torch_threads)
        self.setup: MetaSetup
        self.state: MetaState
        with on_device(self.device):
            self.setup, self.state = init_meta(cfg)

    @property
    def iteration(self) -> int:
        return self.state.iteration

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the learned state and the configuration that produced it."""
        return {**self.state.state_dict(), "config": OmegaConf.to_container(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a checkpoint (read on any device) onto this run's device."""
        with on_device(self.device):
            self.state.load_state_dict(to_device(state, self.device))

    def save(self) -> Path:
        return save_atomic(self.state_dict(), self.run_dir / CHECKPOINT_NAME)

    def run_iteration(self) -> dict[str, float]:
        """One meta-iteration; returns its metrics row."""
        with on_device(self.device):
            self.state, row = meta_step(self.setup, self.state)
        return row


class MetricsLog:
    """CSV (and TensorBoard, and optionally W&B) of per-iteration metrics.

    Rows are appended (one write per iteration, never a rewrite), so a long run costs the
    same per iteration at its end as at its start. The file is rewritten only on resume
    (rows after the checkpoint are dropped) and when a new column appears mid-run (e.g.
    model errors once a model is fitted).
    """

    def __init__(
        self,
        run_dir: Path,
        resume_iteration: int,
        tensorboard: bool = True,
        wandb: WandbLog | None = None,
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self.wandb = wandb
        self.fieldnames: list[str] = []
        if self.path.exists():
            with self.path.open() as handle:
                reader = csv.DictReader(handle)
                rows = [r for r in reader if int(r["iteration"]) <= resume_iteration]
                self.fieldnames = list(reader.fieldnames or [])
            self._rewrite(rows)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=resume_iteration + 1
            )

    def rows(self) -> list[dict[str, str]]:
        """Every row written so far (read back from the file)."""
        if not self.path.exists():
            return []
        with self.path.open() as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Replace the file atomically with ``rows`` under :attr:`fieldnames`."""
        if not rows:
            self.path.unlink(missing_ok=True)
            self.fieldnames = []
            return
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    def append(self, row: dict[str, float]) -> None:
        text = {k: repr(v) if isinstance(v, float) else str(v) for k, v in row.items()}
        new_columns = [k for k in text if k not in self.fieldnames]
        if new_columns and self.fieldnames:
            self.fieldnames += new_columns
            self._rewrite([*self.rows(), text])
        else:
            fresh = not self.fieldnames
            self.fieldnames = self.fieldnames or list(text)
            with self.path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.fieldnames, restval="")
                if fresh:
                    writer.writeheader()
                writer.writerow(text)
                handle.flush()
                os.fsync(handle.fileno())
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration" and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(row["iteration"]))
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()


RUN_FILES = (
    CHECKPOINT_NAME,
    METRICS_FILE,
    "config.yaml",
    ENVIRONMENT_FILE,
    "tensorboard",
    "wandb_id",
    "wandb",
)
"""What marks a directory as holding a run (a new run refuses it unless told)."""


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Check ``run_dir`` against ``resume``/``overwrite``; returns the checkpoint to
    resume from (``None`` for a new run).

    :raises RunDirError: a new run would replace an existing one (without
        ``overwrite=true``), or ``resume=true`` finds no checkpoint, or the resumed
        configuration differs from the run's in keys outside ``RESUME_MUTABLE``.
    """
    from meta_safe.config import RESUME_MUTABLE, resume_differences

    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if cfg.resume:
        if not (run_dir / CHECKPOINT_NAME).exists():
            hint = (
                "it stopped before its first checkpoint: start it again with overwrite=true"
                if existing
                else "set run_dir to the directory of the run to resume"
            )
            raise RunDirError(
                f"resume=true but {str(run_dir / CHECKPOINT_NAME)!r} does not exist: {hint}"
            )
        checkpoint = load(run_dir / CHECKPOINT_NAME)
        differences = resume_differences(checkpoint["config"], cfg)
        if differences:
            listed = ", ".join(f"{k} (run: {a!r}, now: {b!r})" for k, (a, b) in differences.items())
            raise RunDirError(
                f"resume=true with a configuration that differs from the run's in {listed}: "
                "pass the run's values (its config.yaml), or start a new run; only "
                f"{', '.join(RESUME_MUTABLE[:-3])} may change on resume"
            )
        return checkpoint
    if existing and not cfg.overwrite:
        raise RunDirError(
            f"run_dir={str(run_dir)!r} already holds a run ({', '.join(existing)}): pass "
            "resume=true to continue it, overwrite=true to replace it, or choose another run_dir"
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    on_iteration: Callable[[MetaTrainer, dict[str, float]], None] | None = None,
) -> MetaTrainer:
    """Run (or resume) meta-training in ``run_dir``; returns the trainer.

    :param on_iteration: called after each iteration is logged and checkpointed, with the
        trainer and the iteration's metrics row (e.g. to record or stop early by raising).

    An exception inside an iteration leaves the last checkpoint and ``metrics.csv`` as
    they were after the last completed iteration (both are written only between
    iterations, the checkpoint atomically).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = prepare_run_dir(cfg, run_dir)
    trainer = MetaTrainer(cfg, run_dir)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    changed = record_start(run_dir, trainer.iteration)
    if changed:
        print(
            f"warning: resuming iteration {trainer.iteration} on another numerical environment "
            f"({describe_differences(changed)}): the rest of the run will not repeat the "
            "uninterrupted run bit for bit",
            file=sys.stderr,
        )
    wandb = None
    if cfg.logging.wandb:
        from meta_safe.wandb_log import WandbLog

        wandb = WandbLog(cfg.logging, run_dir, OmegaConf.to_container(cfg))
    log = MetricsLog(run_dir, trainer.iteration, cfg.logging.tensorboard, wandb)
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
            if on_iteration is not None:
                on_iteration(trainer, row)
    finally:
        bar.close()
        log.close()
    return trainer
