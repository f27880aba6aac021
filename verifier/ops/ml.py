"""Ops of the ONNX-ML domain (``ai.onnx.ml``) that stay single nodes in the IR; the affine ones (Scaler,
LinearClassifier, LinearRegressor) become default-domain ops at import (``frontends.onnx_ml``).

- ``Normalizer``: each row divided by its L1 or L2 norm (or its maximum). x / ||x|| is not Lipschitz near 0,
  so it has no Lipschitz (or gradient) rule; its box rule is interval division (``interval``). With L1 or L2 it
  divides by a positive number, so it keeps the argmax (``keeps_argmax``): classifiers that end in it
  (skl2onnx's LogisticRegression: Softmax, then an L1 Normalizer) are bounded on the logits before it
  (``Graph.logits_tensor``), as for a trailing Softmax.
"""
from __future__ import annotations

import torch

from verifier.box import is_box, outward
from verifier.ops.base import ONNX_ML, Op, rule
from verifier.rounding import gamma


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
        small = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        large = torch.maximum(lo.abs(), hi.abs())
        if self.norm == "MAX":
            s_lo, s_hi = lo.amax(-1, keepdim=True), hi.amax(-1, keepdim=True)
        elif self.norm == "L1":
            s_lo, s_hi = small.sum(-1, keepdim=True), large.sum(-1, keepdim=True)
        else:
            s_lo, s_hi = small.square().sum(-1, keepdim=True).sqrt(), large.square().sum(-1, keepdim=True).sqrt()
        n = x.shape[-1]
        rel = gamma(n + 4, x.dtype) + gamma(n + 4, torch.float64)
        s_lo, s_hi = s_lo * (1 - rel), s_hi * (1 + rel)
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
