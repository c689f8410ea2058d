"""``meta-safe plot RUN_DIR ...``: training curves from ``metrics.csv``.

Each argument is one curve: a run directory, or a directory holding runs (e.g. one
variant of a grid with ``seed0/``, ``seed1/``, ...), whose runs are aggregated per
iteration as mean and a shaded standard error. Three panels: the return after
adaptation, its cost against the limit, and the share of tasks within the limit.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

import yaml

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.errors import ConfigError

PANELS = (
    ("post_return", "return after adaptation"),
    ("post_cost", "cost after adaptation"),
    ("post_within_limit", "share of tasks within the limit"),
)
EXAMPLES = """examples:
  meta-safe plot runs/my_run
  meta-safe plot runs/grid/cpo_layer runs/grid/pid --out curves.png"""


def find_runs(path: Path) -> list[Path]:
    """``path`` if it holds a ``metrics.csv``, else every run below it (sorted)."""
    if (path / "metrics.csv").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("metrics.csv"))


def read_column(run: Path, key: str) -> dict[int, float]:
    """``iteration -> value`` of one metrics column (missing or blank values skipped)."""
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["iteration"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}


def mean_and_stderr(runs: list[Path], key: str) -> tuple[list[int], list[float], list[float]]:
    """Per iteration present in every run: mean and standard error over the runs."""
    columns = [read_column(run, key) for run in runs]
    iterations = sorted(set.intersection(*(set(c) for c in columns)))
    means, errors = [], []
    for i in iterations:
        values = [c[i] for c in columns if math.isfinite(c[i])]
        means.append(statistics.fmean(values) if values else math.nan)
        spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        errors.append(spread)
    return iterations, means, errors


def cost_limit(run: Path) -> float | None:
    config = run / "config.yaml"
    if not config.is_file():
        return None
    return float(yaml.safe_load(config.read_text())["env"]["cost_limit"])


def plot_training_curves(curves: dict[str, list[Path]], path: Path) -> Path:
    """One line per ``label -> runs`` in each panel; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for label, runs in curves.items():
            x, mean, err = mean_and_stderr(runs, key)
            line = ax.plot(x, mean, label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
            low = [m - e for m, e in zip(mean, err, strict=True)]
            high = [m + e for m, e in zip(mean, err, strict=True)]
            ax.fill_between(x, low, high, color=line[0].get_color(), alpha=0.25, linewidth=0)
        if key == "post_cost":
            limits = {cost_limit(r) for runs in curves.values() for r in runs} - {None}
            for limit in limits:
                ax.axhline(limit, ls="--", color="k", lw=0.8, label=f"cost limit {limit:g}")
        if key == "post_within_limit":
            ax.set_ylim(-0.05, 1.05)
        ax.set(xlabel="meta-iteration", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="meta-safe plot", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or folders of runs")
    parser.add_argument(
        "--out", type=Path, help="figure path (default: <first>/training_curves.png)"
    )
    args = parser.parse_args(argv)
    curves: dict[str, list[Path]] = {}
    for path in args.runs:
        runs = find_runs(path)
        if not runs:
            raise ConfigError(
                f"{str(path)!r} holds no run: expected a metrics.csv in it or below it"
            )
        curves[path.name or str(path)] = runs
    out = args.out or args.runs[0] / "training_curves.png"
    print(f"wrote {plot_training_curves(curves, out)}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
