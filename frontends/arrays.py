"""The size limit every data file's arrays obey, checked from the file's header before anything is allocated:
at most ``MAX_ARRAY_BYTES`` as stored and as the float32 samples the array becomes (2^29 values)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from verifier.errors import LipverifyError

MAX_ARRAY_BYTES = 2 * 2**30


def checked_size(where: str, shape: Sequence[int], dtype: np.dtype, limit: int = MAX_ARRAY_BYTES) -> int:
    """The stored size in bytes of an array of ``shape`` and ``dtype`` that a header announces; a one-line
    ``LipverifyError`` naming ``where`` when it, or its float32 copy, would exceed ``limit``."""
    count = math.prod(int(d) for d in shape)
    needed = count * max(dtype.itemsize, 4)
    if needed > limit:
        raise LipverifyError(f"{where}: its header claims shape {tuple(int(d) for d in shape)} ({needed / 2**30:.3g} "
                             f"GiB as float32 samples); the limit is {limit / 2**30:g} GiB")
    return count * dtype.itemsize
