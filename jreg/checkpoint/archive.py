"""A checkpoint's zip archive, read as foreign bytes: members read only when named, each declared size checked
before anything is allocated, each ``.npy`` header checked against the JSON header."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import MAX_HEADER_BYTES, CheckpointError, _regular_file, parse_json
from .header import _Header

# --------------------------------------------------------------------------- reading: foreign bytes, checked first
#
# A checkpoint is read with ``zipfile`` directly, never with ``np.load``: the JSON header first (its declared size
# capped), then the header is checked field by field, then only the members the header names are read, each after
# its declared size and its ``.npy`` header agree with the shape and dtype the JSON header gives. A member the header
# does not name is never opened, so a forged file costs at most what its header and the arrays it names cost.

_NPY_HEADER_LIMIT = 10_000  # NumPy's own limit on a .npy header's dict (np.lib.format's max_header_size)
_NPY_PREFIX = 12  # magic (6), version (2), header length (up to 4)
_DEFLATE_RATIO = 1032  # deflate's largest expansion: no member holds more bytes than this per compressed byte
_CHUNK = 1 << 24


class _Archive:
    """An open checkpoint zip: members read only when named, sizes checked before anything is allocated."""

    def __init__(self, path: Path):
        self.path = path
        info = _regular_file(path, "checkpoint", "no such checkpoint")
        self.size, self.budget, magic = info.st_size, info.st_size, b""
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            self.zip = zipfile.ZipFile(path)
        except Exception as exc:  # noqa: BLE001 - zipfile parsing foreign bytes: any failure means "not a checkpoint"
            if magic == b"\x93NUMPY":
                raise CheckpointError(
                    f"{path}: is a single .npy array, not a jreg checkpoint (an .npz archive written by jreg.save)"
                ) from exc
            raise CheckpointError(
                f"{path}: not a jreg checkpoint, or truncated or corrupted (not a zip archive: {exc})"
            ) from exc

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.zip.close()

    def member(self, name: str, what: str) -> zipfile.ZipInfo:
        """The zip entry of ``name`` whose declared sizes the file can actually hold."""
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: incomplete checkpoint ({what}: no member {name!r})") from None
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.path}: {what} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise CheckpointError(f"{self.path}: {what}: member {name!r} is corrupted (stored sizes disagree)")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > info.compress_size * _DEFLATE_RATIO + 1024:
                raise CheckpointError(
                    f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, more than its "
                    f"{info.compress_size} compressed bytes can hold"
                )
        else:
            raise CheckpointError(f"{self.path}: {what}: member {name!r} uses compression {info.compress_type}")
        self.budget -= info.compress_size  # members that overlap (a zip bomb) spend more than the file holds
        if self.budget < 0:
            raise CheckpointError(f"{self.path}: {what}: members declare more bytes than the file holds")
        return info

    def read(self, name: str, what: str, dtype: Any, shape: Any, limit: int = 0, said: str = "") -> np.ndarray:
        """Member ``name`` as an array of ``dtype`` and ``shape`` (None: any numeric, at most ``limit`` bytes).

        ``said``: the dtype and shape as the header gives them, for messages (bfloat16 is stored as uint16).
        """
        info = self.member(name, what)
        said = said or f"{dtype}{list(shape or ())}"
        if dtype is not None and shape is not None:
            need = math.prod(shape) * dtype.itemsize
            if not need <= info.file_size <= need + _NPY_PREFIX + _NPY_HEADER_LIMIT:
                raise CheckpointError(
                    f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, but {said} takes {need} "
                    "(plus a .npy header)"
                )
        elif info.file_size > limit + _NPY_PREFIX + _NPY_HEADER_LIMIT:
            raise CheckpointError(
                f"{self.path}: {what}: member {name!r} declares {info.file_size} bytes, more than the {limit} allowed"
            )
        try:
            with self.zip.open(info) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    got_shape, fortran, got = np.lib.format.read_array_header_1_0(fp, _NPY_HEADER_LIMIT)
                elif version == (2, 0):
                    got_shape, fortran, got = np.lib.format.read_array_header_2_0(fp, _NPY_HEADER_LIMIT)
                else:
                    raise ValueError(f".npy format version {version} is not one NumPy writes for numbers")
                self.agree(what, got_shape, got, dtype, shape, said)
                size = info.file_size - fp.tell()
                need = math.prod(got_shape) * got.itemsize
                if size != need:
                    raise CheckpointError(
                        f"{self.path}: {what} holds {size} bytes, but {got}{list(got_shape)} takes {need}"
                    )
                buffer = self.bytes(fp, need, what)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile and NumPy's .npy parser on foreign bytes
            raise CheckpointError(
                f"{self.path}: {what} is truncated or corrupted ({type(exc).__name__}: {exc})"
            ) from exc
        return np.frombuffer(buffer, dtype=got).reshape(got_shape, order="F" if fortran else "C")

    def agree(self, what: str, got_shape: tuple, got: np.dtype, dtype: Any, shape: Any, said: str) -> None:
        if got.hasobject:
            raise CheckpointError(f"{self.path}: {what} holds pickled Python objects, which jreg never loads")
        if dtype is None:
            if got.kind not in "biufc" or got.names is not None or got.subdtype is not None:
                raise CheckpointError(f"{self.path}: {what} is not numeric (dtype {got})")
        elif got != dtype or tuple(got_shape) != shape:
            raise CheckpointError(
                f"{self.path}: {what} is {got}{list(got_shape)} in its .npy member, the header says {said}"
            )

    def bytes(self, fp: Any, n: int, what: str) -> bytearray:
        buffer = bytearray(n)
        view, done = memoryview(buffer), 0
        while done < n:
            chunk = fp.read(min(n - done, _CHUNK))
            if not chunk:
                raise CheckpointError(f"{self.path}: {what} is truncated ({done} of {n} bytes)")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        if fp.read(1):  # also makes zipfile check the member's CRC
            raise CheckpointError(f"{self.path}: {what} holds more bytes than its header says")
        return buffer

    def header(self) -> dict[str, Any]:
        blob = self.read("__header__.npy", "the jreg header", None, None, MAX_HEADER_BYTES)
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise CheckpointError(f"{self.path}: not a jreg checkpoint (its header is not a byte array)")
        parsed = parse_json(blob.tobytes(), f"{self.path}: corrupted checkpoint header")
        return _Header(self.path).check(parsed)


def _open(path: Path) -> _Archive:
    archive = _Archive(path)
    if "__header__.npy" not in archive.zip.NameToInfo:
        archive.zip.close()
        raise CheckpointError(f"{path}: not a jreg checkpoint (no jreg header)")
    return archive
