"""Smooth activations (and the exponential ones, ELU and SELU): Sigmoid, Tanh, Softplus, ELU, SELU, Erf, GELU,
Swish (SiLU) and Mish.

The rules are ``Activation``'s (verifier/ops/activations.py); what each adds is its slope range over a box,
from where its derivative is monotone (``_unimodal_range``: a derivative increasing up to 0 and decreasing
after), computed in float64 and widened outward (``_rounded``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from verifier.ops.activations import Activation
from verifier.ops.base import LIPVERIFY, rule
from verifier.rounding import TINY64


def _rounded(s_lo: torch.Tensor, s_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A slope range computed with a few roundings (float64 transcendental functions), widened outward."""
    return s_lo - 1e-12 * s_lo.abs() - TINY64, s_hi + 1e-12 * s_hi.abs() + TINY64


def _unimodal_range(lo: torch.Tensor, hi: torch.Tensor, derivative) -> tuple[torch.Tensor, torch.Tensor]:
    """A derivative increasing up to 0 and decreasing after (sigmoid, tanh): its max over [lo, hi] is at the
    point of the box nearest 0, its min at an end."""
    peak = derivative(torch.minimum(torch.maximum(torch.zeros_like(lo), lo), hi))
    return _rounded(torch.minimum(derivative(lo), derivative(hi)), peak)


def _three_piece_range(lo: torch.Tensor, hi: torch.Tensor, derivative, turns: tuple[float, float],
                       extremes: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A derivative decreasing up to ``turns[0]`` (where it is ``extremes[0]``, its global minimum, or below it),
    increasing up to ``turns[1]`` (``extremes[1]``, its global maximum, or above) and decreasing after (GELU,
    SiLU, Mish): over [lo, hi] its extremes are at the ends and at the turns inside."""
    d_lo, d_hi = derivative(lo), derivative(hi)
    s_lo, s_hi = _rounded(torch.minimum(d_lo, d_hi), torch.maximum(d_lo, d_hi))
    left, right = turns
    s_lo = torch.where((lo <= left + 1e-12) & (hi >= left - 1e-12), torch.full_like(lo, extremes[0]), s_lo)
    s_hi = torch.where((lo <= right + 1e-12) & (hi >= right - 1e-12), torch.full_like(hi, extremes[1]), s_hi)
    return s_lo, s_hi


@rule("Sigmoid", since=(1, 6, 13))
class Sigmoid(Activation):
    SLOPES = (0.0, 0.25)

    def forward(self, x):
        return torch.sigmoid(x)

    def slope_range(self, lo, hi, consts):
        return _unimodal_range(lo, hi, lambda t: torch.sigmoid(t) * torch.sigmoid(-t))


@rule("Tanh", since=(1, 6, 13))
class Tanh(Activation):
    def forward(self, x):
        return torch.tanh(x)

    def slope_range(self, lo, hi, consts):
        # sech^2 t = 4 sigma(2t) sigma(-2t): accurate to a few ulps relative even where 1 - tanh^2 t rounds to 0
        return _unimodal_range(lo, hi, lambda t: 4 * torch.sigmoid(2 * t) * torch.sigmoid(-2 * t))


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

    def critical_points(self, consts):
        """With a threshold t: increasing softplus up to t, then x itself (a jump down from softplus(t) to t):
        the hull over [lo, hi] containing t is that of f(lo), f(hi), t and softplus(t)."""
        if self.threshold is None:
            return []
        t = self.threshold
        sp = max(t, 0.0) + math.log1p(math.exp(-abs(t)))  # softplus(t) in float64
        return [(t, t, min(t, sp), max(t, sp) * (1 + 1e-12) + 1e-300)]

    def slopes(self, args=None):
        if self.threshold is not None:
            raise self.no_rule(f"with threshold {self.threshold:g} it jumps by softplus(t) - t at t "
                               f"(not Lipschitz)")
        return (0.0, 1.0)

    def slope_range(self, lo, hi, consts):
        """softplus' = sigmoid, increasing (the paper's Prop. 2.2 activation)."""
        self.slopes()  # refuses the thresholded form
        return _rounded(torch.sigmoid(lo), torch.sigmoid(hi))


@rule("Elu", since=(1, 6))
class Elu(Activation):
    def slopes(self, args=None):
        return (min(0.0, self.alpha), max(1.0, self.alpha))  # alpha e^x for x < 0

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.0))

    def critical_points(self, consts):
        return [(0.0, 0.0, 0.0, 0.0)]  # alpha (e^x - 1) decreases for alpha < 0: a minimum at 0

    def forward(self, x):
        return F.elu(x, self.alpha)

    def slope_range(self, lo, hi, consts):
        """1 above 0, alpha e^x below: increasing when 0 <= alpha <= 1, so its range is its values at the ends."""
        if not 0.0 <= self.alpha <= 1.0:
            return super().slope_range(lo, hi, consts)

        def derivative(t):
            return torch.where(t > 0, torch.ones_like(t), self.alpha * torch.exp(torch.clamp_max(t, 0.0)))
        return _rounded(derivative(lo), derivative(hi))


@rule("Selu", since=(1, 6))
class Selu(Activation):
    def slopes(self, args=None):
        return (min(0.0, self.gamma * self.alpha), self.gamma * max(1.0, self.alpha))

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.67326319217681884765625))
        self.gamma = float(self.attr("gamma", 1.05070102214813232421875))

    def critical_points(self, consts):
        return [(0.0, 0.0, 0.0, 0.0)]  # the kink (each side is monotone whatever the signs of alpha, gamma)

    def forward(self, x):
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x))


@rule("Erf", since=(9, 13))
class Erf(Activation):
    SLOPES = (0.0, 2.0 / math.sqrt(math.pi))

    def forward(self, x):
        return torch.erf(x)

    def slope_range(self, lo, hi, consts):
        return _unimodal_range(lo, hi, lambda t: 2.0 / math.sqrt(math.pi) * torch.exp(-t * t))


@rule("Gelu", since=1, domain=LIPVERIFY)  # (the importer's rewrite of decomposed tanh forms)
@rule("Gelu", since=(20,))
class Gelu(Activation):
    """GELU(x) = x Phi(x) ('none', the Erf form) or its tanh approximation.

    Also the node that the Erf pattern of older exporters, 0.5 x (1 + erf(x / sqrt 2)), and the decomposed tanh
    form (``frontends.onnx_patterns``) are rewritten to.
    """

    #: GELU's minimum (argmin, min) in the erf form and in the tanh form, from mpmath at 40 digits:
    #: erf -0.75179152469356445746 -> -0.16997120747990366169, tanh -0.75246142207101625849 -> -0.17004075057125405064
    MINIMUM = {"none": (-0.75179152469356446, -0.16997120747990366),
               "tanh": (-0.75246142207101626, -0.17004075057125405)}

    def critical_points(self, consts):
        """GELU is decreasing up to its minimum point x* and increasing after (so the hull over [lo, hi] is that
        of f(lo), f(hi), and f(x*) when x* is inside).

        Proof. Erf form: f(x) = x Phi(x), f'(x) = Phi(x) + x phi(x) = Phi(x) h(x) with h(x) = 1 + x phi(x) / Phi(x).
        For x >= 0, f' > 0. For x < 0, x is negative and increasing and phi / Phi (the inverse Mills ratio
        of -x) is positive and decreasing, so x phi / Phi is increasing (p q with p < 0 increasing, q > 0
        decreasing: (p q)' = p' q + p q' > 0); it tends to -inf as x -> -inf and to 0 at 0, so h has exactly
        one root x* < 0: f' < 0 before, > 0 after. Tanh form: f(x) = x sigma(2 s(x)) with
        s(x) = sqrt(2/pi) (x + 0.044715 x^3), f'(x) = sigma(2s) (1 + 2 x s'(x) sigma(-2s)); for x < 0,
        x s'(x) = sqrt(2/pi) (x + 3 0.044715 x^3) is negative and increasing, sigma(-2 s(x)) positive and
        decreasing, so the same argument gives one root. The roots and minimum values are mpmath's (40
        digits); the bracket +-1e-12 and the value -1e-15 below make them safe in float64."""
        x_star, f_min = self.MINIMUM["tanh" if self.approximate == "tanh" else "none"]
        return [(x_star - 1e-12, x_star + 1e-12, f_min - 1e-15, f_min + 1e-15)]

    def slopes(self, args=None):
        # extremes of d/dx x Phi(x) at x = -+sqrt(2) (tanh form: nearly the same), found on a 5e-6 grid in
        # float64 and rounded outwards: erf form [-0.1289042, 1.1289042], tanh form [-0.1289931, 1.1289931]
        return (-0.12891, 1.12891) if self.approximate == "none" else (-0.12900, 1.12900)

    def setup(self) -> None:
        approx = self.attr("approximate", b"none")
        self.approximate = approx.decode() if isinstance(approx, bytes) else str(approx)

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def slope_range(self, lo, hi, consts):
        """Erf form: f' = Phi + x phi and f'' = phi (2 - x^2), so f' decreases up to -sqrt 2, increases up to
        sqrt 2 and decreases after: its extremes over [lo, hi] are at the ends and at +-sqrt 2 where inside
        (the global slopes, rounded outward). Tanh form: the global slopes."""
        if self.approximate != "none":
            return super().slope_range(lo, hi, consts)

        def derivative(t):
            return 0.5 * (1 + torch.erf(t / math.sqrt(2))) + t * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)

        return _three_piece_range(lo, hi, derivative, (-math.sqrt(2), math.sqrt(2)), self.slopes())


@rule("Swish", since=(24,))
class Swish(Activation):
    """Swish / SiLU: f(x) = x sigma(a x) with a > 0 (the ``alpha`` attribute; SiLU is a = 1). Also the node that
    ``x * Sigmoid(x)`` and ``x * Sigmoid(a x)``, as exporters write SiLU, are rewritten to (verifier/rewrite.py).
    With g(t) = t sigma(t), f(x) = g(a x) / a and f'(x) = g'(a x).

    Claims (proofs): g'(t) = sigma(t) (1 + t sigma(-t)); 1 + t sigma(-t) > 0 for t >= 0, and for t < 0 it is
    increasing (its derivative is sigma(-t) (1 - t sigma(t)) > 0) from -inf to 1, so g has exactly one turning
    point t* < 0, its minimum. g''(t) = sigma(t) sigma(-t) (2 - t tanh(t / 2)), and t tanh(t / 2) is even and
    increasing in |t|, so g' decreases up to -c, increases up to c and decreases after, with c tanh(c / 2) = 2.
    The constants are mpmath's (40 digits), bracketed and rounded outward below."""

    #: t* and g(t*); c, g'(-c) and g'(c)
    MINIMUM = (-1.2784645427610737951, -0.27846454276107379511)
    TURN, SLOPE_MIN, SLOPE_MAX = 2.3993572805154676678, -0.099839320128866916958, 1.0998393201288669170

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 1.0))
        if not self.alpha > 0:
            raise self.no_rule(f"alpha = {self.alpha:g}: the rules need alpha > 0")

    def forward(self, x):
        return F.silu(x) if self.alpha == 1.0 else x * torch.sigmoid(self.alpha * x)

    def slopes(self, args=None):
        return (self.SLOPE_MIN - 1e-12, self.SLOPE_MAX + 1e-12)

    def critical_points(self, consts):
        t, g = self.MINIMUM
        x, v = t / self.alpha, g / self.alpha
        return [(x - 1e-12 * (1 + abs(x)), x + 1e-12 * (1 + abs(x)), v - 1e-12 * abs(v), v + 1e-12 * abs(v))]

    def slope_range(self, lo, hi, consts):
        def derivative(t):
            s = torch.sigmoid(self.alpha * t)
            return s * (1 + self.alpha * t * torch.sigmoid(-self.alpha * t))

        turn = self.TURN / self.alpha
        return _three_piece_range(lo, hi, derivative, (-turn, turn), self.slopes())


@rule("Mish", since=(18, 22))
class Mish(Activation):
    """Mish: f(x) = x tanh(softplus(x)). Also the node that PyTorch's TorchScript exporter's
    ``x * Tanh(Softplus(x))`` is rewritten to (verifier/rewrite.py).

    Claims. One turning point (a minimum) x* < 0 (proof: with u = e^x, tanh(softplus x) = w = 1 - 2 / (u^2 + 2u
    + 2), and f' = w (1 - q) with q = -x w'/w = -x 4 (u + 1) / ((u + 2)(u^2 + 2u + 2)); for x < 0 both -x and
    the second factor (decreasing in u on (0, 1)) are positive and decreasing, so q decreases from +inf to 0
    and crosses 1 once; f' > 0 for x >= 0). f' decreases up to a = -2.2564, increases up to b = 1.4906 and
    decreases after: f'' changes sign exactly there on a 0.01 grid over [-30, 30] (mpmath, 40 digits; |f''| <=
    0.65 there), and beyond, f' tends monotonically to 0 and 1; f'(a) and f'(b) from mpmath, rounded outward
    by 1e-9."""

    MINIMUM = (-1.1924312145154952121, -0.30884341301725040663)
    TURNS = (-2.2563763963607931200, 1.4905711794854284593)
    SLOPES = (-0.1125261233894625564, 1.0884981622517278612)

    def forward(self, x):
        return F.mish(x)

    def critical_points(self, consts):
        x, v = self.MINIMUM
        return [(x - 1e-12, x + 1e-12, v - 1e-12, v + 1e-12)]

    def slope_range(self, lo, hi, consts):
        def derivative(t):
            w = torch.tanh(F.softplus(t))
            return w + t * torch.sigmoid(t) * (1 - w * w)

        return _three_piece_range(lo, hi, derivative, self.TURNS, self.SLOPES)
