"""Build jreg's embedded MNIST subset (jreg/_data/) from the four full MNIST files.

    python scripts/make_mnist_small.py [FOLDER] [--out DIR]   # FOLDER defaults to $JREG_DATA_DIR

Writes the first 1,000 training images and labels and the full 10,000-image
test set as gzipped IDX files (gzip with mtime=0, so the output is
byte-for-byte reproducible), and mnist_small.json with the SHA-256 of each
file's decompressed bytes, which load_mnist_small() verifies on every load.
The full files are checked against their standard checksums first.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from pathlib import Path

from jreg import data

OUT = Path(__file__).resolve().parents[1] / "jreg" / "_data"
FILES = {
    "train_images": ("mnist-small-train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", data.SMALL_TRAIN_SIZE),
    "train_labels": ("mnist-small-train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte", data.SMALL_TRAIN_SIZE),
    "test_images": ("mnist-small-t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", None),
    "test_labels": ("mnist-small-t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", None),
}


def main(folder: str | None, out: Path = OUT) -> None:
    folder = folder or os.environ.get("JREG_DATA_DIR")
    out.mkdir(parents=True, exist_ok=True)
    if not folder:
        sys.exit("give the folder with the four MNIST files, or set JREG_DATA_DIR")
    manifest = {
        "description": "First 1,000 MNIST training images/labels and the full t10k test set, "
        "made by scripts/make_mnist_small.py",
        "source_sha256": {},
        "files": {},
    }
    for role, (out_name, source, count) in FILES.items():
        path = data.mnist_file(source, folder, download_missing=False)
        array = data.read_idx(path, data.SHA256[source])
        manifest["source_sha256"][source] = data.SHA256[source]
        subset = array if count is None else array[:count]
        raw = data.encode_idx(subset)
        (out / out_name).write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        manifest["files"][role] = {
            "file": out_name,
            "shape": list(subset.shape),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        print(f"{out_name}: shape {subset.shape}, {(out / out_name).stat().st_size / 1e6:.2f} MB")
    (out / "mnist_small.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum((out / f[0]).stat().st_size for f in FILES.values())
    print(f"total {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="folder with the four MNIST files (default $JREG_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = parser.parse_args()
    main(args.folder, args.out)
