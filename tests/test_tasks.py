"""Task parameters and seeded task distributions."""

import pytest

from stochastic_circle.tasks import CircleTask, TaskDistribution, reference_distribution


def test_reference_levels_match_meta_cpo() -> None:
    train = reference_distribution("meta_train")
    held_out = reference_distribution("held_out")
    assert train.radius == (1.0, 1.5) and train.wall_scale == (0.55, 0.75)
    assert held_out.radius == (2.0, 2.5) and held_out.wall_scale == (0.55, 0.65)
    assert not train.overlaps(held_out)
    fixed = reference_distribution("fixed").sample(2, seed=0)
    assert fixed[0] == fixed[1] and fixed[0].radius == 1.25


def test_sampling_is_reproducible_and_in_support() -> None:
    dist = reference_distribution("meta_train")
    first, again, other = dist.sample(20, seed=3), dist.sample(20, seed=3), dist.sample(20, seed=4)
    assert first == again and first != other
    assert all(dist.contains(t) for t in first)
    held_out = reference_distribution("held_out")
    assert not any(held_out.contains(t) for t in first)
    assert all(held_out.contains(t) for t in held_out.sample(20, seed=3))


def test_task_is_immutable_and_hashable() -> None:
    task = CircleTask(radius=2.0, wall_distance=1.2)
    with pytest.raises(AttributeError):
        task.radius = 3.0  # type: ignore[misc]
    assert len({task, CircleTask(radius=2.0, wall_distance=1.2)}) == 1
    assert task.with_(radius=2.5).radius == 2.5
    assert task.wall_scale == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"robot": "ant"}, r"robot='ant' is unknown: valid choices are \['point', 'car'\]"),
        ({"radius": -1.0}, r"radius=-1.0 is invalid"),
        ({"radius": 7.0}, r"radius=7.0 is outside the arena"),
        ({"wall_distance": 9.0}, r"wall_distance=9.0 is beyond the arena"),
        ({"num_walls": 3}, r"num_walls=3 is invalid: valid choices are \[2, 4\]"),
        ({"gear_scale": 0.0}, r"gear_scale=0.0 is invalid"),
    ],
)
def test_invalid_task_values_name_the_value_and_valid_range(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircleTask(**kwargs)


def test_invalid_distribution_ranges() -> None:
    with pytest.raises(
        ValueError, match=r"radius=\[2.0, 1.0\] is invalid: need finite low <= high"
    ):
        TaskDistribution(name="bad", radius=(2.0, 1.0))
    with pytest.raises(ValueError, match="outside the arena"):
        TaskDistribution(name="bad", radius=(1.0, 8.0))
    with pytest.raises(ValueError, match="level='level9' is unknown"):
        reference_distribution("level9")
