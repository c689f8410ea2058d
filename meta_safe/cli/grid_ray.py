"""The experiment grid on Ray, without a shared file system.

The driver ships the code (``meta_safe`` and ``stochastic_circle``) with Ray's runtime
environment and sends each run the files it already has (a stopped run's checkpoint, so
it resumes). The run works in a temporary directory of its node and returns every file
of its run directory through the object store; the driver writes them under ``--out``.
Failed runs are tried again as new tasks (from the files delivered so far), and a task
that fails in Ray itself (a lost node, a killed worker) is reported like a failed run,
so one failure never loses the others' results.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meta_safe.cli.errors import USER_ERROR_STATUS, one_line
from meta_safe.errors import ConfigError

Files = dict[str, bytes]
"""A run directory's files: path relative to the run directory -> contents."""


def pack(directory: Path) -> Files:
    """Every file under ``directory`` (none when it does not exist)."""
    if not directory.is_dir():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def unpack(files: Files, directory: Path) -> None:
    """Write ``files`` under ``directory``, each atomically (temp file, then rename)."""
    for relative, content in files.items():
        path = directory / relative
        if directory.resolve() not in path.resolve().parents:
            raise ValueError(f"file {relative!r} would land outside {directory}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(content)
        os.replace(tmp, path)


@dataclass
class RemoteOutcome:
    """What a run sends back: its report, its files, and where it ran."""

    message: str
    failure: str | None
    status: int
    files: Files
    run_dir: str  # the run's directory on its node (gone when the task returns)
    node: str


def run_remotely(
    relative: str, overrides: list[str], seed: int, extra: list, files: Files
) -> RemoteOutcome:
    """One grid run in a fresh temporary directory of this node."""
    import meta_safe
    import stochastic_circle
    from meta_safe.cli.grid import train_and_evaluate

    code = Path(meta_safe.__file__).parent
    shipped = [str(code.parent), str(Path(stochastic_circle.__file__).parent.parent)]
    # the run's commands are subprocesses: they import the same (shipped) code
    os.environ["PYTHONPATH"] = os.pathsep.join([*shipped, os.environ.get("PYTHONPATH", "")])
    workdir = Path(tempfile.mkdtemp(prefix="meta_safe_grid_"))
    try:
        run_dir = workdir / relative
        unpack(files, run_dir)
        message, failure, status = train_and_evaluate(run_dir, overrides, seed, extra)
        node = f"{socket.gethostname()} (code from {code})"
        return RemoteOutcome(message, failure, status, pack(run_dir), str(run_dir), node)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def code_to_ship() -> list[str]:
    """The package directories Ray's runtime environment uploads to every node."""
    import meta_safe
    import stochastic_circle

    return [str(Path(m.__file__).parent) for m in (meta_safe, stochastic_circle)]


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` address nothing answers on (Ray itself would keep retrying
    for minutes); ``local``, ``auto`` and ``ray://`` addresses are left to Ray."""
    host, _, port = address.rpartition(":")
    if address in ("local", "auto") or "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConfigError(
            f"--ray {address}: nothing answers there ({error}); give the head node's "
            "address (ray start --head prints it), auto, or no value for a local Ray"
        ) from error


def run_on_ray(jobs: list[tuple], out: Path, address: str, retries: int) -> list[str | None]:
    """Run every ``(run_dir, overrides, seed, extra)`` job as a one-CPU Ray task and
    deliver its files to ``run_dir`` (under ``out``); returns each job's failure or
    ``None``. ``address`` ``"local"`` starts Ray here, else joins that cluster."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError("--ray needs Ray, which is not installed: pip install ray") from error

    runtime_env = {
        "py_modules": code_to_ship(),
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {"OMP_NUM_THREADS": "1"},
    }
    check_reachable(address)
    try:
        ray.init(
            address=None if address == "local" else address,
            runtime_env=runtime_env,
            log_to_driver=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"--ray {address}: could not start or join Ray: {one_line(error)}"
        ) from error
    task = ray.remote(num_cpus=1, max_retries=0)(run_remotely)
    failures: list[str | None] = [None] * len(jobs)

    def submit(index: int) -> ray.ObjectRef:
        run_dir, overrides, seed, extra = jobs[index]
        relative = str(Path(run_dir).relative_to(out))
        return task.remote(relative, overrides, seed, extra, pack(Path(run_dir)))

    try:
        pending = {}
        for i, (run_dir, _, _, extra) in enumerate(jobs):
            names = ["evaluation.json", *(f"evaluation_{name}.json" for name, _ in extra)]
            if all((Path(run_dir) / name).exists() for name in names):
                print(f"{run_dir}: already done", flush=True)
            else:
                pending[submit(i)] = (i, retries)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index, tries_left = pending.pop(ref)
            run_dir = Path(jobs[index][0])
            try:
                outcome: RemoteOutcome = ray.get(ref)
            except ray.exceptions.RayError as error:
                failure, status = f"{run_dir}: the Ray task failed: {one_line(error)}", 1
                print(failure, flush=True)
            else:
                unpack(outcome.files, run_dir)
                message = outcome.message.replace(outcome.run_dir, str(run_dir))
                failure = outcome.failure and outcome.failure.replace(outcome.run_dir, str(run_dir))
                status = outcome.status
                print(f"{message} [on {outcome.node}]", flush=True)
            if failure is not None and status != USER_ERROR_STATUS and tries_left > 0:
                print(f"{run_dir}: retrying ({tries_left} tries left)", flush=True)
                pending[submit(index)] = (index, tries_left - 1)
                continue
            failures[index] = failure
    finally:
        ray.shutdown()
    return failures
