"""Each run records the numerical environment it was trained on, and a resume on another
one says so."""

import json
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import torch
from tiny import tiny_cfg

import meta_safe.provenance as provenance
from meta_safe.evaluation import evaluate_meta_state
from meta_safe.provenance import (
    ENVIRONMENT_FILE,
    NUMERIC_PACKAGES,
    environment_differences,
    environment_record,
    read_environments,
    record_start,
)
from meta_safe.trainer import train


def test_record_names_kernels_threads_and_versions() -> None:
    record = environment_record()
    assert record["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch_threads"] == str(torch.get_num_threads())
    assert record["torch"] == metadata.version("torch")
    assert record["cvxpy"] == metadata.version("cvxpy")
    assert set(NUMERIC_PACKAGES) <= set(record)
    assert provenance.package_version("no-such-distribution-xyz") == "absent"
    assert all(isinstance(v, str) for v in record.values())


def test_installed_packages_are_the_locked_versions() -> None:
    """Every installed package is pinned in constraints.txt at its installed version (a new
    dependency without `scripts/lock.sh`, or a drifted install, fails here)."""
    from conftest import REPO_ROOT
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    locked = {}
    for line in (Path(REPO_ROOT) / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[canonicalize_name(name)] = version
    # site-packages only: setuptools puts its vendored packages on sys.path when imported
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version).public
        for d in metadata.distributions(path=site_packages)
    }
    for unlocked in ("pip", "setuptools", "wheel", "meta-safe"):
        installed.pop(unlocked, None)
    assert {k: v for k, v in installed.items() if locked.get(k) != v} == {}


def test_differences_list_changed_and_missing_keys() -> None:
    recorded = {"cpu_kernels": "AVX512", "numpy": "2.4.6", "scs": "3.3.1"}
    current = {"cpu_kernels": "AVX2", "numpy": "2.4.6", "mujoco": "3.3.0"}
    assert environment_differences(recorded, current) == {
        "cpu_kernels": ("AVX512", "AVX2"),
        "mujoco": ("unrecorded", "3.3.0"),
        "scs": ("3.3.1", "unrecorded"),
    }
    assert environment_differences(current, dict(current)) == {}


def test_record_start_replaces_records_of_an_abandoned_continuation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert record_start(tmp_path, 0) == {}
    monkeypatch.setattr(
        provenance, "environment_record", lambda: {**environment_record(), "scs": "9.9"}
    )
    assert record_start(tmp_path, 5) == {"scs": (metadata.version("scs"), "9.9")}
    assert record_start(tmp_path, 8) == {}  # same environment as the start at 5
    assert record_start(tmp_path, 5) != {}  # back to 5: the record from 8 is dropped
    assert [r["from_iteration"] for r in read_environments(tmp_path)] == [0, 5]


def test_training_records_and_resume_on_other_kernels_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=1"), tmp_path)
    records = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())
    assert [r["from_iteration"] for r in records] == [0]
    assert records[0]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    capsys.readouterr()

    real = records[0]["cpu_kernels"]
    monkeypatch.setattr(
        provenance, "environment_record", lambda: {**environment_record(), "cpu_kernels": "X"}
    )
    cfg = tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=2", "resume=true")
    train(cfg, tmp_path)
    err = capsys.readouterr().err
    assert f"resuming iteration 1 on another numerical environment (cpu_kernels {real} -> X)" in err
    assert [r["from_iteration"] for r in read_environments(tmp_path)] == [0, 1]


def test_same_environment_resume_is_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=1"), tmp_path)
    capsys.readouterr()
    cfg = tiny_cfg("meta_optimizer=lagrangian", "meta.iterations=2", "resume=true")
    trainer = train(cfg, tmp_path)
    assert "numerical environment" not in capsys.readouterr().err
    evaluate_meta_state(trainer.setup, trainer.state, cfg).write(tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["environment"] == environment_record()
