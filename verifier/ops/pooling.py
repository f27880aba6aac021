"""Pooling: MaxPool (LMT Theorem 3 bounds it), AveragePool (linear), GlobalAveragePool, GlobalMaxPool.

Box rules: the max pools are monotone in every input, so their box is [pool(lo), pool(hi)] (exact, and max
rounds nothing); the average pools are nonnegative linear maps (the affine rule with |A| = A).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from verifier.box import Box, affine, is_box
from verifier.jacobian import no_gradient_rule
from verifier.ops.base import Lipschitz, Op, RuleArgs, ints, rule
from verifier.ops.padding import CONV, MAX_POOL, pad_spatial, resolve_pads
from verifier.rounding import REL64, SAFETY, TINY64


def monotone_interval(op: Op, x: Box, *rest) -> Box:
    """A map nondecreasing in every input entry (max, min, max pooling): [f(lo), f(hi)], exact."""
    if not isinstance(x, Box):
        raise op.no_box("only the first input may depend on the model input")
    return Box.from_bounds(op.forward(x.lo, *rest), op.forward(x.hi, *rest), x.integer, check=False)


def average_interval(op: Op, x: Box, count: int, *rest) -> Box:
    """A linear map with nonnegative weights, ``count`` terms per output plus a division."""
    if not isinstance(x, Box):
        raise op.no_box("only the first input may depend on the model input")
    return affine(x, lambda t: op.forward(t, *rest), lambda v, s: op.forward(v, *rest), count + 2)


def window_entries(t: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> torch.Tensor:
    """The entries of every 2-D window of ``t`` (B, C, H, W; -inf padding read as -1e308): (B, C, k, L)."""
    b, ch, h, w = t.shape
    cols = F.unfold(t.reshape(b * ch, 1, h, w).nan_to_num(neginf=-1e308), kernel, dilations, 0, strides)
    return cols.reshape(b, ch, cols.shape[1], cols.shape[2])


def window_fold(t: torch.Tensor, size: tuple[int, int], kernel: list[int], strides: list[int],
                dilations: list[int]) -> torch.Tensor:
    """The transpose of ``window_entries``: (N, C, k, L) -> (N, C, H * W), overlapping windows adding up."""
    n, ch, k, n_win = t.shape
    out = F.fold(t.reshape(n * ch, k, n_win), size, kernel, dilations, 0, strides)
    return out.reshape(n, ch, size[0] * size[1])


def window_max_transpose(lo: torch.Tensor, hi: torch.Tensor, g_c: torch.Tensor, g_r: torch.Tensor, kernel: list[int],
                         strides: list[int], dilations: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The transposed Jacobian box of a 2-D window max: ``lo``/``hi`` (B, C, H, W) the padded input box (-inf
    padding), ``g_c``/``g_r`` (B * P, C, L) the output gradient box per window; returns (centre, radius) of the
    input gradient, shape (B * P, C, H * W). See ``MaxPool.grad_interval``."""
    b, ch, h, w = lo.shape
    lo_w, hi_w = (window_entries(t, kernel, strides, dilations)[:, None] for t in (lo, hi))  # (B, 1, C, k, L)
    candidate = hi_w >= lo_w.amax(dim=3, keepdim=True)
    unique = candidate.sum(dim=3, keepdim=True) == 1
    g_c, g_r = g_c.reshape(b, -1, ch, 1, g_c.shape[-1]), g_r.reshape(b, -1, ch, 1, g_r.shape[-1])
    g_lo, g_hi = g_c - g_r, g_c + g_r
    zero = torch.zeros_like(g_lo)
    c_lo = torch.where(candidate, torch.where(unique, g_lo, torch.minimum(g_lo, zero)), zero)
    c_hi = torch.where(candidate, torch.where(unique, g_hi, torch.maximum(g_hi, zero)), zero)

    def fold(t: torch.Tensor) -> torch.Tensor:
        return window_fold(t.reshape(-1, *t.shape[2:]), (h, w), kernel, strides, dilations)

    center, radius = fold((c_lo + c_hi) / 2), fold((c_hi - c_lo) / 2)
    return center, radius * (1 + REL64) + REL64 * center.abs() + TINY64


def nonnegative_map_norm(fn, in_shape, norm: float) -> float:
    """Norm of a linear map with nonnegative entries, from two passes over all-ones vectors: ||A||_inf =
    max(A 1), ||A||_1 = max(A^T 1), and ||A||_2 <= sqrt(||A||_1 ||A||_inf) (Hoelder)."""
    x = torch.ones((1, *in_shape[1:]), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = fn(x)
        (col,) = torch.autograd.grad(y.sum(), x)
    row_max, col_max = float(y.max()), float(col.max())
    return (row_max if norm != 2 else math.sqrt(row_max * col_max)) * SAFETY


class _Pool(Op):
    def setup(self) -> None:
        auto_pad = self.attr("auto_pad", b"NOTSET")
        self.auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        self.kernel = ints(self.attr("kernel_shape"))
        nd = len(self.kernel)
        if nd not in MAX_POOL:
            from verifier.errors import ModelImportError
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

    def interval(self, x):
        return monotone_interval(self, x)

    def grad_interval(self, inputs, grads):
        """Each window passes its output gradient to one of its maxima (a convex combination of them at ties):
        to the entries i with hi_i >= max_k lo_k over the window, the only ones that can be a maximum of a point
        in the box. A window with one such entry passes g exactly, otherwise each candidate gets [min(g, 0),
        max(g, 0)]. Windows overlap: their contributions add (``F.fold``). 1-D and 2-D pools."""
        x, g = inputs[0], grads[0]
        nd = len(self.kernel)
        if not is_box(x) or nd > 2:
            raise no_gradient_rule(self)
        pads, lo, hi, (kernel, strides, dilations) = self._padded_2d(x)
        g_c, g_r = g.center.reshape(g.shape[0], g.shape[1], -1), g.radius.reshape(g.shape[0], g.shape[1], -1)
        c, r = window_max_transpose(lo, hi, g_c, g_r, kernel, strides, dilations)
        index = tuple(slice(pb, pb + n) for (pb, _), n in zip(pads, x.shape[2:]))
        c, r = c.reshape(len(c), c.shape[1], *lo.shape[2:]), r.reshape(len(r), r.shape[1], *lo.shape[2:])
        if nd == 1:
            c, r = c.squeeze(2), r.squeeze(2)
        return [Box(c[(Ellipsis, *index)], r[(Ellipsis, *index)])]

    def _padded_2d(self, x: Box) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor, tuple[list[int], ...]]:
        """The pads, the box's bounds padded with -inf (never a window's max) and as 2-D maps (a 1-D pool gets a
        height of 1), and the window's kernel, strides and dilations to match."""
        pads, overhang = self._layout(x.shape[2:])
        full = [(pb, pe + o) for (pb, pe), o in zip(pads, overhang)]
        lo, hi = (pad_spatial(t, full, value=-math.inf) for t in (x.lo, x.hi))
        kernel, strides, dilations = list(self.kernel), list(self.strides), list(self.dilations)
        if len(self.kernel) == 1:
            lo, hi = lo.unsqueeze(2), hi.unsqueeze(2)
            kernel, strides, dilations = [1, *kernel], [1, *strides], [1, *dilations]
        return pads, lo, hi, (kernel, strides, dilations)

    def linear(self, inputs, lams):
        """CROWN's window max (as DeepPoly's): per window, j the entry with the largest lower bound; max >= x_j
        everywhere, and max <= x_j where j dominates (lo_j >= hi_i for every other entry i of the window), else
        max <= max_i hi_i, a constant. Rows take the lower line where lam >= 0 and the upper one where lam < 0;
        windows overlap, and their coefficients add (``window_fold``). Selections round nothing; the constant
        terms lam hi round once each (REL64 of their sum of magnitudes). 1-D and 2-D pools (3-D: its box)."""
        x = inputs[0]
        nd = len(self.kernel)
        if not is_box(x) or x.integer or nd > 2:
            return super().linear(inputs, lams)
        pads, lo, hi, (kernel, strides, dilations) = self._padded_2d(x)
        lo_w, hi_w = (window_entries(t, kernel, strides, dilations) for t in (lo, hi))  # (B, C, k, L)
        best = lo_w.argmax(dim=2, keepdim=True)
        chosen = torch.zeros_like(lo_w, dtype=torch.bool).scatter_(2, best, True)
        others = torch.where(chosen, torch.full_like(hi_w, -math.inf), hi_w).amax(dim=2)
        dominant = lo_w.gather(2, best)[:, :, 0] >= others  # (B, C, L)
        top = hi_w.amax(dim=2)
        b, ch = lo.shape[:2]
        lam = lams[0].reshape(b, -1, ch, dominant.shape[-1])  # (B, R, C, L)
        pos, neg = lam.clamp_min(0), lam.clamp_max(0)
        weight = pos + torch.where(dominant[:, None], neg, 0.0)
        terms = torch.where(dominant[:, None] | (neg == 0), 0.0, neg * top[:, None])
        per_window = chosen[:, None].to(lam.dtype) * weight[:, :, :, None]  # (B, R, C, k, L)
        coeffs = window_fold(per_window.reshape(-1, *per_window.shape[2:]), tuple(lo.shape[2:]), kernel, strides,
                             dilations).reshape(-1, ch, *lo.shape[2:])
        if nd == 1:
            coeffs = coeffs.squeeze(2)
        index = tuple(slice(pb, pb + n) for (pb, _), n in zip(pads, x.shape[2:]))
        flat = terms.reshape(terms.shape[0] * terms.shape[1], -1)
        bias = flat.sum(1) - REL64 * flat.abs().sum(1) - TINY64
        return [coeffs[(Ellipsis, *index)]] + [None] * (len(inputs) - 1), bias

    def window_counts(self, in_shape) -> torch.Tensor:
        """For each input entry, the number of pooling windows that contain it."""
        nd = len(self.kernel)
        pads, overhang = self._layout(in_shape[2:])
        x = torch.ones((1, 1, *in_shape[2:]), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            padded = pad_spatial(x, [(pb, pe + o) for (pb, pe), o in zip(pads, overhang)])
            ones = torch.ones((1, 1, *self.kernel), dtype=torch.float64)
            (counts,) = torch.autograd.grad(CONV[nd](padded, ones, None, self.strides, 0, self.dilations).sum(), x)
        return counts

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """LMT Theorem 3: each window's max is 1-Lipschitz, so the layer is sqrt(n)-Lipschitz in l2 with n the
        largest number of windows sharing an input entry (counted exactly here); 1 in l_inf."""
        if not args.l2:
            return Lipschitz([1.0], "theorem")
        n = float(self.window_counts(args.in_shapes[0]).max())
        return Lipschitz([math.sqrt(max(n, 1.0))], "theorem")


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

    def is_affine(self, dynamic):
        return True

    def interval(self, x):
        return average_interval(self, x, math.prod(self.kernel))

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """A nonnegative linear map: Hoelder's sqrt(||A||_1 ||A||_inf) in l2, max row sum in l_inf. In l2, when
        every window divides by the kernel size (no pads, or pads counted, and no ceil_mode overhang) it is a
        convolution with the kernel 1/k: its DFT bound too (Sedghi et al. 2019), whichever is smaller."""
        shape = (1, 1, *args.in_shapes[0][2:])  # channels are independent: one channel suffices
        holder = nonnegative_map_norm(self.forward, shape, args.norm)
        if not args.l2:
            return Lipschitz([holder], "exact")
        pads, overhang = self._layout(shape[2:])
        if any(overhang) or (any(p != (0, 0) for p in pads) and not self.count_include_pad):
            return Lipschitz([holder], "holder")
        from verifier.conv_norms import conv_l2_bound

        kernel = torch.full((1, 1, *self.kernel), 1.0 / math.prod(self.kernel), dtype=torch.float64)
        dft = conv_l2_bound(kernel, tuple(shape[2:]), self.strides, self.dilations, pads, 1)
        return Lipschitz([min(holder, dft)], "dft" if dft < holder else "holder")


@rule("GlobalAveragePool", since=(1,))
class GlobalAveragePool(Op):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def is_affine(self, dynamic):
        return True

    def interval(self, x):
        return average_interval(self, x, math.prod(x.shape[2:]))

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """The mean of k entries per channel: 1/sqrt(k) in l2 (exact), 1 in l_inf."""
        k = math.prod(args.in_shapes[0][2:])
        return Lipschitz([1.0 / math.sqrt(k) * SAFETY if args.l2 else 1.0], "exact")


@rule("GlobalMaxPool", since=(1,))
class GlobalMaxPool(Op):
    def forward(self, x):
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

    def interval(self, x):
        return monotone_interval(self, x)

    def grad_interval(self, inputs, grads):
        """One window per channel (see ``MaxPool.grad_interval``)."""
        x, g = inputs[0], grads[0]
        if not is_box(x):
            raise no_gradient_rule(self)
        b, ch = x.shape[0], x.shape[1]
        lo, hi = x.lo.reshape(b, ch, 1, -1), x.hi.reshape(b, ch, 1, -1)
        n = lo.shape[-1]
        c, r = window_max_transpose(lo, hi, g.center.reshape(len(g), ch, 1), g.radius.reshape(len(g), ch, 1),
                                    [1, n], [1, 1], [1, 1])
        return [Box(c.reshape(len(g), *x.shape[1:]), r.reshape(len(g), *x.shape[1:]))]

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """One window per channel (LMT Theorem 3 with n = 1)."""
        return Lipschitz([1.0], "theorem")
