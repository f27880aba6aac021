"""Reading ``.npz`` data files safely: each array is checked from its ``.npy`` header before anything is read
or allocated (numbers only, never pickled objects; a size limit; exactly as many bytes as the header says)."""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from verifier.errors import LipverifyError

from .arrays import checked_size


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an ``.npz``, each checked from its ``.npy`` header before it is read: numbers
    only (no pickled objects), within ``arrays.MAX_ARRAY_BYTES``, and exactly as many bytes as the header says."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] != b"PK":
            raise LipverifyError(f"{path}: not an .npz file (arrays x and y) nor a folder of MNIST-format IDX "
                                 "files")
        with zipfile.ZipFile(path) as z:
            members = {name[:-4]: name for name in z.namelist() if name.endswith(".npy")}
            missing = [k for k in ("x", "y") if k not in members]
            if missing:
                found = ", ".join(repr(k) for k in members) or "none"
                raise LipverifyError(f"{path}: the .npz has no array {' or '.join(repr(k) for k in missing)} "
                                     f"(arrays found: {found}); expected arrays 'x' (samples) and 'y' (labels)")
            return _read_member(z, members["x"], path), _read_member(z, members["y"], path)
    except LipverifyError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LipverifyError(f"{path}: cannot read the .npz file ({msg})")


def _read_member(z: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    key = name[:-4]
    info = z.getinfo(name)
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise LipverifyError(f"{path}: array '{key}' has .npy format version {version}; expected 1.0 or 2.0")
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
            raise LipverifyError(f"{path}: array '{key}' has dtype {dtype}; expected numbers (pickled objects are "
                                 "refused)")
        size = checked_size(f"{path}: array '{key}'", shape, dtype)
        count = math.prod(shape)
        if info.file_size != f.tell() + size:
            raise LipverifyError(f"{path}: array '{key}' holds {info.file_size - f.tell()} bytes of data but its "
                                 f"header (shape {tuple(shape)}, {dtype}) needs {size}; truncated or corrupt")
        data = f.read(size)
    if len(data) != size:
        raise LipverifyError(f"{path}: array '{key}' is truncated")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")
