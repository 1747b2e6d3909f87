"""Where a dataset's files come from, and fetching them: ``python -m common.fetch [NAME ...]``.

A dataset is complete in a folder when every file of its :class:`Source` is there (a ``.gz``
file may also be there uncompressed; the files may sit in the source's ``subdir``, an archive's
top folder). Folders are tried in this order:

1. ``root``, when the caller passes one (used alone);
2. the system copy ``$EDGEFED_DATASETS/<name>`` (default ``/usr/share/datasets``, where
   Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST);
3. the download cache ``$EDGEFED_CACHE/data/<name>`` (default ``~/.cache/edgefed``);
4. a download into that cache: every official file over HTTPS, each checked against its pinned
   SHA-256 before anything is moved into the cache, archives unpacked. ``$EDGEFED_DATA_MIRROR``
   (an HTTPS base URL) replaces the official hosts; the checksums still apply. A failed or
   mismatching download leaves nothing behind, and the error names the Debian package (where
   there is one) and the URLs.

This module needs neither torch nor numpy, so the set-up step (``make``) checks the data in
well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "EDGEFED_CACHE"
DATASETS_ENV = "EDGEFED_DATASETS"
MIRROR_ENV = "EDGEFED_DATA_MIRROR"
SYSTEM_DATASETS = "/usr/share/datasets"
TIMEOUT_S = 60.0
BLOCK = 1 << 20
ARCHIVES = (".tar.gz", ".tgz")


class DownloadError(RuntimeError):
    """A file could not be fetched, or its content is not the pinned one."""


class DatasetUnavailable(RuntimeError):
    """A dataset is neither installed nor downloadable; the message says what to install."""


@dataclass(frozen=True)
class Remote:
    """One official file: an HTTPS URL and the SHA-256 of its bytes (lowercase hex)."""

    url: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.url.startswith("https://"):
            raise ValueError(f"url: {self.url!r} is not an https:// URL")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256: {self.sha256!r} is not 64 lowercase hex digits")

    @property
    def name(self) -> str:
        """The file name: the URL's last path segment."""
        return self.url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Source:
    """The files that make a complete copy of dataset ``name`` (train files first), the official
    downloads that produce them, and the Debian package that installs them, if any."""

    name: str
    files: tuple[str, ...]
    remotes: tuple[Remote, ...]
    subdir: str = ""
    debian_package: str | None = None


_FMNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
_TORONTO_URL = "https://www.cs.toronto.edu/~kriz/"
# Official SHA-256s: Fashion-MNIST as pinned by TensorFlow Datasets (url_checksums/
# fashion_mnist.txt; their MD5s are the ones the Fashion-MNIST README publishes), CIFAR as
# pinned by Keras (datasets/cifar10.py, cifar100.py).
SOURCES = {
    "fashion-mnist": Source(
        "fashion-mnist",
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        (
            Remote(_FMNIST_URL + "train-images-idx3-ubyte.gz",
                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            Remote(_FMNIST_URL + "train-labels-idx1-ubyte.gz",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            Remote(_FMNIST_URL + "t10k-images-idx3-ubyte.gz",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            Remote(_FMNIST_URL + "t10k-labels-idx1-ubyte.gz",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
        debian_package="dataset-fashion-mnist",
    ),
    "cifar10": Source(
        "cifar10",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        (Remote(_TORONTO_URL + "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        subdir="cifar-10-batches-py",
    ),
    "cifar100": Source(
        "cifar100",
        ("train", "test"),
        (Remote(_TORONTO_URL + "cifar-100-python.tar.gz",
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
        subdir="cifar-100-python",
    ),
}


def cache_dir() -> Path:
    """The download/checkpoint cache: ``$EDGEFED_CACHE`` or ``~/.cache/edgefed``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "edgefed"))


def source(name: str) -> Source:
    """The source of dataset ``name``; ``ValueError`` naming ``dataset`` if unknown."""
    if name not in SOURCES:
        raise ValueError(f"dataset: unknown dataset {name!r}, expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def system_dir(src: Source) -> Path:
    """``$EDGEFED_DATASETS/<name>`` (default ``/usr/share/datasets/<name>``)."""
    return Path(os.environ.get(DATASETS_ENV) or SYSTEM_DATASETS) / src.name


def download_dir(src: Source) -> Path:
    """Where downloads of ``src`` go: ``<cache>/data/<name>``."""
    return cache_dir() / "data" / src.name


def remotes(src: Source) -> tuple[Remote, ...]:
    """``src``'s downloads, from ``$EDGEFED_DATA_MIRROR`` (same file names) when set."""
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    if not mirror:
        return src.remotes
    return tuple(Remote(f"{mirror}/{r.name}", r.sha256) for r in src.remotes)


# ------------------------------------------------------------------------------ finding


def _file(base: Path, name: str) -> Path:
    names = (name, name.removesuffix(".gz")) if name.endswith(".gz") else (name,)
    for candidate in (base / n for n in names):
        if candidate.is_file():
            return candidate
    also = " (nor its uncompressed form)" if len(names) > 1 else ""
    raise FileNotFoundError(f"root: {base} has no {name}{also}")


def find_files(src: Source, folder: Path) -> list[Path]:
    """``src``'s files in ``folder`` (or in its ``subdir``), in :attr:`Source.files` order.

    ``FileNotFoundError`` naming the folder and the first missing file.
    """
    base = folder / src.subdir if src.subdir and (folder / src.subdir).is_dir() else folder
    return [_file(base, name) for name in src.files]


def locate(name: str, root: str | Path | None = None) -> list[Path]:
    """The files of dataset ``name``, from the first complete folder of the module docstring's
    list, downloading them if none is. ``FileNotFoundError`` naming ``root`` when it is given and
    incomplete; :class:`DatasetUnavailable` when nothing is installed and the download fails."""
    src = source(name)
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"root: {folder} is not a directory")
        return find_files(src, folder)
    for folder in (system_dir(src), download_dir(src)):
        with contextlib.suppress(FileNotFoundError):
            return find_files(src, folder)
    try:
        download(src, download_dir(src))
    except DownloadError as error:
        raise DatasetUnavailable(unavailable_message(src, str(error))) from error
    return find_files(src, download_dir(src))


def unavailable_message(src: Source, reason: str) -> str:
    """One message: where the dataset was looked for, why the download failed, what to do."""
    where = f"{system_dir(src)}"
    install = ""
    if src.debian_package:
        where += f" (Debian's {src.debian_package})"
        install = f"install it with `apt-get install {src.debian_package}`, or "
    bases = {r.url.rsplit("/", 1)[0] for r in remotes(src)}
    names = ", ".join(r.name for r in remotes(src))
    files = f"{names} from {bases.pop()}/" if len(bases) == 1 else names
    return (
        f"dataset: {src.name} is not in {where} nor in {download_dir(src)}, and downloading it "
        f"failed: {reason}. To fix: {install}download {files} into {download_dir(src)} "
        f"(set ${MIRROR_ENV} to an HTTPS mirror holding the same files), or pass "
        f"root=<a folder with the files>"
    )


# ---------------------------------------------------------------------------- download


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes, lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fetch(remote: Remote, folder: Path, timeout: float = TIMEOUT_S) -> Path:
    """Download ``remote`` to ``folder/<name>``, hashing while it streams; the file appears under
    that name only if its SHA-256 is the pinned one. :class:`DownloadError` naming the URL and
    the reason (network, HTTP status, checksum mismatch) otherwise, and no file is left."""
    target = folder / remote.name
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as handle:
        partial = Path(handle.name)
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response:
                while block := response.read(BLOCK):
                    digest.update(block)
                    handle.write(block)
        except (OSError, http.client.HTTPException) as error:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{remote.url}: {error}") from error
    if digest.hexdigest() != remote.sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.url}: SHA-256 {digest.hexdigest()} is not the pinned {remote.sha256}; "
            f"refused the file"
        )
    partial.replace(target)
    return target


def download(src: Source, folder: Path, timeout: float = TIMEOUT_S) -> None:
    """Fetch every file of :func:`remotes` into ``folder``, unpacking archives.

    All files are fetched and verified in a staging folder beside ``folder`` first and moved
    in only when every one arrived intact, so ``folder`` never holds part of a dataset; on any
    failure the staging folder is removed, and so are the folders this call created.
    """
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for remote in remotes(src):
            path = fetch(remote, staging, timeout)
            if path.name.endswith(ARCHIVES):
                with tarfile.open(path) as archive:
                    archive.extractall(staging, filter="data")
                path.unlink()
        folder.mkdir(exist_ok=True)
        for entry in staging.iterdir():
            entry.replace(folder / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):  # kept if the dataset arrived (not empty)
                directory.rmdir()


# --------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Find (or download) each named dataset; print where it is. Exit 1 with the
    :class:`DatasetUnavailable` message, and no traceback, when one cannot be had."""
    parser = argparse.ArgumentParser(
        prog="python -m common.fetch",
        description="Find the system copy of each dataset, or download it (HTTPS, SHA-256).",
    )
    parser.add_argument("names", nargs="*", default=["fashion-mnist"], metavar="NAME",
                        help=f"datasets to fetch: {', '.join(SOURCES)} (default fashion-mnist)")
    args = parser.parse_args(argv)
    for name in args.names:
        try:
            files = locate(name)
        except (ValueError, DatasetUnavailable) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{name}: {files[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
