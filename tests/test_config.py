"""Configuration: one source of defaults, clear errors for bad values, older configs."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tiny import compose_cfg, tiny_cfg

from meta_safe.config import CONFIG_DIR, TrainConfig, migrate, validate
from meta_safe.meta_optimizers import META_OPTIMIZERS


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.backend=gpu", "env.backend='gpu' is invalid: valid choices are ['torch', 'mujoco']"),
        ("meta.tasks_per_iteration=0", "meta.tasks_per_iteration=0 is invalid: must be > 0"),
        ("env.robot=car", "env.robot='car' is not available on env.backend='torch'"),
        ("+meta.unknown_key=1", "unknown_key"),
        (
            "meta.outer_step=sgd",
            "meta.outer_step='sgd' is invalid: valid choices are ['auto', 'cpo', 'trpo']",
        ),
        ("meta.outer_trust_radius=nan", "meta.outer_trust_radius=nan is invalid: must be a finite"),
        ("env.cost_limit=inf", "env.cost_limit=inf is invalid: must be a finite"),
        (
            "env.meta_train.radius=[1.0,nan]",
            "env.meta_train.radius[1]=nan is invalid: must be a finite",
        ),
        ("runtime.device=gpu", "runtime.device='gpu' is invalid: valid forms are 'cpu', 'cuda'"),
        ("meta.learned_rule_lr=-1", "meta.learned_rule_lr=-1.0 is invalid: must be > 0"),
        (
            "meta.outer_constraint=max",
            "meta.outer_constraint='max' is invalid: valid choices are "
            "['mean', 'worst', 'cvar', 'worst_step']",
        ),
        ("meta.outer_cvar_fraction=0", "meta.outer_cvar_fraction=0.0 is invalid: must lie in"),
        ("meta.outer_cost_margin=-1", "meta.outer_cost_margin=-1.0 is invalid: must be >= 0"),
        ("evaluation.cost_discount=1.5", "evaluation.cost_discount=1.5 is invalid: must lie in"),
        (
            "evaluation.policy=greedy",
            "evaluation.policy='greedy' is invalid: valid choices are ['auto', 'sample', 'fresh', "
            "'mean']",
        ),
        (
            "evaluation.measure_episodes=0",
            "evaluation.measure_episodes=0 is invalid: must be an integer >= 1",
        ),
        (
            "evaluation.measure_episodes=32 evaluation.policy=sample",
            "evaluation.measure_episodes=32 needs separate episodes: set evaluation.policy=fresh",
        ),
    ],
)
def test_invalid_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        tiny_cfg(*override.split())
    assert message in str(error.value)


def test_defaults_come_from_the_schema() -> None:
    """``meta_safe/configs/config.yaml`` only picks presets, so every value of the composed default
    config outside the two free-form groups is the schema's."""
    top = yaml.safe_load((Path(CONFIG_DIR) / "config.yaml").read_text())
    assert set(top) == {"defaults"}
    composed = OmegaConf.to_container(compose_cfg())
    schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig))
    for group in ("meta_optimizer", "dyna"):
        composed.pop(group), schema.pop(group)
    assert composed == schema


def test_env_presets_state_only_what_they_change() -> None:
    schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig))["env"]
    for path in sorted((Path(CONFIG_DIR) / "env").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text()) or {}
        for key, value in preset.items():
            assert schema[key] != value, f"{path.name}: {key} restates the default"


def test_older_configs_move_outer_keys_to_the_outer_loop() -> None:
    old = OmegaConf.create(
        {
            "meta_optimizer": {
                "name": "trpo",
                "_target_": META_OPTIMIZERS["trpo"],
                "outer_step": "trpo",
                "learnable_outer_lr": 0.01,
            }
        }
    )
    moved = migrate(old)
    assert moved.meta.outer_step == "trpo" and moved.meta.learned_rule_lr == 0.01
    assert "outer_step" not in moved.meta_optimizer
    assert "outer_step" in old.meta_optimizer, "the input is not modified"
    assert validate(moved).meta.outer_step == "trpo"


def test_older_configs_keep_the_outer_constraint_they_were_trained_with() -> None:
    """A full ``meta`` section from before the safety options resumes with the
    post-adaptation, margin-free outer constraint; a new config gets the defaults."""
    current = OmegaConf.to_container(compose_cfg())
    old = {**current, "meta": dict(current["meta"])}
    for key in ("outer_cost_batches", "outer_cost_margin"):
        old["meta"].pop(key)
    restored = validate(OmegaConf.create(old))
    assert restored.meta.outer_cost_batches == "post" and restored.meta.outer_cost_margin == 0
    assert compose_cfg().meta.outer_cost_batches == "every"
    assert compose_cfg().meta.outer_cost_margin == 8.0
