"""Meta-train and evaluate named variants over several seeds, in parallel processes.

Every run is the ordinary entry point (``python -m meta_safe.meta_trainer``) in its own
process and run directory ``<out>/<variant>/seed<k>``, so any single result can be
reproduced alone with the command printed for it. A variant is ``name:override,...``::

    meta-safe grid --out runs/compare --seeds 0,1,2 --jobs 2 \
        --variant cpo_layer:meta_optimizer=cpo_layer --variant trpo:meta_optimizer=trpo

``--extra-eval name:override,...`` also evaluates each finished checkpoint under other
settings (``python -m meta_safe.evaluate``), writing ``evaluation_<name>.json``, e.g.
``--extra-eval mujoco:env.backend=mujoco`` (transfer of a torch-trained point policy
to the MuJoCo simulator) or ``--extra-eval in_dist:evaluation.split=meta_train``
(unseen tasks drawn from the training ranges).
Finished runs (an ``evaluation.json`` exists) are skipped and stopped ones resume from
their checkpoint, so an interrupted grid continues where it stopped. A failing run does
not stop the grid: the failures are listed at the end with their logs (exit status 1),
and running the same command again retries only the failed and missing runs. Aggregate
with ``experiments/aggregate.py <out>``.

``--ray`` runs the grid as Ray tasks (one CPU each) instead of local threads:
``--ray`` alone starts a local Ray instance, ``--ray auto`` (or an address) joins a
running cluster. The nodes need no shared file system: the code is shipped with Ray's
runtime environment, each run works in a temporary directory of its node, and its files
(checkpoint, metrics, reports, logs) come back to ``--out`` on the driver
(:mod:`meta_safe.cli.grid_ray`). A run that fails other than by a user error is tried
again (``--retries``), locally or on Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meta_safe.cli.errors import USER_ERROR_STATUS, ArgumentParser, run_cli
from meta_safe.errors import ConfigError

PROG = "meta-safe grid"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name:a=1,b=2"`` -> ``("name", ["a=1", "b=2"])``."""
    name, _, overrides = text.partition(":")
    if not name or "/" in name:
        raise ConfigError(f"variant {text!r} is invalid: expected name:override,override,...")
    return name, [o for o in overrides.split(",") if o]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with one torch thread, output to ``log``; returns wall-clock seconds."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - start


def resume_flags(run_dir: Path) -> list[str]:
    """Continue a run that stopped (``resume=true`` from its checkpoint); restart one that
    stopped before its first checkpoint (``overwrite=true``); nothing for a new one."""
    if (run_dir / "checkpoint.pt").exists():
        return ["resume=true"]
    if any((run_dir / name).exists() for name in ("metrics.csv", "config.yaml", "tensorboard")):
        return ["overwrite=true"]
    return []


def train_and_evaluate(
    run_dir: Path, overrides: list[str], seed: int, extra: list[tuple[str, list[str]]]
) -> tuple[str, str | None, int]:
    """Train + evaluate one (variant, seed), then run the extra evaluations.

    :return: ``(message, failure, status)``; ``failure`` names the failed command's log
        and ``status`` is its exit status (``None`` and 0 when every command succeeded).
        A failure never raises, so the grid goes on.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    messages = []
    commands = []
    if not (run_dir / "evaluation.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "meta_safe.meta_trainer",
            *overrides,
            f"seed={seed}",
            f"run_dir={run_dir}",
            "runtime.progress=false",
            *resume_flags(run_dir),
        ]
        commands.append(("trained + evaluated", cmd, "train.log", "wall_clock.txt"))
    for name, eval_overrides in extra:
        if (run_dir / f"evaluation_{name}.json").exists():
            continue
        cmd = [
            sys.executable,
            "-m",
            "meta_safe.evaluate",
            f"checkpoint={run_dir}",
            f"stem=evaluation_{name}",
            *eval_overrides,
        ]
        commands.append(
            (f"{name} evaluation", cmd, f"evaluate_{name}.log", f"wall_clock_{name}.txt")
        )
    for what, cmd, log, clock in commands:
        print("$ " + " ".join(cmd[1:]), flush=True)
        try:
            seconds = run(cmd, run_dir / log)
        except subprocess.CalledProcessError as error:
            lines = (run_dir / log).read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            failure = (
                f"{run_dir}: {what} failed (exit {error.returncode}): {last} [log: {run_dir / log}]"
            )
            return "; ".join([*messages, failure]), failure, error.returncode
        (run_dir / clock).write_text(f"{seconds:.1f}\n")
        messages.append(f"{run_dir}: {what} in {seconds:.0f} s")
    return "; ".join(messages) or f"{run_dir}: already done", None, 0


def run_locally(jobs: list[tuple], workers: int, retries: int) -> list[str | None]:
    """Every job in a pool of ``workers`` threads; a run that fails other than by a user
    error (exit status 2) is tried again, up to ``retries`` times. Returns the failures."""

    def attempt(job: tuple) -> str | None:
        for tries_left in range(retries, -1, -1):
            message, failure, status = train_and_evaluate(*job)
            print(message, flush=True)
            if failure is None or status == USER_ERROR_STATUS or tries_left == 0:
                return failure
            print(f"{job[0]}: retrying ({tries_left} tries left)", flush=True)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(attempt, jobs))


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="results directory")
    parser.add_argument(
        "--variant", action="append", required=True, help="name:override,override (repeat)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 per core)")
    parser.add_argument(
        "--ray", nargs="?", const="local", help="run on Ray: no value = local, or an address"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="tries again of a run that fails other than by a user error (default 1)",
    )
    parser.add_argument(
        "--extra-eval", action="append", default=[], help="name:override,... (repeat)"
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in args.variant]
    extra = [parse_variant(e) for e in args.extra_eval]
    jobs = [
        (out / name / f"seed{seed}", [*args.overrides, *overrides], seed, extra)
        for name, overrides in variants
        for seed in seeds
    ]
    if args.retries < 0:
        raise ConfigError(f"--retries={args.retries} is invalid: must be >= 0")
    start = time.perf_counter()
    if args.ray:
        from meta_safe.cli.grid_ray import run_on_ray

        outcomes = run_on_ray(jobs, out, args.ray, args.retries)
    else:
        outcomes = run_locally(jobs, args.jobs, args.retries)
    failures = [failure for failure in outcomes if failure]
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s wall-clock")
    if failures:
        print(
            f"{len(failures)} of {len(jobs)} runs failed (re-run the same command to retry "
            "only these and the missing ones):",
            file=sys.stderr,
        )
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
