"""The product surface: the ``meta-safe`` command and each subcommand, the Python API,
the examples (through the API only), trajectory figures, training curves and video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from tiny import TINY

import meta_safe
from meta_safe.cli import main as cli_main
from meta_safe.cli.errors import run_cli

SEEDS = (0, 1, 2)


def command(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``(status, stdout, stderr)`` of ``meta-safe argv`` behind its error path."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: cli_main.main(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-seed variant trained through the API: ``<grid>/lagrangian/seed<k>``."""
    root = tmp_path_factory.mktemp("grid")
    for seed in SEEDS:
        meta_safe.train(
            [*TINY, "meta_optimizer=lagrangian", "meta.iterations=3", f"seed={seed}",
             "evaluate_after=false"],
            run_dir=root / "lagrangian" / f"seed{seed}",
        )  # fmt: skip
    return root


def test_help_lists_every_subcommand(capsys) -> None:
    status, out, _ = command(["--help"], capsys)
    assert status == 0
    for name in cli_main.SUBCOMMANDS:
        assert f"  {name} " in out
    assert "examples:" in out
    for name in cli_main.SUBCOMMANDS:
        status, out, _ = command([name, "--help"], capsys)
        assert status == 0 and "usage:" in out, name


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "meta-safe"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("meta-safe ")


def test_train_and_evaluate_subcommands(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    status, out, err = command(
        ["train", *TINY, "meta_optimizer=trpo", "meta.iterations=1", f"run_dir={run_dir}"],
        capsys,
    )
    assert status == 0, err
    assert "| inner steps | return" in out
    assert (run_dir / "evaluation_trajectories.png").stat().st_size > 10_000
    status, out, err = command(["evaluate", f"checkpoint={run_dir}", "tasks=[[2.2,1.3]]"], capsys)
    assert status == 0, err
    assert (run_dir / "evaluation_torch_trajectories.png").stat().st_size > 10_000


def test_plot_draws_the_curves_of_a_three_seed_grid(grid: Path, capsys) -> None:
    out_file = grid / "curves.png"
    status, out, err = command(["plot", str(grid / "lagrangian"), "--out", str(out_file)], capsys)
    assert status == 0, err
    assert out_file.stat().st_size > 20_000
    from meta_safe.cli.plot import find_runs, mean_and_stderr

    runs = find_runs(grid / "lagrangian")
    assert len(runs) == len(SEEDS)
    iterations, means, errors = mean_and_stderr(runs, "post_return")
    assert iterations == [1, 2, 3] and all(e > 0 for e in errors)
    status, _, err = command(["plot", str(grid / "nothing-here")], capsys)
    assert status == 2 and "holds no run" in err


def test_grid_and_bench_subcommands(tmp_path: Path, capsys) -> None:
    tiny_grid = [o for o in TINY if not o.startswith("evaluation.tasks")] + [
        "evaluation.tasks=1",
        "meta.iterations=1",
    ]
    status, out, err = command(
        ["grid", "--out", str(tmp_path), "--seeds", "0", "--jobs", "1",
         "--variant", "trpo:meta_optimizer=trpo", *tiny_grid],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    assert json.loads((tmp_path / "trpo" / "seed0" / "evaluation.json").read_text())
    status, out, err = command(["bench", "long-run", "--iterations", "30", *TINY], capsys)
    assert status == 0, err
    assert "last / first: time" in out and "slope per 100 iterations" in out
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    bench = ["bench", "first-result", "--cold-only", "--cache-dir", cache_dir()]
    status, out, err = command([*bench, "meta.iterations=2", *TINY], capsys)
    assert status == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| given |"))
    first_table, whole_run, first_iteration = (float(v) for v in row.split("|")[2:5])
    assert 0 < first_iteration < first_table <= whole_run


def test_the_api_acts_adapts_evaluates_and_rolls_out(grid: Path) -> None:
    run = meta_safe.load(grid / "lagrangian" / "seed0")
    assert run.iteration == 3
    obs = torch.zeros(5, run.setup.policy.obs_dim)
    action = run.act(obs)
    assert action.shape == (5, 2) and torch.equal(action, run.act(obs))
    assert not torch.equal(run.act(obs, deterministic=False), action)
    adapted = run.adapt([2.2, 1.3], inner_steps=1)
    assert len(adapted.report.returns[0]) == 2
    assert any(not torch.equal(adapted.params[k], run.meta_params[k]) for k in adapted.params)
    episode = run.rollout(meta_safe.CircleTask(radius=2.2, wall_distance=1.3), adapted.params)
    assert episode.positions.shape == (run.cfg.env.episode_steps, 2)
    report = run.evaluate(overrides=["evaluation.tasks=2"])
    assert len(report.tasks) == 2
    with pytest.raises(meta_safe.ConfigError, match="meta.iterations"):
        run.evaluate(overrides=["meta.iterations=3"])


def test_rendering_is_built_only_when_asked() -> None:
    from stochastic_circle.mujoco_backend import MujocoCircleEnv

    env = MujocoCircleEnv(
        meta_safe.CircleTask(radius=1.5, wall_distance=1.125), render_mode="rgb_array"
    )
    env.reset(seed=0)
    assert env._renderer is None, "a reset must not load rendering"
    frame = env.render()
    assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8 and frame.std() > 1
    env.close()
    with pytest.raises(ValueError, match="render_mode='human'"):
        MujocoCircleEnv(render_mode="human")


@pytest.mark.slow
def test_examples_run_through_the_api(tmp_path: Path) -> None:
    """Both examples at tiny size: training, adaptation, the path figure, a MuJoCo video."""
    examples = Path(REPO_ROOT) / "examples"
    tiny = [*TINY, "meta.iterations=2"]
    for source in examples.glob("*.py"):
        text = source.read_text()
        assert "from meta_safe." not in text, f"{source.name} must use the public API only"
    run_dir = tmp_path / "example"
    result = subprocess.run(
        [sys.executable, str(examples / "train_and_adapt.py"), "--out", str(run_dir), *tiny],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "example_paths.png").stat().st_size > 10_000
    result = subprocess.run(
        [sys.executable, str(examples / "video.py"), str(run_dir), "--every", "10"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import imageio.v2 as imageio

    frames = imageio.mimread(run_dir / "episode.gif")
    assert len(frames) == 40 // 10 and frames[0].shape[:2] == (480, 480)


class FakeWandbRun:
    """What the trainer sends to W&B, recorded."""

    def __init__(self, **kwargs) -> None:
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def test_wandb_logging_is_optional_and_resumes_its_run(tmp_path, monkeypatch) -> None:
    """Off by default and never imported then; on, every metrics row reaches W&B at its
    iteration, and a resumed run continues the same W&B run id."""
    import importlib.machinery
    import types

    from meta_safe import config as config_module
    from meta_safe.errors import ConfigError

    monkeypatch.setattr(config_module, "module_available", lambda name: False)
    with pytest.raises(ConfigError, match=r"logging.wandb=true needs the wandb package"):
        config_module.compose_config(["logging.wandb=true"])
    monkeypatch.undo()

    runs: list[FakeWandbRun] = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: runs.append(FakeWandbRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    base = [*TINY, "evaluate_after=false", "logging.wandb=true", "logging.wandb_mode=offline"]
    meta_safe.train([*base, "meta.iterations=2"], run_dir=tmp_path)
    meta_safe.train([*base, "meta.iterations=3", "resume=true"], run_dir=tmp_path)
    assert len(runs) == 2 and all(run.finished for run in runs)
    assert runs[0].init["id"] == runs[1].init["id"] and runs[1].init["resume"] == "allow"
    assert runs[0].init["mode"] == "offline" and runs[0].init["config"]["seed"] == 0
    steps = [step for run in runs for step, _ in run.logged]
    assert steps == [1, 2, 3]
    import csv

    with (tmp_path / "metrics.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in csv_rows] == steps
    last = runs[1].logged[-1][1]
    assert last["post_return"] == pytest.approx(float(csv_rows[-1]["post_return"]))
