"""One meta-iteration: meta-parameters move, learned rules learn, the outer step's kind."""

from pathlib import Path

import torch
from tiny import tiny_cfg

from meta_safe.maml import OUTER_CASE_UNCONSTRAINED, init_meta, meta_step
from meta_safe.optim.cpo_step import CASE_ACTIVE, CASE_INACTIVE, CASE_INFEASIBLE


def test_learned_rule_parameters_change_during_training() -> None:
    setup, state = init_meta(tiny_cfg("meta_optimizer=pid", "meta.iterations=2"))
    before = {k: v.clone() for k, v in state.meta_optimizer.state_dict().items()}
    rows = []
    for _ in range(2):
        state, row = meta_step(setup, state)
        rows.append(row)
    assert all(row["rule_grad_norm"] > 0 for row in rows)
    after = state.meta_optimizer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_learned_rule_outer_rate_is_the_rules_own_unless_set() -> None:
    _, pid = init_meta(tiny_cfg("meta_optimizer=pid"))
    assert pid.outer_adam.param_groups[0]["lr"] == type(pid.meta_optimizer).default_outer_lr
    _, custom = init_meta(tiny_cfg("meta_optimizer=pid", "meta.learned_rule_lr=0.5"))
    assert custom.outer_adam.param_groups[0]["lr"] == 0.5
    _, cpo = init_meta(tiny_cfg("meta_optimizer=cpo_layer"))
    assert cpo.outer_adam is None


def test_meta_parameters_move_and_metrics_are_finite() -> None:
    setup, state = init_meta(tiny_cfg("meta_optimizer=trpo", "meta.iterations=1"))
    before = {k: v.clone() for k, v in state.meta_params.items()}
    new_state, row = meta_step(setup, state)
    assert new_state.iteration == state.iteration + 1 == 1
    assert 0 < row["outer_kl"] < 0.05
    assert any(not torch.equal(before[k], new_state.meta_params[k]) for k in before)
    for key in ("pre_return", "post_return", "pre_cost", "post_cost", "time_sampling"):
        assert row[key] == row[key], key  # not NaN


def test_meta_trpo_outer_step_ignores_cost(tmp_path: Path) -> None:
    """``meta.outer_step=auto`` gives the cost-ignoring TRPO rule the unconstrained outer
    step (KL at the trust radius); forcing ``cpo`` on the same data gives a CPO case and a
    different step."""
    cfg = tiny_cfg("meta_optimizer=trpo", "meta.iterations=1")
    setup, state = init_meta(cfg)
    assert setup.cfg.meta.outer_step == "trpo"
    blind, row = meta_step(setup, state)
    assert row["outer_case"] == OUTER_CASE_UNCONSTRAINED
    # KL of the natural step is 0.5 x^T H x = delta up to damping (H + 0.1 I <= ...).
    assert 0.2 * cfg.meta.outer_trust_radius < row["outer_kl"] < 2 * cfg.meta.outer_trust_radius
    setup_cpo, state_cpo = init_meta(
        tiny_cfg("meta_optimizer=trpo", "meta.outer_step=cpo", "meta.iterations=1")
    )
    constrained, row_cpo = meta_step(setup_cpo, state_cpo)
    assert row_cpo["outer_case"] in (CASE_INACTIVE, CASE_ACTIVE, CASE_INFEASIBLE)
    assert row_cpo["pre_return"] == row["pre_return"], "same seed, same data"
    assert any(
        not torch.equal(blind.meta_params[k], constrained.meta_params[k]) for k in blind.meta_params
    )


def test_constrained_rules_take_the_cpo_outer_step() -> None:
    for rule in ("cpo_layer", "lagrangian", "pid", "lstm", "cppo_em"):
        setup, _ = init_meta(tiny_cfg(f"meta_optimizer={rule}"))
        assert setup.cfg.meta.outer_step == "cpo", rule


def record_inner_cost_limits(monkeypatch) -> list[float]:
    """The cost limit of the inner context of every adaptation that meta-training and
    evaluation run from now on, in call order."""
    import meta_safe.evaluation as evaluation
    import meta_safe.maml as maml

    seen: list[float] = []

    def spy(adapt):
        def wrapped(*args, **kwargs):
            seen.append(args[7].cost_limit)
            return adapt(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(maml, "adapt", spy(maml.adapt))
    monkeypatch.setattr(evaluation, "adapt", spy(evaluation.adapt))
    return seen


def test_inner_rules_aim_below_the_limit_by_the_inner_margin(monkeypatch) -> None:
    """``meta.inner_cost_margin``: the inner rule's context carries ``d - margin`` in
    meta-training and in evaluation, while evaluation still judges costs against ``d``."""
    import meta_safe.maml as maml
    from meta_safe import evaluate_meta_state, init_meta
    from tests.tiny import tiny_cfg

    seen = record_inner_cost_limits(monkeypatch)
    cfg = tiny_cfg("meta.inner_cost_margin=3", "env.cost_limit=10", "evaluation.tasks=2",
                   "evaluation.inner_steps=1", "evaluation.envs_per_task=2",
                   "evaluation.steps_per_env=40")  # fmt: skip
    setup, state = init_meta(cfg)
    maml.meta_step(setup, state)
    report = evaluate_meta_state(setup, state, cfg)
    assert seen == [7.0, 7.0]
    assert report.cost_limit == 10.0


def test_evaluation_inner_margin_overrides_the_trained_one(monkeypatch) -> None:
    """``evaluation.inner_cost_margin``: adaptation alone aims at ``d - margin``; meta-
    training keeps ``meta.inner_cost_margin``; ``null`` falls back to it; a negative
    margin is a one-line error naming the key."""
    import pytest

    import meta_safe.maml as maml
    from meta_safe import evaluate_meta_state, init_meta
    from meta_safe.config import validate
    from meta_safe.errors import ConfigError
    from tests.tiny import tiny_cfg

    seen = record_inner_cost_limits(monkeypatch)
    small = ("env.cost_limit=10", "evaluation.tasks=2", "evaluation.inner_steps=1",
             "evaluation.envs_per_task=2", "evaluation.steps_per_env=40")  # fmt: skip
    cfg = tiny_cfg("meta.inner_cost_margin=1", "evaluation.inner_cost_margin=4", *small)
    setup, state = init_meta(cfg)
    maml.meta_step(setup, state)
    evaluate_meta_state(setup, state, cfg)
    evaluate_meta_state(setup, state, tiny_cfg("meta.inner_cost_margin=1", *small))
    assert seen == [9.0, 6.0, 9.0]
    with pytest.raises(ConfigError, match=r"evaluation.inner_cost_margin=-1.0 is invalid"):
        validate(tiny_cfg("evaluation.inner_cost_margin=-1"))
