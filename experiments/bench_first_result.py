"""The same as ``meta-safe bench first-result``, kept for the commands in docs/results.md."""

from functools import partial

from meta_safe.benchmarks.first_result import main as shared_main
from meta_safe.cli.errors import run_cli

main = partial(shared_main, prog="bench_first_result.py")

if __name__ == "__main__":
    run_cli(main)
