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
running cluster. Every node must see the repository (with its ``.venv``) and ``--out``
at the same paths, e.g. on a shared file system.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meta_safe.cli.errors import ArgumentParser, run_cli
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
) -> tuple[str, str | None]:
    """Train + evaluate one (variant, seed), then run the extra evaluations.

    :return: ``(message, failure)``; ``failure`` names the failed command's log (``None``
        when every command succeeded). A failure never raises, so the grid goes on.
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
            return "; ".join([*messages, failure]), failure
        (run_dir / clock).write_text(f"{seconds:.1f}\n")
        messages.append(f"{run_dir}: {what} in {seconds:.0f} s")
    return "; ".join(messages) or f"{run_dir}: already done", None


def run_on_ray(jobs: list[tuple], address: str) -> list[tuple[str, str | None]]:
    """Run every job as a one-CPU Ray task; ``address`` ``"local"`` starts Ray here."""
    import ray

    ray.init(address=None if address == "local" else address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(train_and_evaluate)
        return ray.get([task.remote(*job) for job in jobs])
    finally:
        ray.shutdown()


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
    start = time.perf_counter()
    if args.ray:
        results = run_on_ray(jobs, args.ray)
        for message, _ in results:
            print(message, flush=True)
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = []
            for message, failure in pool.map(lambda job: train_and_evaluate(*job), jobs):
                print(message, flush=True)
                results.append((message, failure))
    failures = [failure for _, failure in results if failure]
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
