"""Elementwise activations.

Each is slope-restricted (slope in [alpha, beta]), which gives the Lipschitz rule (beta). The box rule is the
exact hull of the real function over [lo, hi] (``Activation.interval``): every activation here is piecewise
monotone, so its extremes over an interval lie at the ends or at the few interior points where it turns
(``critical_points``: 0 for the kinks of LeakyRelu/PRelu/Elu/Selu with negative slopes, -1.5 for HardSwish,
GELU's minimum, the jump of the thresholded Softplus). The hull is then widened for float rounding
(``ULPS``, see verifier/box.py). GELU is recognised in its Erf form at import (verifier/rewrite.py) so that it
is one node with one rule.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from verifier.box import Box, is_box, round_toward
from verifier.errors import NoRuleError
from verifier.jacobian import no_gradient_rule, scaled
from verifier.linear import relu_backward
from verifier.ops.base import Lipschitz, Op, RuleArgs, rule
from verifier.rounding import SAFETY, TINY64, outward_rounding, unit_roundoff

#: (x_lo, x_hi, v_lo, v_hi): where the box meets [x_lo, x_hi], the hull must also reach down to v_lo and up to
#: v_hi (values of the function at an interior extreme point in [x_lo, x_hi], rounded outward)
Critical = tuple[float, float, float, float]


class Activation(Op):
    """An elementwise activation whose slope lies in [alpha, beta] everywhere (``slopes``). Its Lipschitz
    constant in any l_p norm is max(|alpha|, |beta|) (LMT Appendix D); LipLT (CRM §3) uses alpha and beta."""

    SLOPES: tuple[float, float] = (0.0, 1.0)
    #: how many ulps of (|f(x)| + |x|) the forward may be off (torch's float32 functions measured at most a
    #: third of it, see verifier/box.py; 0 for functions that round nothing)
    ULPS: float = 16.0

    def slopes(self, args: RuleArgs | None = None) -> tuple[float, float]:
        return self.SLOPES

    def critical_points(self, consts: tuple) -> list[Critical]:
        """Interior points where the function stops being monotone (none for monotone functions)."""
        return []

    def _nondecreasing(self, consts: tuple) -> bool:
        """Whether f(lo) <= f(hi) for lo <= hi in real arithmetic: no negative slope, no turning point."""
        try:
            return self.slopes()[0] >= 0 and not self.critical_points(consts)
        except NoRuleError:  # slopes that need the constants (PRelu) or that do not exist
            return False

    def error_mag(self, x_abs: torch.Tensor, f_abs: torch.Tensor) -> torch.Tensor:
        """The magnitude that the float forward's error is ULPS ulps of, from max |x| and max |f| over the box."""
        return f_abs + x_abs

    def interval(self, x, *consts):
        """Exact hull of a piecewise monotone function: min and max of f(lo), f(hi) and the values at the
        interior turning points inside [lo, hi] (each piece between them is monotone, so its extremes are at
        its ends). Widened by 2 ULPS u (|f| + |x|): once for the bound's own evaluation, once for the forward's
        at any point of the box."""
        if not is_box(x) or any(is_box(t) for t in consts):
            raise self.no_box("only the first input may depend on the model input")
        lo, hi = x.lo, x.hi
        f_lo, f_hi = self.forward(lo, *consts), self.forward(hi, *consts)
        if not outward_rounding() and self._nondecreasing(consts):
            return Box.from_bounds(f_lo, f_hi)  # training: nondecreasing, [f(lo), f(hi)] as computed
        out_lo, out_hi = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
        for x_lo, x_hi, v_lo, v_hi in self.critical_points(consts):
            inside = (lo <= x_hi) & (hi >= x_lo)
            out_lo = torch.where(inside, out_lo.clamp(max=round_toward(v_lo, out_lo.dtype, down=True)), out_lo)
            out_hi = torch.where(inside, out_hi.clamp(min=round_toward(v_hi, out_hi.dtype, down=False)), out_hi)
        box = Box.from_bounds(out_lo, out_hi, check=False)
        if self.ULPS:
            x_abs = torch.maximum(lo.abs(), hi.abs())
            f_abs = torch.maximum(out_lo.abs(), out_hi.abs())
            box = box.widen(2 * self.ULPS * unit_roundoff(box.dtype), self.error_mag(x_abs, f_abs))
        return box

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        alpha, beta = self.slopes(args)  # SAFETY: float implementations round the slope by ~1e-8
        return Lipschitz([max(abs(alpha), abs(beta)) * SAFETY], "slope")

    def slope_range(self, lo: torch.Tensor, hi: torch.Tensor, consts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Entrywise [min, max] of the derivative over [lo, hi] (Clarke's generalized derivative at kinks):
        the local slope range that the gradient rule multiplies by. Default: the global slopes."""
        alpha, beta = self.slopes(None)
        return torch.full_like(lo, alpha), torch.full_like(hi, beta)

    def grad_interval(self, inputs, grads):
        """J = diag(f'(x)) with f'(x) in the slope range of the input box: the interval product (Hein &
        Andriushchenko's Prop. 2.2 bounds sigma' by its values at the ends of such a range)."""
        x, consts = inputs[0], tuple(inputs[1:])
        if not is_box(x) or any(is_box(t) for t in consts):
            raise no_gradient_rule(self)
        s_lo, s_hi = self.slope_range(x.lo, x.hi, consts)
        return [scaled(grads[0], s_lo, s_hi)] + [None] * len(consts)


def _rounded(s_lo: torch.Tensor, s_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A slope range computed with a few roundings (float64 transcendental functions), widened outward."""
    return s_lo - 1e-12 * s_lo.abs() - TINY64, s_hi + 1e-12 * s_hi.abs() + TINY64


def _kink_range(lo: torch.Tensor, hi: torch.Tensor, left, right) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope ``left`` below 0 and ``right`` above (tensors or floats): exact on boxes on one side, the hull of
    both on boxes around 0 (on [lo, 0] the function is the left piece, on [0, hi] the right one)."""
    left, right = torch.as_tensor(left, dtype=lo.dtype), torch.as_tensor(right, dtype=lo.dtype)
    both_lo, both_hi = torch.minimum(left, right), torch.maximum(left, right)
    s_lo = torch.where(lo >= 0, right, torch.where(hi <= 0, left, both_lo))
    s_hi = torch.where(lo >= 0, right, torch.where(hi <= 0, left, both_hi))
    return torch.broadcast_to(s_lo, lo.shape), torch.broadcast_to(s_hi, lo.shape)


def _unimodal_range(lo: torch.Tensor, hi: torch.Tensor, derivative) -> tuple[torch.Tensor, torch.Tensor]:
    """A derivative increasing up to 0 and decreasing after (sigmoid, tanh): its max over [lo, hi] is at the
    point of the box nearest 0, its min at an end."""
    peak = derivative(torch.minimum(torch.maximum(torch.zeros_like(lo), lo), hi))
    return _rounded(torch.minimum(derivative(lo), derivative(hi)), peak)


@rule("Relu", since=(1, 6, 13, 14))
class Relu(Activation):
    ULPS = 0.0  # max(x, 0) rounds nothing

    def forward(self, x):
        return torch.relu(x)

    def slope_range(self, lo, hi, consts):
        return _kink_range(lo, hi, 0.0, 1.0)

    def linear(self, inputs, lams):
        """CROWN's triangle relaxation over the input box (``verifier.linear.relu_backward``)."""
        x = inputs[0]
        if not is_box(x) or x.integer:
            return super().linear(inputs, lams)
        lam, bias = relu_backward(lams[0], x)
        return [lam], bias


@rule("LeakyRelu", since=(1, 6, 16))
class LeakyRelu(Activation):
    ULPS = 1.0  # alpha x: one rounding

    def slopes(self, args=None):
        return (min(self.alpha, 1.0), max(self.alpha, 1.0))

    def critical_points(self, consts):
        return [(0.0, 0.0, 0.0, 0.0)]  # the kink: a minimum when alpha < 0 (harmless otherwise, f(0) = 0)

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 0.01))

    def forward(self, x):
        return F.leaky_relu(x, self.alpha)

    def slope_range(self, lo, hi, consts):
        return _kink_range(lo, hi, self.alpha, 1.0)


@rule("PRelu", since=(1, 6, 7, 9, 16))
class PRelu(Activation):
    """f(x) = x for x >= 0, slope * x otherwise; slope broadcasts to x (trainable)."""

    weight_inputs = (1,)
    ULPS = 1.0

    def critical_points(self, consts):
        return [(0.0, 0.0, 0.0, 0.0)]  # the kink: a minimum where the slope is negative

    def slopes(self, args=None):
        if args is None or args.values[1] is None:
            raise self.no_rule("the slope must be a constant")
        slope = args.values[1]
        return (min(1.0, float(slope.min())), max(1.0, float(slope.max())))

    def forward(self, x, slope):
        return torch.where(x >= 0, x, slope * x)

    def slope_range(self, lo, hi, consts):
        return _kink_range(lo, hi, consts[0].to(lo.dtype), 1.0)


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


@rule("HardSwish", since=(14, 22))
class HardSwish(Activation):
    """x * max(0, min(1, x / 6 + 1/2))."""

    SLOPES = (-0.5, 1.5)  # (2x + 3) / 6 on [-3, 3]
    ULPS = 4.0  # measured at most 1.1

    def critical_points(self, consts):
        """0 on (-inf, -3], x (x + 3) / 6 on [-3, 3] (minimum -0.375 at -1.5), x on [3, inf): non-increasing
        up to -1.5, increasing after."""
        return [(-1.5, -1.5, -0.375, -0.375)]

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


@rule("HardSigmoid", since=(1, 6))
class HardSigmoid(Activation):
    """max(0, min(1, alpha x + beta))."""

    def slopes(self, args=None):
        return (min(0.0, self.alpha), max(0.0, self.alpha))

    ULPS = 2.0  # alpha x + beta: two roundings (then an exact clamp); monotone for either sign of alpha

    def error_mag(self, x_abs, f_abs):
        return f_abs + abs(self.alpha) * x_abs + abs(self.beta)

    def setup(self) -> None:
        self.alpha = float(self.attr("alpha", 0.2))
        self.beta = float(self.attr("beta", 0.5))

    def forward(self, x):
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)


@rule("Clip", since=(1, 6, 11, 12, 13))
class Clip(Activation):
    """Clamp to [min, max]: attributes before opset 11, optional constant inputs from 11 on."""

    static_inputs = (1, 2)
    ULPS = 0.0  # clamping rounds nothing; monotone (constant when min > max)

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
