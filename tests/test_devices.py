"""The device catalogue: its contents, validation and the one assignment of devices."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from client.node import resolve_node
from common.config import ExperimentConfig, FleetEntry
from common.devices import (
    Catalogue,
    FleetError,
    assign_devices,
    assign_entries,
    load_catalogue,
    validate_fleet,
)
from server.compose import fleet_devices

KIB, MIB = 2**10, 2**20


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def test_profiles_span_microcontroller_to_phone(catalogue: Catalogue) -> None:
    budgets = sorted(p.budget_bytes for p in catalogue.profiles.values())
    assert budgets[0] < 1 * MIB  # microcontroller class: hundreds of KiB
    assert budgets[0] >= 100 * KIB
    assert budgets[-1] >= 256 * MIB
    for name in ("mcu", "rpi-zero", "rpi5", "jetson-nano", "phone"):
        assert name in catalogue.profiles
    for profile in catalogue.profiles.values():
        assert 0.0 <= profile.availability <= 1.0
        assert profile.ram_bytes > profile.budget_bytes


def test_named_fleets_as_documented(catalogue: Catalogue) -> None:
    quick = catalogue.fleets["quickstart"]
    assert sum(quick.values()) == 20 and len(quick) >= 4
    compose = catalogue.fleets["compose"]
    assert 5 <= sum(compose.values()) <= 8 and len(compose) == 3
    test = catalogue.fleets["compose-test"]
    assert sum(test.values()) >= 8
    assert len({catalogue.profiles[d].ram_bytes for d in test}) >= 3
    # one profile's container limit is too small for a Python + torch ClientApp (~300 MB)
    assert min(catalogue.profiles[d].ram_bytes for d in test) < 300 * MIB


def test_assignment_is_deterministic_and_follows_the_mix(catalogue: Catalogue) -> None:
    fleet = catalogue.fleet("quickstart")
    first = [p.name for p in assign_devices(fleet, catalogue)]
    assert first == [p.name for p in assign_devices(fleet, catalogue)]
    assert Counter(first) == Counter(catalogue.fleets["quickstart"])
    in_order = [e.device for e in fleet for _ in range(e.count)]
    assert first != in_order  # shuffled: device kinds do not line up with partition order


@pytest.mark.parametrize("fleet", ["quickstart", "compose", "compose-test"])
def test_one_assignment_for_simulation_deployment_and_compose(
        catalogue: Catalogue, fleet: str) -> None:
    """Whatever the experiment's seed, its clients, the loopback fleet (``assign_devices``)
    and the compose file (``fleet_devices``) give partition i the same device."""
    entries = catalogue.fleet(fleet)
    composed = [p.name for p in fleet_devices(fleet, catalogue)]
    assert [p.name for p in assign_devices(entries, catalogue)] == composed
    for seed in (0, 3, 1234):
        config = ExperimentConfig(fleet=entries, seed=seed)
        resolved = [resolve_node(config, {"partition-id": pid}, catalogue).device.name
                    for pid in range(config.num_clients)]
        assert resolved == composed


def test_entry_policy_overrides_the_experiment_policy() -> None:
    config = ExperimentConfig(
        fleet=[FleetEntry(device="mcu", count=2, policy="fixed"),
               FleetEntry(device="rpi5", count=2)],
        policy="fit",
    )
    policies = {(e.device, config.policy_of(e)) for e in assign_entries(config.fleet)}
    assert policies == {("mcu", "fixed"), ("rpi5", "fit")}


def test_unknown_device_names_the_field(catalogue: Catalogue) -> None:
    config = ExperimentConfig(fleet=[FleetEntry(device="rpi5", count=1),
                                     FleetEntry(device="toaster", count=1)])
    with pytest.raises(FleetError, match=r"fleet\[1\]\.device: unknown device 'toaster'"):
        validate_fleet(config, catalogue)


def test_catalogue_rejects_bad_profiles_and_fleets() -> None:
    good = {"ram_bytes": 1, "budget_bytes": 1, "flops": 1.0, "uplink_bps": 1.0,
            "downlink_bps": 1.0, "availability": 0.5, "cpus": 1.0}
    with pytest.raises(ValidationError, match="availability"):
        Catalogue.model_validate({"profiles": {"x": {**good, "availability": 1.5}}})
    with pytest.raises(ValidationError, match=r"fleets\.f\.y: unknown device profile"):
        Catalogue.model_validate({"profiles": {"x": good}, "fleets": {"f": {"y": 1}}})


def test_device_time_is_compute_plus_transfer(catalogue: Catalogue) -> None:
    p = catalogue.profiles["rpi5"]
    t = p.device_seconds(flops=3e10, bytes_down=1_000_000, bytes_up=2_000_000)
    assert t == pytest.approx(1.0 + 8e6 / p.downlink_bps + 16e6 / p.uplink_bps)
