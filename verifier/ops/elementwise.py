"""Elementwise arithmetic (Add, Sub, Mul, Div, Neg; variadic Sum, Max, Min) with numpy broadcasting, and Cast.

With a constant operand these are affine maps (input normalization, biases, scalings), bounded as linear maps
(``verifier/engines/lipschitz.py`` folds them into affine chains); with two input-dependent operands Add/Sub are sums of
branches and Mul/Div are products.
Box rules: sums add radii (exact), products and quotients of two boxes take the hull of the corner values
(exact interval arithmetic), a constant factor scales the radius by |c|; each is widened by a few ulps (of
the boxes' dtype) for the one rounding per entry (verifier/box.py). Max/Min are monotone: max/min of lo and of hi.
"""
from __future__ import annotations

import onnx
import torch

from verifier.box import Box, is_box, is_integer, parts
from verifier.jacobian import no_gradient_rule, scaled
from verifier.ops.base import Lipschitz, Op, RuleArgs, rule
from verifier.rounding import SAFETY, unit_roundoff


def _box_of(xs) -> Box:
    return next(x for x in xs if is_box(x))


def _rel(box: Box) -> float:
    """Slack for one rounding of each entry (plus that of the radius arithmetic), relative to the magnitudes."""
    return 4 * unit_roundoff(box.dtype)


def add_boxes(a, b, sign: float = 1.0) -> Box:
    """a + sign * b for boxes or constants: centres add, radii add."""
    like = a if is_box(a) else b
    ca, ra = parts(a, like)
    cb, rb = parts(b, like)
    c = ca + cb if sign > 0 else ca - cb
    r = torch.broadcast_to(ra + rb, c.shape)
    return Box(c, r, is_integer(a) and is_integer(b)).widen(_rel(like))


def _hull(values: list[torch.Tensor], like: Box, integer: bool) -> Box:
    lo, hi = values[0], values[0]
    for v in values[1:]:
        lo, hi = torch.minimum(lo, v), torch.maximum(hi, v)
    box = Box.from_bounds(lo, hi, integer, check=False)
    return box.widen(_rel(like), torch.maximum(lo.abs(), hi.abs()))


def _corners(x, like: Box) -> tuple[torch.Tensor, torch.Tensor]:
    if is_box(x):
        return x.lo, x.hi
    c, _ = parts(x, like)
    return c, c


def _truncated(box: Box) -> Box:
    """Integer division truncates toward zero: a monotone map of the real quotient."""
    return Box.from_bounds(torch.trunc(box.lo), torch.trunc(box.hi), True, check=False)


class _Additive(Op):
    """Sums and differences: |d(a +- b)| <= |da| + |db|; an input broadcast into a larger output counts once
    per copy (sqrt(copies) in l2). Affine when one operand is a constant."""

    def is_affine(self, dynamic):
        return sum(dynamic) == 1

    def linear_in_inputs(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([args.duplication(k) for k, d in enumerate(args.dynamic) if d], "exact", "sum")

    def interval(self, a, b):
        return add_boxes(a, b, -1.0 if self.op_type == "Sub" else 1.0)

    def channel_scale(self, args: RuleArgs, channels: int) -> torch.Tensor | None:
        return torch.ones(channels, dtype=torch.float64) if self.is_affine(args.dynamic) else None


class _Scaling(Op):
    """x * c or x / c with a constant c: a diagonal map, norm max |c| (max |1/c|), times the broadcast copies."""

    def is_affine(self, dynamic):
        return sum(dynamic) == 1 and (dynamic[0] or not self.divides)

    divides = False

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        if not self.is_affine(args.dynamic):
            raise self.no_rule("a product or quotient of input-dependent tensors has no global bound")
        k = args.dynamic.index(True)
        c = args.values[1 - k].double().abs()
        scale = float((1.0 / c).max()) if self.divides else float(c.max())
        return Lipschitz([scale * SAFETY * args.duplication(k)], "exact")

    def channel_scale(self, args: RuleArgs, channels: int) -> torch.Tensor | None:
        """c (1 / c) when the constant is a scalar or one value per channel of axis 1."""
        if not self.is_affine(args.dynamic):
            return None
        k = args.dynamic.index(True)
        c = args.values[1 - k]
        rank = len(args.in_shapes[k])
        if c.numel() == 1:
            s = c.reshape(1).expand(channels)
        elif c.numel() == channels and c.dim() >= rank - 1 and c.shape[c.dim() - (rank - 1)] == channels:
            s = c.reshape(-1)
        else:
            return None
        return 1.0 / s if self.divides else s

    def interval(self, a, b):
        """Box times (over) a constant: centre through the forward, radius |c| r (r / |c|). Otherwise the hull
        of the four corner products (quotients): a product is bilinear and a quotient monotone in each
        operand on a box whose denominator keeps one sign, so the extremes are at corners (exact). A
        denominator box that contains 0 has no bounded image: NoRuleError. Integer operands (Div truncates
        toward zero, a monotone map) take the truncated bounds of the real quotient."""
        like = _box_of((a, b))
        integer = is_integer(a) and is_integer(b)
        if self.divides and not is_box(b):
            if bool((b == 0).any()):
                raise self.no_box("division by a constant that contains 0")
            if not integer:
                center = self.forward(a.center, b)
                return Box(center, torch.broadcast_to(a.radius / b.abs(), center.shape)).widen(_rel(a))
        if not self.divides and not (is_box(a) and is_box(b)):
            box, c = (a, b) if is_box(a) else (b, a)
            cc, _ = parts(c, box)
            center = self.forward(box.center, cc) if box is a else self.forward(cc, box.center)
            radius = torch.broadcast_to(box.radius * cc.abs(), center.shape)
            return Box(center, radius, integer).widen(_rel(box))
        if self.divides and is_box(b):
            lo_b, hi_b = b.lo, b.hi
            if not bool(((lo_b > 0) | (hi_b < 0)).all()):
                raise self.no_box("the denominator's box contains 0")
        (a_lo, a_hi), (b_lo, b_hi) = _corners(a, like), _corners(b, like)
        if self.divides:
            values = [a_lo / b_lo, a_lo / b_hi, a_hi / b_lo, a_hi / b_hi]
        else:
            values = [a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi]
        box = _hull(values, like, integer)
        return _truncated(box) if self.divides and integer else box


@rule("Add", since=(1, 6, 7, 13, 14))
class Add(_Additive):
    weight_inputs = (0, 1)  # a constant addend is a bias (MatMul + Add exporters): trainable

    def forward(self, a, b):
        return a + b


@rule("Sub", since=(1, 6, 7, 13, 14))
class Sub(_Additive):
    def forward(self, a, b):
        return a - b


@rule("Mul", since=(1, 6, 7, 13, 14))
class Mul(_Scaling):
    def forward(self, a, b):
        return a * b


@rule("Div", since=(1, 6, 7, 13, 14))
class Div(_Scaling):
    divides = True

    def forward(self, a, b):
        if not a.is_floating_point() and not b.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")
        return a / b


class _Variadic(Op):
    """Elementwise over any number of broadcast inputs. Sum composes like Add; Max and Min like a stack:
    |max(a, b) - max(a', b')| <= max(|a - a'|, |b - b'|) entrywise, so sqrt(L_a^2 + L_b^2) in l2."""

    combine_rule = "stack"

    def is_affine(self, dynamic):
        return self.combine_rule == "sum" and sum(dynamic) == 1

    def linear_in_inputs(self, dynamic):
        return self.combine_rule == "sum"

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([args.duplication(k) for k, d in enumerate(args.dynamic) if d], "exact",
                         self.combine_rule)

    combine = staticmethod(torch.add)

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = self.combine(out, x)
        return out

    def interval(self, *xs):
        """Sum: boxes added one by one, as the forward adds. Max, Min: monotone in every input, so the max
        (min) of the lower bounds and of the upper bounds (exact, no rounding)."""
        like = _box_of(xs)
        if self.combine_rule == "sum":
            out = xs[0]
            for x in xs[1:]:
                out = add_boxes(out, x)
            return out if is_box(out) else Box.point(out)
        lows, highs = zip(*(_corners(x, like) for x in xs))
        return Box.from_bounds(self.forward(*lows), self.forward(*highs), all(is_integer(x) for x in xs),
                               check=False)


@rule("Sum", since=(1, 6, 8, 13))
class Sum(_Variadic):
    combine = staticmethod(torch.add)
    combine_rule = "sum"


class _Extremum(_Variadic):
    """Max and Min: elementwise, monotone in every input, with a gradient-box rule."""

    def grad_interval(self, inputs, grads):
        """Max, Min of same-shaped boxes (constants broadcast): per entry, the gradient goes to the input that is
        the extremum (Clarke's Jacobian: a convex combination at ties). Where input i surely is the only one it
        gets g, where it may be one of them g times [0, 1] (``scaled``), else 0."""
        boxes = [x for x in inputs if is_box(x)]
        if not boxes or any(tuple(x.shape) != tuple(boxes[0].shape) for x in boxes):
            raise no_gradient_rule(self)
        like = boxes[0]
        lows, highs = zip(*(_corners(x, like) for x in inputs))
        if self.combine is torch.minimum:  # input i may be the min where lo_i <= min_k hi_k
            bound = self.forward(*highs)
            possible = [torch.broadcast_to(lo <= bound, like.shape) for lo in lows]
        else:
            bound = self.forward(*lows)
            possible = [torch.broadcast_to(hi >= bound, like.shape) for hi in highs]
        count = torch.stack(possible).sum(0)
        out = []
        for x, may in zip(inputs, possible):
            if not is_box(x):
                out.append(None)
                continue
            sure = (may & (count == 1)).double()
            out.append(scaled(grads[0], sure, may.double()))
        return out


@rule("Max", since=(1, 6, 8, 12, 13))
class Max(_Extremum):
    combine = staticmethod(torch.maximum)


@rule("Min", since=(1, 6, 8, 12, 13))
class Min(_Extremum):
    combine = staticmethod(torch.minimum)


@rule("Neg", since=(1, 6, 13))
class Neg(Op):
    def forward(self, x):
        return -x

    def channel_scale(self, args: RuleArgs, channels: int) -> torch.Tensor | None:
        return -torch.ones(channels, dtype=torch.float64)

    def is_affine(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0], "exact")

    def interval(self, x):
        return Box(-x.center, x.radius, x.integer)


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}
_TORCH_TYPES = {
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool,
}


@rule("Cast", since=(1, 6, 9, 13, 19, 21))
class Cast(Op):
    """Cast. A cast to any floating type keeps the IR's float dtype (float32 unless the module is moved to
    float64), so that the IR computes in one precision; casts to integer or bool types are exact."""

    def setup(self) -> None:
        self.to = int(self.attr("to", onnx.TensorProto.FLOAT))
        if self.to not in _FLOAT_TYPES and self.to not in _TORCH_TYPES:
            from verifier.errors import ModelImportError
            raise ModelImportError(f"Cast node '{self.name}': unsupported target type "
                                   f"{onnx.TensorProto.DataType.Name(self.to)}")

    def is_affine(self, dynamic):
        return self.to in _FLOAT_TYPES

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        if self.to not in _FLOAT_TYPES:
            raise self.no_rule("a cast to an integer type is not continuous")
        return Lipschitz([1.0], "exact")

    def forward(self, x):
        if self.to in _FLOAT_TYPES:
            return x if x.is_floating_point() else x.to(torch.get_default_dtype())
        return x.to(_TORCH_TYPES[self.to])

    def interval(self, x):
        """To a float type: the same box (an integer box loses its integer flag; converting integers to
        float rounds them, hence the widening). To bool: {1} where the box excludes 0, {0} where it is the
        point 0, else [0, 1]. To an integer type: truncation toward zero is monotone, so [trunc(lo),
        trunc(hi)]; where that leaves the type's range (the conversion is then undefined or wraps), the
        whole range."""
        if self.to in _FLOAT_TYPES:
            return Box(x.center, x.radius).widen(_rel(x)) if x.integer else x
        lo, hi = x.lo, x.hi
        if self.to == onnx.TensorProto.BOOL:
            ones, zeros = torch.ones_like(lo), torch.zeros_like(lo)
            out_lo = torch.where((lo > 0) | (hi < 0), ones, zeros)
            out_hi = torch.where((lo == 0) & (hi == 0), zeros, ones)
            return Box.from_bounds(out_lo, out_hi, True, check=False)
        info = torch.iinfo(_TORCH_TYPES[self.to])
        t_lo, t_hi = torch.trunc(lo), torch.trunc(hi)
        outside = (t_lo < info.min) | (t_hi > info.max)
        t_lo = torch.where(outside, torch.full_like(t_lo, float(info.min)), t_lo)
        t_hi = torch.where(outside, torch.full_like(t_hi, float(info.max)), t_hi)
        return Box.from_bounds(t_lo, t_hi, True, check=False)
