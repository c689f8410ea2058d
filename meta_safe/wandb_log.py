"""Weights & Biases logging of the per-iteration metrics (``logging.wandb=true``).

``wandb`` is imported only here, and only when the option is on. The W&B run id is kept
in ``run_dir/wandb_id``, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any

ID_FILE = "wandb_id"


class WandbLog:
    """One W&B run per run directory; :meth:`log` sends a metrics row."""

    def __init__(self, logging_cfg: Any, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        id_path = run_dir / ID_FILE
        if not id_path.exists():
            id_path.write_text(secrets.token_hex(4))
        self.run = wandb.init(
            project=logging_cfg.wandb_project,
            entity=logging_cfg.wandb_entity,
            mode=logging_cfg.wandb_mode,
            dir=str(run_dir),
            name=run_dir.name,
            id=id_path.read_text().strip(),
            resume="allow",
            config=config,
        )

    def log(self, row: dict[str, float]) -> None:
        """Send the finite values of ``row`` at step ``row['iteration']``."""
        values = {k: v for k, v in row.items() if k != "iteration" and math.isfinite(v)}
        self.run.log(values, step=int(row["iteration"]))

    def close(self) -> None:
        self.run.finish()
