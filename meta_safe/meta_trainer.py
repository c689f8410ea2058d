"""``python -m meta_safe.meta_trainer``: the training command (see :mod:`meta_safe.cli.train`)."""

from meta_safe.cli.errors import run_cli
from meta_safe.cli.train import main

if __name__ == "__main__":
    run_cli(main)
