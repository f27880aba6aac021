"""Pooling: MaxPool (LMT Theorem 3 bounds it), AveragePool (linear), GlobalAveragePool, GlobalMaxPool."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Op, ints, rule
from .padding import CONV, MAX_POOL, pad_spatial, resolve_pads


class _Pool(Op):
    def setup(self) -> None:
        auto_pad = self.attr("auto_pad", b"NOTSET")
        self.auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        self.kernel = ints(self.attr("kernel_shape"))
        nd = len(self.kernel)
        if nd not in MAX_POOL:
            from ..errors import ModelImportError
            raise ModelImportError(f"{self.op_type} node '{self.name}': {nd}-D pooling is not supported (1-D to 3-D)")
        self.strides = ints(self.attr("strides")) or [1] * nd
        self.dilations = ints(self.attr("dilations")) or [1] * nd
        self.pads = ints(self.attr("pads"))
        self.ceil_mode = bool(self.attr("ceil_mode", 0))

    def _layout(self, sizes) -> tuple[list[tuple[int, int]], list[int]]:
        """Pads per axis and the extra zeros (ceil_mode overhang) each axis needs beyond the end pad."""
        pads = resolve_pads(self.auto_pad, self.pads, sizes, self.kernel, self.strides, self.dilations)
        overhang = []
        for n, (pb, pe), k, s, d in zip(sizes, pads, self.kernel, self.strides, self.dilations):
            span = (k - 1) * d + 1
            padded = n + pb + pe
            if self.ceil_mode:
                out = math.ceil((padded - span) / s) + 1
                if (out - 1) * s >= n + pb:  # a window may not start in the end padding (torch and ORT)
                    out -= 1
            else:
                out = (padded - span) // s + 1
            overhang.append(max(0, (out - 1) * s + span - padded))
        return pads, overhang


@rule("MaxPool", since=(1, 8, 10, 11, 12))
class MaxPool(_Pool):
    """Max over each window; padding is -inf (never selected)."""

    def forward(self, x):
        nd = len(self.kernel)
        pads, overhang = self._layout(x.shape[2:])
        x = pad_spatial(x, [(pb, pe + o) for (pb, pe), o in zip(pads, overhang)], value=-math.inf)
        return MAX_POOL[nd](x, self.kernel, self.strides, 0, self.dilations, False)


@rule("AveragePool", since=(1, 7, 10, 11, 19))
class AveragePool(_Pool):
    """Mean over each window. ``count_include_pad=0`` divides by the number of input pixels in the window,
    ``=1`` by the number of input and pad pixels (never the ceil_mode overhang beyond the pads)."""

    def setup(self) -> None:
        super().setup()
        self.count_include_pad = bool(self.attr("count_include_pad", 0))

    def forward(self, x):
        nd = len(self.kernel)
        sizes = list(x.shape[2:])
        pads, overhang = self._layout(sizes)
        plain = all(p == (0, 0) for p in pads) and not any(overhang) and all(d == 1 for d in self.dilations)
        if plain:
            return {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd](x, self.kernel, self.strides)
        full = [(pb, pe + o) for (pb, pe), o in zip(pads, overhang)]
        channels = x.shape[1]
        ones = torch.ones((channels, 1, *self.kernel), dtype=x.dtype, device=x.device)
        sums = CONV[nd](pad_spatial(x, full), ones, None, self.strides, 0, self.dilations, channels)
        mask = torch.ones((1, 1, *sizes), dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            mask = pad_spatial(pad_spatial(mask, pads, value=1.0), [(0, o) for o in overhang])
        else:
            mask = pad_spatial(mask, full)
        counts = CONV[nd](mask, ones[:1], None, self.strides, 0, self.dilations, 1)
        return sums / counts


@rule("GlobalAveragePool", since=(1,))
class GlobalAveragePool(Op):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@rule("GlobalMaxPool", since=(1,))
class GlobalMaxPool(Op):
    def forward(self, x):
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
