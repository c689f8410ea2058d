"""Render an episode of a trained run on the MuJoCo simulator and write it as a GIF.

    .venv/bin/python examples/video.py runs/example --out runs/example/episode.gif

Uses the Python API only (``meta_safe.load``, ``Run.adapt``, ``Run.rollout``,
``Run.save_video``). The run may have been trained on either backend (the Point robot
transfers from the torch backend to MuJoCo).
"""

import argparse
from pathlib import Path

import meta_safe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <run_dir>/episode.gif")
    parser.add_argument("--every", type=int, default=5, help="keep a frame every k steps")
    parser.add_argument("--inner-steps", type=int, default=1, help="adapt first (0: no)")
    args = parser.parse_args()

    run = meta_safe.load(args.run_dir)
    task = meta_safe.CircleTask(robot=run.cfg.env.robot, radius=1.5, wall_distance=1.125)
    params = run.adapt(task, args.inner_steps).params if args.inner_steps else None
    episode = run.rollout(task, params, render_every=args.every, backend="mujoco")
    path = run.save_video(episode, args.out or args.run_dir / "episode.gif")
    print(
        f"{len(episode.frames)} frames, return {episode.episode_return:.1f}, "
        f"cost {episode.episode_cost:.0f}: wrote {path}"
    )


if __name__ == "__main__":
    main()
