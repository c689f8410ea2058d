"""The same as ``meta-safe bench meta-iteration``, kept for the commands in docs/results.md."""

from functools import partial

from meta_safe.benchmarks.meta_iteration import *  # noqa: F403 (its functions, for scripts that import them)
from meta_safe.benchmarks.meta_iteration import main as shared_main
from meta_safe.cli.errors import run_cli

main = partial(shared_main, prog="bench_meta_iteration.py")

if __name__ == "__main__":
    run_cli(main)
