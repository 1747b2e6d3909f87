"""Print the container image's runtime requirements, one per line, from pyproject.toml.

They are the ``[project] dependencies`` with flwr's ``simulation`` extra dropped: containers run
Flower's Deployment Engine only (SuperLink, SuperNodes, SuperExec), so Ray (about 220 MB
installed, copied once per container by the vfs storage driver) stays out of the image. The
virtualenv install keeps the extra for the Simulation Engine. ``--build-system`` prints the
``[build-system] requires`` instead (what an offline wheelhouse needs to install the project).

Usage: ``python requirements.py [--build-system]``. Requirements are parsed and written back by
``packaging`` (PEP 508), which the image's build stage installs into its venv first (flwr
depends on it, so an offline wheelhouse has it).
"""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DROPPED_EXTRAS = {"flwr": {"simulation"}}  # by canonical (PEP 503) distribution name


def image_requirement(spec: str) -> str:
    """``spec`` with the extras listed in DROPPED_EXTRAS for its distribution removed."""
    requirement = Requirement(spec)
    requirement.extras -= DROPPED_EXTRAS.get(canonicalize_name(requirement.name), set())
    return str(requirement)


def main(build_system: bool) -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    if build_system:
        print("\n".join(pyproject["build-system"]["requires"]))
        return
    for spec in pyproject["project"]["dependencies"]:
        print(image_requirement(spec))


if __name__ == "__main__":
    main(build_system=sys.argv[1:] == ["--build-system"])
