"""``meta-safe``: one command with a subcommand for each thing users do.

``meta-safe train`` is ``python -m meta_safe.meta_trainer``, ``meta-safe evaluate`` is
``python -m meta_safe.evaluate``; ``grid``, ``plot`` and ``bench`` run the experiment
grid, the training-curve figure and the speed benchmarks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from meta_safe.cli.errors import run_cli
from meta_safe.errors import ConfigError

BENCHMARKS = {
    "meta-iteration": "meta_safe.benchmarks.meta_iteration",
    "envs": "meta_safe.benchmarks.envs",
    "long-run": "meta_safe.benchmarks.long_run",
    "first-result": "meta_safe.benchmarks.first_result",
}

SUBCOMMANDS = {
    "train": "meta-train, then evaluate on unseen tasks and print the tables",
    "evaluate": "adapt a checkpoint on unseen tasks, print the table, draw the paths",
    "grid": "train and evaluate named variants over seeds (locally or on Ray)",
    "plot": "training curves of runs from their metrics.csv, mean ± s.e. over seeds",
    "bench": f"speed benchmarks: {', '.join(BENCHMARKS)}",
}

HELP = (
    "usage: meta-safe <command> [--help] [arguments]\n\n"
    "Safe meta-reinforcement learning on randomised circle tasks.\n\ncommands:\n"
    + "\n".join(f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items())
    + """

examples:
  meta-safe train meta.iterations=2                  # a short run, then both tables
  meta-safe train meta_optimizer=pid run_dir=runs/pid seed=1
  meta-safe evaluate checkpoint=runs/pid env.backend=mujoco
  meta-safe grid --out runs/grid --seeds 0,1,2 --variant pid:meta_optimizer=pid
  meta-safe plot runs/grid/pid
  meta-safe bench meta-iteration --quick

Each command answers --help with its own usage and examples."""
)


def command(name: str) -> Callable[[list[str]], int | None]:
    """The ``main(argv)`` of subcommand ``name``."""
    import importlib

    if name == "bench":
        return bench
    modules = {
        "train": "meta_safe.cli.train",
        "evaluate": "meta_safe.cli.evaluate",
        "grid": "meta_safe.cli.grid",
        "plot": "meta_safe.cli.plot",
    }
    return importlib.import_module(modules[name]).main


def bench(argv: list[str]) -> int | None:
    """``meta-safe bench <name> [arguments]``."""
    import importlib

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: meta-safe bench <name> [--help] [arguments]\n\nbenchmarks:\n"
            + "\n".join(
                f"  {name:<15} {importlib.import_module(m).__doc__.splitlines()[0]}"
                for name, m in BENCHMARKS.items()
            )  # fmt: skip
            + "\n\nexamples:\n  meta-safe bench meta-iteration --quick\n"
            "  meta-safe bench long-run --iterations 60"
        )
        return 0
    if argv[0] not in BENCHMARKS:
        raise ConfigError(f"benchmark {argv[0]!r} is unknown: valid are {list(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    if argv[0] == "--version":
        from meta_safe import __version__

        print(f"meta-safe {__version__}")
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise ConfigError(
            f"command {argv[0]!r} is unknown: valid are {list(SUBCOMMANDS)} (meta-safe --help)"
        )
    return command(argv[0])(argv[1:])


def run() -> None:
    """The console script's entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
