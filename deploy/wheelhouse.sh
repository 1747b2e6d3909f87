#!/usr/bin/env bash
# Fill deploy/wheelhouse with wheels for everything the container image installs, so that
# `docker build` works without a package index (deploy/Dockerfile installs with --no-index
# --find-links when the folder exists). Wheels come from the host's pip configuration (index,
# find-links such as the CPU torch wheel on disk) and honour constraints.txt; sdists are built
# into wheels here. The image's requirements are pyproject's dependencies without the dev extra
# and without Ray (see deploy/requirements.py), plus the build-system requirements.
#
# Skips the work when deploy/wheelhouse/.requirements already lists the same inputs.
# PYTHON picks the interpreter (default: .venv/bin/python, a Python 3.11 like the image's).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
out=deploy/wheelhouse
stamp=$out/.requirements

wanted=$(mktemp)
trap 'rm -f "$wanted"' EXIT
{
    "$python" deploy/requirements.py
    "$python" deploy/requirements.py --build-system
    echo "# constraints.txt:"
    grep -v '^#' constraints.txt
} >"$wanted"

if [ -f "$stamp" ] && cmp -s "$wanted" "$stamp"; then
    echo "wheelhouse: up to date ($(find "$out" -name '*.whl' | wc -l) wheels in $out)"
    exit 0
fi

mkdir -p "$out"
rm -f "$out"/*.whl "$stamp"
"$python" -m pip wheel --quiet --wheel-dir "$out" -c constraints.txt \
    -r <("$python" deploy/requirements.py) $("$python" deploy/requirements.py --build-system)
cp "$wanted" "$stamp"
echo "wheelhouse: $(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
