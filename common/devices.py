"""The device catalogue: named edge-device profiles and fleet mixes (``deploy/devices.yaml``).

A profile is what the emulation enforces (``ram_bytes``, the process/container limit), what the
planner must fit (``budget_bytes``: activations kept for backward + gradients + optimizer state),
and what the simulated clock charges: one round on device ``d`` takes

    t = FLOPs / d.flops + 8 * bytes_down / d.downlink_bps + 8 * bytes_up / d.uplink_bps   seconds.

Partition ``i`` is slot ``i`` of :func:`assign_entries`: the fleet's entries expanded to one slot
per device and shuffled with a fixed seed. It is the one assignment: simulation, the loopback
deployment fleet, the compose generator and the ServerApp all use it. It depends on the fleet
alone (not on the experiment's seed), so a compose file generated once serves experiments of any
seed; the shuffle keeps device kinds from lining up with partition order (the pathological
partitioner gives partition ``i`` class ``i mod C`` first).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.config import ExperimentConfig, FleetEntry

CATALOGUE_ENV = "EDGEFED_DEVICES"
ASSIGNMENT_SEED = 0  # the fixed seed of the partition -> device shuffle
DEFAULT_CATALOGUE = Path(__file__).resolve().parents[1] / "deploy" / "devices.yaml"

Bytes = Annotated[int, Field(gt=0)]
Rate = Annotated[float, Field(gt=0.0)]


class DeviceProfile(BaseModel):
    """One kind of edge device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = Field("", max_length=500)
    ram_bytes: Bytes = Field(description="memory limit of the emulating process or container")
    budget_bytes: Bytes = Field(description="training memory: activations + grads + optimizer")
    board_budget_bytes: Bytes | None = Field(
        None, description="training memory the real board could give (RAM minus OS and "
        "runtime); budget_bytes is smaller when scaled down for the small default workload")
    budget_note: str = Field(
        "", max_length=300, description="what the budget represents and where the number "
        "comes from (tooltip text)")
    flops: Rate = Field(description="sustained compute speed, FLOP/s")
    uplink_bps: Rate
    downlink_bps: Rate
    availability: float = Field(ge=0.0, le=1.0, description="P(online in a round)")
    cpus: float = Field(gt=0.0, le=64.0, description="CPU share of the emulating container")

    @property
    def budget_scale(self) -> float | None:
        """budget_bytes / board_budget_bytes: 1 at real scale, below 1 when scaled down."""
        return None if self.board_budget_bytes is None else (
            self.budget_bytes / self.board_budget_bytes)

    def transfer_seconds(self, bytes_down: int, bytes_up: int) -> float:
        """Seconds on the link: 8 * bytes / bandwidth, both directions."""
        return 8.0 * bytes_down / self.downlink_bps + 8.0 * bytes_up / self.uplink_bps

    def device_seconds(self, flops: float, bytes_down: int, bytes_up: int) -> float:
        """Simulated time of a round on this device: compute plus transfer."""
        return flops / self.flops + self.transfer_seconds(bytes_down, bytes_up)


class Catalogue(BaseModel):
    """All profiles plus named fleet mixes (profile name -> device count)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, DeviceProfile]
    fleets: dict[str, dict[str, Annotated[int, Field(ge=1)]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _name_profiles(cls, data: dict) -> dict:
        """Profiles are keyed by name in YAML; copy the key into each profile."""
        profiles = data.get("profiles") if isinstance(data, dict) else None
        if isinstance(profiles, dict):
            data = {**data, "profiles": {
                name: {"name": name, **body} if isinstance(body, dict) else body
                for name, body in profiles.items()
            }}
        return data

    @model_validator(mode="after")
    def _check_fleets(self) -> Catalogue:
        for fleet, mix in self.fleets.items():
            for device in mix:
                if device not in self.profiles:
                    raise ValueError(f"fleets.{fleet}.{device}: unknown device profile")
        return self

    def profile(self, name: str) -> DeviceProfile:
        """The profile called ``name``; ``KeyError`` listing the known names otherwise."""
        try:
            return self.profiles[name]
        except KeyError:
            raise KeyError(f"unknown device {name!r} (known: {', '.join(self.profiles)})") from None

    def fleet(self, name: str) -> list[FleetEntry]:
        """A named mix as experiment fleet entries."""
        if name not in self.fleets:
            raise KeyError(f"unknown fleet {name!r} (known: {', '.join(self.fleets)})")
        return [FleetEntry(device=d, count=n) for d, n in self.fleets[name].items()]


def catalogue_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$EDGEFED_DEVICES``, else the repository's ``deploy/devices.yaml``."""
    return Path(path or os.environ.get(CATALOGUE_ENV) or DEFAULT_CATALOGUE)


@cache
def _load(path: Path) -> Catalogue:
    return Catalogue.model_validate(yaml.safe_load(path.read_text()))


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate the device catalogue (cached per path)."""
    return _load(catalogue_path(path).resolve())


class FleetError(ValueError):
    """A fleet entry names something the catalogue does not have; ``field`` says which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def fleet_errors(config: ExperimentConfig, catalogue: Catalogue) -> list[FleetError]:
    """One :class:`FleetError` per fleet entry that names no catalogue profile."""
    return [
        FleetError(f"fleet[{i}].device",
                   f"unknown device {entry.device!r} (known: {', '.join(catalogue.profiles)})")
        for i, entry in enumerate(config.fleet) if entry.device not in catalogue.profiles
    ]


def validate_fleet(config: ExperimentConfig, catalogue: Catalogue) -> None:
    """Every fleet entry must name a catalogue profile; raises the first :class:`FleetError`."""
    errors = fleet_errors(config, catalogue)
    if errors:
        raise errors[0]


def assign_entries(fleet: Sequence[FleetEntry]) -> list[FleetEntry]:
    """Partition id -> fleet entry: the entries expanded per device, shuffled with
    ``random.Random(ASSIGNMENT_SEED)`` (see the module docstring)."""
    slots = [entry for entry in fleet for _ in range(entry.count)]
    random.Random(ASSIGNMENT_SEED).shuffle(slots)
    return slots


def assign_devices(fleet: Sequence[FleetEntry], catalogue: Catalogue) -> list[DeviceProfile]:
    """Partition id -> device profile, by :func:`assign_entries` (``KeyError`` listing the
    known profiles for a device the catalogue does not have)."""
    return [catalogue.profile(entry.device) for entry in assign_entries(fleet)]
