"""Datasets (system Fashion-MNIST, IDX/CIFAR files from a folder) and partitions; downloads are
in test_fetch.py."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from client import task
from client.task import client_dataset, client_indices
from common import data, fetch
from common.datasets import SPECS
from common.runconfig import DEFAULT_EXPERIMENT
from common.validate import load_config

FMNIST = SPECS["fashion-mnist"]
REPO = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28))
    for name, array in zip(
        fetch.SOURCES["fashion-mnist"].files,
        [train, np.arange(n_train) % 10, rng.integers(0, 256, (n_test, 28, 28)),
         np.arange(n_test) % 10],
        strict=True,
    ):
        _write_idx(folder / name, array)
    return train


def _fake_cifar10(folder: Path) -> None:
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {b"data": np.full((4, 3072), i, np.uint8), b"labels": [i, i, 9, 0]}
        with (batches / name).open("wb") as handle:
            pickle.dump(batch, handle)


def test_system_fashion_mnist_padded_and_cached() -> None:
    train, test = data.load_dataset("fashion-mnist", 32)
    images, labels = train.tensors
    assert images.shape == (60000, 1, 32, 32) and images.dtype == torch.float32
    assert len(test) == 10000 and labels.dtype == torch.int64
    assert set(np.unique(data.labels_of(train))) == set(range(10))
    black = (0.0 - FMNIST.mean[0]) / FMNIST.std[0]
    assert torch.allclose(images[:100, :, :2, :], torch.tensor(black))  # the 2 px zero padding
    raw = data.read_raw("fashion-mnist")[0][:100]
    inner = torch.from_numpy(raw).float() / 255
    assert torch.allclose(images[:100, :, 2:30, 2:30], (inner - FMNIST.mean[0]) / FMNIST.std[0])
    assert data.load_dataset("fashion-mnist", 32) == (train, test)  # in-process cache


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (64, 1), (24, 3)])
def test_resize_native_and_channels(size: int, channels: int) -> None:
    raw = data.read_raw("fashion-mnist")[0][:8]
    out = data.to_tensor(raw, FMNIST, size, channels)
    assert out.shape == (8, channels, size, size)
    if size == 28:
        assert torch.allclose(out * FMNIST.std[0] + FMNIST.mean[0], torch.from_numpy(raw) / 255)
    if channels == 3:
        assert torch.equal(out[:, 0], out[:, 2])


def test_channel_conversion_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        data.to_tensor(np.zeros((1, 3, 32, 32), np.uint8), SPECS["cifar10"], 32, 1)


def test_fashion_mnist_from_a_folder(tmp_path: Path) -> None:
    train_images = _fake_fashion_mnist(tmp_path)
    train, test = data.load_dataset("fashion-mnist", 28, root=str(tmp_path))
    assert len(train) == 40 and len(test) == 10
    assert torch.allclose(
        train.tensors[0][:, 0] * FMNIST.std[0] + FMNIST.mean[0],
        torch.from_numpy(train_images).float() / 255,
    )
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    data.read_raw.cache_clear()
    with pytest.raises(FileNotFoundError, match=f"root: {tmp_path}.*t10k-labels"):
        data.read_raw("fashion-mnist", str(tmp_path))


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (31, 1), (32, 1), (48, 1), (32, 3)])
def test_load_rows_equals_the_rows_of_the_full_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, channels: int
) -> None:
    _fake_fashion_mnist(tmp_path)
    monkeypatch.setattr(data, "CHUNK", 16)  # the full set converts in 3 chunks, the rows in 1
    train, test = data.load_dataset("fashion-mnist", size, root=str(tmp_path), channels=channels)
    rows = np.array([37, 3, 3, 20, 0, 16])  # order and repeats are kept
    for split, full in ((True, train), (False, test)):
        picked = rows % len(full)
        got = data.load_rows("fashion-mnist", picked, size, split, str(tmp_path), channels)
        assert torch.equal(got.tensors[0], full.tensors[0][picked])  # bit for bit
        assert torch.equal(got.tensors[1], full.tensors[1][picked])


def test_client_dataset_is_its_partition_rows_without_the_full_float_set() -> None:
    config = load_config(DEFAULT_EXPERIMENT)  # dirichlet, 32 px, 256 samples per client
    data.load_dataset.cache_clear()
    datasets = [client_dataset(config, pid, config.num_clients) for pid in (0, 7)]
    assert data.load_dataset.cache_info().currsize == 0  # no float copy of the whole set
    train, _ = data.load_dataset(config.dataset, config.image_size)
    _, client_half = data.setup_b_split(data.labels_of(train), config.seed)
    rows = [client_indices(config, pid, config.num_clients) for pid in (0, 7)]
    assert len(np.intersect1d(*rows)) == 0
    for picked, got in zip(rows, datasets, strict=True):
        assert len(picked) == config.samples_per_client and set(picked) <= set(client_half)
        assert torch.equal(got.tensors[0], train.tensors[0][picked])
        assert torch.equal(got.tensors[1], train.tensors[1][picked])


def test_cifar10_from_a_folder(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    train, test = data.load_dataset("cifar10", 32, root=str(tmp_path))
    assert train.tensors[0].shape == (20, 3, 32, 32)
    assert data.labels_of(test).tolist() == [5, 5, 9, 0]
    expected = (4 / 255 - SPECS["cifar10"].mean[0]) / SPECS["cifar10"].std[0]
    assert torch.allclose(train.tensors[0][-1, 0], torch.tensor(expected))


def test_unknown_dataset_and_root_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset"):
        data.load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="root"):
        data.read_raw("fashion-mnist", str(tmp_path / "absent"))


def test_setup_b_split_is_skewed_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 100)
    server, client = data.setup_b_split(labels, seed=3)
    assert len(np.intersect1d(server, client)) == 0
    assert np.array_equal(np.sort(np.concatenate([server, client])), np.arange(1000))
    assert np.bincount(labels[server]).tolist() == [80] * 5 + [20] * 5
    assert np.bincount(labels[client]).tolist() == [20] * 5 + [80] * 5
    again, _ = data.setup_b_split(labels, seed=3)
    other, _ = data.setup_b_split(labels, seed=4)
    assert np.array_equal(server, again) and not np.array_equal(server, other)


@pytest.mark.parametrize("kind", data.PARTITIONERS)
def test_partitions_cover_every_sample_once(kind: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    parts = data.partition(labels, 8, kind, alpha=0.3, classes_per_partition=2, seed=1)
    assert len(parts) == 8 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    if kind == "iid":
        assert {len(p) for p in parts} == {250}
    if kind == "pathological":
        assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    again = data.partition(labels, 8, kind, alpha=0.3, classes_per_partition=2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"partitioner": "shards"}, "partitioner"),
        ({"num_partitions": 0}, "num_partitions"),
        ({"partitioner": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"partitioner": "pathological", "classes_per_partition": 11}, "classes_per_partition"),
    ],
)
def test_partition_errors_name_the_field(kwargs: dict, field: str) -> None:
    arguments = {"num_partitions": 4, **kwargs}
    with pytest.raises(ValueError, match=field):
        data.partition(np.arange(100) % 10, **arguments)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$EDGEFED_CACHE``."""
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    return tmp_path


LABELS = np.random.default_rng(0).integers(0, 10, 2000)
DIRICHLET = {"num_partitions": 8, "partitioner": "dirichlet", "alpha": 0.3, "seed": 1}


def _equal(parts: list[np.ndarray], others: list[np.ndarray]) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(parts, others, strict=True))


def test_stored_partition_equals_the_computed_one_and_is_read_back(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = data.stored_partition(LABELS, **DIRICHLET)
    assert _equal(stored, data.partition(LABELS, **DIRICHLET))
    path = data.partition_path(LABELS, 8, "dirichlet", 0.3, 2, 1)
    assert [p.name for p in (cache / "partitions").iterdir()] == [path.name]  # no temp file left
    assert data.partition_path(LABELS, 8, "dirichlet", 0.3, 2, 2) != path  # the seed is keyed
    assert data.partition_path(LABELS[::-1], 8, "dirichlet", 0.3, 2, 1) != path  # and the labels

    def not_again(*args: object) -> None:
        raise AssertionError("computed again although it is stored")

    monkeypatch.setattr(data, "partition", not_again)
    assert _equal(data.stored_partition(LABELS, **DIRICHLET), stored)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "too few indices"])
def test_damaged_stored_partition_is_recomputed(cache: Path, damage: str) -> None:
    fresh = data.stored_partition(LABELS, **DIRICHLET)
    path = data.partition_path(LABELS, 8, "dirichlet", 0.3, 2, 1)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        np.savez(path, *(p[:-1] for p in fresh))
    assert _equal(data.stored_partition(LABELS, **DIRICHLET), fresh)
    with np.load(path) as restored:  # and stored again, whole
        assert _equal([restored[f"arr_{i}"] for i in range(8)], fresh)


def test_client_with_a_stored_partition_never_imports_flwr_datasets(cache: Path) -> None:
    config = load_config(DEFAULT_EXPERIMENT)
    task._client_partitions.cache_clear()  # so this process stores it in the empty cache
    rows = client_indices(config, 3, config.num_clients)
    script = textwrap.dedent("""
        import json, sys
        from client.task import client_dataset, client_indices
        from common.runconfig import DEFAULT_EXPERIMENT
        from common.validate import load_config
        config = load_config(DEFAULT_EXPERIMENT)
        assert len(client_dataset(config, 3, config.num_clients)) == config.samples_per_client
        rows = client_indices(config, 3, config.num_clients).tolist()
        imported = [m for m in ("flwr_datasets", "datasets") if m in sys.modules]
        print(json.dumps({"rows": rows, "imported": imported}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                          env={**os.environ, fetch.CACHE_ENV: str(cache)},
                          capture_output=True, text=True, timeout=120, check=True)
    child = json.loads(done.stdout.splitlines()[-1])
    assert child == {"rows": rows.tolist(), "imported": []}


def test_subsample() -> None:
    indices = np.arange(100, 200)
    picked = data.subsample(indices, 10, seed=0)
    assert len(picked) == 10 and np.all(np.diff(picked) > 0) and set(picked) <= set(indices)
    assert data.subsample(indices, None) is indices


def test_matched_subset_follows_the_reference_mix() -> None:
    labels = np.repeat(np.arange(4), 50)  # 50 of each class available
    reference = np.repeat(np.arange(4), [10, 10, 40, 40])  # shares .1 .1 .4 .4
    picked = data.matched_subset(labels, reference, seed=0)
    assert np.bincount(labels[picked]).tolist() == [12, 12, 50, 50]  # bounded by 50 / 0.4
    capped = data.matched_subset(labels, reference, max_samples=20, seed=0)
    assert np.bincount(labels[capped]).tolist() == [2, 2, 8, 8]
    assert len(np.unique(capped)) == 20
