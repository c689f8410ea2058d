"""Checkpoint files: atomic to write, safe to open.

A write goes to a temporary file that is fsynced and renamed over the old checkpoint, so
a crash, a full disk or ``kill -9`` mid-write leaves the previous checkpoint whole.
Reading uses ``torch.load(weights_only=True)``: only tensors, numbers, strings and
containers are unpickled, so a crafted file cannot run code. Each checkpoint carries
:data:`FORMAT_VERSION`; files without one are format 1 (the same payload, unversioned).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from meta_safe.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2
"""Format written now. 1: unversioned (meta_safe <= 0.3.0), 2: ``format_version`` added."""
REQUIRED_KEYS = ("iteration", "meta_params", "normalizer", "rule", "config")
"""Keys every format holds (a file without them is not a meta_safe checkpoint)."""


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plus ``format_version``) to a temp file, fsync, rename over ``path``.

    :raises CheckpointError: the write failed (e.g. disk full); ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**payload, "format_version": FORMAT_VERSION}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a killed write
            stale.unlink(missing_ok=True)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {str(path)!r}: {error.strerror or error}; "
            "the previous checkpoint is unchanged"
        ) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(path: str | Path) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (a file or its run directory).

    :raises CheckpointError: missing, damaged, not a checkpoint, holding objects other than
        tensors and plain data (refused, never executed), or of a newer format.
    """
    path = resolve(path)
    name = str(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint={name!r} does not exist: give a run directory or its checkpoint.pt"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint={name!r} is damaged or not a checkpoint (not a torch archive): "
            "use another checkpoint, or resume the run from its last good one"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line for line in str(error).splitlines() if "GLOBAL" in line]
        what = f" ({lines[0].strip()})" if lines else ""
        raise CheckpointError(
            f"checkpoint={name!r} holds objects other than tensors and plain data{what}: "
            "it was not loaded, because loading it could run code"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint={name!r} is damaged or not a checkpoint ({first[:200]}): "
            "use another checkpoint, or resume the run from its last good one"
        ) from error
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint={name!r} is not a meta_safe checkpoint: it lacks "
            f"{[k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]}"
        )
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint={name!r} has format_version={version!r}: this meta_safe reads "
            f"formats 1 to {FORMAT_VERSION} (a newer meta_safe wrote it?)"
        )
    return payload
