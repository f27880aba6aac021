"""Local rows: backward linear bounds whose rows are zero outside a spatial window (the patches of auto_LiRPA's
patches mode, our own layout), for CROWN's intermediate bounds on convolutional tensors.

A row +-e_i on a tensor (C, H, W) reaches, through a convolution backward, only the kernel's window of the
convolution's input, and through an elementwise relaxation only the same window; so CROWN's rows on the
tensors of a convolutional stack need only their window, not the whole (C, H, W) map. ``Patches`` holds one
window per row, (C, P_h, P_w), all rows of one backward pass with the same window size, each at the grid
position of the entry it started from: the row of input b with grid index g = (g_h, g_w) has its window's top
left at (g_h S_h - pad_h, g_w S_w - pad_w) of the tensor. Positions outside the tensor (its padding) always
hold 0 (``Patches.masked``), so a window is exactly a part of the dense row.

The rules written here (a 2-D convolution's transpose, elementwise lines) are the dense rules of
``verifier.linear`` restricted to the window, with the same rounding allowances; anything else turns the
patches into dense rows (``Patches.dense``) and continues there. Soundness is the dense rules': a row's
entries outside its window are 0, and the sums over the window are the sums over the whole tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.rounding import REL64, TINY64


@dataclass
class Patches:
    """Rows of batch B * R on a tensor of sample shape ``shape`` = (C, H, W), zero outside their windows.

    ``data``: (B * R, C, P_h, P_w); ``pos``: (B, R) the grid index g_h * grid_w + g_w of each row; ``grid``:
    (grid_h, grid_w); ``stride``, ``pad``: the window of grid position g starts at g * stride - pad."""

    data: Tensor
    pos: Tensor
    grid: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    shape: tuple[int, int, int]

    @staticmethod
    def start(rows: Tensor, index: Tensor, shape: tuple[int, ...]) -> "Patches":
        """Rows sign_r e_{index} on a (C, H, W) tensor: ``rows`` (B, R) the signs (0 for padding rows),
        ``index`` (B, R) the flat entries; each window is the entry's pixel, all channels."""
        c, h, w = shape
        b, r = index.shape
        data = torch.zeros((b * r, c, 1, 1), dtype=rows.dtype, device=rows.device)
        data[torch.arange(b * r), (index // (h * w)).reshape(-1), 0, 0] = rows.reshape(-1)
        return Patches(data, index % (h * w), (h, w), (1, 1), (0, 0), (c, h, w))

    @property
    def window(self) -> tuple[int, int]:
        return self.data.shape[2], self.data.shape[3]

    def windows(self, values: Tensor) -> Tensor:
        """Each row's window of a per-input map ``values`` (B or 1, C', H, W): (B * R, C', P_h, P_w), 0 outside
        the tensor."""
        (ph, pw), (sh, sw), (oh, ow) = self.window, self.stride, self.pad
        (gh, gw), (_, h, w) = self.grid, self.shape
        top, left = max(oh, 0), max(ow, 0)
        bottom = max(0, (gh - 1) * sh - oh + ph - h)
        right = max(0, (gw - 1) * sw - ow + pw - w)
        padded = F.pad(values, (left, right, top, bottom))[..., top - oh:, left - ow:]
        cols = F.unfold(padded, (ph, pw), stride=(sh, sw))  # (B', C' P_h P_w, L_h L_w)
        lw = (padded.shape[-1] - pw) // sw + 1
        index = (self.pos // gw) * lw + self.pos % gw  # (B, R)
        b, r = self.pos.shape
        cols = cols.transpose(1, 2)  # (B', L, C' P_h P_w)
        picked = cols[0][index] if cols.shape[0] == 1 else cols[torch.arange(b)[:, None], index]  # (B, R, ...)
        return picked.reshape(b * r, values.shape[1], ph, pw)

    def masked(self) -> "Patches":
        """These rows with their entries outside the tensor set to 0."""
        ones = torch.ones((1, 1, *self.shape[1:]), dtype=self.data.dtype, device=self.data.device)
        return replace(self, data=self.data * self.windows(ones))

    def dense(self) -> Tensor:
        """The rows as dense coefficients (B * R, C, H, W)."""
        (ph, pw), (sh, sw), (oh, ow) = self.window, self.stride, self.pad
        (_, gw), (c, h, w) = self.grid, self.shape
        n = self.data.shape[0]
        pos = self.pos.reshape(-1)
        top = (pos // gw) * sh - oh  # (N,)
        left = (pos % gw) * sw - ow
        ii = top[:, None] + torch.arange(ph, device=pos.device)[None]  # (N, P_h)
        jj = left[:, None] + torch.arange(pw, device=pos.device)[None]
        inside = ((ii >= 0) & (ii < h))[:, :, None] & ((jj >= 0) & (jj < w))[:, None, :]  # (N, P_h, P_w)
        flat = (ii.clamp(0, h - 1)[:, :, None] * w + jj.clamp(0, w - 1)[:, None, :]).reshape(n, 1, -1)
        values = torch.where(inside[:, None], self.data, 0.0).reshape(n, c, -1)
        out = torch.zeros((n, c, h * w), dtype=self.data.dtype, device=self.data.device)
        out.scatter_add_(2, flat.expand(n, c, ph * pw), values)
        return out.reshape(n, c, h, w)

    def dot(self, values: Tensor) -> Tensor:
        """Per row, the sum of its entries times a per-input map (B or 1, C, H, W): (B * R,)."""
        return (self.data * self.windows(values)).flatten(1).sum(1)


def conv_backward(lam: Patches, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int], groups: int,
                  pad: tuple[int, int], in_shape: tuple[int, int, int]) -> Patches:
    """The rows on a 2-D convolution's input from rows on its output (bias and allowance left to the caller):
    each window through the transposed convolution, a window of (P - 1) s + (k - 1) d + 1 starting at
    start * s - pad_begin, its entries outside the input set to 0 (they would multiply the zero padding)."""
    data = F.conv_transpose2d(lam.data, weight, stride=stride, dilation=dilation, groups=groups)
    new_stride = (lam.stride[0] * stride[0], lam.stride[1] * stride[1])
    new_pad = (lam.pad[0] * stride[0] + pad[0], lam.pad[1] * stride[1] + pad[1])
    return Patches(data, lam.pos, lam.grid, new_stride, new_pad, in_shape).masked()


def lines_patches(lam: Patches, magnitude: Tensor, lower: tuple[Tensor, Tensor],
                  upper: tuple[Tensor, Tensor]) -> tuple[Patches, Tensor] | None:
    """``verifier.linear.lines_backward`` on windows: the lines and the box magnitudes (B, C, H, W) taken at
    each row's window; rows take the lower line where lam >= 0 and the upper one where lam < 0, with the same
    rounding allowance, REL64 (|lam'| . m + sum |terms|) + tiny. Entries outside the tensor stay 0 (their
    lam is 0). None where an offset or the box is not finite (the dense rule then)."""
    d = lam.data
    n, c = d.shape[:2]
    (a_l, b_l), (a_u, b_u) = lower, upper
    maps = [torch.broadcast_to(v, magnitude.shape) for v in (a_l, a_u, b_l, b_u, b_l.abs(), b_u.abs(), magnitude)]
    if not all(bool(torch.isfinite(v).all()) for v in maps[2:]):
        return None
    a_l, a_u, *sums = lam.windows(torch.cat(maps, dim=1)).split(c, dim=1)  # one gather for all the maps
    b_l, b_u, abs_l, abs_u, m = (v.reshape(n, -1, 1) for v in sums)
    out = d * torch.where(d >= 0, a_l, a_u)  # one rounded product per entry
    pos = d.clamp_min(0).reshape(n, 1, -1)
    neg = d.reshape(n, 1, -1) - pos  # exact
    terms = torch.bmm(pos, b_l) + torch.bmm(neg, b_u)  # per row: batched dot products
    spread = torch.bmm(out.abs().reshape(n, 1, -1), m) + torch.bmm(pos, abs_l) - torch.bmm(neg, abs_u)
    return replace(lam, data=out), (terms - REL64 * spread - TINY64).reshape(n)
