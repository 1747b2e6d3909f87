"""Dataset files: the system copy, verified downloads from a real HTTPS server on 127.0.0.1
(serving the real gzip IDX files of Debian's copy), checksum refusals that leave nothing behind,
and ``python -m common.fetch``'s messages."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pickle
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common import data, fetch

REPO = Path(__file__).resolve().parents[1]
SYSTEM = Path(fetch.SYSTEM_DATASETS) / "fashion-mnist"
FMNIST = fetch.SOURCES["fashion-mnist"]


@dataclass
class Server:
    """An HTTPS file server on 127.0.0.1 whose certificate ``SSL_CERT_FILE`` trusts."""

    url: str
    root: Path
    ca_file: Path


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A real HTTPS server for ``tmp_path/www``; stopped (thread joined) when the test ends.
    ``$EDGEFED_DATASETS`` and ``$EDGEFED_CACHE`` point at empty folders, so nothing is found
    before the download."""
    root = tmp_path / "www"
    root.mkdir()
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    monkeypatch.setenv(fetch.DATASETS_ENV, str(tmp_path / "no-system-copy"))
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    data.read_raw.cache_clear()
    try:
        yield Server(f"https://127.0.0.1:{server.server_address[1]}", root, cert_file)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        data.read_raw.cache_clear()
        assert not thread.is_alive()


def _serve_system_copy(server: Server) -> tuple[fetch.Remote, ...]:
    """Debian's real Fashion-MNIST files on ``server``, pinned to their own SHA-256s."""
    remotes = []
    for name in FMNIST.files:
        shutil.copy(SYSTEM / name, server.root / name)
        remotes.append(fetch.Remote(f"{server.url}/{name}", fetch.sha256_of(SYSTEM / name)))
    return tuple(remotes)


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_the_system_copy_is_found_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.DATASETS_ENV, raising=False)
    monkeypatch.setenv(fetch.MIRROR_ENV, "https://127.0.0.1:9")  # a download would fail
    assert fetch.locate("fashion-mnist") == [SYSTEM / name for name in FMNIST.files]


def test_download_over_https_verified_then_read(
    https: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fetch.SOURCES, "fashion-mnist",
                        replace(FMNIST, remotes=_serve_system_copy(https)))
    train_x, train_y, test_x, test_y = data.read_raw("fashion-mnist")
    cache = fetch.cache_dir()
    assert _leftovers(cache) == ["data", "data/fashion-mnist",
                                 *sorted(f"data/fashion-mnist/{n}" for n in FMNIST.files)]
    expected = data.read_raw("fashion-mnist", str(SYSTEM))
    assert train_x.shape == (60000, 1, 28, 28) and test_y.shape == (10000,)
    for got, want in zip((train_x, train_y, test_x, test_y), expected, strict=True):
        assert np.array_equal(got, want)
    # the second lookup finds the cache and downloads nothing
    shutil.rmtree(https.root)
    assert fetch.locate("fashion-mnist")[0].parent == cache / "data" / "fashion-mnist"


def test_checksum_mismatch_is_refused_and_leaves_nothing(
    https: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = list(_serve_system_copy(https))
    remotes[2] = replace(remotes[2], sha256=remotes[3].sha256)  # t10k-images: wrong pin
    monkeypatch.setitem(fetch.SOURCES, "fashion-mnist", replace(FMNIST, remotes=tuple(remotes)))
    with pytest.raises(fetch.DatasetUnavailable) as caught:
        data.read_raw("fashion-mnist")
    message = str(caught.value)
    assert f"{https.url}/t10k-images-idx3-ubyte.gz: SHA-256 " in message
    assert f"is not the pinned {remotes[3].sha256}; refused" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not fetch.cache_dir().exists()  # not the two verified files, no .part, no folders


def test_http_errors_and_plain_http_are_refused(https: Server) -> None:
    missing = fetch.Remote(f"{https.url}/absent.gz", "0" * 64)
    target = https.root.parent / "target"
    target.mkdir()
    with pytest.raises(fetch.DownloadError, match=r"absent.gz: HTTP Error 404"):
        fetch.fetch(missing, target)
    assert _leftovers(target) == []
    with pytest.raises(ValueError, match="url: 'http://example.org/x.gz' is not an https"):
        fetch.Remote("http://example.org/x.gz", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        fetch.Remote("https://example.org/x.gz", "ABC")


def test_archive_download_is_unpacked(https: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = https.root.parent / "cifar-10-batches-py"
    batches.mkdir()
    for i, name in enumerate(fetch.SOURCES["cifar10"].files):
        with (batches / name).open("wb") as handle:
            pickle.dump({b"data": np.full((2, 3072), i, np.uint8), b"labels": [i, 9]}, handle)
    archive = https.root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    remote = fetch.Remote(f"{https.url}/{archive.name}", fetch.sha256_of(archive))
    monkeypatch.setitem(fetch.SOURCES, "cifar10",
                        replace(fetch.SOURCES["cifar10"], remotes=(remote,)))
    train_x, train_y, test_x, test_y = data.read_raw("cifar10")
    assert train_x.shape == (10, 3, 32, 32) and test_y.tolist() == [5, 9]
    folder = fetch.cache_dir() / "data" / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]  # archive gone


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common.fetch", *args], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_cli_names_the_system_copy() -> None:
    env = {k: v for k, v in os.environ.items() if k != fetch.DATASETS_ENV}
    done = subprocess.run([sys.executable, "-m", "common.fetch"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"fashion-mnist: {SYSTEM}\n")


def test_cli_refuses_unofficial_bytes_with_one_message(https: Server) -> None:
    """The real pins against Debian's repacked copy (same images, other gzip bytes) served as a
    mirror: refused, exit 1, one message naming the package and the URL, no traceback."""
    _serve_system_copy(https)
    cache = https.root.parent / "cli-cache"
    done = _cli(**{fetch.MIRROR_ENV: https.url, fetch.CACHE_ENV: str(cache),
                   fetch.DATASETS_ENV: str(https.root.parent / "none"),
                   "SSL_CERT_FILE": str(https.ca_file)})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: dataset: fashion-mnist is not in ")
    assert f"{https.url}/train-images-idx3-ubyte.gz: SHA-256 " in done.stderr
    assert FMNIST.remotes[0].sha256 in done.stderr
    assert "apt-get install dataset-fashion-mnist" in done.stderr
    assert not cache.exists()


def test_cli_unknown_dataset() -> None:
    done = _cli("mnist")
    assert done.returncode == 1 and "dataset: unknown dataset 'mnist'" in done.stderr
