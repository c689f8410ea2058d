"""The meta-trainer as a tool: run directory, metrics, resume exactness, evaluation, errors."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir

from meta_safe.checkpoint import load, save_atomic
from meta_safe.config import validate
from meta_safe.maml import OUTER_CASE_UNCONSTRAINED, outer_step
from meta_safe.optim.flat_params import flat_concat, unflatten_like
from meta_safe.rl.policy import GaussianPolicy, gaussian_kl
from meta_safe.rl.surrogate import PolicyData
from meta_safe.trainer import MetaTrainer, train

CONFIG_DIR = str(Path(REPO_ROOT) / "configs")
# A tiny but real configuration: 2 tasks x 2 envs x 40-step episodes.
TINY = [
    "meta.tasks_per_iteration=2",
    "meta.envs_per_task=2",
    "meta.steps_per_env=40",
    "env.episode_steps=40",
    "policy.hidden=[16]",
    "runtime.progress=false",
    "evaluation.tasks=2",
    "evaluation.inner_steps=1",
    "evaluation.envs_per_task=2",
    "evaluation.steps_per_env=40",
]


def tiny_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return validate(compose("config", overrides=[*TINY, *overrides]))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


SMALL_ENSEMBLE = [
    "dyna=ensemble",
    "dyna.model.members=3",
    "dyna.model.elites=2",
    "dyna.model.hidden=[16]",
    "dyna.model.max_updates=30",
    "dyna.model_envs_per_task=2",
    "dyna.model_steps=10",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["meta_optimizer=pid"],
        ["meta_optimizer=cpo_layer"],
        ["meta_optimizer=cppo_em", *SMALL_ENSEMBLE],
    ],
    ids=["pid", "cpo_layer", "cppo_em+ensemble"],
)
def test_resume_continues_exactly(tmp_path: Path, overrides: list[str]) -> None:
    full = tmp_path / "full"
    train(tiny_cfg(*overrides, "meta.iterations=3"), full)
    interrupted = tmp_path / "interrupted"
    train(tiny_cfg(*overrides, "meta.iterations=2"), interrupted)
    resumed = train(tiny_cfg(*overrides, "meta.iterations=3", "resume=true"), interrupted)
    assert resumed.iteration == 3
    rows_full, rows_resumed = read_metrics(full), read_metrics(interrupted)
    assert len(rows_full) == len(rows_resumed) == 3
    for a, b in zip(rows_full, rows_resumed, strict=True):
        for key in ("pre_return", "post_return", "post_cost", "outer_kl", "multiplier"):
            assert a[key] == b[key], key
        assert a.get("model_share") == b.get("model_share")
    final_full, final_resumed = load(full), load(interrupted)
    for key, value in final_full["meta_params"].items():
        assert torch.equal(value, final_resumed["meta_params"][key])
    assert (interrupted / "config.yaml").exists()
    assert any((interrupted / "tensorboard").iterdir())


def test_learned_rule_parameters_change_during_training(tmp_path: Path) -> None:
    cfg = tiny_cfg("meta_optimizer=pid", "meta.iterations=2")
    trainer = MetaTrainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.rule.state_dict().items()}
    rows = [trainer.run_iteration() for _ in range(2)]
    assert all(row["rule_grad_norm"] > 0 for row in rows)
    after = trainer.rule.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_meta_parameters_move_and_metrics_are_finite(tmp_path: Path) -> None:
    cfg = tiny_cfg("meta_optimizer=trpo", "meta.iterations=1")
    trainer = MetaTrainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.meta_params.items()}
    row = trainer.run_iteration()
    assert 0 < row["outer_kl"] < 0.05
    assert any(not torch.equal(before[k], trainer.meta_params[k]) for k in before)
    for key in ("pre_return", "post_return", "pre_cost", "post_cost", "time_sampling"):
        assert row[key] == row[key], key  # not NaN


def test_meta_trpo_outer_step_ignores_cost(tmp_path: Path) -> None:
    """Meta-TRPO's outer step is the unconstrained natural-gradient step: the same
    reward meta-gradient with a violated constraint and a cost meta-gradient along it
    would make CPO recover; TRPO must step with KL at the trust radius regardless."""
    cfg = tiny_cfg("meta_optimizer=trpo", "meta.iterations=1")
    trainer = MetaTrainer(cfg, tmp_path)
    row = trainer.run_iteration()
    assert row["outer_case"] == OUTER_CASE_UNCONSTRAINED
    # KL of the natural step is 0.5 x^T H x = delta up to damping (H + 0.1 I <= ...).
    assert 0.2 * cfg.meta.outer_trust_radius < row["outer_kl"] < 2 * cfg.meta.outer_trust_radius
    constrained = MetaTrainer(
        tiny_cfg("meta_optimizer=trpo", "meta_optimizer.outer_step=cpo", "meta.iterations=1"),
        tmp_path / "cpo",
    ).run_iteration()
    assert constrained["outer_case"] in (0.0, 1.0, 2.0)


def explicit_fisher(policy: GaussianPolicy, params: dict, obs: torch.Tensor) -> torch.Tensor:
    """``[P, P]`` Hessian of the mean KL from the policy at ``params``, at ``params``."""
    old_mean, old_std = (t.detach() for t in policy.distribution(params, obs))

    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        mean, std = policy.distribution(unflatten_like(flat, params), obs)
        return gaussian_kl(old_mean, old_std, mean, std).mean()

    return torch.autograd.functional.hessian(mean_kl, flat_concat(params))


def test_unconstrained_outer_step_is_the_scaled_natural_gradient() -> None:
    """``outer_step(b=None)``: ``x = sqrt(2 delta / g^T H^-1 g) H^-1 g``, checked with the
    explicit Fisher of a tiny policy; with ``b`` it is the CPO step (the margin matters)."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=[4]).double()
    params = policy.init_params()
    n = 64
    obs = torch.randn(n, 3, dtype=torch.float64)
    mean, std = policy.distribution(params, obs)
    actions = (mean + std * torch.randn_like(mean)).detach()
    data = PolicyData(
        obs=obs,
        actions=actions,
        log_probs=policy.log_prob(params, obs, actions).detach(),
        reward_adv=torch.randn(n, dtype=torch.float64),
        cost_adv=torch.randn(n, dtype=torch.float64),
        episode_return=torch.tensor(1.0, dtype=torch.float64),
        episode_cost=torch.tensor(50.0, dtype=torch.float64),
        horizon=10,
    )
    size = flat_concat(params).numel()
    g = torch.randn(size, dtype=torch.float64)
    b = torch.randn(size, dtype=torch.float64)
    delta, damping = 0.01, 0.1
    new, info = outer_step(policy, params, [data], g, None, torch.tensor(40.0), delta, damping, 200)
    assert int(info["case"]) == OUTER_CASE_UNCONSTRAINED
    fisher = explicit_fisher(policy, params, obs) + damping * torch.eye(size, dtype=torch.float64)
    hg = torch.linalg.solve(fisher, g)
    expected = torch.sqrt(2 * delta / (g @ hg)) * hg
    step = flat_concat(new) - flat_concat(params)
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-9)
    cpo_new, cpo_info = outer_step(
        policy, params, [data], g, b, torch.tensor(40.0), delta, damping, 200
    )
    assert int(cpo_info["case"]) in (1, 2)
    assert not torch.allclose(flat_concat(cpo_new), flat_concat(new))


def test_diverged_iteration_stops_before_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-finite outer step raises a clear error and leaves the last checkpoint as it was."""
    import meta_safe.trainer as trainer_module

    train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=1"), tmp_path)
    before = load(tmp_path)
    real_outer_step = trainer_module.outer_step

    def diverging_outer_step(*args, **kwargs):
        new, info = real_outer_step(*args, **kwargs)
        return {k: torch.full_like(v, float("nan")) for k, v in new.items()}, info

    monkeypatch.setattr(trainer_module, "outer_step", diverging_outer_step)
    with pytest.raises(FloatingPointError, match="meta-iteration 2 diverged"):
        train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=2", "resume=true"), tmp_path)
    after = load(tmp_path)
    assert after["iteration"] == before["iteration"] == 1
    for key, value in before["meta_params"].items():
        assert torch.equal(value, after["meta_params"][key])


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_atomic({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, path)
    assert load(path) == {"a": 1}, "a failed write must leave the old checkpoint intact"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temp files left"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.backend=gpu", "env.backend='gpu' is invalid: valid choices are ['torch', 'mujoco']"),
        ("meta.tasks_per_iteration=0", "meta.tasks_per_iteration=0 is invalid: must be > 0"),
        ("env.robot=car", "env.robot='car' is not available on env.backend='torch'"),
        ("+meta.unknown_key=1", "unknown_key"),
        (
            "meta_optimizer.outer_step=sgd",
            "meta_optimizer.outer_step='sgd' is invalid: valid choices are ['cpo', 'trpo']",
        ),
    ],
)
def test_invalid_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        tiny_cfg(override)
    assert message in str(error.value)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resume=true but"):
        train(tiny_cfg("resume=true"), tmp_path / "empty")


def test_cli_trains_evaluates_and_evaluate_runs_on_mujoco(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meta_safe.meta_trainer",
            *TINY,
            "meta_optimizer=lagrangian",
            "meta.iterations=1",
            f"run_dir={run_dir}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| inner steps | return" in result.stdout
    for name in ("metrics.csv", "checkpoint.pt", "evaluation.json", "evaluation.png"):
        assert (run_dir / name).exists(), name
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meta_safe.evaluate",
            f"checkpoint={run_dir}",
            "env.backend=mujoco",
            "tasks=[[2.2,1.3],[2.4,1.4]]",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mujoco backend" in result.stdout
    assert (run_dir / "evaluation_mujoco.json").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "meta_safe.evaluate", f"checkpoint={tmp_path / 'nope'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "does not exist" in bad.stderr
