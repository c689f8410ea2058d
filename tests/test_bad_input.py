"""Every user mistake ends in one line ``error: ...`` naming the value, exit status 2, and
no traceback: in the training command, the evaluation command and the experiment scripts.

Most cases call the commands' ``main`` in-process through the same error path the
``python -m`` entry points use (:func:`meta_safe.cli.errors.run_cli`); a few run the real
entry points in a subprocess to show they behave the same.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from tiny import TINY

from meta_safe.checkpoint import FORMAT_VERSION, load
from meta_safe.cli import evaluate as evaluate_cli
from meta_safe.cli import train as train_cli
from meta_safe.cli.errors import USER_ERROR_STATUS, run_cli


def run_command(main: Callable, argv: list[str], capsys: pytest.CaptureFixture) -> tuple:
    """``(exit status, stdout, stderr)`` of ``main(argv)`` behind the entry point's error path."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def assert_clear_error(status: int, err: str, *named: str) -> None:
    """Exit status 2, one line ``error: ...`` on stderr, no traceback, naming ``named``."""
    assert status == USER_ERROR_STATUS, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in named:
        assert text in lines[0], (text, lines[0])


# (overrides, texts the message must contain)
TRAIN_CASES = [
    (["meta_optimizer.trust_radius=nan"], ["meta_optimizer.trust_radius", "nan", "finite"]),
    (["meta_optimizer.trust_radius=inf"], ["meta_optimizer.trust_radius", "inf"]),
    (["meta_optimizer.trust_radius=-1"], ["meta_optimizer.trust_radius=-1.0", "> 0"]),
    (["env.cost_limit=nan"], ["env.cost_limit", "nan"]),
    (["env.meta_train.radius=[1.5,1.0]"], ["env.meta_train.radius", "low <= high"]),
    (["env.meta_train.radius=[7,8]"], ["env.meta_train", "7.0", "arena"]),
    (["env.held_out.wall_scale=[0.5]"], ["env.held_out.wall_scale", "[low, high]"]),
    (["env.fixed.radius=[-1,1]"], ["env.fixed.radius", "> 0"]),
    (["meta_optimizer=does_not_exist"], ["does_not_exist", "cpo_layer"]),
    (["env=nowhere"], ["nowhere", "point_circle"]),
    (["meta.iterations=abc"], ["meta.iterations", "abc"]),
    (["meta.iterations=0"], ["meta.iterations=0", "> 0"]),
    (["meta.inner_steps=-1"], ["meta.inner_steps=-1", ">= 0"]),
    (["meta.foo=1"], ["meta.foo", "iterations"]),
    (["+foo=1"], ["foo", "meta_optimizer"]),
    (["meta_optimizer.foo=1"], ["meta_optimizer.foo", "trust_radius"]),
    (["runtime.device=cuda"], ["runtime.device", "cuda", "cpu"]),
    (["env.robot=car"], ["env.robot='car'", "torch", "mujoco"]),
    (["dyna=ensemble", "env=car_circle_mujoco"], ["dyna='ensemble'", "car", "point"]),
    (["dyna=ensemble", "dyna.model.members=0"], ["dyna.model.members=0"]),
    (["meta_optimizer=pid", "meta_optimizer.k_p=-1"], ["meta_optimizer.k_p", "-1"]),
    (["meta_optimizer=lstm", "meta_optimizer.hidden=4"], ["meta_optimizer.hidden", "hidden_size"]),
    (["seed=-1"], ["seed=-1", ">= 0"]),
    (["evaluation.cost_discount=0"], ["evaluation.cost_discount=0", "(0, 1]"]),
    (["evaluation.also_splits=[nope]"], ["nope", "held_out"]),
    (["evaluation.split=nope"], ["evaluation.split", "nope"]),
    (["meta.outer_cvar_fraction=2"], ["meta.outer_cvar_fraction=2", "(0, 1]"]),
    (["meta.outer_constraint=median"], ["meta.outer_constraint", "median", "cvar"]),
    (["resume=true", "overwrite=true"], ["resume=true", "overwrite=true"]),
    (["--bogus"], ["--bogus", "--help"]),
    (["meta.iterations"], ["meta.iterations"]),
]


@pytest.mark.parametrize(("overrides", "named"), TRAIN_CASES, ids=lambda v: " ".join(v))
def test_training_command_bad_value(overrides: list[str], named: list[str], capsys) -> None:
    status, _, err = run_command(train_cli.main, overrides, capsys)
    assert_clear_error(status, err, *named)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-iteration run (not evaluated)."""
    from tiny import tiny_cfg

    from meta_safe.trainer import train

    run_dir = tmp_path_factory.mktemp("run")
    train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=1"), run_dir)
    return run_dir


def run_overrides(run_dir: Path, *more: str) -> list[str]:
    return [*TINY, "meta_optimizer=lagrangian", "meta.iterations=1", f"run_dir={run_dir}", *more]


def test_a_new_run_refuses_an_existing_run_directory(trained_run: Path, capsys) -> None:
    before = (trained_run / "checkpoint.pt").read_bytes(), (trained_run / "metrics.csv").read_text()
    status, _, err = run_command(train_cli.main, run_overrides(trained_run), capsys)
    assert_clear_error(status, err, str(trained_run), "resume=true", "overwrite=true")
    after = (trained_run / "checkpoint.pt").read_bytes(), (trained_run / "metrics.csv").read_text()
    assert after == before, "the refused run must not touch the existing one"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["meta_optimizer=pid"], ["meta_optimizer", "lagrangian", "pid"]),
        (["seed=3"], ["seed (run: 0, now: 3)"]),
        (
            ["meta.tasks_per_iteration=3", "env.cost_limit=5"],
            ["meta.tasks_per_iteration", "env.cost_limit"],
        ),
    ],
)
def test_resume_names_the_keys_that_differ(trained_run: Path, change, named, capsys) -> None:
    overrides = run_overrides(trained_run, "resume=true", "meta.iterations=2", *change)
    status, _, err = run_command(train_cli.main, overrides, capsys)
    assert_clear_error(status, err, *named)
    assert load(trained_run)["iteration"] == 1


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    status, _, err = run_command(
        train_cli.main, run_overrides(tmp_path / "none", "resume=true"), capsys
    )
    assert_clear_error(status, err, "resume=true", "checkpoint.pt", "does not exist")


def write_bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    """Files that are not usable checkpoints, by kind."""
    folder.mkdir(exist_ok=True)
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "garbage": b"this is not a checkpoint\n" * 10,
        "empty": b"",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["not a meta_safe checkpoint"] = folder / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, paths["not a meta_safe checkpoint"])
    newer = load(good)
    newer["format_version"] = FORMAT_VERSION + 1
    paths["newer format"] = folder / "newer.pt"
    torch.save(newer, paths["newer format"])
    return paths


def test_evaluation_command_bad_checkpoints(trained_run: Path, tmp_path: Path, capsys) -> None:
    bad = write_bad_checkpoints(tmp_path, trained_run / "checkpoint.pt")
    expected = {
        "truncated": "damaged or not a checkpoint",
        "garbage": "damaged or not a checkpoint",
        "empty": "damaged or not a checkpoint",
        "not a meta_safe checkpoint": "not a meta_safe checkpoint",
        "newer format": f"format_version={FORMAT_VERSION + 1}",
    }
    for kind, path in bad.items():
        status, _, err = run_command(evaluate_cli.main, [f"checkpoint={path}"], capsys)
        assert_clear_error(status, err, str(path), expected[kind])
    missing = tmp_path / "missing"
    status, _, err = run_command(evaluate_cli.main, [f"checkpoint={missing}"], capsys)
    assert_clear_error(status, err, str(missing), "does not exist")


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ([], ["checkpoint=", "required"]),
        (["tasks=[[-1,1]]"], ["tasks[0]", "radius=-1.0"]),
        (["tasks=[[nan,1]]"], ["tasks[0]", "nan"]),
        (["tasks=[[1.5,7]]"], ["tasks[0]", "wall_distance=7.0", "arena"]),
        (["tasks=[1,2]"], ["tasks[0]=1", "[radius, wall_distance]"]),
        (["tasks=[]"], ["tasks=[]", "non-empty"]),
        (["meta.iterations=3"], ["meta.iterations", "cannot be set here"]),
        (["seed=4"], ["seed", "cannot be set here"]),
        (["evaluation.policy=bogus"], ["evaluation.policy", "bogus", "mean"]),
        (["evaluation.inner_steps=-2"], ["evaluation.inner_steps=-2"]),
        (["env.backend=gpu"], ["env.backend", "gpu", "mujoco"]),
        (["foo"], ["'foo'", "key=value"]),
        (["dyna.real_envs_per_task=2"], ["dyna.real_envs_per_task", "dyna=none"]),
        (["dyna.members=2"], ["dyna.members", "cannot be set here"]),
        (["meta_optimizer.trust_radius=0.1"], ["meta_optimizer", "cannot be set here"]),
        (
            ["evaluation.inner_rule.overshoot_margin=true"],
            ["evaluation.inner_rule.overshoot_margin", "cpo_layer", "lagrangian"],
        ),
    ],
)
def test_evaluation_command_bad_arguments(trained_run: Path, arguments, named, capsys) -> None:
    argv = ([f"checkpoint={trained_run}"] if arguments else []) + arguments
    status, _, err = run_command(evaluate_cli.main, argv, capsys)
    assert_clear_error(status, err, *named)


CODE_RUNNING = """
import os, pathlib, sys, torch

class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

checkpoint = torch.load(sys.argv[1], weights_only=True)
checkpoint["config"]["payload"] = RunsCode()
torch.save(checkpoint, sys.argv[1])
"""


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    crafted, marker = tmp_path / "crafted.pt", tmp_path / "code-ran"
    crafted.write_bytes((trained_run / "checkpoint.pt").read_bytes())
    subprocess.run([sys.executable, "-c", CODE_RUNNING, str(crafted), str(marker)], check=True)
    assert not marker.exists(), "crafting must not run the payload"
    status, _, err = run_command(evaluate_cli.main, [f"checkpoint={crafted}"], capsys)
    assert_clear_error(status, err, str(crafted), "could run code")
    assert not marker.exists(), "loading the crafted checkpoint ran its code"
    resumed = run_overrides(crafted.parent, "resume=true")
    (crafted.parent / "checkpoint.pt").write_bytes(crafted.read_bytes())
    status, _, err = run_command(train_cli.main, resumed, capsys)
    assert_clear_error(status, err, "could run code")
    assert not marker.exists(), "resuming from the crafted checkpoint ran its code"


def test_an_unversioned_checkpoint_still_loads(trained_run: Path, tmp_path: Path) -> None:
    """Format 1 had no ``format_version``: the same payload otherwise."""
    old = load(trained_run)
    old.pop("format_version")
    torch.save(old, tmp_path / "checkpoint.pt")
    assert load(tmp_path)["iteration"] == 1


def test_every_command_answers_help(capsys) -> None:
    for main, texts in (
        (train_cli.main, ["usage:", "meta_optimizer: cpo_layer", "examples:", "resume=true"]),
        (evaluate_cli.main, ["usage:", "checkpoint=", "examples:", "tasks="]),
    ):
        status, out, _ = run_command(main, ["--help"], capsys)
        assert status == 0
        for text in texts:
            assert text in out


EXPERIMENTS = Path(REPO_ROOT) / "experiments"
EXPERIMENT_SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("*.py"))


def run_script(name: str, argv: list[str], capsys, monkeypatch) -> tuple:
    """``(exit status, stdout, stderr)`` of ``experiments/<name>.py argv``, in-process."""
    import importlib

    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_:
        run_cli(module.main)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("name", EXPERIMENT_SCRIPTS)
def test_experiment_scripts_answer_help_and_take_the_error_path(name, capsys, monkeypatch) -> None:
    status, out, _ = run_script(name, ["--help"], capsys, monkeypatch)
    assert status == 0 and "usage:" in out
    status, _, err = run_script(name, ["--no-such-option"], capsys, monkeypatch)
    assert_clear_error(status, err, f"{name}.py --help")


def test_experiment_scripts_bad_values(tmp_path: Path, capsys, monkeypatch) -> None:
    for name, argv, named in (
        (
            "single_task_baselines",
            ["--iterations", "1", "meta_optimizer.trust_radius=nan"],
            ["meta_optimizer.trust_radius", "nan"],
        ),
        ("run_variants", ["--out", str(tmp_path), "--variant", ":x=1"], ["':x=1'"]),
        (
            "scratch_baseline",
            ["--out", str(tmp_path), "env.meta_train.radius=[2,1]"],
            ["env.meta_train.radius"],
        ),
    ):
        status, _, err = run_script(name, argv, capsys, monkeypatch)
        assert_clear_error(status, err, *named)


def test_entry_points_take_the_same_error_path(tmp_path: Path) -> None:
    """The real ``python -m`` commands (a subprocess each)."""
    for module, args, named in (
        ("meta_safe.meta_trainer", ["meta_optimizer.trust_radius=nan"], "trust_radius"),
        ("meta_safe.evaluate", [f"checkpoint={tmp_path / 'none'}"], "does not exist"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert_clear_error(result.returncode, result.stderr, named)


def test_mujoco_backend_without_its_extra_is_a_clear_error(monkeypatch) -> None:
    """A ``pip install .`` without the mujoco extra: the backend is refused before any
    work, with the install command."""
    from meta_safe import config as config_module
    from meta_safe.errors import ConfigError

    monkeypatch.setattr(config_module, "module_available", lambda name: name != "mujoco")
    with pytest.raises(ConfigError) as error:
        config_module.compose_config(["env=point_circle_mujoco"])
    message = str(error.value)
    assert message.startswith("env.backend='mujoco' needs mujoco, which this environment lacks")
    assert config_module.MUJOCO_INSTALL in message


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path, capsys, monkeypatch) -> None:
    """Ray would retry the connection for minutes; the grid refuses at once."""
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    argv = [
        "--out",
        str(tmp_path),
        "--variant",
        "a:meta_optimizer=trpo",
        "--ray",
        f"127.0.0.1:{port}",
    ]
    status, _, err = run_script("run_variants", argv, capsys, monkeypatch)
    assert_clear_error(status, err, f"--ray 127.0.0.1:{port}: nothing answers there")


def test_evaluation_command_sets_a_cpo_layer_checkpoints_inner_step(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """``evaluation.inner_rule.<key>`` of a cpo_layer checkpoint changes its inner step at
    adaptation only; an unknown key or a bad value is a one-line error naming it."""
    from tiny import tiny_cfg

    from meta_safe.meta_optimizers.cpo_layer import CPOLayer
    from meta_safe.trainer import train

    train(tiny_cfg("meta_optimizer=cpo_layer", "meta.iterations=1"), tmp_path)
    seen = []
    step = CPOLayer.step

    def spy(self, *args, **kwargs):
        seen.append((self.overshoot_margin, self.overshoot_model))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(CPOLayer, "step", spy)
    small = ["evaluation.tasks=1", "evaluation.inner_steps=1", "evaluation.envs_per_task=2",
             "evaluation.steps_per_env=40", f"out={tmp_path / 'eval'}"]  # fmt: skip
    argv = [f"checkpoint={tmp_path}", *small]
    status, _, err = run_command(evaluate_cli.main, argv, capsys)
    assert status == 0, err
    rule = [
        "evaluation.inner_rule.overshoot_margin=true",
        "evaluation.inner_rule.overshoot_model=step_length",
    ]
    status, _, err = run_command(evaluate_cli.main, argv + rule, capsys)
    assert status == 0, err
    assert seen == [(False, "constant"), (True, "step_length")]
    status, _, err = run_command(
        evaluate_cli.main, [*argv, "evaluation.inner_rule.overshoot_model=bogus"], capsys
    )
    assert_clear_error(status, err, "evaluation.inner_rule.overshoot_model='bogus'", "step_length")
    status, _, err = run_command(
        evaluate_cli.main, [*argv, "evaluation.inner_rule.trust_radius=0.1"], capsys
    )
    assert_clear_error(status, err, "evaluation.inner_rule.trust_radius", "overshoot_prior")
