"""Elementwise activations.

Each is monotone and slope-restricted (slope in [alpha, beta]); the Lipschitz rule (beta) and the box rule
(exact for monotone functions) come with the next issues. GELU is recognised in its Erf form at import
(verifier/rewrite.py) so that it is one node with one rule.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import SAFETY, Lipschitz, Op, RuleArgs, rule


class Activation(Op):
    """An elementwise activation whose slope lies in [alpha, beta] everywhere (``slopes``). Its Lipschitz
    constant in any l_p norm is max(|alpha|, |beta|) (LMT Appendix D); LipLT (CRM §3) uses alpha and beta."""

    SLOPES: tuple[float, float] = (0.0, 1.0)

    def slopes(self, args: RuleArgs | None = None) -> tuple[float, float]:
        return self.SLOPES

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        alpha, beta = self.slopes(args)  # SAFETY: float implementations round the slope by ~1e-8
        return Lipschitz([max(abs(alpha), abs(beta)) * SAFETY], "slope")


@rule("Relu", since=(1, 6, 13, 14))
class Relu(Activation):
    def forward(self, x):
        return torch.relu(x)


@rule("LeakyRelu", since=(1, 6, 16))
class LeakyRelu(Activation):
    def slopes(self, args=None):
        return (min(self.alpha, 1.0), max(self.alpha, 1.0))

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 0.01))

    def forward(self, x):
        return F.leaky_relu(x, self.alpha)


@rule("PRelu", since=(1, 6, 7, 9, 16))
class PRelu(Activation):
    """f(x) = x for x >= 0, slope * x otherwise; slope broadcasts to x (trainable)."""

    weight_inputs = (1,)

    def slopes(self, args=None):
        if args is None or args.values[1] is None:
            raise self.no_rule("the slope must be a constant")
        slope = args.values[1]
        return (min(1.0, float(slope.min())), max(1.0, float(slope.max())))

    def forward(self, x, slope):
        return torch.where(x >= 0, x, slope * x)


@rule("Sigmoid", since=(1, 6, 13))
class Sigmoid(Activation):
    SLOPES = (0.0, 0.25)

    def forward(self, x):
        return torch.sigmoid(x)


@rule("Tanh", since=(1, 6, 13))
class Tanh(Activation):
    def forward(self, x):
        return torch.tanh(x)


@rule("HardSwish", since=(14, 22))
class HardSwish(Activation):
    """x * max(0, min(1, x / 6 + 1/2))."""

    SLOPES = (-0.5, 1.5)  # (2x + 3) / 6 on [-3, 3]

    def forward(self, x):
        return F.hardswish(x)


@rule("Softplus", since=(1,))
class Softplus(Activation):
    """log(1 + exp(x)). An optional constant second input t (from the fused ``Where(x > t, x, Softplus(x))``
    that PyTorch's dynamo exporter writes) returns x itself above t: a jump of softplus(t) - t at t (2e-9 for
    the usual t = 20), which the Lipschitz and box rules must account for."""

    static_inputs = (1,)

    def setup(self) -> None:
        t = self.static.get(1)
        self.threshold = float(np.asarray(t).reshape(-1)[0]) if t is not None else None

    def forward(self, x, *_):
        if self.threshold is None:
            return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))  # exact and stable
        return F.softplus(x, threshold=self.threshold)

    def slopes(self, args=None):
        if self.threshold is not None:
            raise self.no_rule(f"with threshold {self.threshold:g} it jumps by softplus(t) - t at t "
                               f"(not Lipschitz)")
        return (0.0, 1.0)


@rule("Elu", since=(1, 6))
class Elu(Activation):
    def slopes(self, args=None):
        return (min(0.0, self.alpha), max(1.0, self.alpha))  # alpha e^x for x < 0

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.0))

    def forward(self, x):
        return F.elu(x, self.alpha)


@rule("Selu", since=(1, 6))
class Selu(Activation):
    def slopes(self, args=None):
        return (min(0.0, self.gamma * self.alpha), self.gamma * max(1.0, self.alpha))

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.67326319217681884765625))
        self.gamma = float(self.attr("gamma", 1.05070102214813232421875))

    def forward(self, x):
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x))


@rule("HardSigmoid", since=(1, 6))
class HardSigmoid(Activation):
    """max(0, min(1, alpha x + beta))."""

    def slopes(self, args=None):
        return (min(0.0, self.alpha), max(0.0, self.alpha))

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 0.2))
        self.beta = float(self.attr("beta", 0.5))

    def forward(self, x):
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)


@rule("Clip", since=(1, 6, 11, 12, 13))
class Clip(Activation):
    """Clamp to [min, max]: attributes before opset 11, optional constant inputs from 11 on."""

    static_inputs = (1, 2)

    def setup(self) -> None:
        lo, hi = self.static.get(1), self.static.get(2)
        lo = self.attr("min", -math.inf) if lo is None else float(np.asarray(lo))
        hi = self.attr("max", math.inf) if hi is None else float(np.asarray(hi))
        self.min, self.max = float(lo), float(hi)

    def forward(self, x, *_):
        lo = None if self.min == -math.inf else self.min
        hi = None if self.max == math.inf else self.max
        if lo is None and hi is None:
            return x
        if lo is not None and hi is not None and lo > hi:  # ONNX: all outputs equal max
            return torch.full_like(x, hi)
        return torch.clamp(x, lo, hi)


@rule("Erf", since=(9, 13))
class Erf(Activation):
    SLOPES = (0.0, 2.0 / math.sqrt(math.pi))

    def forward(self, x):
        return torch.erf(x)


@rule("Gelu", since=(20,))
class Gelu(Activation):
    """GELU(x) = x Phi(x) ('none', the Erf form) or its tanh approximation.

    Also the node that the Erf pattern of older exporters, 0.5 x (1 + erf(x / sqrt 2)), is rewritten to.
    """

    def slopes(self, args=None):
        # extremes of d/dx x Phi(x) at x = -+sqrt(2) (tanh form: nearly the same), found on a 5e-6 grid in
        # float64 and rounded outwards: erf form [-0.1289042, 1.1289042], tanh form [-0.1289931, 1.1289931]
        return (-0.12891, 1.12891) if self.approximate == "none" else (-0.12900, 1.12900)

    def setup(self) -> None:
        approx = self.attr("approximate", b"none")
        self.approximate = approx.decode() if isinstance(approx, bytes) else str(approx)

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)
