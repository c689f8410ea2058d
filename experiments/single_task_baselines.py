"""Single-task learning curves of CPO, Lagrangian and TRPO on one circle task.

Uses the hydra configs (``configs/``), so any override works, e.g.::

    .venv/bin/python experiments/single_task_baselines.py --iterations 100 \
        --rules cpo_layer,lagrangian,trpo env.cost_limit=25

Prints a table of initial / final return and cost, wall-clock and env steps per
second of the whole training loop, and writes the curves to ``--out`` (CSV + PNG).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from meta_safe.config import validate
from meta_safe.envs import task_distribution
from meta_safe.policy import GaussianPolicy
from meta_safe.single_task import train_single_task
from meta_safe.surrogate import AdvantageConfig
from meta_safe.trainer import build_rule, probe_obs_dim

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default="cpo_layer,lagrangian,trpo")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/single_task")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. env.cost_limit=25")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    rows, curves = [], {}
    for name in args.rules.split(","):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = validate(compose("config", overrides=[f"meta_optimizer={name}", *args.overrides]))
        torch.manual_seed(args.seed)
        task = task_distribution(cfg.env, "fixed").sample(1, seed=args.seed)[0]
        policy = GaussianPolicy(
            probe_obs_dim(cfg.env),
            2,
            cfg.policy.hidden,
            cfg.policy.activation,
            cfg.policy.log_std_init,
        )
        result = train_single_task(
            cfg.env,
            task,
            build_rule(cfg.meta_optimizer),
            policy,
            args.iterations,
            args.envs,
            cfg.env.episode_steps,
            AdvantageConfig(**cfg.advantage),
            args.seed,
            critic_cfg=cfg.critic,
        )
        curves[name] = result
        rows.append(
            (
                name,
                result.returns[0],
                result.costs[0],
                result.returns[-1],
                result.costs[-1],
                result.seconds,
                result.env_steps / result.seconds,
            )
        )
        print(f"{name}: done in {result.seconds:.0f} s", flush=True)
    limit = cfg.env.cost_limit
    print(
        f"\nTask {task} ({cfg.env.backend} backend), cost limit {limit:g}, "
        f"{args.iterations} updates x {args.envs * cfg.env.episode_steps} steps\n"
    )
    print(
        "| rule | initial return | initial cost | final return | final cost | wall-clock s "
        "| env steps/s |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, r0, c0, r1, c1, secs, sps in rows:
        print(f"| {name} | {r0:.2f} | {c0:.1f} | {r1:.2f} | {c1:.1f} | {secs:.0f} | {sps:,.0f} |")
    with (out / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rule", "iteration", "return", "cost"])
        for name, res in curves.items():
            for i, (ret, cost) in enumerate(zip(res.returns, res.costs, strict=True)):
                writer.writerow([name, i, ret, cost])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, res in curves.items():
        ax_r.plot(res.returns, label=name)
        ax_c.plot(res.costs, label=name)
    ax_c.axhline(limit, ls="--", color="k", label="limit")
    ax_r.set(xlabel="update", ylabel="episode return")
    ax_c.set(xlabel="update", ylabel="episode cost")
    ax_r.legend()
    ax_c.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"\nwrote {out / 'curves.csv'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
