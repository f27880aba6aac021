"""Ops of the ONNX-ML domain (``ai.onnx.ml``) that stay single nodes in the IR; the affine ones (Scaler,
LinearClassifier, LinearRegressor) become default-domain ops at import (``frontends.onnx_ml``).

- ``Normalizer``: each row divided by its L1 or L2 norm (or its maximum). x / ||x|| is not Lipschitz near 0,
  so it has no Lipschitz rule; its box rule is interval division (``interval``); on boxes where the norm stays
  positive it has a gradient rule (``grad_interval``) and, from it, a linear rule (the mean-value form,
  ``verifier.linear.mean_value_backward``). With L1 or L2 it divides by a positive number, so it keeps the
  argmax (``keeps_argmax``): classifiers that end in it (skl2onnx's LogisticRegression: Softmax, then an L1
  Normalizer) are bounded on the logits before it (``Graph.logits_tensor``), as for a trailing Softmax;
  preprocessing (Pipeline(Normalizer(), ...)) goes through the rules.
"""
from __future__ import annotations

import torch

from verifier.box import Box, is_box, outward
from verifier.errors import NoRuleError
from verifier.jacobian import interval_product, no_gradient_rule
from verifier.linear import mean_value_backward
from verifier.ops.base import ONNX_ML, Op, rule
from verifier.rounding import REL64, TINY64, gamma


@rule("Normalizer", since=1, domain=ONNX_ML)
class Normalizer(Op):
    def setup(self) -> None:
        norm = self.attr("norm", b"MAX")
        self.norm = norm.decode() if isinstance(norm, bytes) else str(norm)
        if self.norm not in ("MAX", "L1", "L2"):
            raise self.no_rule(f"norm {self.norm} is not one of MAX, L1, L2")
        self.keeps_argmax = self.norm in ("L1", "L2")

    def forward(self, x):
        """As onnxruntime: along the last axis, x / max(x) (MAX), x / sum |x| (L1), x / sqrt(sum x^2) (L2); a
        zero norm leaves the row unchanged."""
        if self.norm == "MAX":
            scale = x.amax(dim=-1, keepdim=True)
        elif self.norm == "L1":
            scale = x.abs().sum(dim=-1, keepdim=True)
        else:
            scale = x.square().sum(dim=-1, keepdim=True).sqrt()
        return torch.where(scale == 0, x, x / torch.where(scale == 0, torch.ones_like(scale), scale))

    def interval(self, x):
        """Per row, y = x / s with s the norm: s lies in [s_lo, s_hi] (the norm of the entries' smallest and
        largest magnitudes over the box; for MAX, the max of the lower and of the upper bounds); where s_lo > 0,
        y lies in the interval quotient of the box by [s_lo, s_hi], else, for L1 and L2, in [-1, 1] (|x_i| <=
        ||x||); for MAX a row whose maximum may be 0 or below has no finite box (NoRuleError). Computed in
        float64 and widened by gamma_{n+4} of the magnitudes (the forward's sum of n terms, square root and
        division in its dtype), then rounded outward."""
        if not is_box(x):
            raise self.no_box("only the input may depend on the model input")
        lo, hi = x.lo.double(), x.hi.double()
        s_lo, s_hi, rel = self._norm_range(lo, hi, x.dtype)
        positive = s_lo > 0
        if self.norm == "MAX" and not bool(positive.all()):
            raise self.no_box("with norm MAX, a row whose maximum may be 0 or negative has no finite box")
        safe_lo, safe_hi = torch.where(positive, s_lo, 1.0), torch.where(positive, s_hi, 1.0)
        quotients = torch.stack([lo / safe_lo, lo / safe_hi, hi / safe_lo, hi / safe_hi])
        q_lo, q_hi = quotients.amin(0), quotients.amax(0)
        q_lo, q_hi = q_lo - rel * q_lo.abs(), q_hi + rel * q_hi.abs()
        if self.norm == "MAX":
            return outward(q_lo, q_hi, x.dtype)
        bound = 1.0 + rel
        y_lo = torch.where(positive, q_lo, torch.full_like(q_lo, -bound)).clamp_min(-bound)
        y_hi = torch.where(positive, q_hi, torch.full_like(q_hi, bound)).clamp_max(bound)
        return outward(y_lo, y_hi, x.dtype)

    def _norm_range(self, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """[s_lo, s_hi] (rows, 1) enclosing each row's norm (or maximum) over the box, real and float, and the
        relative allowance rel = gamma_{n+4} (dtype and float64) it was widened by."""
        small = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        large = torch.maximum(lo.abs(), hi.abs())
        if self.norm == "MAX":
            s_lo, s_hi = lo.amax(-1, keepdim=True), hi.amax(-1, keepdim=True)
        elif self.norm == "L1":
            s_lo, s_hi = small.sum(-1, keepdim=True), large.sum(-1, keepdim=True)
        else:
            s_lo, s_hi = small.square().sum(-1, keepdim=True).sqrt(), large.square().sum(-1, keepdim=True).sqrt()
        n = lo.shape[-1]
        rel = gamma(n + 4, dtype) + gamma(n + 4, torch.float64)
        return s_lo * (1 - rel), s_hi * (1 + rel), rel

    def grad_interval(self, inputs, grads):
        """J^T g = (g - sigma (y . g)) / s over the box, for y = x / s with s the row's norm (or maximum): L2
        sigma = y; L1 sigma_j = sign(x_j) ([-1, 1] where the box contains 0: Clarke's); MAX sigma_j = 1 if j is
        the argmax (an interval [0, 1] where several entries may be the maximum, 0 where x_j cannot be). Interval
        products and sums in float64 (the hull of the corner products), widened by REL64. Needs the norm (the
        maximum) positive on the box: near 0 the gradient is unbounded."""
        x = inputs[0]
        if not is_box(x) or x.dim() != 2:
            raise no_gradient_rule(self)
        lo, hi = x.lo.double(), x.hi.double()
        s_lo, s_hi, _ = self._norm_range(lo, hi, torch.float64)
        if not bool((s_lo > 0).all()):
            raise self.no_rule("its norm may be 0 on the box (the gradient of x / ||x|| is unbounded there)")
        y = self.interval(Box.from_bounds(lo, hi))
        y_lo, y_hi = y.lo.double()[:, None], y.hi.double()[:, None]
        if self.norm == "L2":
            sig_lo, sig_hi = y_lo, y_hi
        elif self.norm == "L1":
            sig_lo = torch.where(lo > 0, 1.0, -1.0)[:, None].double()
            sig_hi = torch.where(hi < 0, -1.0, 1.0)[:, None].double()
        else:
            possible = hi >= lo.amax(-1, keepdim=True)
            only = possible & (possible.sum(-1, keepdim=True) == 1)
            sig_lo, sig_hi = only.double()[:, None], possible.double()[:, None]
        b, n = lo.shape
        g = grads[0]
        g_lo = (g.center - g.radius).double().reshape(b, -1, n)
        g_hi = (g.center + g.radius).double().reshape(b, -1, n)
        t_lo, t_hi = interval_product(y_lo, y_hi, g_lo, g_hi)
        t_lo, t_hi = t_lo.sum(-1, keepdim=True), t_hi.sum(-1, keepdim=True)  # y . g
        u_lo, u_hi = interval_product(sig_lo, sig_hi, t_lo, t_hi)
        v_lo, v_hi = g_lo - u_hi, g_hi - u_lo
        w_lo, w_hi = interval_product(v_lo, v_hi, 1 / s_hi[:, None], 1 / s_lo[:, None])
        slack = 4 * REL64 * (w_lo.abs() + w_hi.abs() + (t_lo.abs() + t_hi.abs()) / s_lo[:, None]) + TINY64
        return [Box.from_bounds((w_lo - slack).reshape(g.shape), (w_hi + slack).reshape(g.shape))]

    def linear(self, inputs, lams):
        """The mean-value form over its gradient boxes (``verifier.linear.mean_value_backward``), less the
        forward's float error (rel |y| per entry, twice)."""
        x = inputs[0]
        if not is_box(x) or x.dim() != 2:
            raise NoRuleError(f"no linear rule for {self.op_type} (node '{self.name}'): a batch of rows is needed")
        y = self.interval(x)
        _, _, rel = self._norm_range(x.lo.double(), x.hi.double(), x.dtype)
        error = 2 * rel * torch.maximum(y.lo.abs(), y.hi.abs()).double() + TINY64
        lam, bias = mean_value_backward(self, inputs, lams[0], error)
        return [lam], bias
