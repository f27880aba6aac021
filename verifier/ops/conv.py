"""Convolutions with constant kernels: Conv and ConvTranspose (1-D to 3-D, groups, strides, dilations, pads).

Their Lipschitz constant is the operator norm of the linear map (LMT §4.1): the DFT bound of the circular
extension for l2 (``verifier.conv_norms``), the largest kernel abs sum for l_inf. Their box rule is the exact
image of a box under an affine map (BCP eq. 7): centre through the forward, radius through the forward with
|kernel| and no bias (``verifier.box.affine``). 2-D convolutions also take CROWN's local rows
(``verifier.patches``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from verifier.box import Box, affine, is_box
from verifier.linear import affine_backward, magnitude
from verifier.ops.base import Lipschitz, Op, RuleArgs, ints, rule
from verifier.ops.padding import CONV, CONV_T, pad_spatial, resolve_pads, symmetric
from verifier.patches import Patches, conv_backward
from verifier.rounding import REL64, TINY64


def _conv_interval(op: Op, x, w, b, fan_in: int) -> Box:
    """The affine rule for a convolution: the forward on the centre, with |W| and |b| scaled for the radius."""
    if not is_box(x) or is_box(w) or is_box(b):
        raise op.no_box("the kernel and bias must be constants")
    w_abs, b_abs = w.abs(), (None if b is None else b.abs())
    return affine(x, lambda t: op.forward(t, w, b),
                  lambda v, s: op.forward(v, w_abs, None if b_abs is None else b_abs * s), fan_in)



class _ConvBase(Op):
    weight_inputs = (1, 2)

    def setup(self) -> None:
        self.auto_pad = self.attr("auto_pad", b"NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()
        self.group = int(self.attr("group", 1))
        self.pads = ints(self.attr("pads"))
        self.strides = ints(self.attr("strides"))
        self.dilations = ints(self.attr("dilations"))

    def _geometry(self, x: torch.Tensor, w: torch.Tensor) -> tuple[int, list[int], list[int], list[int]]:
        nd = w.dim() - 2
        if nd not in CONV:
            raise ValueError(f"{nd}-D convolutions are not supported (1-D to 3-D)")
        kernel = list(w.shape[2:])
        strides = self.strides or [1] * nd
        dilations = self.dilations or [1] * nd
        return nd, kernel, strides, dilations


@rule("Conv", since=(1, 11))
class Conv(_ConvBase):
    """N-d convolution (1-D, 2-D, 3-D) with groups, dilations, strides, explicit pads or auto_pad."""

    def squared_row_norms(self, ones, args):
        """The convolution of ones with the squared kernel, no bias (a constant kernel)."""
        w = args[1]
        return self.forward(ones, w * w) if isinstance(w, torch.Tensor) else None

    def forward(self, x, w, b=None):
        nd, kernel, strides, dilations = self._geometry(x, w)
        pads = resolve_pads(self.auto_pad, self.pads, x.shape[2:], kernel, strides, dilations)
        if symmetric(pads):
            padding = [p for p, _ in pads]
        else:
            x = pad_spatial(x, pads)
            padding = [0] * nd
        return CONV[nd](x, w, b, strides, padding, dilations, self.group)

    def is_affine(self, dynamic):
        return dynamic[0] and not any(dynamic[1:])

    def interval(self, x, w, b=None):
        """The affine rule: the forward on the centre, the forward with |W| and no bias on the radius."""
        return _conv_interval(self, x, w, b, w.shape[1] * math.prod(w.shape[2:]) + 2)

    def linear(self, inputs, lams):
        """2-D, constant kernel, one output: lam_x by one transposed convolution (the generic rule's Jacobian
        without autograd: the full transposed output cropped at the begin pads, zeros where no window reaches);
        otherwise the generic rule."""
        x, w, b = (list(inputs) + [None])[:3]
        if not is_box(x) or x.integer or is_box(w) or is_box(b) or w.dim() != 4 or len(lams) != 1:
            return super().linear(inputs, lams)
        _, kernel, strides, dilations = self._geometry(x.center, w)
        pads = resolve_pads(self.auto_pad, self.pads, x.shape[2:], kernel, strides, dilations)
        height, width = x.shape[2:]

        def transpose(lam: torch.Tensor) -> torch.Tensor:
            full = F.conv_transpose2d(lam, w, stride=strides, dilation=dilations, groups=self.group)
            extra = [max(0, pads[1][0] + width - full.shape[3]), max(0, pads[0][0] + height - full.shape[2])]
            full = F.pad(full, (0, extra[0], 0, extra[1]))
            return full[:, :, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width]
        return affine_backward(self, inputs, lams, transpose)

    def linear_patches(self, inputs, lam: Patches):
        """2-D, constant kernel: each window through the transposed convolution (``verifier.patches``); beta =
        lam . f(0) less REL64 |lam| . (|J| m + |f(0)|), as ``verifier.linear.affine_backward``."""
        x, w, b = (list(inputs) + [None])[:3]
        if not is_box(x) or x.integer or is_box(w) or is_box(b) or w.dim() != 4:
            return None
        _, kernel, strides, dilations = self._geometry(x.center, w)
        pads = resolve_pads(self.auto_pad, self.pads, x.shape[2:], kernel, strides, dilations)
        out = conv_backward(lam, w, tuple(strides), tuple(dilations), self.group, (pads[0][0], pads[1][0]),
                            tuple(x.shape[1:]))
        m = magnitude(x)
        f0 = self.forward(torch.zeros_like(m[:1]), w, b)
        box = self.interval(Box(torch.zeros_like(m), m), w, b)
        spread = box.radius.abs() + box.center.abs() + f0.abs()
        slack = (lam.data.abs() * lam.windows(spread)).flatten(1).sum(1)
        return [out, None, None][:len(inputs)], lam.dot(f0) - REL64 * slack - TINY64

    def geometry(self, args: RuleArgs) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Strides, dilations and resolved (begin, end) pads on the input shape seen at import."""
        w, spatial = args.values[1], list(args.in_shapes[0][2:])
        nd = w.dim() - 2
        strides, dilations = self.strides or [1] * nd, self.dilations or [1] * nd
        return strides, dilations, resolve_pads(self.auto_pad, self.pads, spatial, list(w.shape[2:]), strides,
                                                dilations)

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """l2: the largest singular value over the DFT frequencies of the circular convolution that the
        zero-padded one restricts (Sedghi et al. 2019; polyphase for strides); l_inf: the largest kernel abs sum."""
        from verifier.conv_norms import conv_l2_bound, conv_linf_bound

        if not self.is_affine(args.dynamic):
            raise self.no_rule("the kernel must be a constant")
        w = args.values[1]
        if not args.l2:
            return Lipschitz([conv_linf_bound(w, self.group)], "exact")
        strides, dilations, pads = self.geometry(args)
        spatial = tuple(args.in_shapes[0][2:])
        return Lipschitz([conv_l2_bound(w, spatial, strides, dilations, pads, self.group)], "dft")


@rule("ConvTranspose", since=(1, 11))
class ConvTranspose(_ConvBase):
    """Transposed convolution: the full (unpadded) result, then ``output_padding`` zeros appended and ``pads``
    cropped (ONNX: out = s (in - 1) + output_padding + (k - 1) d + 1 - pad_begin - pad_end)."""

    def setup(self) -> None:
        super().setup()
        self.output_padding = ints(self.attr("output_padding"))
        self.output_shape = ints(self.attr("output_shape"))

    def forward(self, x, w, b=None):
        nd, kernel, strides, dilations = self._geometry(x, w)
        out_pad = self.output_padding or [0] * nd
        full = [s * (n - 1) + op + (k - 1) * d + 1
                for n, k, s, d, op in zip(x.shape[2:], kernel, strides, dilations, out_pad)]
        if self.output_shape:
            target = self.output_shape[-nd:]
            totals = [f - t for f, t in zip(full, target)]
            upper = self.auto_pad == "SAME_UPPER"
            pads = [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in totals]
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            totals = [f - n * s for f, n, s in zip(full, x.shape[2:], strides)]
            upper = self.auto_pad == "SAME_UPPER"
            pads = [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in totals]
        elif self.auto_pad == "VALID" or not self.pads:
            pads = [(0, 0)] * nd
        else:
            pads = [(self.pads[i], self.pads[i + nd]) for i in range(nd)]
        y = CONV_T[nd](x, w, None, strides, 0, 0, self.group, dilations)
        # append output_padding (positions no input reaches), then crop the pads
        y = pad_spatial(y, [(-pb, op - pe) for (pb, pe), op in zip(pads, out_pad)])
        if b is not None:
            y = y + b.reshape(1, -1, *([1] * nd))
        return y

    def is_affine(self, dynamic):
        return dynamic[0] and not any(dynamic[1:])

    def interval(self, x, w, b=None):
        """The affine rule (each output sums at most C_in / group * prod(kernel) products, plus the bias)."""
        return _conv_interval(self, x, w, b, w.shape[0] // self.group * math.prod(w.shape[2:]) + 2)

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """The adjoint of a strided convolution (then cropped): the same DFT bound (Sedghi et al. 2019)."""
        from verifier.conv_norms import conv_transpose_l2_bound, conv_transpose_linf_bound

        if not self.is_affine(args.dynamic):
            raise self.no_rule("the kernel must be a constant")
        w = args.values[1]
        nd = w.dim() - 2
        strides, dilations = self.strides or [1] * nd, self.dilations or [1] * nd
        if not args.l2:
            return Lipschitz([conv_transpose_linf_bound(w, strides, dilations, self.group)], "exact")
        # the output is a crop of the full result (whatever pads, output_shape or auto_pad say): a restriction,
        # so the bound of the uncropped map holds
        spatial = tuple(args.in_shapes[0][2:])
        value = conv_transpose_l2_bound(w, spatial, strides, dilations, [(0, 0)] * nd, [0] * nd, self.group)
        return Lipschitz([value], "dft")
