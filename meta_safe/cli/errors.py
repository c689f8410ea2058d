"""One error path for every command: a user error is one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from meta_safe.errors import ConfigError, UserError

USER_ERROR_STATUS = 2
"""Exit status of a user error (the status argparse uses for a bad argument)."""


def one_line(error: BaseException) -> str:
    """The error's message with its lines joined (hydra and omegaconf write several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its status; a :class:`UserError` prints
    ``error: <message>`` on stderr and exits with :data:`USER_ERROR_STATUS`, without a
    traceback. Other exceptions propagate with theirs (they are bugs)."""
    try:
        status = main()
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors take the one error path (``error: ...``, status 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")
