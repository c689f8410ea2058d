"""Checkpoint files are written atomically."""

from pathlib import Path

import pytest

from meta_safe.checkpoint import load, save_atomic
from meta_safe.errors import CheckpointError

PAYLOAD = {"iteration": 1, "meta_params": {}, "normalizer": {}, "rule": {}, "config": {}}


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_atomic(PAYLOAD, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({**PAYLOAD, "a": Unpicklable()}, path)
    assert load(path)["iteration"] == 1, "a failed write must leave the old checkpoint intact"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temp files left"
    with pytest.raises(CheckpointError, match="does-not-exist"):
        load(tmp_path / "does-not-exist")
