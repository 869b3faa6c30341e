"""MNIST for jreg: IDX reader, verified download with cache, an embedded offline subset,
shuffled mini-batches for ``lax.scan``, and Nielsen's one-pixel-shift expansion.

Splits follow Nielsen's book: training = the first 50,000 images of the MNIST
training file, validation = its last 10,000, test = the 10,000 t10k images.
Images are float32 in [0, 1] of shape ``(N, 784)``; labels are int32 ``(N,)``.

Where :func:`load_mnist` looks for the four standard files (each ``NAME`` or
``NAME.gz``), in order:

1. ``data_dir``, if given;
2. the folder in the environment variable ``JREG_DATA_DIR``;
3. the per-user cache: ``$JREG_CACHE_DIR``, else ``$XDG_CACHE_HOME/jreg/mnist``,
   else ``~/.cache/jreg/mnist``;
4. a download into that cache (``download=True``), from the public mirrors in
   :data:`MIRRORS`, tried in turn, over HTTPS.

Every file is checked against the SHA-256 of its *decompressed* bytes before
it is used or cached; a mismatch, a bad header, a truncated or corrupted file
raises :class:`MNISTError` naming the file and the problem.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_positive_int
from ._errors import JregError

# mini-batches and expansion live in jreg.batching; every name stays importable from here, as documented
from .batching import Batches as Batches
from .batching import _pair as _pair
from .batching import _shift as _shift
from .batching import batch_indices as batch_indices
from .batching import batches as batches
from .batching import expand as expand
from .batching import one_hot as one_hot
from .io import _file_mode, interactive

#: The four standard MNIST files and the SHA-256 of their decompressed bytes.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Public HTTPS mirrors of the gzipped files, tried in this order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

TRAIN_SIZE = 50_000  # Nielsen's split of the 60,000 training images
SMALL_TRAIN_SIZE = 1_000
_SMALL_PACKAGE = "jreg._data"
_SMALL_MANIFEST = "mnist_small.json"


class MNISTError(JregError):
    """A missing, corrupted or unreadable MNIST file, or a failed download."""


class Split(NamedTuple):
    """One data split: ``x`` float32 ``(N, 784)`` in [0, 1], ``y`` int32 labels ``(N,)``."""

    x: jax.Array
    y: jax.Array


class MNIST(NamedTuple):
    """Nielsen's three splits: ``train, validation, test = load_mnist()``."""

    train: Split
    validation: Split
    test: Split


class MNISTSmall(NamedTuple):
    """The embedded subset: ``train, test = load_mnist_small()``."""

    train: Split
    test: Split


# --------------------------------------------------------------------------- IDX files


def _decompressed_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MNISTError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise MNISTError(f"{path}: corrupted gzip data ({exc})") from exc
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an unsigned-byte IDX file into a uint8 array of its declared shape."""
    if len(data) < 4:
        raise MNISTError(f"{name}: truncated: {len(data)} bytes is shorter than an IDX header")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise MNISTError(
            f"{name}: wrong magic number 0x{data[:4].hex()}; an MNIST IDX file starts with "
            "0x00000801 (labels) or 0x00000803 (images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MNISTError(f"{name}: truncated inside the header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise MNISTError(f"{name}: {what}: header declares shape {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array of rank 1 (labels) or 3 (images)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise JregError(f"array must have rank 1 (labels) or 3 (images), got shape {array.shape}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def read_idx(path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a uint8 array, checking its SHA-256 if given.

    The checksum is over the decompressed bytes, so the same value covers
    ``NAME`` and ``NAME.gz``.
    """
    path = Path(path)
    data = _decompressed_bytes(path)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise MNISTError(
                f"{path}: checksum mismatch: SHA-256 of the decompressed bytes is {digest}, expected {sha256}; "
                "the file is corrupted or not the standard MNIST file"
            )
    return parse_idx(data, str(path))


def _images_labels(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> Split:
    if images.ndim != 3 or labels.ndim != 1:
        raise MNISTError(
            f"{images_name} must hold images (rank 3) and {labels_name} labels (rank 1), "
            f"got shapes {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise MNISTError(
            f"{images_name} holds {images.shape[0]} images but {labels_name} holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise MNISTError(f"{labels_name}: labels must be digits 0-9, found {int(labels.max())}")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    return Split(jnp.asarray(x), jnp.asarray(labels.astype(np.int32)))


def load_idx_pair(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    images_sha256: str | None = None,
    labels_sha256: str | None = None,
) -> Split:
    """Read any images/labels pair of IDX files (gzipped or not) into a :class:`Split`.

    Checks each file's structure (and checksum, if given) and that both hold
    the same number of examples; pixels are scaled to [0, 1].
    """
    return _images_labels(read_idx(images, images_sha256), read_idx(labels, labels_sha256), str(images), str(labels))


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """The per-user cache folder for the MNIST files."""
    if os.environ.get("JREG_CACHE_DIR"):
        return Path(os.environ["JREG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jreg" / "mnist"


def _find(name: str, folder: Path) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _search_path(data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    places = []
    if data_dir is not None:
        places.append(("data_dir", Path(data_dir).expanduser()))
    if os.environ.get("JREG_DATA_DIR"):
        places.append(("JREG_DATA_DIR", Path(os.environ["JREG_DATA_DIR"]).expanduser()))
    places.append(("cache", cache_dir()))
    return places


# --------------------------------------------------------------------------- download


def _fetch(url: str, destination: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``destination``, with a progress bar; raise on a short read.

    The bar is drawn only on a terminal; on a log file or in CI, one line when the transfer ends instead."""
    from tqdm.auto import tqdm

    bar_shown = progress and interactive(sys.stderr)
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https mirrors, or the user's
        total = response.headers.get("Content-Length")
        total = int(total) if total is not None else None
        received = 0
        name = url.rsplit("/", 1)[-1]
        with (
            open(destination, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not bar_shown, file=sys.stderr) as bar,
        ):
            while chunk := response.read(1 << 16):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received != total:
        raise MNISTError(f"{url}: transfer cut short ({received} of {total} bytes)")
    if progress and not bar_shown:
        print(f"downloaded {name}: {received} bytes from {url}", file=sys.stderr, flush=True)


def download(
    name: str,
    folder: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    progress: bool = True,
) -> Path:
    """Download ``name.gz`` into ``folder`` from the first mirror that serves a verified copy.

    The bytes go to a temporary file in ``folder``; only after the SHA-256 of
    the decompressed content matches (``sha256``, default the standard value
    for ``name``) is it renamed to ``folder/name.gz``. A failed, interrupted or
    corrupted transfer leaves nothing behind. Each mirror is tried ``retries``
    times (with a short back-off) before the next.

    Returns:
        The path of the verified file.
    """
    sha256 = sha256 or SHA256.get(name)
    if sha256 is None:
        raise JregError(f"name must be one of {sorted(SHA256)} (or give sha256), got {name!r}")
    mirrors = tuple(MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise JregError("mirrors must list at least one base URL")
    retries = check_positive_int(retries, "retries")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.gz"
    failures: list[str] = []
    offline = True
    for base in mirrors:
        url = base.rstrip("/") + f"/{name}.gz"
        for attempt in range(retries):
            failed = _attempt(url, name, folder, target, sha256, timeout, progress)
            if failed is None:
                return target
            failure, reached, final = failed
            failures.append(failure)
            offline = offline and not reached
            if final:
                break  # a 404 will not change on retry; a 5xx may
            if attempt + 1 < retries:
                time.sleep(0.5 * (attempt + 1))
    lead = "no network: could not reach any MNIST mirror" if offline else f"could not download {name}.gz"
    raise MNISTError(
        f"{lead}.\n  " + "\n  ".join(failures) + "\nTwo ways out: set JREG_DATA_DIR to a folder holding the four "
        "MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz), or use the embedded subset: jreg.data.load_mnist_small()."
    )


def _attempt(
    url: str, name: str, folder: Path, target: Path, sha256: str, timeout: float, progress: bool
) -> tuple[str, bool, bool] | None:
    """One try at ``url``: ``None`` when ``target`` now holds the verified file, else ``(failure, reached, final)``:
    what went wrong, whether the mirror was reached (not offline), whether a retry is pointless (HTTP 4xx). The
    bytes go to a temporary file in ``folder``, removed whatever happens."""
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _file_mode(target))
    try:
        _fetch(url, tmp, timeout, progress)
        read_idx(tmp, sha256)  # verify before anything is cached
        os.replace(tmp, target)
        return None
    except MNISTError as exc:
        return f"{url}: {exc}".replace(f"{tmp}: ", ""), True, False
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.reason}", True, exc.code < 500
    except http.client.HTTPException as exc:
        return f"{url}: transfer cut short ({exc!r})", True, False
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        no_route = getattr(reason, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH)
        offline = isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or no_route
        return f"{url}: {reason}", not offline, False
    finally:
        tmp.unlink(missing_ok=True)


def mnist_file(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download_missing: bool = True,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """The path of a verified copy of one standard MNIST file, looking where :func:`load_mnist` looks."""
    if name not in SHA256:
        raise JregError(f"name must be one of {sorted(SHA256)}, got {name!r}")
    places = _search_path(data_dir)
    for _, folder in places:
        found = _find(name, folder)
        if found is not None:
            read_idx(found, SHA256[name])  # a corrupted local file is an error, not a reason to look further
            return found
    if not download_missing:
        looked = "; ".join(f"{label}: {folder}" for label, folder in places)
        raise MNISTError(
            f"{name}(.gz) not found (looked in {looked}) and download=False. Set JREG_DATA_DIR to a folder "
            "with the four MNIST files, pass download=True, or use jreg.data.load_mnist_small()."
        )
    return download(name, cache_dir(), mirrors=mirrors, progress=progress)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
) -> MNIST:
    """MNIST in Nielsen's split: ``train, validation, test = load_mnist()``.

    ``train`` is the first 50,000 training images, ``validation`` the last
    10,000, ``test`` the 10,000 t10k images; each unpacks as ``x, y``
    (float32 ``(N, 784)`` in [0, 1], int32 ``(N,)``). See the module
    docstring for where the files are looked for, and how they are checked.

    Args:
        data_dir: a folder with the four files (``NAME`` or ``NAME.gz``), looked at first.
        download: fetch missing files into the cache; with ``False`` a missing file is an error.
        mirrors: base URLs to download from instead of :data:`MIRRORS`.
        progress: show a progress bar while downloading.
    """
    paths = {
        name: mnist_file(name, data_dir, download_missing=download, mirrors=mirrors, progress=progress)
        for name in SHA256
    }
    arrays = {name: read_idx(path, SHA256[name]) for name, path in paths.items()}
    full = _images_labels(
        arrays["train-images-idx3-ubyte"],
        arrays["train-labels-idx1-ubyte"],
        str(paths["train-images-idx3-ubyte"]),
        str(paths["train-labels-idx1-ubyte"]),
    )
    test = _images_labels(
        arrays["t10k-images-idx3-ubyte"],
        arrays["t10k-labels-idx1-ubyte"],
        str(paths["t10k-images-idx3-ubyte"]),
        str(paths["t10k-labels-idx1-ubyte"]),
    )
    return MNIST(
        Split(full.x[:TRAIN_SIZE], full.y[:TRAIN_SIZE]),
        Split(full.x[TRAIN_SIZE:], full.y[TRAIN_SIZE:]),
        test,
    )


# --------------------------------------------------------------------------- embedded subset


def _small_manifest() -> dict[str, Any]:
    text = resources.files(_SMALL_PACKAGE).joinpath(_SMALL_MANIFEST).read_text()
    return json.loads(text)


def load_mnist_small() -> MNISTSmall:
    """The embedded subset, offline: ``train, test = load_mnist_small()``.

    ``train`` is the first 1,000 images of the MNIST training file (the set of
    Nielsen's chapter-3 overfitting experiment); ``test`` is the full 10,000-image
    t10k set. The files ship with the package (made by ``scripts/make_mnist_small.py``)
    and their SHA-256 checksums are verified on every load.
    """
    manifest = _small_manifest()
    root = resources.files(_SMALL_PACKAGE)
    arrays = {}
    for role, entry in manifest["files"].items():
        with resources.as_file(root.joinpath(entry["file"])) as path:
            arrays[role] = read_idx(path, entry["sha256"])
    names = {role: entry["file"] for role, entry in manifest["files"].items()}
    train = _images_labels(arrays["train_images"], arrays["train_labels"], names["train_images"], names["train_labels"])
    test = _images_labels(arrays["test_images"], arrays["test_labels"], names["test_images"], names["test_labels"])
    return MNISTSmall(train, test)
