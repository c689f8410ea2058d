"""Sample efficiency of Dyna: real env steps per adaptation update for the same result.

Meta-trains each of ``--variants`` (``dyna=none``, ``dyna=ensemble``, ``dyna=known``) on
the same seeds (``run_variants.py``), then adapts every checkpoint on the same tasks of
each of ``--splits``:

* ``none`` with ``E`` real envs per task per update for E in ``--real-envs``
  (E x 500 real steps per update);
* the Dyna variants with ``dyna.real_envs_per_task=E`` for E in ``--dyna-real-envs``,
  plus model rollouts.

Every row's result after K steps is measured on real episodes: the post-adaptation
batch of ``evaluation.envs_per_task`` envs for the Dyna rows and for ``none`` at 8 envs,
the batch of the E envs for the other ``none`` rows. Per split, the table gives real
steps per update, return and cost after K steps, the share of tasks within the limit and
the real steps of meta-training; the lines below it give how many real steps per update
``none`` needs for each Dyna row's return (log-linear interpolation between the measured
budgets), and whether the smallest Dyna budget that reaches ``none``'s return at its
largest budget is at most a third of it with a within-limit share no lower. It writes
``table.md``, ``summary.json`` and ``curves.png`` (return and within-limit share against
real steps per update)::

    .venv/bin/python experiments/bench_dyna.py --out runs/dyna5 --seeds 0,1,2,3,4 --jobs 2
    .venv/bin/python experiments/bench_dyna.py --out runs/dyna_mujoco --seeds 0,1,2 \\
        --variants none,ensemble env=point_circle_mujoco
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregate import mean_se  # noqa: E402
from run_variants import run, train_and_evaluate  # noqa: E402

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.errors import ConfigError

VARIANTS = ("none", "ensemble", "known")
SPLIT_TITLES = {"held_out": "held-out tasks", "meta_train": "unseen tasks from the training ranges"}


def evaluation_dir(seed_dir: Path, variant: str, envs: int) -> Path:
    return seed_dir / (f"envs{envs}" if variant == "none" else f"real{envs}")


def evaluate(seed_dir: Path, variant: str, envs: int, split: str) -> Path:
    """Adapt a finished run with ``envs`` real envs per task per update on ``split``."""
    out = evaluation_dir(seed_dir, variant, envs)
    report = out / f"evaluation_{split}.json"
    if not report.exists():
        budget = (
            f"evaluation.envs_per_task={envs}"
            if variant == "none"
            else f"dyna.real_envs_per_task={envs}"
        )
        cmd = [
            sys.executable, "-m", "meta_safe.evaluate", f"checkpoint={seed_dir}", budget,
            f"evaluation.split={split}", f"out={out}", f"stem=evaluation_{split}",
        ]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        print("$ " + " ".join(cmd[1:]), flush=True)
        run(cmd, out / f"evaluate_{split}.log")
    return report


def training_real_steps(seed_dir: Path) -> float:
    """Real env steps of meta-training (sum of the metrics' ``env_steps``)."""
    with (seed_dir / "metrics.csv").open() as handle:
        return sum(float(row["env_steps"]) for row in csv.DictReader(handle))


def wall_clock(seed_dirs: list[Path]) -> float:
    """Mean wall-clock of meta-training + its evaluations per run (``wall_clock.txt``)."""
    values = [float((d / "wall_clock.txt").read_text()) for d in seed_dirs]
    return sum(values) / len(values)


def row(reports: list[dict], train_steps: list[float]) -> dict[str, float]:
    """Across-seed means of the per-seed task means after K steps."""
    ret = mean_se([r["summary"]["mean_return"][-1] for r in reports])
    gain = mean_se(
        [r["summary"]["mean_return"][-1] - r["summary"]["mean_return"][0] for r in reports]
    )
    cost = mean_se([r["summary"]["mean_cost"][-1] for r in reports])
    within = mean_se([r["summary"]["within_limit"][-1] for r in reports])
    shares = [s for r in reports for s in (r.get("model_share") or [])]
    return {
        "real_steps": reports[0]["env_steps_per_step"],
        "return": ret[0],
        "return_se": ret[1],
        "gain": gain[0],
        "gain_se": gain[1],
        "cost": cost[0],
        "cost_se": cost[1],
        "within": within[0],
        "within_se": within[1],
        "model_share": sum(shares) / len(shares) if shares else 0.0,
        "train_steps": sum(train_steps) / len(train_steps),
        "limit": reports[0]["cost_limit"],
    }


def steps_to_match(curve: list[dict[str, float]], target: float) -> float:
    """Real steps at which ``none``'s return reaches ``target`` (log-linear interpolation)."""
    points = sorted((c["real_steps"], c["return"]) for c in curve)
    if target <= points[0][1]:
        return points[0][0]
    for (s0, r0), (s1, r1) in zip(points, points[1:], strict=False):
        if r0 < target <= r1:
            frac = (target - r0) / (r1 - r0)
            return math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0)))
    return math.inf  # not reached within the measured budgets


def verdicts(rows: dict[str, dict[str, Any]], variants: list[str]) -> list[str]:
    """Per Dyna variant: the real steps ``none`` needs for each of its returns, and the
    sample-efficiency test against ``none`` at its largest budget."""
    curve = [r for r in rows.values() if r["variant"] == "none"]
    if not curve:
        return []
    reference = max(curve, key=lambda r: r["real_steps"])
    lines = []
    for variant in variants:
        if variant == "none":
            continue
        dyna_rows = sorted(
            (r for r in rows.values() if r["variant"] == variant), key=lambda r: r["real_steps"]
        )
        for r in dyna_rows:
            needed = steps_to_match(curve, r["return"])
            if math.isinf(needed):
                verdict = (
                    f"dyna=none does not reach that return with up to "
                    f"{reference['real_steps']:,} real steps per update"
                )
            else:
                verdict = f"dyna=none needs {needed:,.0f} ({needed / r['real_steps']:.1f}x)"
            lines.append(
                f"- dyna={variant} with {r['real_steps']:,} real steps per update: return "
                f"{r['return']:.2f}, within the limit {100 * r['within']:.0f}%; {verdict}."
            )
        matching = [r for r in dyna_rows if r["return"] >= reference["return"]]
        third = reference["real_steps"] / 3
        if matching:
            best = matching[0]
            safe = best["within"] >= reference["within"] - 1e-6  # shares are float32 means
            lines.append(
                f"- dyna={variant} first reaches the return of dyna=none at "
                f"{reference['real_steps']:,} real steps ({reference['return']:.2f}) with "
                f"{best['real_steps']:,} ({best['real_steps'] / reference['real_steps']:.2f}x; "
                f"{'within' if best['real_steps'] <= third else 'more than'} a third), at a "
                f"within-limit share {'no lower than' if safe else 'below'} its "
                f"{100 * reference['within']:.0f}% ({100 * best['within']:.0f}%)."
            )
        else:
            lines.append(
                f"- dyna={variant} does not reach the return of dyna=none at "
                f"{reference['real_steps']:,} real steps ({reference['return']:.2f}) with any "
                "measured budget."
            )
    return lines


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | real steps per update per task | return after K | gain from adaptation "
        "| cost after K | within limit | model share | real steps of meta-training "
        "| train + eval per run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['real_steps']:,} | {r['return']:.2f} ± {r['return_se']:.2f} "
            f"| {r['gain']:+.2f} ± {r['gain_se']:.2f} "
            f"| {r['cost']:.1f} ± {r['cost_se']:.1f} "
            f"| {100 * r['within']:.0f}% ± {100 * r['within_se']:.0f} "
            f"| {100 * r['model_share']:.0f}% | {r['train_steps']:,.0f} | {r['wall_clock']:.0f} s |"
        )
    return "\n".join(lines)


def report(summary: dict[str, Any]) -> str:
    """Per split of a ``summary.json``: its table and verdict lines, as markdown."""
    parts = []
    for split, result in summary["splits"].items():
        parts += [f"### {SPLIT_TITLES[split].capitalize()}", "", markdown(result["rows"]), ""]
        parts += [*result["verdicts"], ""]
    parts.append(
        "Gain from adaptation: return after K steps minus return before adapting. Model "
        "share: the mean share of imagined samples in the inner updates."
    )
    return "\n".join(parts)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Return and within-limit share against real steps per update, per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(summary["splits"])
    fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 6.5), squeeze=False)
    for column, split in enumerate(splits):
        rows = summary["splits"][split]["rows"].values()
        for variant in summary["variants"]:
            points = sorted(
                (r for r in rows if r["variant"] == variant), key=lambda r: r["real_steps"]
            )
            if not points:
                continue
            steps = [r["real_steps"] for r in points]
            for ax, key, scale in (
                (axes[0][column], "return", 1),
                (axes[1][column], "within", 100),
            ):
                ax.errorbar(
                    steps,
                    [scale * r[key] for r in points],
                    yerr=[scale * r[f"{key}_se"] for r in points],
                    marker="o",
                    capsize=3,
                    label=f"dyna={variant}",
                )
        axes[0][column].set_title(SPLIT_TITLES.get(split, split))
        axes[0][column].set_ylabel("return after K steps")
        axes[1][column].set_ylabel("tasks within the limit after K steps (%)")
        ticks = sorted({r["real_steps"] for r in rows})
        for ax in (axes[0][column], axes[1][column]):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("real env steps per task per update")
            ax.grid(alpha=0.3)
        axes[0][column].legend()
    fig.suptitle(f"Dyna sample efficiency (mean ± s.e. over seeds {summary['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_ints(text: str, name: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as error:
        raise ConfigError(f"{name} {text!r} is invalid: expected integers like 1,2") from error
    if min(values) < minimum:
        raise ConfigError(f"{name} {text!r} is invalid: every value must be >= {minimum}")
    return values


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/dyna")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of none,ensemble,known")
    parser.add_argument("--real-envs", default="1,2,4,8", help="budgets evaluated for none")
    parser.add_argument("--dyna-real-envs", default="1,2", help="budgets for the Dyna variants")
    parser.add_argument("--splits", default="held_out,meta_train")
    parser.add_argument(
        "--dyna-train",
        default="",
        help="comma-separated overrides for meta-training the Dyna variants only, e.g. "
        "dyna.real_envs_per_task=8 (meta-train on more real data than adaptation gets)",
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out).resolve()
    seeds = parse_ints(args.seeds, "--seeds", minimum=0)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants {unknown[0]!r} is unknown: valid are {list(VARIANTS)}")
    splits = args.splits.split(",")
    bad = [s for s in splits if s not in SPLIT_TITLES]
    if bad:
        raise ConfigError(f"--splits {bad[0]!r} is unknown: valid are {list(SPLIT_TITLES)}")
    budgets = {
        v: parse_ints(args.real_envs, "--real-envs")
        if v == "none"
        else parse_ints(args.dyna_real_envs, "--dyna-real-envs")
        for v in variants
    }
    dyna_train = [o for o in args.dyna_train.split(",") if o]
    jobs = [
        (
            out / v / f"seed{seed}",
            [*args.overrides, f"dyna={v}", *([] if v == "none" else dyna_train)],
            seed,
            [],
        )
        for v in variants
        for seed in seeds
    ]
    evals = [
        (out / v / f"seed{seed}", v, envs, split)
        for v in variants
        for seed in seeds
        for envs in budgets[v]
        for split in splits
    ]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: train_and_evaluate(*job), jobs))
        for message, _, _ in results:
            print(message, flush=True)
        failures = [f for _, f, _ in results if f]
        if failures:
            raise SystemExit("training failed, see " + ", ".join(failures))
        list(pool.map(lambda e: evaluate(*e), evals))

    summary: dict[str, Any] = {"seeds": args.seeds, "variants": variants, "splits": {}}
    for split in splits:
        rows: dict[str, dict[str, Any]] = {}
        for v in variants:
            dirs = [out / v / f"seed{seed}" for seed in seeds]
            for envs in budgets[v]:
                reports = [
                    json.loads(
                        (evaluation_dir(d, v, envs) / f"evaluation_{split}.json").read_text()
                    )
                    for d in dirs
                ]
                name = f"none, {envs} env" if v == "none" else f"{v}, {envs} env + model"
                rows[name] = row(reports, [training_real_steps(d) for d in dirs])
                rows[name] |= {"variant": v, "wall_clock": wall_clock(dirs)}
        summary["splits"][split] = {"rows": rows, "verdicts": verdicts(rows, variants)}
    text = [
        report(summary),
        f"\nSeeds {args.seeds}; mean ± standard error across seeds of the per-seed mean over "
        f"tasks. This invocation took {time.perf_counter() - start:.0f} s "
        "(finished runs and evaluations are reused).",
    ]
    (out / "table.md").write_text("\n".join(text) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "curves.png")
    print("\n".join(text))
    print(f"\nwrote {out / 'table.md'}, {out / 'summary.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    run_cli(main)
