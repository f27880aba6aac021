"""Elementwise activations: the base class, ``Activation``, and the piecewise linear ones (ReLU, LeakyReLU,
PReLU, HardSwish, HardSigmoid, Clip); the smooth ones are in verifier/ops/smooth.py.

Each is slope-restricted (slope in [alpha, beta]), which gives the Lipschitz rule (beta). The box rule is the
exact hull of the real function over [lo, hi] (``Activation.interval``): every activation here is piecewise
monotone, so its extremes over an interval lie at the ends or at the few interior points where it turns
(``critical_points``: 0 for the kinks of LeakyRelu/PRelu/Elu/Selu with negative slopes, -1.5 for HardSwish,
GELU's minimum, the jump of the thresholded Softplus). The hull is then widened for float rounding
(``ULPS``, see verifier/box.py). The linear rule bounds each by two lines over its input box
(verifier/relaxations.py; ReLU by its triangle, verifier/linear.py). GELU is recognised in its Erf form at
import (verifier/rewrite.py) so that it is one node with one rule.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from verifier.box import Box, is_box, round_toward
from verifier.errors import NoRuleError
from verifier.jacobian import no_gradient_rule, scaled
from verifier.linear import lines_backward, magnitude, relu_backward, relu_lines
from verifier.ops.base import Lipschitz, Op, RuleArgs, rule
from verifier.patches import Patches, lines_patches
from verifier.relaxations import fit_lines
from verifier.rounding import SAFETY, outward_rounding, unit_roundoff

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

    def unstable(self, box: Box) -> torch.Tensor:
        """The entries of an input box whose linear relaxation depends on the box (CROWN tightens only these):
        all but points."""
        return box.lo < box.hi

    def lines(self, x: Box, consts: tuple) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor,
                                                                                             torch.Tensor]]:
        """Lines (slope, offset) below and above f over the box x, valid at every point of it in real arithmetic
        (``verifier.relaxations.fit_lines``: offsets from the interval rule at points and the slope range, so
        every activation gets them). The lines of the last box are kept: CROWN's passes meet it often."""
        cached = getattr(self, "_lines", None)
        if cached is None or cached[0] is not x:
            def values(p):
                box = self.interval(Box.point(p), *consts)
                return box.lo, box.hi

            cached = (x, fit_lines(values, lambda p, q: self.slope_range(p, q, consts), x.lo, x.hi))
            self._lines = cached
        return cached[1]

    def linear(self, inputs, lams):
        """Its ``lines`` through ``verifier.linear.lines_backward``."""
        x, consts = inputs[0], tuple(inputs[1:])
        if not is_box(x) or x.integer or any(is_box(t) for t in consts):
            return super().linear(inputs, lams)
        lam, bias = lines_backward(lams[0], x, *self.lines(x, consts))
        return [lam] + [None] * len(consts), bias

    def linear_patches(self, inputs, lam: Patches):
        """``linear`` on local rows: the same lines, taken at each row's window."""
        x, consts = inputs[0], tuple(inputs[1:])
        if not is_box(x) or x.integer or any(is_box(t) for t in consts) or x.dim() != 4:
            return None
        local = lines_patches(lam, magnitude(x), *self._patch_lines(x, consts))
        return None if local is None else ([local[0]] + [None] * len(consts), local[1])

    def _patch_lines(self, x: Box, consts: tuple):
        return self.lines(x, consts)

    def grad_interval(self, inputs, grads):
        """J = diag(f'(x)) with f'(x) in the slope range of the input box: the interval product (Hein &
        Andriushchenko's Prop. 2.2 bounds sigma' by its values at the ends of such a range)."""
        x, consts = inputs[0], tuple(inputs[1:])
        if not is_box(x) or any(is_box(t) for t in consts):
            raise no_gradient_rule(self)
        s_lo, s_hi = self.slope_range(x.lo, x.hi, consts)
        return [scaled(grads[0], s_lo, s_hi)] + [None] * len(consts)


def _kink_range(lo: torch.Tensor, hi: torch.Tensor, left, right) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope ``left`` below 0 and ``right`` above (tensors or floats): exact on boxes on one side, the hull of
    both on boxes around 0 (on [lo, 0] the function is the left piece, on [0, hi] the right one)."""
    left, right = torch.as_tensor(left, dtype=lo.dtype), torch.as_tensor(right, dtype=lo.dtype)
    both_lo, both_hi = torch.minimum(left, right), torch.maximum(left, right)
    s_lo = torch.where(lo >= 0, right, torch.where(hi <= 0, left, both_lo))
    s_hi = torch.where(lo >= 0, right, torch.where(hi <= 0, left, both_hi))
    return torch.broadcast_to(s_lo, lo.shape), torch.broadcast_to(s_hi, lo.shape)


@rule("Relu", since=(1, 6, 13, 14))
class Relu(Activation):
    ULPS = 0.0  # max(x, 0) rounds nothing

    def forward(self, x):
        return torch.relu(x)

    def slope_range(self, lo, hi, consts):
        return _kink_range(lo, hi, 0.0, 1.0)

    def unstable(self, box):
        return (box.lo < 0) & (box.hi > 0)

    slope_variable = True

    def linear(self, inputs, lams, lower_slope=None):
        """CROWN's triangle relaxation over the input box (``verifier.linear.relu_backward``), its lower slope
        CROWN's adaptive one or ``lower_slope`` (alpha-CROWN's variables)."""
        x = inputs[0]
        if not is_box(x) or x.integer:
            return super().linear(inputs, lams)
        lam, bias = relu_backward(lams[0], x, lower_slope)
        return [lam], bias

    def _patch_lines(self, x, consts):
        return relu_lines(x)


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

    def unstable(self, box):
        return (box.lo < 0) & (box.hi > 0)


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

    def unstable(self, box):
        return (box.lo < 0) & (box.hi > 0)


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
