"""Datasets and their federated partitions.

Images come back as float tensors ``(N, C, S, S)``, normalised per channel,
x' = (x / 255 - mean_c) / std_c, at the requested side ``S``: sizes up to 4 px above the native
side are zero-padded (Fashion-MNIST 28 -> 32 pads 2 px of black on each side, as LeNet did), any
other size is resized bilinearly (antialiased when shrinking). The conversion is row-wise, so
:func:`load_rows` converts just the rows a client needs and equals the same rows of
:func:`load_dataset` bit for bit. Decoded uint8 arrays and finished full sets are cached per
process, so 20 simulated clients share one copy.

Files come from :mod:`common.fetch`: the folder passed as ``root``; the system copy
(Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``); the download
cache ``$EDGEFED_CACHE`` (default ``~/.cache/edgefed``), downloaded over HTTPS and checked
against pinned SHA-256s on first use.

Partitions use flwr-datasets partitioners on a ``datasets.Dataset`` holding just the ``index``
and ``label`` columns, and are mapped back to index arrays into the in-memory tensors. Setup B
(the paper's federated-style split) first halves the training set non-IID by class.
:func:`stored_partition` keeps them in ``$EDGEFED_CACHE/partitions``, so only the first process
to need a partition imports flwr-datasets (about 200 MiB with pandas, pyarrow and matplotlib).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import tempfile
import zipfile
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.datasets import DatasetSpec, dataset_spec
from common.fetch import cache_dir, locate

MAX_TENSOR_BYTES = 8 * 2**30
PAD_LIMIT = 4
CHUNK = 4096
PARTITIONERS = ("iid", "dirichlet", "pathological")
PARTITION_CACHE_VERSION = 1

log = logging.getLogger(__name__)


_CIFAR_LABEL_KEY = {"cifar10": b"labels", "cifar100": b"fine_labels"}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------- file formats


def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (gzip or plain): big-endian magic ``0x0000 dtype ndim``, then
    ``ndim`` big-endian int32 sizes, then the uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#010x})")
    ndim = magic & 0xFF
    shape = tuple(np.frombuffer(raw, ">i4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _read_cifar_batches(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read(spec: DatasetSpec, paths: list[Path]) -> Arrays:
    """Decode the files :func:`common.fetch.locate` found, train files first: Fashion-MNIST's
    four IDX files; CIFAR's pickle batches, of which the last is the test batch."""
    if spec.name == "fashion-mnist":
        train_x, train_y, test_x, test_y = (read_idx(path) for path in paths)
        return train_x[:, None], train_y, test_x[:, None], test_y
    label_key = _CIFAR_LABEL_KEY[spec.name]
    return (
        *_read_cifar_batches(paths[:-1], label_key),
        *_read_cifar_batches(paths[-1:], label_key),
    )


@lru_cache(maxsize=4)
def read_raw(name: str, root: str | None = None) -> Arrays:
    """Decoded uint8 images ``(N, C, h, w)`` and int64 labels: train_x, train_y, test_x, test_y.

    ``root`` is used alone when given (``FileNotFoundError`` naming it if files are missing);
    otherwise the system copy, then the cache, then a verified download into the cache
    (:func:`common.fetch.locate`; ``DatasetUnavailable`` saying what to install if it fails).
    """
    spec = dataset_spec(name)
    train_x, train_y, test_x, test_y = _read(spec, locate(name, root))
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


# ------------------------------------------------------------------------------ tensors


def to_tensor(
    images: np.ndarray, spec: DatasetSpec, image_size: int, channels: int | None = None
) -> torch.Tensor:
    """uint8 ``(N, C, h, w)`` -> normalised float32 ``(N, channels, image_size, image_size)``.

    Padding or bilinear resizing as in the module docstring; one grey channel may be repeated to
    3 (``channels=3``) for RGB models. Works in chunks so no float copy of the full-size array is
    made besides the result.
    """
    if image_size < 1:
        raise ValueError(f"image_size: must be positive, got {image_size}")
    channels = spec.channels if channels is None else channels
    if channels != spec.channels and not (spec.channels == 1 and channels == 3):
        raise ValueError(
            f"channels: {spec.name} has {spec.channels} channel(s); only 1 -> 3 is converted"
        )
    count, side = len(images), images.shape[-1]
    needed = count * channels * image_size**2 * 4
    if needed > MAX_TENSOR_BYTES:
        raise ValueError(
            f"image_size: {count} images at {image_size} px need {needed / 2**30:.1f} GiB "
            f"(limit {MAX_TENSOR_BYTES / 2**30:.0f} GiB); use a smaller image_size"
        )
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    out = torch.empty(count, channels, image_size, image_size)
    grow = image_size - side
    for start in range(0, count, CHUNK):
        x = torch.from_numpy(images[start : start + CHUNK]).float().div_(255)
        if 0 < grow <= PAD_LIMIT and grow % 2 == 0:
            x = F.pad(x, [grow // 2] * 4)
        elif grow != 0:
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                antialias=grow < 0,
            )
        out[start : start + CHUNK] = (x - mean) / std
    return out


@lru_cache(maxsize=4)
def load_dataset(
    name: str, image_size: int = 32, root: str | None = None, channels: int | None = None
) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets as ``TensorDataset(images, labels)`` (cached per arguments).

    ``channels`` defaults to the dataset's own (1 for Fashion-MNIST, 3 for CIFAR).
    """
    spec = dataset_spec(name)
    train_x, train_y, test_x, test_y = read_raw(name, None if root is None else str(root))
    return (
        TensorDataset(to_tensor(train_x, spec, image_size, channels), torch.from_numpy(train_y)),
        TensorDataset(to_tensor(test_x, spec, image_size, channels), torch.from_numpy(test_y)),
    )


def load_rows(
    name: str, rows: np.ndarray, image_size: int = 32, train: bool = True,
    root: str | None = None, channels: int | None = None,
) -> TensorDataset:
    """Rows ``rows`` (in that order) of the training set (or the test set, ``train=False``) as
    ``TensorDataset(images, labels)``: ``load_dataset(...)[split][rows]`` exactly, but only
    these rows are converted to float; the decoded uint8 set is shared through :func:`read_raw`.
    """
    train_x, train_y, test_x, test_y = read_raw(name, None if root is None else str(root))
    images, labels = (train_x, train_y) if train else (test_x, test_y)
    rows = np.asarray(rows, np.int64)
    return TensorDataset(to_tensor(images[rows], dataset_spec(name), image_size, channels),
                         torch.from_numpy(labels[rows]))


def labels_of(dataset: TensorDataset) -> np.ndarray:
    """The label column of a dataset from :func:`load_dataset`, as a numpy array."""
    return dataset.tensors[1].numpy()


# --------------------------------------------------------------------------- partitions


def setup_b_split(
    labels: np.ndarray, seed: int = 0, majority: float = 0.8
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's Setup B: halve a training set non-IID by class.

    With classes sorted and split into a lower and an upper half (0-4 and 5-9 for 10 classes),
    the server half takes a ``majority`` share of each lower class and ``1 - majority`` of each
    upper class; the client half takes the rest. Each class is shuffled with ``seed`` first, so
    the split is deterministic. Returns sorted (server_idx, client_idx).
    """
    if not 0.0 <= majority <= 1.0:
        raise ValueError(f"majority: must be in [0, 1], got {majority}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    server, client = [], []
    for rank, label in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        share = majority if rank < len(classes) // 2 else 1.0 - majority
        cut = int(round(share * len(members)))
        server.append(members[:cut])
        client.append(members[cut:])
    return np.sort(np.concatenate(server)), np.sort(np.concatenate(client))


def partition(
    labels: np.ndarray,
    num_partitions: int,
    partitioner: str = "iid",
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``num_partitions`` index arrays.

    ``iid``: shuffled equal shards (flwr ``IidPartitioner`` on a seeded shuffle);
    ``dirichlet``: per class, shares q ~ Dir(alpha) over partitions (``DirichletPartitioner``,
    every partition gets at least min(10, N / num_partitions) samples);
    ``pathological``: each partition holds ``classes_per_partition`` classes
    (``PathologicalPartitioner``, first-deterministic assignment, then random).
    Indices are positions into ``labels``; map them through your own index array when
    ``labels`` is a subset (e.g. the Setup-B client half).
    """
    # Imported here: datasets + flwr_datasets (which pull in pandas, pyarrow and seaborn) take
    # seconds and ~200 MiB to import, and most processes that load data never partition it
    # (or read the partition stored by stored_partition).
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    labels = np.asarray(labels)
    if partitioner not in PARTITIONERS:
        raise ValueError(
            f"partitioner: unknown {partitioner!r}, expected one of {', '.join(PARTITIONERS)}"
        )
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(
            f"num_partitions: must be between 1 and the {len(labels)} samples, got {num_partitions}"
        )
    table = datasets.Dataset.from_dict({"index": np.arange(len(labels)), "label": labels})
    if partitioner == "iid":
        splitter = IidPartitioner(num_partitions)
        table = table.shuffle(seed=seed)
    elif partitioner == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"alpha: must be positive, got {alpha}")
        splitter = DirichletPartitioner(
            num_partitions, "label", alpha,
            min_partition_size=min(10, len(labels) // num_partitions), seed=seed,
        )
    else:
        num_classes = len(np.unique(labels))
        if not 1 <= classes_per_partition <= num_classes:
            raise ValueError(
                f"classes_per_partition: must be between 1 and the {num_classes} classes, "
                f"got {classes_per_partition}"
            )
        splitter = PathologicalPartitioner(
            num_partitions, "label", classes_per_partition,
            class_assignment_mode="first-deterministic", seed=seed,
        )
    splitter.dataset = table
    return [
        splitter.load_partition(i).with_format("arrow")[:]["index"].to_numpy().astype(np.int64)
        for i in range(num_partitions)
    ]


def partition_path(
    labels: np.ndarray, num_partitions: int, partitioner: str, alpha: float,
    classes_per_partition: int, seed: int,
) -> Path:
    """``<cache>/partitions/<hash>.npz``; the hash covers the labels (so the dataset and the
    subset of it), every :func:`partition` argument, and the versions of the libraries whose
    partitioners and random streams compute it (flwr-datasets, datasets, numpy)."""
    key = {
        "version": PARTITION_CACHE_VERSION,
        "labels": hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest(),
        "num_partitions": num_partitions,
        "partitioner": partitioner,
        "alpha": alpha,
        "classes_per_partition": classes_per_partition,
        "seed": seed,
        "libraries": [version("flwr-datasets"), version("datasets"), np.__version__],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "partitions" / f"{digest}.npz"


def _read_partition(path: Path, num_partitions: int, total: int) -> list[np.ndarray] | None:
    """The index arrays stored at ``path``; ``None`` if there are none, or if the file is
    unreadable or does not hold ``num_partitions`` int64 arrays of ``total`` indices in all."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            parts = [stored[f"arr_{i}"] for i in range(num_partitions)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("partition cache %s is unreadable (%s); recomputing it", path, error)
        return None
    if sum(len(p) for p in parts) != total or any(p.dtype != np.int64 for p in parts):
        log.warning("partition cache %s does not match its labels; recomputing it", path)
        return None
    return parts


def _write_partition(path: Path, parts: list[np.ndarray]) -> None:
    """Store ``parts`` at ``path`` atomically (a temporary file renamed over it), so processes
    computing the same partition at once never read a half-written file. A cache that cannot
    be written is logged, not fatal."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as handle:
            partial = Path(handle.name)
            np.savez(handle, *parts)
        partial.chmod(0o644)  # temporary files are private; other users' nodes read it too
        partial.replace(path)
    except OSError as error:
        if partial is not None:
            partial.unlink(missing_ok=True)
        log.warning("could not store partition cache %s (%s)", path, error)


def stored_partition(
    labels: np.ndarray,
    num_partitions: int,
    partitioner: str = "iid",
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """:func:`partition`, read from :func:`partition_path` when an earlier process stored it,
    else computed and stored there. A hit imports neither flwr-datasets nor datasets."""
    labels = np.asarray(labels)
    arguments = (num_partitions, partitioner, alpha, classes_per_partition, seed)
    path = partition_path(labels, *arguments)
    parts = _read_partition(path, num_partitions, len(labels))
    if parts is None:
        parts = partition(labels, *arguments)
        _write_partition(path, parts)
    return parts


def matched_subset(
    labels: np.ndarray, reference: np.ndarray, max_samples: int | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted positions into ``labels`` whose class mix follows ``reference``'s.

    With p_c the share of class c in ``reference`` and a_c the samples of class c available,
    n = min(max_samples, min_c a_c / p_c) samples are drawn, floor(n * p_c) of each class,
    uniformly with ``seed`` -- e.g. a test set with the class mix of the Setup-B client half.
    """
    labels, reference = np.asarray(labels), np.asarray(reference)
    classes, counts = np.unique(reference, return_counts=True)
    shares = counts / counts.sum()
    available = np.array([(labels == c).sum() for c in classes])
    total = min(available / shares)
    total = total if max_samples is None else min(total, max_samples)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), int(total * share), replace=False)
        for c, share in zip(classes, shares, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def subsample(indices: np.ndarray, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_samples`` of ``indices``, chosen uniformly with ``seed`` (sorted)."""
    indices = np.asarray(indices)
    if max_samples is None or len(indices) <= max_samples:
        return indices
    if max_samples < 1:
        raise ValueError(f"max_samples: must be at least 1, got {max_samples}")
    chosen = np.random.default_rng(seed).choice(len(indices), max_samples, replace=False)
    return indices[np.sort(chosen)]
