"""Property-based checks of validation: every invalid value drawn is a clear
:class:`ConfigError` naming its key, and every valid configuration drawn runs a tiny
meta-iteration with finite results."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import TINY, tiny_cfg

from meta_safe.config import NON_NEGATIVE, POSITIVE, SPLITS, compose_config
from meta_safe.env_factory import task_distribution
from meta_safe.errors import ConfigError
from meta_safe.evaluation import evaluation_tasks
from meta_safe.maml import init_meta, meta_step
from meta_safe.meta_optimizers import META_OPTIMIZERS
from stochastic_circle.tasks import ARENA_HALF_WIDTH

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        compose_config(overrides)
    return str(error.value)


@QUICK
@given(key=st.sampled_from(POSITIVE), value=st.one_of(NON_FINITE, FINITE.filter(lambda v: v <= 0)))
def test_every_non_positive_value_of_a_positive_key_is_named(key: str, value: float) -> None:
    assert key in config_error([f"{key}={value!r}"])


@QUICK
@given(
    key=st.sampled_from(NON_NEGATIVE), value=st.one_of(NON_FINITE, FINITE.filter(lambda v: v < 0))
)
def test_every_negative_value_of_a_non_negative_key_is_named(key: str, value: float) -> None:
    assert key in config_error([f"{key}={value!r}"])


@QUICK
@given(
    section=st.sampled_from(
        ["meta_optimizer.trust_radius", "meta.outer_trust_radius", "env.cost_limit"]
    ),
    value=NON_FINITE,
)
def test_every_non_finite_number_is_named(section: str, value: float) -> None:
    assert section in config_error([f"{section}={value!r}"])


BOUND = st.floats(min_value=-2.0, max_value=8.0, allow_nan=False)


@QUICK
@given(
    split=st.sampled_from(SPLITS),
    key=st.sampled_from(["radius", "wall_scale"]),
    low=BOUND,
    high=BOUND,
)
def test_task_ranges_are_valid_or_named(split: str, key: str, low: float, high: float) -> None:
    overrides = [f"env.{split}.{key}=[{low!r},{high!r}]"]
    try:
        cfg = compose_config(overrides)
    except ConfigError as error:
        assert f"env.{split}" in str(error)
        return
    assert 0 < low <= high, "an empty or non-positive range must be refused"
    for task in task_distribution(cfg.env, split).sample(20, seed=0):
        assert 0 < task.radius < ARENA_HALF_WIDTH and 0 < task.wall_distance < ARENA_HALF_WIDTH
        value = task.radius if key == "radius" else task.wall_scale
        assert low - 1e-9 <= value <= high + 1e-9


@QUICK
@given(
    radius=st.floats(min_value=-3, max_value=9),
    wall=st.one_of(st.floats(min_value=-3, max_value=9), NON_FINITE),
)
def test_explicit_tasks_are_valid_or_named(radius: float, wall: float) -> None:
    cfg = tiny_cfg()
    try:
        (task,) = evaluation_tasks(cfg, [[radius, wall]])
    except ConfigError as error:
        assert str(error).startswith("tasks[0]")
        assert not (0 < radius < ARENA_HALF_WIDTH and 0 < wall < ARENA_HALF_WIDTH)
        return
    assert (task.radius, task.wall_distance) == (radius, wall)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(sorted(META_OPTIMIZERS)),
    inner_steps=st.integers(min_value=0, max_value=2),
    cost_limit=st.floats(min_value=0.0, max_value=50.0),
    outer_radius=st.floats(min_value=1e-4, max_value=0.05),
    low=st.floats(min_value=0.8, max_value=1.6),
    width=st.floats(min_value=0.0, max_value=0.6),
)
def test_every_valid_configuration_runs_a_meta_iteration(
    rule: str, inner_steps: int, cost_limit: float, outer_radius: float, low: float, width: float
) -> None:
    cfg = compose_config(
        [
            *TINY,
            f"meta_optimizer={rule}",
            f"meta.inner_steps={inner_steps}",
            f"env.cost_limit={cost_limit!r}",
            f"meta.outer_trust_radius={outer_radius!r}",
            f"env.meta_train.radius=[{low!r},{low + width!r}]",
        ]
    )
    setup, state = init_meta(cfg)
    state, row = meta_step(setup, state)
    assert state.iteration == 1
    for key in ("pre_return", "post_return", "post_cost", "outer_kl"):
        assert math.isfinite(row[key]), (key, row[key])
