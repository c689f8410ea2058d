"""Dyna dynamics models: invariant targets, the known model, the learned ensemble."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from meta_safe.dyna.metrics import prediction_errors
from meta_safe.dyna.models import (
    EnsembleModel,
    KnownModel,
    Prediction,
    Transitions,
    apply_targets,
    context_from_tasks,
    mean_pairwise_kl,
    model_targets,
)
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import TaskTensors, physics_step


def rollouts(
    num: int, length: int, seed: int, context_range: tuple[float, float] = (0.8, 1.2)
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random-action trajectories of the torch backend's physics from random states.

    Actions are uniform in [-1, 1], each dim resampled with probability 0.2 per step (so
    the robot also reaches high speeds); start velocities cover the speeds policies reach.
    :return: ``states [num, length+1, 6], accels [num, length, 2], actions [num, length, 2],
        context [num, 2]``.
    """
    g = torch.Generator().manual_seed(seed)
    low, high = context_range
    context = low + (high - low) * torch.rand(num, 2, generator=g)
    u = torch.rand(num, 6, generator=g)
    state = torch.zeros(num, 6)
    state[:, :2] = (2 * u[:, :2] - 1) * 1.5
    state[:, 2] = (2 * u[:, 2] - 1) * math.pi
    fwd, lat = -0.5 + 2.0 * u[:, 3], (2 * u[:, 4] - 1) * 0.2
    cos, sin = torch.cos(state[:, 2]), torch.sin(state[:, 2])
    state[:, 3], state[:, 4] = cos * fwd - sin * lat, sin * fwd + cos * lat
    state[:, 5] = (2 * u[:, 5] - 1) * 3.0
    ones = torch.ones(num)
    task = TaskTensors(ones, ones, 0 * ones, context[:, 0], context[:, 1])
    action = 2 * torch.rand(num, 2, generator=g) - 1
    states, accels, actions = [state], [], []
    for _ in range(length):
        fresh = 2 * torch.rand(num, 2, generator=g) - 1
        action = torch.where(torch.rand(num, 2, generator=g) < 0.2, fresh, action)
        state, accel = physics_step(state, action, task)
        states.append(state)
        accels.append(accel)
        actions.append(action)
    return torch.stack(states, 1), torch.stack(accels, 1), torch.stack(actions, 1), context


def as_transitions(states: Tensor, accels: Tensor, actions: Tensor, context: Tensor) -> Transitions:
    return Transitions.flatten(states[:, :-1], actions, context, states[:, 1:], accels)


class NoChange:
    """Trivial baseline: the state does not change."""

    def predict(self, states, actions, context, generator=None) -> Prediction:
        zeros = torch.zeros(states.shape[:-1])
        return Prediction(states, torch.zeros(*states.shape[:-1], 2), zeros)


@pytest.fixture(scope="module")
def trained() -> tuple[EnsembleModel, dict[str, float], float]:
    """An ensemble trained on 20k random-action transitions (a few seconds on 1 thread)."""
    torch.set_num_threads(1)
    model = EnsembleModel(hidden=(64, 64), max_updates=1500, lr=4e-2, seed=0)
    model.add(as_transitions(*rollouts(200, 100, seed=1)))
    start = torch.Generator().manual_seed(0)
    metrics = model.train_model(start)
    return model, metrics, metrics["model/seconds"]


# --------------------------------------------------------------------------- features


def test_targets_round_trip_recovers_next_state_and_accel() -> None:
    states, accels, actions, context = rollouts(20, 30, seed=3)
    states = states.double()
    states[..., 2] += 40 * math.pi  # an unwrapped heading far from 0 (many laps)
    data = as_transitions(states, accels.double(), actions.double(), context.double())
    targets = model_targets(data.states, data.next_states, data.next_accels)
    next_states, next_accels = apply_targets(data.states, targets)
    torch.testing.assert_close(next_states, data.next_states, rtol=0, atol=1e-9)
    torch.testing.assert_close(next_accels, data.next_accels)


def test_targets_are_invariant_to_translation_and_rotation() -> None:
    states, accels, actions, context = rollouts(10, 5, seed=4)
    data = as_transitions(states.double(), accels.double(), actions.double(), context.double())
    shift = torch.tensor([0.7, -1.3], dtype=torch.float64)
    angle = 1.1
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )

    def move(s: Tensor) -> Tensor:
        out = s.clone()
        out[:, :2] = s[:, :2] @ rot.T + shift
        out[:, 2] = s[:, 2] + angle
        out[:, 3:5] = s[:, 3:5] @ rot.T
        return out

    base = model_targets(data.states, data.next_states, data.next_accels)
    moved = model_targets(move(data.states), move(data.next_states), data.next_accels)
    torch.testing.assert_close(moved, base)


def test_known_model_equals_physics_step() -> None:
    tasks = [CircleTask(damping_scale=0.8, gear_scale=1.2), CircleTask(damping_scale=1.1)]
    states, _, actions, _ = rollouts(2, 4, seed=5)
    state, action = states[:, 2:3], 3 * actions[:, 1:2]  # [T, 1, .]; actions beyond [-1, 1]
    pred = KnownModel().predict(state, action, context_from_tasks(tasks).unsqueeze(1))
    real_state, real_accel = physics_step(state, action, TaskTensors.from_tasks(tasks))
    torch.testing.assert_close(pred.next_states, real_state, rtol=0, atol=0)
    torch.testing.assert_close(pred.next_accels, real_accel, rtol=0, atol=0)
    assert torch.equal(pred.disagreement, torch.zeros(2, 1))


def test_transitions_validate_slice_cat_and_flatten() -> None:
    states, accels, actions, context = rollouts(3, 4, seed=6)
    data = as_transitions(states, accels, actions, context)
    assert len(data) == 12
    assert torch.equal(data.context[:4], context[:1].expand(4, 2))
    both = Transitions.cat([data[:5], data[5:]])
    assert all(torch.equal(getattr(both, k), getattr(data, k)) for k in ("states", "actions"))
    with pytest.raises(ValueError, match="Transitions.actions"):
        Transitions(
            data.states, data.actions[:, :1], data.context, data.next_states, data.next_accels
        )
    with pytest.raises(ValueError, match="parts is empty"):
        Transitions.cat([])
    per_row = context.unsqueeze(1).expand(3, 4, 2)  # same leading shape as states
    rows = Transitions.flatten(states[:, :-1], actions, per_row, states[:, 1:], accels)
    assert torch.equal(rows.context, data.context)
    with pytest.raises(ValueError, match="context has shape"):
        Transitions.flatten(states[:, :-1], actions, context[0], states[:, 1:], accels)


def test_mean_pairwise_kl_known_values() -> None:
    mean = torch.zeros(3, 4, 2)
    logvar = torch.zeros(3, 4, 2)
    assert torch.equal(mean_pairwise_kl(mean, logvar), torch.zeros(4))
    assert torch.equal(mean_pairwise_kl(mean[:1], logvar[:1]), torch.zeros(4))
    # two unit-variance members whose means differ by 2 in one dim: KL = 0.5 * 2^2 = 2 each way
    mean2 = torch.zeros(2, 1, 2)
    mean2[1, 0, 0] = 2.0
    torch.testing.assert_close(mean_pairwise_kl(mean2, torch.zeros(2, 1, 2)), torch.tensor([2.0]))
    # variances 1 and e: KL(1||e) = 0.5(1 + 1/e - 1) ... averaged over both directions
    lv = torch.tensor([[[0.0]], [[1.0]]])
    expected = 0.5 * ((1 + math.exp(-1) - 1) + (-1 + math.e - 1)) / 2
    torch.testing.assert_close(mean_pairwise_kl(torch.zeros(2, 1, 1), lv), torch.tensor([expected]))


# --------------------------------------------------------------------------- ensemble


def test_ensemble_learns_point_dynamics(trained) -> None:
    model, metrics, seconds = trained
    held_out = rollouts(100, 60, seed=2)
    errors = prediction_errors(model, *_eval_args(held_out), generator=torch.Generator())
    baseline = prediction_errors(NoChange(), *_eval_args(held_out))
    exact = prediction_errors(KnownModel(), *_eval_args(held_out))
    assert max(exact.values()) < 1e-5  # the metric itself is exact on the known model
    assert errors["one_step/pos_rmse"] < 0.1 * baseline["one_step/pos_rmse"]
    assert errors["one_step/vel_rmse"] < 0.3 * baseline["one_step/vel_rmse"]
    assert errors["h25/pos_rmse"] < 0.25 * baseline["h25/pos_rmse"]
    assert errors["h25/pos_rmse"] < 0.1  # metres, after 25 open-loop steps
    assert metrics["model/holdout_mse"] < 0.1 * metrics["model/holdout_mse_start"]
    assert seconds < 60


def _eval_args(data: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    states, _, actions, context = data
    return states, actions, context


def test_elites_are_the_best_held_out_members(trained) -> None:
    model, _, _ = trained
    order = torch.argsort(model.holdout_mse, stable=True)
    assert torch.equal(model.elite_indices, order[: model.config.elites])
    # sabotage the two best members: fresh held-out data must demote them
    saved = {k: v.clone() for k, v in model.net.state_dict().items()}
    try:
        with torch.no_grad():
            for w in model.net.weights:
                w[order[:2]] += 0.5 * torch.randn(w[order[:2]].shape)
        held_out = as_transitions(*rollouts(50, 20, seed=7))
        elites = model.select_elites(held_out)
        mse = model.evaluate(held_out)
        assert not set(order[:2].tolist()) & set(elites.tolist())
        assert mse[elites].max() <= mse[[i for i in range(7) if i not in elites]].min()
    finally:
        model.net.load_state_dict(saved)
        model.elite_indices = order[: model.config.elites]


def test_disagreement_is_larger_out_of_distribution(trained) -> None:
    model, _, _ = trained
    states, _, actions, context = rollouts(100, 20, seed=8)
    s, a, c = states[:, :-1].reshape(-1, 6), actions.reshape(-1, 2), context.repeat(20, 1)
    inside = model.predict(s, a, c).disagreement
    fast = s.clone()
    fast[:, 3:6] *= 6.0  # far beyond the speeds seen in training
    heavy = c * 3.0  # physics far outside the [0.8, 1.2] training range
    assert (inside >= 0).all()
    assert model.predict(fast, a, c).disagreement.mean() > 10 * inside.mean()
    assert model.predict(s, a, heavy).disagreement.mean() > 10 * inside.mean()


def test_ensemble_prediction_shapes_and_ts1_sampling(trained) -> None:
    model, _, _ = trained
    states, _, actions, context = rollouts(4, 3, seed=9)
    ctx = context.unsqueeze(1).expand(4, 3, 2)
    pred = model.predict(states[:, :-1], actions, ctx, generator=torch.Generator().manual_seed(1))
    assert pred.next_states.shape == (4, 3, 6) and pred.next_accels.shape == (4, 3, 2)
    assert pred.disagreement.shape == (4, 3)
    again = model.predict(states[:, :-1], actions, ctx, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pred.next_states, again.next_states)
    with pytest.raises(ValueError, match="context has shape"):
        model.predict(states[:, :-1], actions, context)


def test_training_is_reproducible_and_checkpoint_resumes_exactly() -> None:
    data = as_transitions(*rollouts(20, 30, seed=10))

    def fresh() -> EnsembleModel:
        model = EnsembleModel(members=3, elites=2, hidden=(16,), max_updates=20, eval_every=5)
        model.add(data)
        return model

    a, b = fresh(), fresh()
    a.train_model(torch.Generator().manual_seed(3))
    b.train_model(torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    # checkpoint a, continue a; restore into c and continue identically
    state = a.state_dict()
    c = EnsembleModel(members=3, elites=2, hidden=(16,), max_updates=20, eval_every=5, seed=9)
    c.load_state_dict(state)
    a.add(data[:50])
    c.add(data[:50])
    metrics_a = a.train_model(torch.Generator().manual_seed(4))
    metrics_c = c.train_model(torch.Generator().manual_seed(4))
    assert metrics_a["model/holdout_mse"] == metrics_c["model/holdout_mse"]
    for pa, pc in zip(a.net.state_dict().values(), c.net.state_dict().values(), strict=True):
        assert torch.equal(pa, pc)
    assert torch.equal(a.elite_indices, c.elite_indices)
    with pytest.raises(ValueError, match="members=3 but this one has members=4"):
        EnsembleModel(members=4, elites=2, hidden=(16,)).load_state_dict(state)


def test_buffer_is_bounded_fifo() -> None:
    data = as_transitions(*rollouts(2, 7, seed=11))  # 14 transitions
    model = EnsembleModel(buffer_size=10)
    model.add(data[:7])
    model.add(data[7:])
    assert len(model.buffer) == 10
    assert torch.equal(model.buffer.states, data.states[4:])
    with pytest.raises(ValueError, match="holds 0 transitions"):
        EnsembleModel().train_model(torch.Generator())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": 0}, "members=0"),
        ({"members": 3, "elites": 4}, "elites=4"),
        ({"hidden": ()}, "hidden=()"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"holdout_fraction": 1.0}, "holdout_fraction=1.0"),
        ({"final_lr_fraction": 0.0}, "final_lr_fraction=0.0"),
        ({"max_updates": -1}, "max_updates=-1"),
    ],
)
def test_invalid_ensemble_config_names_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnsembleModel(**kwargs)


def test_prediction_errors_validates_shapes() -> None:
    states, _, actions, context = rollouts(2, 5, seed=12)
    with pytest.raises(ValueError, match="horizons"):
        prediction_errors(KnownModel(), states, actions, context, horizons=(6,))
    with pytest.raises(ValueError, match="actions has shape"):
        prediction_errors(KnownModel(), states, actions[:, :4], context)
