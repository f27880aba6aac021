"""Elementwise arithmetic (Add, Sub, Mul, Div, Neg; variadic Sum, Max, Min) with numpy broadcasting, and Cast.

With a constant operand these are affine maps (input normalization, biases, scalings), bounded as linear maps
by the Lipschitz issue; with two input-dependent operands Add/Sub are sums of branches and Mul/Div are products.
"""
from __future__ import annotations

import onnx
import torch

from .base import SAFETY, Lipschitz, Op, RuleArgs, rule


class _Additive(Op):
    """Sums and differences: |d(a +- b)| <= |da| + |db|; an input broadcast into a larger output counts once
    per copy (sqrt(copies) in l2). Affine when one operand is a constant."""

    def is_affine(self, dynamic):
        return sum(dynamic) == 1

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([args.duplication(k) for k, d in enumerate(args.dynamic) if d], "exact", "sum")


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

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([args.duplication(k) for k, d in enumerate(args.dynamic) if d], "exact",
                         self.combine_rule)

    combine = staticmethod(torch.add)

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = self.combine(out, x)
        return out


@rule("Sum", since=(1, 6, 8, 13))
class Sum(_Variadic):
    combine = staticmethod(torch.add)
    combine_rule = "sum"


@rule("Max", since=(1, 6, 8, 12, 13))
class Max(_Variadic):
    combine = staticmethod(torch.maximum)


@rule("Min", since=(1, 6, 8, 12, 13))
class Min(_Variadic):
    combine = staticmethod(torch.minimum)


@rule("Neg", since=(1, 6, 13))
class Neg(Op):
    def forward(self, x):
        return -x

    def is_affine(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0], "exact")


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
            from ..errors import ModelImportError
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
