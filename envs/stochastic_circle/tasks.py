"""Task parameters of the stochastic circle family and seeded task distributions.

A task is an immutable :class:`CircleTask`. The agent is rewarded for running
counter-clockwise along a circle of radius ``radius`` centred at the origin and
pays cost 1 per step while ``|x| > wall_distance`` (and ``|y| > wall_distance``
with four walls). The walls are not observed: the agent must infer the task.

Distributions follow the levels of Meta-CPO's stochastic circle tasks (Cho & Sun 2024):

* ``fixed`` (level 0): radius 1.25, wall scale 0.75.
* ``meta_train`` (level 1): radius U[1.0, 1.5], wall scale U[0.55, 0.75].
* ``held_out`` (level 2): radius U[2.0, 2.5], wall scale U[0.55, 0.65].

with ``wall_distance = radius * wall_scale``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

ROBOTS: tuple[str, ...] = ("point", "car")
NUM_WALLS: tuple[int, ...] = (2, 4)
#: Half-width of the square arena the lidar sees (safety-gymnasium's lidar max distance).
ARENA_HALF_WIDTH: float = 6.0


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: must be a finite number > 0")


@dataclass(frozen=True)
class CircleTask:
    """One circle task. Immutable and hashable.

    :param robot: robot name, one of :data:`ROBOTS`.
    :param radius: radius of the circle to run along, metres, in (0, ARENA_HALF_WIDTH).
    :param wall_distance: walls stand at ``|x| = wall_distance`` (and ``|y|`` with 4 walls).
    :param num_walls: 2 (left/right) or 4 (a box).
    :param damping_scale: multiplies the robot's joint damping (1 = stock physics).
    :param gear_scale: multiplies the robot's actuator gear (1 = stock physics).
    """

    robot: str = "point"
    radius: float = 1.5
    wall_distance: float = 1.125
    num_walls: int = 2
    damping_scale: float = 1.0
    gear_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.robot not in ROBOTS:
            raise ValueError(f"robot={self.robot!r} is unknown: valid choices are {list(ROBOTS)}")
        _check_positive("radius", self.radius)
        if self.radius >= ARENA_HALF_WIDTH:
            raise ValueError(
                f"radius={self.radius} is outside the arena: valid range is (0, {ARENA_HALF_WIDTH})"
            )
        _check_positive("wall_distance", self.wall_distance)
        if self.wall_distance >= ARENA_HALF_WIDTH:
            raise ValueError(
                f"wall_distance={self.wall_distance} is beyond the arena: "
                f"valid range is (0, {ARENA_HALF_WIDTH})"
            )
        if self.num_walls not in NUM_WALLS:
            raise ValueError(
                f"num_walls={self.num_walls!r} is invalid: valid choices are {list(NUM_WALLS)}"
            )
        _check_positive("damping_scale", self.damping_scale)
        _check_positive("gear_scale", self.gear_scale)

    @property
    def wall_scale(self) -> float:
        """``wall_distance / radius``."""
        return self.wall_distance / self.radius

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> CircleTask:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


def _check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    if len(bounds) != 2:
        raise ValueError(f"{name}={bounds!r} is invalid: expected [low, high]")
    low, high = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name}=[{low}, {high}] is invalid: need finite low <= high")
    if low <= 0:
        raise ValueError(f"{name}=[{low}, {high}] is invalid: values must be > 0")
    return low, high


@dataclass(frozen=True)
class TaskDistribution:
    """Uniform distribution over circle tasks; sampling is reproducible from a seed.

    :param name: a label (``fixed``, ``meta_train``, ``held_out`` or your own).
    :param robot: robot for every task.
    :param radius: ``[low, high]`` of the circle radius.
    :param wall_scale: ``[low, high]`` of ``wall_distance / radius``.
    :param num_walls: walls per task.
    :param damping_scale: ``[low, high]`` of the damping multiplier.
    :param gear_scale: ``[low, high]`` of the actuator gear multiplier.
    """

    name: str
    robot: str = "point"
    radius: tuple[float, float] = (1.0, 1.5)
    wall_scale: tuple[float, float] = (0.55, 0.75)
    num_walls: int = 2
    damping_scale: tuple[float, float] = (1.0, 1.0)
    gear_scale: tuple[float, float] = (1.0, 1.0)
    seed_offset: int = field(default=0)

    def __post_init__(self) -> None:
        for name in ("radius", "wall_scale", "damping_scale", "gear_scale"):
            object.__setattr__(self, name, _check_range(name, tuple(getattr(self, name))))
        # Validate the extreme corners once so bad ranges fail at construction.
        for radius in self.radius:
            for scale in self.wall_scale:
                CircleTask(self.robot, radius, radius * scale, self.num_walls)

    def sample(self, num_tasks: int, seed: int) -> list[CircleTask]:
        """Draw ``num_tasks`` tasks; the same ``(seed, num_tasks)`` gives the same list."""
        if num_tasks < 0:
            raise ValueError(f"num_tasks={num_tasks} is invalid: must be >= 0")
        rng = np.random.default_rng([int(seed), self.seed_offset])
        tasks = []
        for _ in range(num_tasks):
            radius = float(rng.uniform(*self.radius))
            scale = float(rng.uniform(*self.wall_scale))
            tasks.append(
                CircleTask(
                    robot=self.robot,
                    radius=radius,
                    wall_distance=radius * scale,
                    num_walls=self.num_walls,
                    damping_scale=float(rng.uniform(*self.damping_scale)),
                    gear_scale=float(rng.uniform(*self.gear_scale)),
                )
            )
        return tasks

    def contains(self, task: CircleTask) -> bool:
        """Whether ``task`` lies in this distribution's support."""
        eps = 1e-9
        return (
            task.robot == self.robot
            and task.num_walls == self.num_walls
            and self.radius[0] - eps <= task.radius <= self.radius[1] + eps
            and self.wall_scale[0] - eps <= task.wall_scale <= self.wall_scale[1] + eps
            and self.damping_scale[0] - eps <= task.damping_scale <= self.damping_scale[1] + eps
            and self.gear_scale[0] - eps <= task.gear_scale <= self.gear_scale[1] + eps
        )

    def overlaps(self, other: TaskDistribution) -> bool:
        """Whether the supports of two distributions intersect (same robot and walls)."""

        def meet(a: tuple[float, float], b: tuple[float, float]) -> bool:
            return a[0] <= b[1] and b[0] <= a[1]

        return (
            self.robot == other.robot
            and self.num_walls == other.num_walls
            and meet(self.radius, other.radius)
            and meet(self.wall_scale, other.wall_scale)
            and meet(self.damping_scale, other.damping_scale)
            and meet(self.gear_scale, other.gear_scale)
        )


#: Meta-CPO's levels 0, 1 and 2; meta_safe's configuration takes its defaults from here.
REFERENCE_LEVELS: dict[str, dict[str, Any]] = {
    "fixed": {"radius": (1.25, 1.25), "wall_scale": (0.75, 0.75)},
    "meta_train": {"radius": (1.0, 1.5), "wall_scale": (0.55, 0.75)},
    "held_out": {"radius": (2.0, 2.5), "wall_scale": (0.55, 0.65)},
}


def reference_distribution(level: str, robot: str = "point", **overrides: Any) -> TaskDistribution:
    """The named reference distribution (``fixed``, ``meta_train`` or ``held_out``)."""
    if level not in REFERENCE_LEVELS:
        raise ValueError(f"level={level!r} is unknown: valid choices are {list(REFERENCE_LEVELS)}")
    kwargs = {**REFERENCE_LEVELS[level], **overrides}
    return TaskDistribution(name=level, robot=robot, **kwargs)
