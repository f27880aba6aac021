"""How a data file's samples are brought to the model's input shape (``frontends.data.load_dataset``)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from verifier.errors import InputShapeError

Shape = tuple[int, ...]


def fmt(shape: Sequence[int]) -> str:
    """A shape as (a, b, c)."""
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def count(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def layout_permutation(data_shape: Shape, model_shape: Shape) -> tuple[tuple[int, ...], str] | None:
    """The axis permutation taking channel-last samples to channel-first ones or the reverse, when the two
    shapes (size-1 axes dropped) are rank >= 3 rotations of each other and the move is unambiguous: exactly one
    of the two rotations fits, and the moved (channel) size occurs once in the data's shape (so that the
    channel axis is not confused with a spatial one)."""
    if len(data_shape) < 3 or len(data_shape) != len(model_shape) or data_shape == model_shape:
        return None
    last_to_front = (data_shape[-1], *data_shape[:-1])
    front_to_back = (*data_shape[1:], data_shape[0])
    fits = [last_to_front == model_shape, front_to_back == model_shape]
    if fits == [True, False] and data_shape.count(data_shape[-1]) == 1:
        n = len(data_shape)
        return (n - 1, *range(n - 1)), "channel-last to channel-first"
    if fits == [False, True] and data_shape.count(data_shape[0]) == 1:
        n = len(data_shape)
        return (*range(1, n), 0), "channel-first to channel-last"
    return None


def to_sample_shape(x: np.ndarray, sample_shape: Shape) -> tuple[np.ndarray, str]:
    """Samples ``x`` (N, ...) as the model's ``(N, *sample_shape)``, and how: unchanged, transposed between
    channel-last and channel-first (``layout_permutation``), or reshaped by element count (which must match:
    else a one-line ``InputShapeError``)."""
    data_shape = tuple(int(d) for d in x.shape[1:])
    n_data, n_model = count(data_shape), count(sample_shape)
    if n_data != n_model:
        raise InputShapeError(f"data samples have shape {fmt(data_shape)} ({n_data} values); the model expects "
                              f"{fmt(sample_shape)} ({n_model} values)")
    if data_shape == sample_shape:
        return x, "as stored"
    squeezed_data = tuple(d for d in data_shape if d != 1)
    squeezed_model = tuple(d for d in sample_shape if d != 1)
    found = layout_permutation(squeezed_data, squeezed_model)
    if found is not None:
        perm, what = found
        x = x.reshape(len(x), *squeezed_data).transpose(0, *(p + 1 for p in perm))
        return (np.ascontiguousarray(x).reshape(len(x), *sample_shape),
                f"transposed {what}: {fmt(data_shape)} -> {fmt(sample_shape)}")
    return x.reshape(len(x), *sample_shape), f"reshaped {fmt(data_shape)} -> {fmt(sample_shape)}"
