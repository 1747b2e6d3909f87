"""The data sets: one :class:`DatasetSpec` per name in :data:`SPECS`, the one table the
experiment schema (``common.config.DatasetName``), the loaders (``common.data``) and the models
read; where their files come from is ``common.fetch.SOURCES``. No torch or numpy here, so that
the schema stays light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset (its files: :data:`common.fetch.SOURCES`)."""

    name: str
    num_classes: int
    channels: int
    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


SPECS = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; ``ValueError`` naming ``dataset`` if unknown."""
    if name not in SPECS:
        raise ValueError(f"dataset: unknown dataset {name!r}, expected one of {', '.join(SPECS)}")
    return SPECS[name]
