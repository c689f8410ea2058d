"""The same as ``meta-safe grid``, kept for the commands in docs/results.md."""

from functools import partial

from meta_safe.cli.errors import run_cli
from meta_safe.cli.grid import *  # noqa: F403 (its functions, for scripts that import them)
from meta_safe.cli.grid import main as shared_main

main = partial(shared_main, prog="run_variants.py")

if __name__ == "__main__":
    run_cli(main)
