"""Reading MNIST-format IDX files (optionally gzip-compressed): the format of MNIST and Fashion-MNIST."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from verifier.errors import LipverifyError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (magic: two zero bytes, a dtype code, the number of dimensions)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LipverifyError(f"{path}: cannot read IDX file ({e})")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise LipverifyError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_DTYPES[data[2]])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(data) < offset + count * dtype.itemsize:
        raise LipverifyError(f"{path}: truncated IDX file")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims)


def find_idx(folder: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The images and labels files of ``split`` ('train' or 'test', MNIST naming) in ``folder``."""
    folder = Path(folder)
    prefix = {"train": "train", "test": "t10k"}[split]
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [folder / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            raise LipverifyError(f"{folder}: no {prefix}-{kind}[.gz] file (MNIST-format folder expected)")
        found.append(match)
    return found[0], found[1]


def load_idx_split(folder: str | os.PathLike, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] with shape (N, 28, 28), and int64 labels."""
    images, labels = find_idx(folder, split)
    x, y = read_idx(images), read_idx(labels)
    if len(x) != len(y):
        raise LipverifyError(f"{folder}: {len(x)} images but {len(y)} labels")
    return x.astype(np.float32) / 255.0, y.astype(np.int64)
