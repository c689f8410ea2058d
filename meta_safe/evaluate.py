"""``python -m meta_safe.evaluate``: the evaluation command (see :mod:`meta_safe.cli.evaluate`)."""

from meta_safe.cli.errors import run_cli
from meta_safe.cli.evaluate import main

if __name__ == "__main__":
    run_cli(main)
