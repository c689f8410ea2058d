"""Time to the main job's first result, with an empty and with a warm compile cache.

Runs the main job (``python -m meta_safe.meta_trainer``, the command behind ``make run``)
in a fresh interpreter, timestamps every line it prints, and reads its ``metrics.csv``:
the seconds until the first results table, the whole run, the first meta-iteration
(which holds the torch backend's one compile) and the median of the later ones. The
first row uses an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` set to a new
folder, as on a new machine); the second reuses that cache.

    meta-safe bench first-result
    meta-safe bench first-result --cold-only meta.iterations=5
    meta-safe bench first-result --cache-dir /tmp/torchinductor_$USER  # start warm
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.trainer import METRICS_FILE

PROG = "meta-safe bench first-result"
#: The results tables of the main job start with this.
TABLE_PREFIX = "### "


@dataclass(frozen=True)
class Timing:
    """One run of the main job; seconds from the interpreter's start."""

    cache: str
    first_table: float
    total: float
    first_iteration: float
    later_iteration: float

    @property
    def compile_estimate(self) -> float:
        """The first iteration's excess over a later one: compile and first-call costs."""
        return self.first_iteration - self.later_iteration


def run_main_job(overrides: list[str], run_dir: Path, cache_dir: Path, cache: str) -> Timing:
    """Run the main job once and time it (raises with its output's tail if it fails)."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    cmd = [sys.executable, "-m", "meta_safe.meta_trainer", f"run_dir={run_dir}", *overrides]
    start = time.perf_counter()
    first_table, lines = None, []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if first_table is None and line.startswith(TABLE_PREFIX):
                first_table = time.perf_counter() - start
    total = time.perf_counter() - start
    if proc.returncode != 0 or first_table is None:
        tail = "".join(lines[-20:])
        raise RuntimeError(
            f"the main job failed or printed no table (exit {proc.returncode}):\n{tail}"
        )
    with (run_dir / METRICS_FILE).open() as handle:
        seconds = [float(row["time_total"]) for row in csv.DictReader(handle)]
    later = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
    return Timing(cache, first_table, total, seconds[0], later)


def markdown_table(rows: list[Timing]) -> str:
    lines = [
        "| inductor cache | first table (s) | whole run (s) | first iteration (s) "
        "| later iterations, median (s) | compile, estimated (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.cache} | {r.first_table:.1f} | {r.total:.1f} | {r.first_iteration:.1f} | "
            f"{r.later_iteration:.2f} | {r.compile_estimate:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--cold-only", action="store_true", help="skip the warm-cache run")
    parser.add_argument(
        "--cache-dir", help="inductor cache folder to start from (default: a new, empty one)"
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides of the main job")
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="first_result_") as tmp:
        root = Path(tmp)
        cache = Path(args.cache_dir) if args.cache_dir else root / "inductor_cache"
        first = "given" if args.cache_dir else "empty"
        rows = [run_main_job(args.overrides, root / "cold", cache, first)]
        if not args.cold_only:
            rows.append(run_main_job(args.overrides, root / "warm", cache, "warm"))
    machine = f"{os.cpu_count()} cores, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    print(f"main job: python -m meta_safe.meta_trainer {' '.join(args.overrides)}".rstrip())
    print(f"machine: {machine}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    run_cli(main)
