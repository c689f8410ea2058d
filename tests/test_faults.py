"""Faults leave a run consistent: an exception inside an iteration, a checkpoint write
that fails (disk full) and ``kill -9`` during a checkpoint write all leave the previous
checkpoint loadable and ``metrics.csv`` as it was; the metrics log is appended to."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY, tiny_cfg

from meta_safe import checkpoint as checkpoint_module
from meta_safe.checkpoint import load, save_atomic
from meta_safe.cli import train as train_cli
from meta_safe.cli.errors import USER_ERROR_STATUS, run_cli
from meta_safe.errors import CheckpointError
from meta_safe.maml import init_meta, meta_step
from meta_safe.meta_optimizers.cpo_layer import CPOLayer
from meta_safe.optim.cpo_dual import CPOSolverError
from meta_safe.trainer import METRICS_FILE, MetricsLog, train
from stochastic_circle.torch_backend import BatchedCircleEnv

RULE = ("meta_optimizer=cpo_layer", "meta_optimizer.solver=closed_form")


def solver_failure(*args, **kwargs):
    raise CPOSolverError("CPO dual: injected failure for task(s) [0]")


def env_failure(*args, **kwargs):
    raise RuntimeError("injected simulator failure")


def non_finite_step(self, policy, params, state, data, ctx):
    new, state, metrics = ORIGINAL_STEP(self, policy, params, state, data, ctx)
    return [{k: v * float("nan") for k, v in p.items()} for p in new], state, metrics


ORIGINAL_STEP = CPOLayer.step
FAULTS = {
    "solver failure": (CPOLayer, "step", solver_failure, CPOSolverError),
    "non-finite inner step": (CPOLayer, "step", non_finite_step, FloatingPointError),
    "simulator failure": (BatchedCircleEnv, "step", env_failure, RuntimeError),
}


@pytest.fixture
def one_iteration(tmp_path: Path) -> tuple[Path, dict, str]:
    """A run after one good iteration: its directory, checkpoint and metrics text."""
    train(tiny_cfg(*RULE, "meta.iterations=1"), tmp_path)
    return tmp_path, load(tmp_path), (tmp_path / METRICS_FILE).read_text()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_iteration_leaves_the_run_consistent(
    fault: str, one_iteration, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, before, metrics = one_iteration
    owner, name, replacement, raised = FAULTS[fault]
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(raised):
        train(tiny_cfg(*RULE, "meta.iterations=2", "resume=true"), run_dir)
    after = load(run_dir)
    assert after["iteration"] == 1
    for key, value in before["meta_params"].items():
        assert torch.equal(value, after["meta_params"][key])
    assert (run_dir / METRICS_FILE).read_text() == metrics
    # the same fault inside one meta-step leaves the normaliser collecting again
    setup, state = init_meta(tiny_cfg(*RULE))
    with pytest.raises(raised):
        meta_step(setup, state)
    assert not state.normalizer.frozen
    monkeypatch.undo()
    train(tiny_cfg(*RULE, "meta.iterations=2", "resume=true"), run_dir)
    assert load(run_dir)["iteration"] == 2, "the run resumes once the fault is gone"


def test_a_full_disk_keeps_the_previous_checkpoint(
    one_iteration, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run_dir, before, _ = one_iteration

    def disk_full(payload, handle) -> None:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(tiny_cfg(*RULE, "meta.iterations=2", "resume=true"), run_dir)
    monkeypatch.undo()
    assert load(run_dir)["iteration"] == 1
    assert sorted(p.name for p in run_dir.glob("checkpoint.pt*")) == ["checkpoint.pt"]
    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    argv = [*TINY, *RULE, "meta.iterations=2", "resume=true", f"run_dir={run_dir}"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: train_cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == USER_ERROR_STATUS and "Traceback" not in err
    assert err.startswith("error: could not write checkpoint") and "No space left" in err


KILLED_MID_WRITE = """
import os, signal, sys
from meta_safe import checkpoint

path = sys.argv[1]
checkpoint.save_atomic({"iteration": 1, "meta_params": {}, "normalizer": {}, "rule": {},
                        "config": {}}, path)

def dies_mid_write(payload, handle):
    handle.write(b"PK" + b"x" * 1000)
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.torch.save = dies_mid_write
checkpoint.save_atomic({"iteration": 2, "meta_params": {}, "normalizer": {}, "rule": {},
                        "config": {}}, path)
"""


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    result = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], check=False)
    assert result.returncode == -signal.SIGKILL
    assert load(path)["iteration"] == 1
    assert len(list(tmp_path.glob("checkpoint.pt.*.tmp"))) == 1, "the killed write's temp file"
    save_atomic({**load(path), "iteration": 3}, path)
    assert load(path)["iteration"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "the next write tidies up"


def test_metrics_are_appended_not_rewritten(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, resume_iteration=0, tensorboard=False)
    path = tmp_path / METRICS_FILE
    log.append({"iteration": 1, "post_cost": 1.5})
    inode, size = path.stat().st_ino, path.stat().st_size
    log.append({"iteration": 2, "post_cost": 2.5})
    assert path.stat().st_ino == inode, "an append must not replace the file"
    assert path.stat().st_size > size
    assert path.read_text().splitlines() == ["iteration,post_cost", "1,1.5", "2,2.5"]
    log.append({"iteration": 3, "post_cost": 0.5, "model_err": 0.25})  # a new column
    assert path.read_text().splitlines() == [
        "iteration,post_cost,model_err",
        "1,1.5,",
        "2,2.5,",
        "3,0.5,0.25",
    ]
    resumed = MetricsLog(tmp_path, resume_iteration=2, tensorboard=False)
    assert [r["iteration"] for r in resumed.rows()] == ["1", "2"]
    resumed.append({"iteration": 3, "post_cost": 0.75, "model_err": 0.5})
    assert path.read_text().splitlines()[-1] == "3,0.75,0.5"
