"""The experiment tooling: variant parsing, aggregation across seeds, step matching."""

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(Path(REPO_ROOT) / "experiments"))
from aggregate import aggregate, stems_in  # noqa: E402
from bench_dyna import steps_to_match, verdicts  # noqa: E402
from run_variants import parse_variant  # noqa: E402


def write_report(path: Path, returns: list[float], costs: list[float], limit: float = 10.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "mean_return": returns,
        "mean_cost": costs,
        "within_limit": [float(c <= limit) for c in costs],
    }
    report = {
        "cost_limit": limit,
        "env_steps_per_step": 4000,
        "tasks": [{}, {}],
        "summary": summary,
    }
    path.write_text(json.dumps(report))


def test_aggregate_gives_mean_and_standard_error_across_seeds(tmp_path: Path) -> None:
    write_report(tmp_path / "a" / "seed0" / "evaluation.json", [1.0, 3.0], [0.0, 4.0])
    write_report(tmp_path / "a" / "seed1" / "evaluation.json", [1.0, 5.0], [0.0, 20.0])
    (tmp_path / "a" / "seed0" / "wall_clock.txt").write_text("10\n")
    (tmp_path / "a" / "seed1" / "wall_clock.txt").write_text("30\n")
    write_report(tmp_path / "b" / "seed0" / "evaluation_x.json", [0.0, 1.0], [1.0, 1.0])
    assert stems_in(tmp_path) == ["evaluation", "evaluation_x"]
    text = aggregate(tmp_path, "evaluation")
    # return after K: mean 4, s.e. = stdev(3, 5) / sqrt(2) = 1; cost 12 ± 8; within 50% ± 50
    assert "| a | 2 | 1.00 ± 0.00 | 4.00 ± 1.00 | 12.0 ± 8.0 | 50% ± 50 | 4,000 | 20 s |" in text
    assert (tmp_path / "evaluation_scatter.png").exists()
    summary = json.loads((tmp_path / "evaluation_summary.json").read_text())
    assert set(summary) == {"a"}


def test_aggregate_rows_from_another_report_of_a_variant(tmp_path: Path) -> None:
    """``LABEL=VARIANT@STEM`` in the order: the same runs' other report as its own row."""
    write_report(tmp_path / "a" / "seed0" / "evaluation.json", [1.0, 3.0], [0.0, 4.0])
    write_report(tmp_path / "a" / "seed0" / "evaluation_safe.json", [1.0, 2.0], [0.0, 1.0])
    text = aggregate(tmp_path, "evaluation", ["a", "a, safer=a@evaluation_safe"])
    assert "| a | 1 | 1.00 ± 0.00 | 3.00 ± 0.00 | 4.0 ± 0.0 |" in text
    assert "| a, safer | 1 | 1.00 ± 0.00 | 2.00 ± 0.00 | 1.0 ± 0.0 |" in text
    summary = json.loads((tmp_path / "evaluation_summary.json").read_text())
    assert list(summary) == ["a", "a, safer"]


def test_variant_parsing_and_errors() -> None:
    assert parse_variant("cpo:meta_optimizer=cpo_layer,env=point_circle") == (
        "cpo",
        ["meta_optimizer=cpo_layer", "env=point_circle"],
    )
    assert parse_variant("plain") == ("plain", [])
    with pytest.raises(ValueError, match="name:override"):
        parse_variant(":x=1")


def test_steps_to_match_interpolates_log_linearly() -> None:
    curve = [
        {"real_steps": 500, "return": 10.0},
        {"real_steps": 2000, "return": 14.0},
    ]
    assert steps_to_match(curve, 12.0) == pytest.approx(1000.0)
    assert steps_to_match(curve, 9.0) == 500
    assert steps_to_match(curve, 15.0) == float("inf")


TINY_GRID = [
    "meta.iterations=1",
    "meta.tasks_per_iteration=1",
    "meta.envs_per_task=1",
    "meta.steps_per_env=20",
    "env.episode_steps=20",
    "policy.hidden=[8]",
    "evaluation.tasks=1",
    "evaluation.inner_steps=1",
    "evaluation.envs_per_task=1",
    "evaluation.steps_per_env=20",
]


def test_dyna_verdict_compares_the_cheapest_matching_budget_with_none_at_its_largest() -> None:
    def point(variant: str, steps: int, ret: float, within: float) -> dict:
        return {"variant": variant, "real_steps": steps, "return": ret, "within": within}

    none = {f"none {s}": point("none", s, r, w) for s, r, w in ((500, 8, 1), (4000, 12, 0.8))}
    reaches = {"a": point("ensemble", 500, 11, 0.9), "b": point("ensemble", 1000, 12.5, 0.85)}
    lines = verdicts({**none, **reaches}, ["none", "ensemble"])
    assert "with 1,000 (0.25x; within a third)" in lines[-1]
    assert "no lower than its 80% (85%)" in lines[-1]
    unsafe = {"a": point("ensemble", 2000, 13, 0.5)}
    lines = verdicts({**none, **unsafe}, ["none", "ensemble"])
    assert "more than a third" in lines[-1] and "below its 80% (50%)" in lines[-1]
    short = {"a": point("ensemble", 500, 9, 1.0)}
    assert "does not reach" in verdicts({**none, **short}, ["none", "ensemble"])[-1]


def grid_command(out: Path, *args: str) -> list[str]:
    """``run_variants.py`` on seed 0 of the tiny grid, writing to ``out``."""
    script = str(Path(REPO_ROOT) / "experiments" / "run_variants.py")
    return [sys.executable, script, "--out", str(out), "--seeds", "0", *args, *TINY_GRID]


@pytest.mark.slow
def test_run_variants_runs_a_grid_on_ray(tmp_path: Path) -> None:
    """Two tiny variants as Ray tasks on a local Ray instance; each writes its report."""
    import os
    import subprocess

    cmd = grid_command(
        tmp_path,
        "--ray",
        "--variant",
        "cpo:meta_optimizer=cpo_layer,meta_optimizer.solver=closed_form",
        "--variant",
        "trpo:meta_optimizer=trpo",
    )
    env = {**os.environ, "STOCHASTIC_CIRCLE_COMPILE": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("cpo", "trpo"):
        report = json.loads((tmp_path / name / "seed0" / "evaluation.json").read_text())
        assert len(report["summary"]["mean_return"]) == 2  # before and after 1 step
    assert "2 runs in" in result.stdout


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_grid_and_is_retried(tmp_path: Path) -> None:
    """One variant fails; the other finishes, the failure is listed with its log, the exit
    status is 1, and running the grid again retries only the failed run."""
    import subprocess

    cmd = grid_command(
        tmp_path,
        "--variant",
        "good:meta_optimizer=trpo",
        "--variant",
        "bad:meta_optimizer=trpo,meta_optimizer.trust_radius=-1",
    )
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / "good" / "seed0" / "evaluation.json").exists()
    assert "1 of 2 runs failed" in first.stderr
    assert str(tmp_path / "bad" / "seed0" / "train.log") in first.stderr
    assert "trust_radius=-1.0 is invalid" in first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1
    assert f"{tmp_path / 'good' / 'seed0'}: already done" in second.stdout
    retried = [line for line in second.stdout.splitlines() if line.startswith("$ ")]
    assert len(retried) == 1 and str(tmp_path / "bad") in retried[0]


def test_a_stopped_run_resumes_and_one_without_checkpoint_restarts(tmp_path: Path) -> None:
    from run_variants import resume_flags

    assert resume_flags(tmp_path) == []
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert resume_flags(tmp_path) == ["overwrite=true"]
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert resume_flags(tmp_path) == ["resume=true"]


def test_results_document_is_generated_from_the_committed_summaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/results.md is exactly what the generator writes, and a missing summary is an
    error naming the file."""
    import write_results

    manifest = json.loads((write_results.RESULTS / "manifest.json").read_text())
    assert write_results.render(manifest) == write_results.OUTPUT.read_text()
    (tmp_path / "manifest.json").write_text(
        json.dumps({**manifest, "sections": [{**manifest["sections"][0], "summary": "gone.json"}]})
    )
    monkeypatch.setattr(write_results, "RESULTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.json"):
        write_results.render(json.loads((tmp_path / "manifest.json").read_text()))


@pytest.mark.slow
def test_a_grid_on_a_two_node_ray_cluster_delivers_every_result_to_the_driver(
    tmp_path: Path,
) -> None:
    """A local two-node cluster (``ray.cluster_utils.Cluster``): the code is shipped with
    the runtime environment, every run works in a temporary directory of its node, and
    its files arrive in the driver's ``--out``. A run that fails (a diverging learned
    rule) is tried again, then reported, without losing the others; a second grid skips
    the finished runs."""
    import os
    import subprocess

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        out = tmp_path / "grid"
        cmd = grid_command(
            out, "--ray", cluster.address, "--seeds", "0,1",
            "--variant", "trpo:meta_optimizer=trpo",
            "--variant", "diverges:meta_optimizer=lstm,meta.learned_rule_lr=1e30,meta.iterations=2",
        )  # fmt: skip
        env = {**os.environ, "STOCHASTIC_CIRCLE_COMPILE": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        # a driver outside the repository: workers cannot import the code from its folder
        run = {"capture_output": True, "text": True, "env": env, "cwd": tmp_path, "timeout": 900}
        first = subprocess.run(cmd, **run)
        second = subprocess.run(cmd, **run)
    finally:
        cluster.shutdown()
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    for seed in (0, 1):
        run_dir = out / "trpo" / f"seed{seed}"
        report = json.loads((run_dir / "evaluation.json").read_text())
        assert len(report["summary"]["mean_return"]) == 2
        assert (run_dir / "checkpoint.pt").stat().st_size > 0
        assert (run_dir / "metrics.csv").read_text().count("\n") == 2  # header + 1 iteration
        assert f"{run_dir}: trained + evaluated" in first.stdout
    assert first.stdout.count("runtime_resources/py_modules_files") == 6  # 4 runs + 2 retries
    assert str(tmp_path) not in first.stdout.split("code from ")[1].split(")")[0]
    assert first.stdout.count("retrying (1 tries left)") == 2
    assert "2 of 4 runs failed" in first.stderr
    log = out / "diverges" / "seed0" / "train.log"
    assert str(log) in first.stderr and "CPOSolverError" in log.read_text()
    assert second.returncode == 1
    assert second.stdout.count(": already done") == 2
    assert second.stdout.count("retrying (1 tries left)") == 2


def test_aggregate_counts_a_step_checks_rejected_candidates_as_violations(tmp_path: Path) -> None:
    """Two seeds, two tasks, one inner step: the rejected candidates per task, their extra
    steps, and the share within the limit when a rejected try counts as a violation."""
    for seed, (costs, rejected, extra) in enumerate(
        [
            ([[0.0, 4.0], [2.0, 8.0]], [[0, 1], [0, 0]], 4000),  # k=1: task 0 had a try
            ([[0.0, 12.0], [1.0, 3.0]], [[0, 2], [0, 1]], 12000),
        ]
    ):
        path = tmp_path / "a" / f"seed{seed}" / "evaluation.json"
        write_report(path, [1.0, 2.0], [sum(c[k] for c in costs) / 2 for k in range(2)])
        report = json.loads(path.read_text())
        within = [sum(c[k] <= 10 for c in costs) / 2 for k in range(2)]
        report.update(costs=costs, rejected=rejected, extra_steps=extra)
        report["summary"]["within_limit"] = within
        path.write_text(json.dumps(report))
    text = aggregate(tmp_path, "evaluation")
    summary = json.loads((tmp_path / "evaluation_summary.json").read_text())["a"]
    assert summary["rejected_per_task"] == pytest.approx((0.5 + 1.5) / 2)
    assert summary["extra_steps_per_task"] == pytest.approx((2000 + 6000) / 2)
    # k=1: seed 0 keeps task 1 only (task 0 had a try), seed 1 none (task 0 costs 12)
    assert summary["within_limit_counting_rejected"] == pytest.approx([1.0, 0.25])
    assert summary["within_limit"] == pytest.approx([1.0, 0.75])
    assert "within the limit counting them 100 / 25%" in text
