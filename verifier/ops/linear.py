"""Affine ops with weights: Gemm, MatMul, BatchNormalization (inference form); convolutions are in
``verifier/ops/conv.py``.

Their Lipschitz constant is the operator norm of the linear part (LMT §4.1): exact singular values (float64
SVD) for dense maps.
Their box rule is the exact image of a box under an affine map (BCP eq. 7): centre through the forward, radius
through the forward with |weights| and no bias (``verifier.box.affine``, which also covers float rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from verifier.box import Box, affine, interval_matmul, is_box
from verifier.linear import affine_backward
from verifier.ops.base import Lipschitz, Op, RuleArgs, rule
from verifier.rounding import SAFETY, unit_roundoff


def spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value in float64 (batched matrices: the largest over the batch) times SAFETY."""
    from verifier.conv_norms import l2_norm_exact

    m = matrix.double()
    if m.dim() < 2:
        m = m.reshape(1, -1)
    return max(l2_norm_exact(block) for block in m.reshape(-1, *m.shape[-2:]))


def row_abs_sum(matrix: torch.Tensor) -> float:
    """The l_inf operator norm of y = M x: the largest row abs sum."""
    m = matrix.double()
    if m.dim() < 2:
        m = m.reshape(1, -1)
    return float(m.abs().sum(-1).max()) * SAFETY


def _matrix_rule(op: Op, args: RuleArgs, matrix: torch.Tensor, scale: float = 1.0) -> Lipschitz:
    """y = scale * M x (x a column, or the rows of the dynamic operand mapped by M)."""
    value = spectral_norm(matrix) if args.l2 else row_abs_sum(matrix)
    return Lipschitz([abs(scale) * value], "exact")


def _scaled(box: Box, factor: float) -> Box:
    """factor * box (one rounding per entry)."""
    return Box(box.center * factor, box.radius * abs(factor)).widen(4 * unit_roundoff(box.dtype))


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
        return self._gemm(a, b, c, self.alpha, self.beta)

    def squared_row_norms(self, ones, args):
        """sum_i (alpha B'_ij)^2 per output j: A' = ones against the squared weights (a constant B)."""
        w = args[1]
        return self._gemm(ones, w * w, None, self.alpha * self.alpha, 1.0) if isinstance(w, torch.Tensor) else None

    def _gemm(self, a, b, c, alpha: float, beta: float):
        if a.dim() == 1:  # not valid ONNX, but onnxruntime reads a 1-D A as one row (x.squeeze() before Linear)
            a = a.unsqueeze(0)
        if self.trans_a:
            a = a.transpose(0, 1)
        if self.trans_b and alpha == 1.0 and a.dim() == 2 and b.dim() == 2:
            bias = c if (c is not None and beta == 1.0 and c.dim() == 1 and c.shape[0] == b.shape[0]) else None
            y = F.linear(a, b, bias)
            if c is not None and bias is None:
                y = y + beta * c
            return y
        if self.trans_b:
            b = b.transpose(0, 1)
        y = a @ b
        if alpha != 1.0:
            y = alpha * y
        if c is not None:
            y = y + (c if beta == 1.0 else beta * c)
        return y

    def interval(self, a, b, c=None):
        """One input-dependent operand among A and B (C constant): the affine rule. Otherwise the product
        alpha A' B' as an interval matmul (both operands boxes) or an affine map, then + beta C."""
        k = b.shape[1] if self.trans_b else b.shape[0]  # terms per dot product
        fan_in = k + 3  # products, alpha, beta, the addition of C
        if is_box(a) != is_box(b) and not is_box(c):
            if is_box(a):
                b_abs = b.abs()
                return affine(a, lambda t: self._gemm(t, b, c, self.alpha, self.beta),
                              lambda v, s: self._gemm(v, b_abs, None if c is None else c.abs() * s, abs(self.alpha),
                                                      abs(self.beta)), fan_in)
            a_abs = a.abs()
            return affine(b, lambda t: self._gemm(a, t, c, self.alpha, self.beta),
                          lambda v, s: self._gemm(a_abs, v, None if c is None else c.abs() * s, abs(self.alpha),
                                                  abs(self.beta)), fan_in)
        if is_box(a) and is_box(b):
            def prepare(box: Box, trans: bool) -> Box:
                return box.map(lambda t: t.transpose(0, 1) if trans else t)
            a2 = a.map(lambda t: t.unsqueeze(0)) if a.dim() == 1 else a
            product = interval_matmul(prepare(a2, self.trans_a), prepare(b, self.trans_b), fan_in)
            if self.alpha != 1.0:
                product = _scaled(product, self.alpha)
        elif is_box(a) or is_box(b):
            if is_box(a):
                b_abs = b.abs()
                product = affine(a, lambda t: self._gemm(t, b, None, self.alpha, 1.0),
                                 lambda v, s: self._gemm(v, b_abs, None, abs(self.alpha), 1.0), fan_in)
            else:
                a_abs = a.abs()
                product = affine(b, lambda t: self._gemm(a, t, None, self.alpha, 1.0),
                                 lambda v, s: self._gemm(a_abs, v, None, abs(self.alpha), 1.0), fan_in)
        else:  # only C depends on the input
            product = Box.point(self._gemm(a, b, None, self.alpha, 1.0))
        if c is None:
            return product
        cb = _scaled(c, self.beta) if is_box(c) else Box.point(self.beta * c, product.dtype)
        return Box(product.center + cb.center, product.radius + cb.radius).widen(4 * unit_roundoff(product.dtype))

    def is_affine(self, dynamic):
        return sum(dynamic) == 1 and not (len(dynamic) > 2 and dynamic[2])

    def linear(self, inputs, lams):
        """A 2-D input-dependent A (no transA) against a constant B: lam_A = alpha lam B'^T, one product (the
        generic rule's Jacobian without autograd); otherwise the generic rule."""
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        if not is_box(a) or is_box(b) or is_box(c) or self.trans_a or a.dim() != 2 or b.dim() != 2:
            return super().linear(inputs, lams)
        w = b if self.trans_b else b.T  # B'^T
        return affine_backward(self, inputs, lams, lambda lam: self.alpha * (lam @ w) if self.alpha != 1.0
                               else lam @ w)

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Each row a of A maps to alpha a B' (B constant): |alpha| sigma_max(B); with A constant and B the
        input, each column b of B' maps to alpha A' b: |alpha| sigma_max(A')."""
        if not self.is_affine(args.dynamic):
            raise self.no_rule("needs exactly one input-dependent operand among A and B")
        if args.dynamic[0]:
            b = args.values[1]
            b = b.T if self.trans_b else b
            return _matrix_rule(self, args, b.T, self.alpha)  # y^T = alpha B'^T a^T
        a = args.values[0]
        return _matrix_rule(self, args, a.T if self.trans_a else a, self.alpha)


@rule("MatMul", since=(1, 9, 13))
class MatMul(Op):
    """numpy.matmul semantics (ONNX and torch agree)."""

    weight_inputs = (0, 1)

    def forward(self, a, b):
        return torch.matmul(a, b)

    def squared_row_norms(self, ones, args):
        """Column sums of B^2 against ones (a constant B)."""
        w = args[1]
        return torch.matmul(ones, w * w) if isinstance(w, torch.Tensor) else None

    def interval(self, a, b):
        """A constant operand: the affine rule; two boxes: the interval matmul (centre/radius)."""
        fan_in = a.shape[-1] + 1
        if is_box(a) and is_box(b):
            return interval_matmul(a, b, fan_in)
        if is_box(a):
            w_abs = b.abs()
            return affine(a, lambda t: torch.matmul(t, b), lambda v, s: torch.matmul(v, w_abs), fan_in)
        w_abs = a.abs()
        return affine(b, lambda t: torch.matmul(a, t), lambda v, s: torch.matmul(w_abs, v), fan_in)

    def is_affine(self, dynamic):
        return sum(dynamic) == 1

    def linear(self, inputs, lams):
        """x @ W with W a constant matrix: lam_x = lam W^T, one product; otherwise the generic rule."""
        x, w = inputs
        if not is_box(x) or is_box(w) or w.dim() != 2 or x.dim() < 2:
            return super().linear(inputs, lams)
        return affine_backward(self, inputs, lams, lambda lam: lam @ w.T)

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """x @ W maps each row by W^T; W @ x maps each column by W (batched W: the largest over the batch)."""
        if not self.is_affine(args.dynamic):
            raise self.no_rule("both operands depend on the input (a bilinear map has no global bound)")
        if args.dynamic[0]:
            w = args.values[1]
            return _matrix_rule(self, args, w.unsqueeze(-1) if w.dim() == 1 else w.transpose(-1, -2))
        w = args.values[0]
        return _matrix_rule(self, args, w.unsqueeze(0) if w.dim() == 1 else w)


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

    batch_statistics = True

    def channel_scale(self, args: RuleArgs, channels: int) -> torch.Tensor | None:
        """scale / sqrt(var + epsilon) per channel (inference)."""
        scale, var = args.values[1], args.values[4]
        return scale / torch.sqrt(var + self.epsilon)

    def setup(self) -> None:
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.momentum = float(self.attr("momentum", 0.9))
        self.spatial = bool(self.attr("spatial", 1)) if self.opset < 9 else True
        # training mode: the attribute from opset 14, extra outputs (running statistics) before, is_test=0 before 7
        if int(self.attr("training_mode", 0)) or (self.opset < 14 and self.n_outputs > 1) \
                or (self.opset < 7 and not int(self.attr("is_test", 0))):
            from verifier.errors import ModelImportError
            raise ModelImportError(f"BatchNormalization node '{self.name}' is in training mode (normalizes with "
                                   f"the statistics of each batch); only inference batch normalization is supported")

    def is_affine(self, dynamic):
        return dynamic[0] and not any(dynamic[1:]) and not self.training

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """At inference a diagonal map: max_i |gamma_i| / sqrt(var_i + eps) (LMT §4.1, batch normalization)."""
        if not self.is_affine(args.dynamic):
            raise self.no_rule("scale and statistics must be constants")
        scale, var = args.values[1], args.values[4]
        return Lipschitz([float((scale / torch.sqrt(var + self.epsilon)).abs().max()) * SAFETY], "exact")

    def interval(self, x, scale, bias, mean, var):
        """At inference a diagonal affine map: the affine rule with |A| = |scale| / sqrt(var + eps) and, for the
        rounding of the forward's (x - mean) * a + bias, the bias magnitude |bias| + |mean| |a|."""
        if self.training:
            raise self.no_box("in training mode it normalizes with batch statistics")
        if not is_box(x) or any(is_box(t) for t in (scale, bias, mean, var)):
            raise self.no_box("scale, bias and statistics must be constants")

        def channels(p: torch.Tensor) -> torch.Tensor:  # per channel (axis 1), or per activation (spatial=0)
            return p.reshape(1, -1, *([1] * (x.dim() - 2))) if self.spatial else p

        a_abs = channels((scale / torch.sqrt(var + self.epsilon)).abs())
        offset = channels(bias.abs()) + channels(mean.abs()) * a_abs
        return affine(x, lambda t: self.forward(t, scale, bias, mean, var), lambda v, s: v * a_abs + offset * s, 8)

    def forward(self, x, scale, bias, mean, var):
        if not self.spatial:  # per activation: the parameters broadcast over the batch axis only
            if self.training:
                raise NotImplementedError(f"BatchNormalization '{self.name}' with spatial=0 in training mode")
            return (x - mean) * torch.rsqrt(var + self.epsilon) * scale + bias
        return F.batch_norm(x, mean, var, scale, bias, self.training, 1.0 - self.momentum, self.epsilon)
