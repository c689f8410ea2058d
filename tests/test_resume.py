"""Resume is exact, and a diverged iteration never reaches the checkpoint."""

from pathlib import Path

import pytest
import torch
from tiny import SMALL_ENSEMBLE, read_metrics, tiny_cfg

from meta_safe.checkpoint import load
from meta_safe.errors import RunDirError
from meta_safe.trainer import train


@pytest.mark.parametrize(
    "overrides",
    [
        ["meta_optimizer=pid"],
        ["meta_optimizer=cpo_layer"],
        pytest.param(["meta_optimizer=cppo_em", *SMALL_ENSEMBLE], marks=pytest.mark.slow),
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


def test_diverged_iteration_stops_before_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-finite outer step raises a clear error and leaves the last checkpoint as it was."""
    import meta_safe.maml as maml

    train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=1"), tmp_path)
    before = load(tmp_path)
    real_outer_step = maml.outer_step

    def diverging_outer_step(*args, **kwargs):
        new, info = real_outer_step(*args, **kwargs)
        return {k: torch.full_like(v, float("nan")) for k, v in new.items()}, info

    monkeypatch.setattr(maml, "outer_step", diverging_outer_step)
    with pytest.raises(FloatingPointError, match="meta-iteration 2 diverged"):
        train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=2", "resume=true"), tmp_path)
    after = load(tmp_path)
    assert after["iteration"] == before["iteration"] == 1
    for key, value in before["meta_params"].items():
        assert torch.equal(value, after["meta_params"][key])


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="resume=true but"):
        train(tiny_cfg("resume=true"), tmp_path / "empty")


def test_a_run_from_before_a_rule_gained_a_setting_resumes() -> None:
    """A checkpoint's rule config without a setting added since (here cpo_layer's
    ``overshoot_model``) compares as that setting's default; a different value is still
    named."""
    from omegaconf import OmegaConf

    from meta_safe.config import resume_differences

    requested = tiny_cfg("meta_optimizer=cpo_layer", "meta.iterations=4")
    saved = OmegaConf.to_container(tiny_cfg("meta_optimizer=cpo_layer", "meta.iterations=2"))
    del saved["meta_optimizer"]["overshoot_model"]
    assert resume_differences(saved, requested) == {}
    saved["meta_optimizer"]["overshoot_model"] = "step_length"
    assert resume_differences(saved, requested) == {
        "meta_optimizer.overshoot_model": ("step_length", "constant")
    }
