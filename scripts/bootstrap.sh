#!/usr/bin/env bash
# Create or reuse .venv and install meta_safe into it (editable). Safe to rerun:
# when pyproject.toml and this script are unchanged since the last successful
# install, it does nothing.
#
# Why not a plain `pip install -e .`:
#  * torch: pinned to 2.13.0 and installed first so pip takes the CPU wheel from
#    this machine's disk instead of downloading a multi-GB CUDA build.
#  * safety-gymnasium 1.0.0 pins pygame==2.1.0 (no wheel for Python 3.11),
#    mujoco==2.3.3 and, through gymnasium-robotics 1.2.2, numpy<1.24. pip's
#    resolver would honour those pins, so both packages are installed with
#    --no-deps and their real run-time needs come from our pyproject.toml's
#    mujoco extra.
#    `pip check` therefore reports exactly these known, harmless conflicts:
#      safety-gymnasium 1.0.0 requires pygame==2.1.0 / mujoco==2.3.3
#      gymnasium-robotics 1.2.2 requires mujoco==2.3.3 / numpy<1.24
#    pygame is only used by safety-gymnasium's keyboard demo, never by us.
#    stochastic_circle/compat.py patches the two Python 3.11 / numpy 2 bugs.
#  * constraints.txt pins every installed package to the version the results were
#    produced with: a training repeats bit for bit only on the same versions (and CPU
#    kernels), and an unpinned install drifts as packages release.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.meta_safe-installed"
WANT="$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), f"meta_safe needs Python >= 3.11, found {sys.version}"'
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

echo "[bootstrap] installing into $VENV (first run takes a minute or two)" >&2
"${PIP[@]}" install --upgrade "pip>=24" setuptools wheel
"${PIP[@]}" install "torch==2.13.0"
# Everything pyproject.toml declares, with the mujoco, dev, ray and docs extras (the
# tests run both backends, a grid on a local Ray instance and the API reference build).
"$VENV/bin/python" - > "$VENV/.meta_safe-requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for req in project["dependencies"] + extras["mujoco"] + extras["dev"] + extras["ray"] + extras["docs"]:
    print(req)
PY
# constraints.txt: the exact versions the results were produced with (scripts/lock.sh).
"${PIP[@]}" install -c constraints.txt "torch==2.13.0" -r "$VENV/.meta_safe-requirements.txt"
"${PIP[@]}" install -c constraints.txt --no-deps "safety-gymnasium==1.0.0" "gymnasium-robotics==1.2.2"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
echo "$WANT" > "$STAMP"
echo "[bootstrap] done" >&2
