"""Affine ops with weights: Gemm, MatMul, Conv, ConvTranspose, BatchNormalization (inference form).

Their Lipschitz constant is the operator norm of the linear part (LMT §4.1); the rules come with the
Lipschitz issue.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Op, ints, rule
from .padding import CONV, CONV_T, pad_spatial, resolve_pads, symmetric


@rule("Gemm", since=(1, 7, 9, 11, 13))
class Gemm(Op):
    """Y = alpha * A' B' + beta * C, with A' = A^T if transA, B' = B^T if transB."""

    weight_inputs = (1, 2)

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))
        self.trans_a = bool(self.attr("transA", 0))
        self.trans_b = bool(self.attr("transB", 0))

    def forward(self, a, b, c=None):
        if a.dim() == 1:  # not valid ONNX, but onnxruntime reads a 1-D A as one row (x.squeeze() before Linear)
            a = a.unsqueeze(0)
        if self.trans_a:
            a = a.transpose(0, 1)
        if self.trans_b and self.alpha == 1.0 and a.dim() == 2 and b.dim() == 2:
            bias = c if (c is not None and self.beta == 1.0 and c.dim() == 1 and c.shape[0] == b.shape[0]) else None
            y = F.linear(a, b, bias)
            if c is not None and bias is None:
                y = y + self.beta * c
            return y
        if self.trans_b:
            b = b.transpose(0, 1)
        y = a @ b
        if self.alpha != 1.0:
            y = self.alpha * y
        if c is not None:
            y = y + (c if self.beta == 1.0 else self.beta * c)
        return y


@rule("MatMul", since=(1, 9, 13))
class MatMul(Op):
    """numpy.matmul semantics (ONNX and torch agree)."""

    weight_inputs = (0, 1)

    def forward(self, a, b):
        return torch.matmul(a, b)


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

    def forward(self, x, w, b=None):
        nd, kernel, strides, dilations = self._geometry(x, w)
        pads = resolve_pads(self.auto_pad, self.pads, x.shape[2:], kernel, strides, dilations)
        if symmetric(pads):
            padding = [p for p, _ in pads]
        else:
            x = pad_spatial(x, pads)
            padding = [0] * nd
        return CONV[nd](x, w, b, strides, padding, dilations, self.group)


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


@rule("BatchNormalization", since=(1, 6, 7, 9, 14, 15))
class BatchNormalization(Op):
    """y = scale (x - mean) / sqrt(var + epsilon) + B, per channel (axis 1).

    At inference (the default) it is an affine map with the running statistics; in training mode (training/)
    it normalizes with batch statistics and updates the running ones, as torch does. Before opset 9,
    ``spatial=0`` means per-activation parameters of shape (C, D1, ..., Dn) (inference only). A file whose node
    is in training mode (``training_mode=1`` from opset 14, running-statistics outputs before 14, ``is_test=0``
    before 7: the output uses the statistics of the batch it is run on) is refused.
    """

    weight_inputs = (1, 2)

    def setup(self) -> None:
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.momentum = float(self.attr("momentum", 0.9))
        self.spatial = bool(self.attr("spatial", 1)) if self.opset < 9 else True
        # training mode: the attribute from opset 14, extra outputs (running statistics) before, is_test=0 before 7
        if int(self.attr("training_mode", 0)) or (self.opset < 14 and self.n_outputs > 1) \
                or (self.opset < 7 and not int(self.attr("is_test", 0))):
            from ..errors import ModelImportError
            raise ModelImportError(f"BatchNormalization node '{self.name}' is in training mode (normalizes with "
                                   f"the statistics of each batch); only inference batch normalization is supported")

    def forward(self, x, scale, bias, mean, var):
        if not self.spatial:  # per activation: the parameters broadcast over the batch axis only
            if self.training:
                raise NotImplementedError(f"BatchNormalization '{self.name}' with spatial=0 in training mode")
            return (x - mean) * torch.rsqrt(var + self.epsilon) * scale + bias
        return F.batch_norm(x, mean, var, scale, bias, self.training, 1.0 - self.momentum, self.epsilon)
