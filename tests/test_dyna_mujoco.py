"""Dyna on the MuJoCo backend: planar states from the simulator, training on its
transitions, and a torch-trained Dyna checkpoint adapting on MuJoCo."""

import json
from pathlib import Path

import torch
from tiny import SMALL_ENSEMBLE, SMALL_MODEL, TINY, read_metrics, run_module, tiny_cfg

from meta_safe.env_factory import make_batched_env, task_distribution
from meta_safe.trainer import train
from stochastic_circle.torch_backend import observe


def test_mujoco_planar_states_determine_the_observation() -> None:
    """What Dyna relies on: the observation is ``observe(state, accelerometer)``, and
    ``final_state`` is the state an episode ended in (before the auto-reset)."""
    cfg = tiny_cfg("env=point_circle_mujoco")
    tasks = task_distribution(cfg.env, "meta_train").sample(2, seed=0)
    env = make_batched_env(cfg.env, tasks, 2, seed=3, track_states=True)
    assert make_batched_env(cfg.env, tasks, 1, seed=3).state is None  # opt-in
    obs = env.reset()
    assert torch.allclose(observe(env.state, obs[..., :2]), obs, atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    resets = 0
    for _ in range(2 * cfg.env.episode_steps):
        before = env.state.clone()
        obs, _, _, terminated, truncated = env.step(torch.randn(2, 2, 2, generator=generator))
        done = terminated | truncated
        resets += int(done.sum())
        final = torch.where(done.unsqueeze(-1), env.final_obs, obs)
        assert torch.allclose(observe(env.final_state, final[..., :2]), final, atol=1e-5)
        assert torch.allclose(observe(env.state, obs[..., :2]), obs, atol=1e-5)
        moved = (env.final_state[..., :2] - before[..., :2]).norm(dim=-1)
        assert bool((moved < 0.05).all())  # a step, not a jump
        assert bool(torch.equal(env.state[~done], env.final_state[~done]))
    assert resets == 2 * 2 * 2


def test_ensemble_trains_on_mujoco_transitions(tmp_path: Path) -> None:
    cfg = tiny_cfg("env=point_circle_mujoco", *SMALL_ENSEMBLE, "meta.iterations=2")
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert float(rows[0]["model/buffer"]) > 0
    assert float(rows[1]["model_share"]) > 0  # the fitted model supplied inner data
    assert 0 < float(rows[1]["model/holdout_mse"]) < float(rows[0]["model/holdout_mse_start"])


def test_torch_trained_dyna_checkpoint_adapts_on_mujoco(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train = run_module(
        "meta_safe.meta_trainer", *TINY, *SMALL_ENSEMBLE, "meta.iterations=2",
        "evaluate_after=false", f"run_dir={run_dir}",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    result = run_module(
        "meta_safe.evaluate", f"checkpoint={run_dir}", "env.backend=mujoco",
        "tasks=[[2.2,1.3],[2.4,1.4]]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mujoco backend" in result.stdout and "dyna=ensemble" in result.stdout
    report = json.loads((run_dir / "evaluation_mujoco.json").read_text())
    assert report["model_share"] and min(report["model_share"]) > 0
    assert len(report["imagined_path_length"]) == 1  # one entry per inner step
    # the real steps per update are Dyna's small real batch, not evaluation.envs_per_task's
    assert report["env_steps_per_step"] == 1 * 40


def test_dyna_kept_to_adaptation_meta_trains_on_real_data_and_adapts_with_the_model(
    tmp_path: Path,
) -> None:
    """``dyna.imagined_in_meta_training=false`` (the default): meta-training's inner batches are the
    real ``meta.envs_per_task`` envs (no imagined samples), the model still learns from
    them, and adaptation then mixes in imagined data."""
    from meta_safe.checkpoint import load
    from meta_safe.evaluation import evaluate_meta_state
    from meta_safe.trainer import MetaTrainer

    cfg = tiny_cfg(*SMALL_MODEL, "meta.iterations=3")  # the default: false
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert all(float(r.get("model_share") or 0) == 0 for r in rows)
    steps = 2 * 2 * 40 * 2  # tasks x envs x steps, inner and post batch: all real
    assert all(float(r["env_steps"]) == steps for r in rows)
    assert float(rows[-1]["model/buffer"]) > float(rows[0]["model/buffer"])
    trainer = MetaTrainer(cfg, tmp_path)
    trainer.load_state_dict(load(tmp_path))
    report = evaluate_meta_state(trainer.setup, trainer.state, cfg)
    assert min(report.model_share) > 0
    assert report.env_steps_per_step == 1 * 40  # dyna.real_envs_per_task
