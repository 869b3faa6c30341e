"""jreg.data: IDX reader, locations, embedded subset, batches and expansion (no network needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jreg
from jreg import data

from .conftest import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JREG_DATA_DIR") or ROOT.parent / "shared" / "data" / "mnist")
HAVE_SHARED = all((SHARED / f"{name}.gz").is_file() or (SHARED / name).is_file() for name in data.SHA256)
needs_shared = pytest.mark.skipif(
    not HAVE_SHARED, reason=f"the full MNIST files are not at {SHARED} (set JREG_DATA_DIR; CI has ../shared)"
)
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path, monkeypatch):
    """No test reads the user's real cache or JREG_DATA_DIR unless it sets them itself."""
    monkeypatch.setenv("JREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JREG_DATA_DIR", raising=False)


def synthetic(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write(path: Path, raw: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# --------------------------------------------------------------------------- reader


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_gzipped_or_not(tmp_path, gz):
    images, labels = synthetic()
    ip = write(tmp_path / "img", data.encode_idx(images), gz)
    lp = write(tmp_path / "lab", data.encode_idx(labels), gz)
    np.testing.assert_array_equal(data.read_idx(ip, hashlib.sha256(data.encode_idx(images)).hexdigest()), images)
    split = data.load_idx_pair(ip, lp)
    x, y = split
    assert x.shape == (6, 784) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    np.testing.assert_allclose(x, images.reshape(6, -1) / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(split.y, labels)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_idx_header_layout():
    raw = data.encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03" and int.from_bytes(raw[4:8], "big") == 2 and len(raw) == 16 + 2 * 784
    assert data.encode_idx(np.zeros(5, np.uint8))[:4] == b"\x00\x00\x08\x01"


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda raw: b"\x00\x00\x09\x03" + raw[4:], r"wrong magic number 0x00000903"),
        (lambda raw: b"\x12\x34" + raw[2:], r"wrong magic number"),
        (lambda raw: raw[:10], r"truncated inside the header"),
        (lambda raw: raw[:-100], r"truncated: header declares shape \(6, 28, 28\)"),
        (lambda raw: raw + b"\x00", r"too long"),
        (lambda raw: raw[:2], r"truncated: 2 bytes"),
    ],
)
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, mangle, match):
    images, _ = synthetic()
    path = write(tmp_path / "bad-images", mangle(data.encode_idx(images)), gz=True)
    with pytest.raises(data.MNISTError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_corrupted_gzip(tmp_path):
    images, _ = synthetic()
    blob = bytearray(gzip.compress(data.encode_idx(images)))
    blob[len(blob) // 2 :] = b"\xff" * (len(blob) - len(blob) // 2)
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(data.MNISTError, match=r"images.gz: corrupted gzip data"):
        data.read_idx(path)
    path.write_bytes(gzip.compress(data.encode_idx(images))[:-20])  # cut-off gzip stream
    with pytest.raises(data.MNISTError, match=r"corrupted gzip data"):
        data.read_idx(path)


def test_checksum_mismatch(tmp_path):
    images, _ = synthetic()
    path = write(tmp_path / "images.gz", data.encode_idx(images), gz=True)
    with pytest.raises(data.MNISTError, match=r"images.gz: checksum mismatch.*expected 0000"):
        data.read_idx(path, "0" * 64)


def test_image_label_count_mismatch(tmp_path):
    images, labels = synthetic(6)
    ip = write(tmp_path / "imgs.gz", data.encode_idx(images), gz=True)
    lp = write(tmp_path / "labs.gz", data.encode_idx(labels[:5]), gz=True)
    with pytest.raises(data.MNISTError, match=r"imgs.gz holds 6 images but .*labs.gz holds 5 labels"):
        data.load_idx_pair(ip, lp)
    with pytest.raises(data.MNISTError, match=r"must hold images \(rank 3\)"):
        data.load_idx_pair(lp, lp)


# --------------------------------------------------------------------------- locations


def test_missing_files_without_download_say_where_they_looked_and_the_ways_out(tmp_path):
    with pytest.raises(data.MNISTError) as info:
        data.load_mnist(tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert "not found" in msg and "nowhere" in msg and "JREG_DATA_DIR" in msg and "load_mnist_small" in msg


def test_a_corrupted_local_file_is_refused_not_skipped(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data.encode_idx(synthetic()[0])))
    with pytest.raises(data.MNISTError, match=r"d/train-images-idx3-ubyte.gz: checksum mismatch"):
        data.load_mnist(folder, download=False)


def link_shared(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in data.SHA256:
        src = data.mnist_file(name, SHARED, download_missing=False)
        (folder / src.name).symlink_to(src)
    return folder


@needs_shared
def test_lookup_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    good = link_shared(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.SHA256:
        (bad / f"{name}.gz").write_bytes(gzip.compress(data.encode_idx(synthetic()[0])))
    monkeypatch.setenv("JREG_DATA_DIR", str(bad))
    name = "t10k-labels-idx1-ubyte"
    assert data.mnist_file(name, good, download_missing=False).parent == good  # data_dir first
    with pytest.raises(data.MNISTError, match="bad/t10k-labels"):  # then JREG_DATA_DIR
        data.mnist_file(name, None, download_missing=False)
    monkeypatch.delenv("JREG_DATA_DIR")
    link_shared(tmp_path / "cache")  # JREG_CACHE_DIR from the fixture
    assert data.mnist_file(name, None, download_missing=False).parent == tmp_path / "cache"


# --------------------------------------------------------------------------- real files


@pytest.mark.slow
@needs_shared
def test_load_mnist_real_files_via_jreg_data_dir(monkeypatch):
    monkeypatch.setenv("JREG_DATA_DIR", str(SHARED))
    train, validation, test = data.load_mnist(download=False)
    mnist = data.load_mnist(download=False)
    assert mnist.train.x.shape == (50_000, 784) and mnist.validation.x.shape == (10_000, 784)
    assert mnist.test.x.shape == (10_000, 784)
    for x, y in (train, validation, test):
        assert x.dtype == jnp.float32 and y.dtype == jnp.int32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    full_labels = np.concatenate([np.asarray(train.y), np.asarray(validation.y)])
    assert np.bincount(full_labels).tolist() == MNIST_TRAIN_CLASS_COUNTS
    assert np.bincount(np.asarray(test.y)).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the embedded subset is exactly the first 1,000 training images and the whole test set
    small_train, small_test = data.load_mnist_small()
    np.testing.assert_array_equal(small_train.x, train.x[:1000])
    np.testing.assert_array_equal(small_train.y, train.y[:1000])
    np.testing.assert_array_equal(small_test.x, test.x)
    np.testing.assert_array_equal(small_test.y, test.y)


@pytest.mark.slow
@needs_shared
def test_embedded_subset_is_reproduced_byte_for_byte_by_its_script(tmp_path):
    out = tmp_path / "_data"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_mnist_small.py"), str(SHARED), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    shipped = ROOT / "jreg" / "_data"
    for f in sorted(p.name for p in out.iterdir()):
        assert (out / f).read_bytes() == (shipped / f).read_bytes(), f


# --------------------------------------------------------------------------- embedded subset


def test_load_mnist_small_offline():
    train, test = data.load_mnist_small()
    small = data.load_mnist_small()
    assert small.train.x.shape == (1000, 784) and small.test.x.shape == (10_000, 784)
    assert train.y.shape == (1000,) and test.y.shape == (10_000,)
    assert train.x.dtype == jnp.float32 and train.y.dtype == jnp.int32
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    assert np.asarray(train.y[:10]).tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # MNIST's first ten labels
    assert np.bincount(np.asarray(test.y)).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    size = sum((ROOT / "jreg" / "_data" / e["file"]).stat().st_size for e in data._small_manifest()["files"].values())
    assert size <= 2.5e6


def test_load_mnist_small_verifies_its_checksums(monkeypatch):
    manifest = data._small_manifest()
    manifest["files"]["train_labels"]["sha256"] = "f" * 64
    monkeypatch.setattr(data, "_small_manifest", lambda: manifest)
    with pytest.raises(data.MNISTError, match=r"mnist-small-train-labels-idx1-ubyte.gz: checksum mismatch"):
        data.load_mnist_small()


def test_shipped_manifest_matches_the_files():
    manifest = json.loads((ROOT / "jreg" / "_data" / "mnist_small.json").read_text())
    for entry in manifest["files"].values():
        raw = gzip.decompress((ROOT / "jreg" / "_data" / entry["file"]).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]


# --------------------------------------------------------------------------- batches and expansion


@pytest.mark.parametrize("variant", VARIANTS)
def test_batches_shuffle_and_cover_every_example(variant):
    x = jnp.arange(23 * 2, dtype=jnp.float32).reshape(23, 2)
    y = jnp.arange(23)
    b = variant(lambda d, k: data.batches(d, 5, k))((x, y), jax.random.key(0))
    assert b.x.shape == (4, 5, 2) and b.y.shape == (4, 5) and b.rest_x.shape == (3, 2)
    seen = np.concatenate([np.asarray(b.y).ravel(), np.asarray(b.rest_y)])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    np.testing.assert_array_equal(b.x[..., 0], 2 * b.y)  # x and y stay paired
    again = data.batches((x, y), 5, jax.random.key(0))
    np.testing.assert_array_equal(again.y, b.y)


def test_batches_drive_a_scan():
    x, y = jnp.ones((20, 3)), jnp.arange(20)
    b = data.batches((x, y), 4, jax.random.key(1))
    total, _ = jax.lax.scan(lambda c, batch: (c + batch[1].sum(), None), 0, (b.x, b.y))
    assert int(total) == sum(range(20))


def test_batches_bad_arguments():
    x, y = jnp.ones((4, 3)), jnp.arange(4)
    with pytest.raises(jreg.JregError, match=r"batch_size must be at most the number of examples \(4\), got 5"):
        data.batches((x, y), 5, jax.random.key(0))
    with pytest.raises(jreg.JregError, match="batch_size must be a positive integer"):
        data.batches((x, y), 0, jax.random.key(0))
    with pytest.raises(jreg.JregError, match="same number of examples"):
        data.batches((x, y[:3]), 2, jax.random.key(0))
    with pytest.raises(jreg.JregError, match="key must be a single JAX PRNG key"):
        data.batches((x, y), 2, 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_expand_by_one_pixel_shifts(variant):
    img = np.zeros((2, 28, 28), np.float32)
    img[0, 5, 7] = 1.0
    img[1, 0, 27] = 1.0  # on the border: shifting up or right pushes it out
    xs, ys = variant(data.expand)((jnp.asarray(img.reshape(2, -1)), jnp.array([3, 8])))
    assert xs.shape == (10, 784) and ys.tolist() == [3, 8] * 5
    where = [tuple(np.argwhere(np.asarray(xs[i]).reshape(28, 28)).ravel()) for i in range(10)]
    assert where[0:2] == [(5, 7), (0, 27)]  # originals
    assert where[2:4] == [(6, 7), (1, 27)]  # down
    assert where[4:6] == [(4, 7), ()]  # up: the border pixel is gone, zero-filled
    assert where[6:8] == [(5, 8), ()]  # right
    assert where[8:10] == [(5, 6), (0, 26)]  # left


def test_expand_mnist_small_five_fold():
    train, _ = data.load_mnist_small()
    xs, ys = jax.jit(data.expand)(train)
    assert xs.shape == (5000, 784) and ys.shape == (5000,)
    np.testing.assert_array_equal(xs[:1000], train.x)
    with pytest.raises(jreg.JregError, match=r"x must have shape \(N, 784\)"):
        data.expand((jnp.ones((3, 100)), jnp.arange(3)))


def test_one_hot_helper():
    np.testing.assert_array_equal(data.one_hot(jnp.array([1, 0]), 3), [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(jreg.JregError, match=r"labels must lie in \[0, 10\)"):
        data.one_hot(jnp.array([10]))
