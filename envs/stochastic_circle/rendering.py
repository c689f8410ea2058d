"""Top-view pictures of a circle task on the MuJoCo backend.

The compiled circle world carries no rendering assets (no textures, lights or marker
geoms: they cost seconds per reset). :class:`CircleRenderer` draws with MuJoCo's
offscreen renderer and the default headlight, looking straight down at the origin, and
adds the task's circle (a ring of small discs) and walls (thin yellow slabs) as
visual-only scene geoms, so nothing of the physics changes.

Headless machines need an offscreen OpenGL platform: when neither ``MUJOCO_GL`` nor a
display is set, :mod:`stochastic_circle` sets ``MUJOCO_GL=egl`` before MuJoCo loads.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from stochastic_circle.tasks import CircleTask

RING_POINTS = 72
WALL_RGBA = np.array([1.0, 0.85, 0.1, 0.9], dtype=np.float32)
CIRCLE_RGBA = np.array([0.2, 0.6, 0.9, 0.9], dtype=np.float32)


class CircleRenderer:
    """Renders ``[height, width, 3]`` uint8 top views of one model's data.

    :param model: the env's compiled model (rendering needs its offscreen buffer at
        least ``width x height``; the circle world's default is 640 x 480).
    :param view_half_width: metres from the centre to the image edge.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        width: int = 480,
        height: int = 480,
        view_half_width: float = 3.0,
    ) -> None:
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.renderer = mujoco.Renderer(model, height=height, width=width)
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.camera.lookat[:] = (0.0, 0.0, 0.0)
        self.camera.elevation = -90.0
        self.camera.azimuth = 90.0
        fovy = math.radians(float(model.vis.global_.fovy))
        self.camera.distance = view_half_width / math.tan(fovy / 2)

    def render(self, data: mujoco.MjData, task: CircleTask) -> np.ndarray:
        """The current state of ``data`` with ``task``'s circle and walls drawn."""
        self.renderer.update_scene(data, self.camera)
        scene = self.renderer.scene
        for k in range(RING_POINTS):
            angle = 2 * math.pi * k / RING_POINTS
            position = (task.radius * math.cos(angle), task.radius * math.sin(angle), 0.01)
            _add_geom(
                scene, mujoco.mjtGeom.mjGEOM_CYLINDER, (0.03, 0.03, 0.005), position, CIRCLE_RGBA
            )
        span = 2.0 * max(task.radius, task.wall_distance) + 1.0
        walls = [(sign * task.wall_distance, 0.0, (0.03, span, 0.02)) for sign in (-1, 1)]
        if task.num_walls == 4:
            walls += [(0.0, sign * task.wall_distance, (span, 0.03, 0.02)) for sign in (-1, 1)]
        for x, y, size in walls:
            _add_geom(scene, mujoco.mjtGeom.mjGEOM_BOX, size, (x, y, 0.02), WALL_RGBA)
        return self.renderer.render().copy()

    def close(self) -> None:
        self.renderer.close()


def _add_geom(scene: mujoco.MjvScene, kind: int, size, position, rgba: np.ndarray) -> None:
    """Append one visual-only geom to ``scene`` (ignored once the scene is full)."""
    if scene.ngeom >= scene.maxgeom:
        return
    mujoco.mjv_initGeom(
        scene.geoms[scene.ngeom],
        kind,
        np.asarray(size, dtype=np.float64),
        np.asarray(position, dtype=np.float64),
        np.eye(3).ravel(),
        rgba,
    )
    scene.ngeom += 1
