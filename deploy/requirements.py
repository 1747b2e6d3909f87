"""Print the container image's runtime requirements, one per line, from pyproject.toml.

They are the ``[project] dependencies`` with flwr's ``simulation`` extra dropped: containers run
Flower's Deployment Engine only (SuperLink, SuperNodes, SuperExec), so Ray (about 220 MB
installed, copied once per container by the vfs storage driver) stays out of the image. The
virtualenv install keeps the extra for the Simulation Engine. ``--build-system`` prints the
``[build-system] requires`` instead (what an offline wheelhouse needs to install the project).

Usage: ``python requirements.py [--build-system]``; stdlib only, as in the image's build stage.
"""

import re
import sys
import tomllib
from pathlib import Path

DROPPED_EXTRAS = {"flwr": {"simulation"}}


def image_requirement(spec: str) -> str:
    """``spec`` with the extras listed in DROPPED_EXTRAS for its distribution removed."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*\[([^\]]*)\](.*)$", spec)
    if match is None:
        return spec
    name, extras, rest = match.groups()
    kept = [e.strip() for e in extras.split(",") if e.strip() not in DROPPED_EXTRAS.get(name, ())]
    return f"{name}[{','.join(kept)}]{rest}" if kept else f"{name}{rest}"


def main(build_system: bool) -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    if build_system:
        print("\n".join(pyproject["build-system"]["requires"]))
        return
    for spec in pyproject["project"]["dependencies"]:
        print(image_requirement(spec))


if __name__ == "__main__":
    main(build_system=sys.argv[1:] == ["--build-system"])
