"""Spatial padding as ONNX defines it for Conv, ConvTranspose and the pooling ops (explicit pads and auto_pad)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def resolve_pads(auto_pad: str, pads: Sequence[int], sizes: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis.

    ``pads`` is the ONNX layout ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``. For ``SAME_UPPER`` /
    ``SAME_LOWER`` the output size is ``ceil(in / stride)`` and the odd extra pixel goes to the end (UPPER) or
    the beginning (LOWER); ``VALID`` means no padding.
    """
    n = len(sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return out
    if auto_pad == "VALID" or not pads:
        return [(0, 0)] * n
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]


def torch_pad_list(pads: Sequence[tuple[int, int]]) -> list[int]:
    """ONNX-ordered (begin, end) pairs over the trailing axes -> the reversed flat list F.pad takes."""
    flat: list[int] = []
    for begin, end in reversed(list(pads)):
        flat += [begin, end]
    return flat


def pad_spatial(x: torch.Tensor, pads: Sequence[tuple[int, int]], value: float = 0.0) -> torch.Tensor:
    """Pad (or crop, for negative entries) the trailing spatial axes of ``x``."""
    if all(b == 0 and e == 0 for b, e in pads):
        return x
    return F.pad(x, torch_pad_list(pads), value=value)


def symmetric(pads: Sequence[tuple[int, int]]) -> bool:
    return all(b == e for b, e in pads)


CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
