"""What a forged checkpoint costs to load: a valid jreg checkpoint plus one member its header never names.

The extra member is ``--mib`` MiB of zeros (default 1,430: about 1.5 GB), deflated, so the file
itself stays about 1.5 MB; its CRC is correct, so only reading it in full could tell it apart.
Prints the file size, what ``jreg.load`` did, its time and the process's peak RSS.

    python benchmarks/forged_member.py [--mib 1430] [--path /tmp/forged.npz]

To measure another checkout (e.g. the code before issue 12), run the same command with
``PYTHONPATH=/path/to/that/checkout``: jreg is imported from there.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import struct
import time
import zipfile
import zlib

import jax

import jreg


def zip_bytes(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A minimal zip archive (no zip64): ``(name, stored bytes, method, crc, uncompressed size)`` per member."""
    out, central = bytearray(), bytearray()
    for name, raw, method, crc, size in members:
        encoded = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), size, len(encoded), 0)
        out += encoded + raw
        header = (0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(raw), size, len(encoded), 0, 0, 0, 0, 0, offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", *header) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def zeros_deflated(mib: int) -> tuple[bytes, int]:
    """``mib`` MiB of zeros, raw-deflated block by block, and their CRC-32."""
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    raw = first + block * (mib - 1) + compressor.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return raw, crc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1430, help="declared size of the unnamed member, in MiB")
    ap.add_argument("--path", default="/tmp/jreg-forged-member.npz")
    args = ap.parse_args()
    params = jreg.mlp([6, 4, 3]).init(jax.random.key(0))
    good = jreg.save(args.path, params, step=1).read_bytes()
    members = []
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        for info in archive.infolist():
            data = archive.read(info)
            members.append((info.filename, data, 0, zlib.crc32(data), len(data)))
    raw, crc = zeros_deflated(args.mib)
    members.append(("extra.npy", raw, 8, crc, args.mib << 20))
    with open(args.path, "wb") as f:
        f.write(zip_bytes(members))
    print(f"jreg from {os.path.dirname(jreg.__file__)}")
    print(f"file {os.path.getsize(args.path):,} bytes; unnamed member declares {args.mib << 20:,} bytes")
    started = time.perf_counter()
    try:
        print(f"loaded: step {jreg.load(args.path).step}")
    except Exception as exc:  # noqa: BLE001 - report whatever the loader did
        print(f"refused: {type(exc).__name__}: {str(exc)[:160]}")
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load took {seconds:.2f} s; peak RSS of the whole process {rss:.0f} MiB")
    os.unlink(args.path)


if __name__ == "__main__":
    main()
