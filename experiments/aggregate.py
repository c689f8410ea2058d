"""Aggregate a results directory of ``run_variants.py`` into a table and figures.

Reads ``<dir>/<variant>/seed*/<stem>.json`` (adaptation reports written by
``meta_safe.cli.train`` / ``meta_safe.cli.evaluate`` / ``scratch_baseline.py``) and
writes ``<dir>/<stem>_table.md``, ``<stem>_curves.png`` (adaptation curves) and
``<stem>_scatter.png`` (return versus cost after adaptation, limit drawn)::

    .venv/bin/python experiments/aggregate.py runs/compare                # evaluation.json
    .venv/bin/python experiments/aggregate.py runs/compare --stem evaluation_mujoco
    .venv/bin/python experiments/aggregate.py --all runs      # every directory and report
    .venv/bin/python experiments/aggregate.py runs/compare --order \
        "cpo_layer,cpo_layer + margin=cpo_layer@evaluation_margin"   # two reports, one table

Each seed contributes its mean over held-out tasks; the table gives the mean and
standard error of those per-seed means (so the error bars are across seeds).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from meta_safe.cli.errors import ArgumentParser, run_cli


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def load_variant(directory: Path, stem: str) -> list[dict[str, Any]]:
    """Per-seed reports of one variant (sorted by seed directory)."""
    reports = []
    for seed_dir in sorted(directory.glob("seed*")):
        path = seed_dir / f"{stem}.json"
        if path.exists():
            report = json.loads(path.read_text())
            suffix = stem.removeprefix("evaluation")  # "" or "_mujoco"
            wall = seed_dir / f"wall_clock{suffix}.txt"
            if wall.exists():  # none for a split the training run evaluated itself
                report["wall_clock"] = float(wall.read_text())
            reports.append(report)
    return reports


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Across-seed mean and s.e. of the per-seed task means, per inner step."""
    steps = len(reports[0]["summary"]["mean_return"])
    result: dict[str, Any] = {"seeds": len(reports), "steps": steps}
    for key in ("mean_return", "mean_cost", "within_limit"):
        per_step = [mean_se([r["summary"][key][k] for r in reports]) for k in range(steps)]
        result[key] = [m for m, _ in per_step]
        result[key + "_se"] = [s for _, s in per_step]
    result["wall_clock"] = mean_se([r["wall_clock"] for r in reports if "wall_clock" in r])[0]
    result.update(step_check_summary(reports, steps, result["within_limit"]))
    result["env_steps_per_step"] = reports[0].get("env_steps_per_step", math.nan)
    result["cost_limit"] = reports[0]["cost_limit"]
    result["tasks"] = len(reports[0]["tasks"])
    return result


def step_check_summary(
    reports: list[dict[str, Any]], steps: int, within_limit: list[float]
) -> dict[str, Any]:
    """Rejected candidates of a step check per task over the adaptation, their extra real
    steps per task, and the share within the limit per step when each rejected candidate
    counts as a violation of its task at that step (it was rejected because its batch was
    above the limit). Reports without a step check give zeros and ``within_limit``."""
    checked = [r for r in reports if any(any(task) for task in r.get("rejected") or [])]
    if not checked:
        return {
            "rejected_per_task": 0.0,
            "extra_steps_per_task": 0.0,
            "within_limit_counting_rejected": within_limit,
        }
    tries = [r.get("rejected") or [[0] * steps for _ in r["tasks"]] for r in reports]
    return {
        "rejected_per_task": statistics.fmean(
            statistics.fmean(sum(task) for task in seed) for seed in tries
        ),
        "extra_steps_per_task": statistics.fmean(
            r.get("extra_steps", 0) / len(r["tasks"]) for r in reports
        ),
        "within_limit_counting_rejected": [
            statistics.fmean(
                statistics.fmean(
                    float(costs[k] <= r["cost_limit"] and task[k] == 0)
                    for costs, task in zip(r["costs"], seed, strict=True)
                )
                for r, seed in zip(reports, tries, strict=True)
            )
            for k in range(steps)
        ],
    }


def clock_text(seconds: float) -> str:
    """``"12 s"``, or ``"in the training run"`` where no separate clock was kept."""
    return "in the training run" if math.isnan(seconds) else f"{seconds:.0f} s"


def table(summaries: dict[str, dict[str, Any]], stem: str = "evaluation") -> str:
    clock = "train + eval per run" if stem == "evaluation" else "this evaluation per run"
    lines = [
        "| variant | seeds | return before | return after K | cost after K "
        f"| within limit after K | real steps per update per task | wall-clock, {clock} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['seeds']} | {s['mean_return'][0]:.2f} ± {s['mean_return_se'][0]:.2f} "
            f"| {s['mean_return'][-1]:.2f} ± {s['mean_return_se'][-1]:.2f} "
            f"| {s['mean_cost'][-1]:.1f} ± {s['mean_cost_se'][-1]:.1f} "
            f"| {100 * s['within_limit'][-1]:.0f}% ± {100 * s['within_limit_se'][-1]:.0f} "
            f"| {s['env_steps_per_step']:,} | {clock_text(s['wall_clock'])} |"
        )
    any_s = next(iter(summaries.values()))
    lines += [
        "",
        f"K = {any_s['steps'] - 1} inner steps on {any_s['tasks']} tasks, cost limit "
        f"{any_s['cost_limit']:g}. Mean ± standard error across seeds of each seed's mean "
        "over tasks.",
    ]
    checked = {n: s for n, s in summaries.items() if s.get("rejected_per_task", 0) > 0}
    if checked:
        parts = [
            f"{name} {s['rejected_per_task']:.2f} per task ({s['extra_steps_per_task']:,.0f} "
            "extra real steps), within the limit counting them "
            + " / ".join(f"{100 * v:.0f}" for v in s["within_limit_counting_rejected"])
            + "%"
            for name, s in checked.items()
        ]
        lines += [
            "",
            "Step check: rejected candidates over the K steps, each a batch above the limit "
            "that ran in the environment and is not in the cost columns; " + "; ".join(parts) + ".",
        ]
    return "\n".join(lines)


def plot(summaries: dict[str, dict[str, Any]], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = next(iter(summaries.values()))["cost_limit"]
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in summaries.items():
        steps = list(range(s["steps"]))
        ax_r.errorbar(steps, s["mean_return"], yerr=s["mean_return_se"], marker="o", label=name)
        ax_c.errorbar(steps, s["mean_cost"], yerr=s["mean_cost_se"], marker="o", label=name)
    ax_c.axhline(limit, ls="--", color="k", label="cost limit")
    ax_r.set(xlabel="inner steps", ylabel="episode return", title=f"return ({stem})")
    ax_c.set(xlabel="inner steps", ylabel="episode cost", title=f"cost ({stem})")
    steps = range(next(iter(summaries.values()))["steps"])
    for ax in (ax_r, ax_c):
        ax.set_xticks(list(steps))
    ax_c.legend(fontsize=8)
    fig.tight_layout()
    curves = out / f"{stem}_curves.png"
    fig.savefig(curves, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, s in summaries.items():
        ax.errorbar(
            s["mean_cost"][-1],
            s["mean_return"][-1],
            xerr=s["mean_cost_se"][-1],
            yerr=s["mean_return_se"][-1],
            marker="o",
            label=name,
        )
    ax.axvline(limit, ls="--", color="k", label="cost limit")
    ax.set(xlabel="episode cost after K steps", ylabel="episode return after K steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    scatter = out / f"{stem}_scatter.png"
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return [curves, scatter]


def row_source(name: str, stem: str) -> tuple[str, str, str]:
    """``(label, variant, stem)`` of one ``--order`` entry: ``VARIANT``, or
    ``[LABEL=]VARIANT@STEM`` for another report of a variant's runs (e.g. the same
    checkpoints adapted with other settings) as a row of this table."""
    label, _, source = name.rpartition("=") if "@" in name else ("", "", name)
    variant, _, other = source.partition("@")
    return label or name, variant, other or stem


def aggregate(root: Path, stem: str, order: list[str] | None = None) -> str:
    """Write the table, summary and figures of one ``stem`` under ``root``; returns the table."""
    names = order or sorted(p.name for p in root.iterdir() if p.is_dir())
    summaries = {}
    for name in names:
        label, variant, variant_stem = row_source(name, stem)
        reports = load_variant(root / variant, variant_stem) if (root / variant).is_dir() else []
        if reports:
            summaries[label] = summarise(reports)
    if not summaries:
        raise SystemExit(f"no {stem}.json under {root}/<variant>/seed*/")
    text = table(summaries, stem)
    (root / f"{stem}_table.md").write_text(text + "\n")
    (root / f"{stem}_summary.json").write_text(json.dumps(summaries, indent=1))
    paths = plot(summaries, root, stem)
    print(f"## {root} / {stem}\n\n{text}\n")
    print("wrote " + ", ".join(str(p) for p in [root / f"{stem}_table.md", *paths]) + "\n")
    return text


def stems_in(root: Path) -> list[str]:
    """Every report name found as ``<root>/<variant>/seed*/<stem>.json``."""
    return sorted({p.stem for p in root.glob("*/seed*/evaluation*.json")})


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "directory",
        help="output directory of run_variants.py (with --all: a directory of them, e.g. runs)",
    )
    parser.add_argument("--stem", default="evaluation", help="report name: evaluation[_<name>]")
    parser.add_argument(
        "--order",
        help="comma-separated variant order (default: sorted); an entry [LABEL=]VARIANT@STEM "
        "adds that variant's STEM reports as a row",
    )
    parser.add_argument(
        "--all", action="store_true", help="every results directory and report name under it"
    )
    args = parser.parse_args()
    root = Path(args.directory)
    order = args.order.split(",") if args.order else None
    if not args.all:
        aggregate(root, args.stem, order)
        return
    for results in sorted(p for p in root.iterdir() if p.is_dir()):
        present = [n for n in order or [] if (results / n).is_dir()] or None
        for stem in stems_in(results):
            aggregate(results, stem, present)


if __name__ == "__main__":
    run_cli(main)
