"""Fingerprint two meta-iterations of every inner rule (and one Dyna run).

Runs the training entry point in a subprocess for each configuration below, reads
the metrics it wrote, drops wall-clock columns, and prints (or writes) one JSON
record per configuration. With ``--compare FILE`` it exits 1 unless every value
equals the stored one bit for bit, so a refactoring can be checked to preserve
behaviour::

    .venv/bin/python experiments/check_equivalence.py --write before.json   # old code
    .venv/bin/python experiments/check_equivalence.py --compare before.json # new code
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from meta_safe.cli.errors import ArgumentParser, run_cli

REPO = Path(__file__).resolve().parent.parent
COMMON = [
    "meta.iterations=2",
    "meta.inner_steps=2",
    "meta.tasks_per_iteration=2",
    "meta.envs_per_task=2",
    "meta.steps_per_env=100",
    "env.episode_steps=100",
    "evaluation.tasks=2",
    "evaluation.inner_steps=1",
    "evaluation.envs_per_task=2",
    "evaluation.steps_per_env=100",
    "runtime.progress=false",
]
CONFIGS: dict[str, list[str]] = {
    rule: [f"meta_optimizer={rule}"]
    for rule in ("cpo_layer", "lagrangian", "pid", "lstm", "cppo_em", "trpo")
}
CONFIGS["cpo_layer+ensemble"] = [
    "meta_optimizer=cpo_layer",
    "dyna=ensemble",
    "dyna.model.max_updates=50",
]


def fingerprint(overrides: list[str]) -> dict[str, object]:
    """Metrics of one run, wall-clock columns removed."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "meta_safe.meta_trainer",
            *COMMON,
            *overrides,
            f"run_dir={run_dir}",
        ]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        with (run_dir / "metrics.csv").open() as handle:
            rows = [
                {k: v for k, v in row.items() if not is_wall_clock(k)}
                for row in csv.DictReader(handle)
            ]
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
    return {"metrics": rows, "evaluation": strip_times(evaluation)}


def is_wall_clock(key: str) -> bool:
    """Columns that measure seconds and so differ from run to run."""
    return key.startswith("time_") or key.endswith("seconds") or "wall" in key


def strip_times(value: object) -> object:
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items() if not is_wall_clock(k)}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    return value


def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="store the fingerprints here")
    parser.add_argument("--compare", type=Path, help="compare with fingerprints stored here")
    args = parser.parse_args()
    result = {}
    for name, overrides in CONFIGS.items():
        result[name] = fingerprint(overrides)
        print(f"{name}: {len(result[name]['metrics'])} iterations", flush=True)
    if args.write:
        args.write.write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        stored = json.loads(args.compare.read_text())
        for record in stored.values():
            record["metrics"] = [
                {k: v for k, v in row.items() if not is_wall_clock(k)} for row in record["metrics"]
            ]
            record["evaluation"] = strip_times(record["evaluation"])
        bad = [name for name in result if result[name] != stored.get(name)]
        for name in bad:
            print(f"DIFFERENT: {name}")
        print("identical" if not bad else f"{len(bad)} of {len(result)} differ")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    run_cli(main)
