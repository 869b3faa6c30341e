"""The download path, against a real HTTP server on 127.0.0.1 that the tests start. No internet."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jreg import data

from .test_data import HAVE_SHARED, SHARED, isolated_locations  # noqa: F401 - autouse fixture

NAME = "tiny-images-idx3-ubyte"
RAW = data.encode_idx(np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28) % 251)
GOOD = gzip.compress(RAW)
SHA = hashlib.sha256(RAW).hexdigest()
WRONG = gzip.compress(data.encode_idx(np.zeros((3, 28, 28), np.uint8)))  # valid gzip, other content


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        routes, hits = self.server.routes, self.server.hits
        hits[self.path] = hits.get(self.path, 0) + 1
        kind, payload = routes.get(self.path, ("status", 404))
        if kind == "flaky" and hits[self.path] == 1:
            kind, payload = "status", 503
        if kind == "status":
            self.send_error(payload)
            return
        if kind == "wrong":
            payload = WRONG
        if kind == "slow":
            time.sleep(payload)
            payload = GOOD
        body = payload
        if kind == "corrupt":
            body = bytearray(payload)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind in ("truncate", "drop"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if kind == "drop":  # fail mid-transfer: reset the connection
                self.connection.shutdown(2)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.routes, srv.hits = {}, {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = lambda prefix: f"http://127.0.0.1:{srv.server_address[1]}/{prefix}/"
    yield srv
    srv.shutdown()
    srv.server_close()


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def fetch(server, tmp_path, mirrors, **kw):
    return data.download(
        NAME, tmp_path / "cache", sha256=SHA, mirrors=[server.url(m) for m in mirrors], progress=False, **kw
    )


def test_good_download_is_verified_and_cached(server, tmp_path):
    server.routes["/a/" + NAME + ".gz"] = ("ok", GOOD)
    path = fetch(server, tmp_path, ["a"])
    assert path == tmp_path / "cache" / f"{NAME}.gz" and path.read_bytes() == GOOD
    assert only(tmp_path / "cache") == [f"{NAME}.gz"]


@pytest.mark.parametrize("kind", ["corrupt", "wrong", "truncate", "drop", "missing", "server-error"])
def test_bad_first_mirror_falls_back_to_the_next(server, tmp_path, kind):
    route = {
        "corrupt": ("corrupt", GOOD),
        "wrong": ("wrong", GOOD),
        "truncate": ("truncate", GOOD),
        "drop": ("drop", GOOD),
        "missing": ("status", 404),
        "server-error": ("status", 500),
    }[kind]
    server.routes["/bad/" + NAME + ".gz"] = route
    server.routes["/good/" + NAME + ".gz"] = ("ok", GOOD)
    path = fetch(server, tmp_path, ["bad", "good"], retries=2)
    assert path.read_bytes() == GOOD and only(tmp_path / "cache") == [f"{NAME}.gz"]
    assert server.hits["/bad/" + NAME + ".gz"] == (1 if kind == "missing" else 2)  # 404: no retry


@pytest.mark.parametrize(
    "kind, match",
    [
        ("corrupt", "corrupted gzip data"),
        ("wrong", "checksum mismatch"),
        ("truncate", "cut short"),
        ("drop", "cut short|Connection reset|corrupted|truncated"),
    ],
)
def test_every_mirror_bad_leaves_nothing_behind(server, tmp_path, kind, match):
    for m in ("a", "b"):
        server.routes[f"/{m}/{NAME}.gz"] = (kind, GOOD)
    with pytest.raises(data.MNISTError, match=match) as info:
        fetch(server, tmp_path, ["a", "b"], retries=1)
    assert f"could not download {NAME}.gz" in str(info.value)
    assert "JREG_DATA_DIR" in str(info.value) and "load_mnist_small" in str(info.value)
    assert only(tmp_path / "cache") == []  # no partial file, no corrupted file


def test_retry_after_a_transient_server_error(server, tmp_path):
    server.routes["/a/" + NAME + ".gz"] = ("flaky", GOOD)
    assert fetch(server, tmp_path, ["a"], retries=2).read_bytes() == GOOD
    assert server.hits["/a/" + NAME + ".gz"] == 2


def test_timeout(server, tmp_path):
    server.routes["/a/" + NAME + ".gz"] = ("slow", 2.0)
    with pytest.raises(data.MNISTError, match="timed out"):
        fetch(server, tmp_path, ["a"], retries=1, timeout=0.3)
    assert only(tmp_path / "cache") == []


def test_no_network_says_so_and_names_the_two_ways_out(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(data.MNISTError) as info:
        data.download(
            NAME, tmp_path / "cache", sha256=SHA, mirrors=[f"http://127.0.0.1:{port}/"], retries=1, progress=False
        )
    msg = str(info.value)
    assert msg.startswith("no network") and "JREG_DATA_DIR" in msg and "jreg.data.load_mnist_small()" in msg
    assert only(tmp_path / "cache") == []


def test_an_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    server.routes["/a/" + NAME + ".gz"] = ("ok", GOOD)

    def interrupted(url, destination, timeout, progress):
        destination.write_bytes(GOOD[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_fetch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(server, tmp_path, ["a"])
    assert only(tmp_path / "cache") == []


def test_a_previous_good_cache_file_survives_a_failed_download(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}.gz").write_bytes(GOOD)
    server.routes["/a/" + NAME + ".gz"] = ("corrupt", GOOD)
    with pytest.raises(data.MNISTError):
        fetch(server, tmp_path, ["a"], retries=1)
    assert (cache / f"{NAME}.gz").read_bytes() == GOOD


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SHARED, reason=f"the full MNIST files are not at {SHARED}")
def test_load_mnist_downloads_into_the_cache_then_reads_it_offline(server, tmp_path):
    for name in data.SHA256:
        server.routes[f"/m/{name}.gz"] = ("ok", data.mnist_file(name, SHARED, download_missing=False).read_bytes())
    # a broken mirror first: load_mnist goes on to the good one
    train, validation, test = data.load_mnist(mirrors=[server.url("broken"), server.url("m")], progress=False)
    assert train.x.shape == (50_000, 784) and test.y.shape == (10_000,)
    assert only(tmp_path / "cache") == sorted(f"{n}.gz" for n in data.SHA256)
    server.routes.clear()  # now offline: the verified cache serves
    again = data.load_mnist(download=False)
    np.testing.assert_array_equal(again.validation.y, validation.y)
