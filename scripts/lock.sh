#!/usr/bin/env bash
# Rewrite constraints.txt from the packages installed in .venv: the exact versions that
# scripts/bootstrap.sh installs from then on. Run it after a deliberate upgrade, then
# re-run the experiments whose numbers should come from the new versions.
set -euo pipefail
cd "$(dirname "$0")/.."
{
    echo "# The exact versions scripts/bootstrap.sh installs (pip constraints: they pin a"
    echo "# package only when something asks for it). Rewritten by scripts/lock.sh."
    .venv/bin/python -m pip --disable-pip-version-check freeze --exclude-editable \
        | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f
} > constraints.txt
echo "[lock] wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)" >&2
