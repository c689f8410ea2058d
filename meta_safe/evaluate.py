"""``python -m meta_safe.evaluate``: the evaluation command (see :mod:`meta_safe.cli.evaluate`)."""

import sys

from meta_safe.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
