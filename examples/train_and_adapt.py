"""Meta-train a rule, adapt it to a task it has never seen, and draw what it does.

    .venv/bin/python examples/train_and_adapt.py --out runs/example          # ~1 min
    .venv/bin/python examples/train_and_adapt.py --out runs/example meta_optimizer=pid

Uses the Python API only: ``meta_safe.train``, ``meta_safe.load``, ``Run.adapt``,
``Run.rollout`` and ``meta_safe.plot_trajectories``.
"""

import argparse
from pathlib import Path

import meta_safe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. meta.iterations=5")
    args = parser.parse_args()

    meta_safe.train(
        ["meta.iterations=10", "evaluate_after=false", "overwrite=true", *args.overrides],
        run_dir=args.out,
    )
    run = meta_safe.load(args.out)  # what you would do in another process, later
    task = meta_safe.CircleTask(radius=2.2, wall_distance=1.3)  # a held-out task
    adapted = run.adapt(task, inner_steps=2)
    print(adapted.report.table(f"{run.cfg.meta_optimizer.name} adapting to {task}"))

    before = run.rollout(task)  # the meta-policy's mean action, one episode
    after = run.rollout(task, adapted.params)
    figure = meta_safe.plot_trajectories([before], [after], args.out / "example_paths.png")
    print(
        f"return {before.episode_return:.1f} -> {after.episode_return:.1f}, "
        f"cost {before.episode_cost:.0f} -> {after.episode_cost:.0f}; wrote {figure}"
    )


if __name__ == "__main__":
    main()
