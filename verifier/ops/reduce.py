"""Reductions over axes (ReduceMean, ReduceSum, ReduceMax, ReduceMin) and the normalizations Softmax and LogSoftmax."""
from __future__ import annotations

import math

import torch

from .base import SAFETY, Lipschitz, Op, RuleArgs, ints, norm_axis, rule


class _Reduce(Op):
    """Reduce over ``axes`` (attribute, or input from ``axes_input_since`` on); all axes when none are given,
    unless ``noop_with_empty_axes``; ``keepdims`` defaults to 1."""

    static_inputs = (1,)
    axes_input_since = 99

    def setup(self) -> None:
        if self.opset >= self.axes_input_since:
            self.axes = ints(self.static.get(1)) if self.static.get(1) is not None else []
        else:
            self.axes = ints(self.attr("axes"))
        self.keepdims = bool(self.attr("keepdims", 1))
        self.noop = bool(self.attr("noop_with_empty_axes", 0))

    def reduced_count(self, shape) -> int:
        """How many entries each output reduces (per sample shape, batch axis included as in the file)."""
        if not self.axes:
            return 1 if self.noop else math.prod(shape[1:])
        return math.prod(shape[norm_axis(a, len(shape))] for a in self.axes)

    def _dims(self, x: torch.Tensor) -> tuple[int, ...] | None:
        if not self.axes:
            return None if self.noop else tuple(range(x.dim()))
        return tuple(norm_axis(a, x.dim()) for a in self.axes)


@rule("ReduceMean", since=(1, 11, 13, 18))
class ReduceMean(_Reduce):
    axes_input_since = 18

    def is_affine(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Means of k entries: 1/sqrt(k) in l2, 1 in l_inf."""
        k = self.reduced_count(args.in_shapes[0])
        return Lipschitz([SAFETY / math.sqrt(k) if args.l2 else 1.0], "exact")

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.mean(dim=dims, keepdim=self.keepdims)


@rule("ReduceSum", since=(1, 11, 13))
class ReduceSum(_Reduce):
    axes_input_since = 13

    def is_affine(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Sums of k entries: sqrt(k) in l2, k in l_inf."""
        k = self.reduced_count(args.in_shapes[0])
        return Lipschitz([math.sqrt(k) * SAFETY if args.l2 else float(k)], "exact")

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.sum(dim=dims, keepdim=self.keepdims)


@rule("ReduceMax", since=(1, 11, 12, 13, 18, 20))
class ReduceMax(_Reduce):
    axes_input_since = 18

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Each entry belongs to one group, and a max (min) is 1-Lipschitz (LMT Theorem 3 with n = 1)."""
        return Lipschitz([1.0], "theorem")

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.amax(dim=dims, keepdim=self.keepdims)


@rule("ReduceMin", since=(1, 11, 12, 13, 18, 20))
class ReduceMin(_Reduce):
    axes_input_since = 18

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Each entry belongs to one group, and a max (min) is 1-Lipschitz (LMT Theorem 3 with n = 1)."""
        return Lipschitz([1.0], "theorem")

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.amin(dim=dims, keepdim=self.keepdims)


class _SoftmaxBase(Op):
    """Before opset 13 the input is coerced to 2-D at ``axis`` (default 1) and normalized over the flattened
    trailing part; from 13 on, over the single ``axis`` (default -1)."""

    def setup(self) -> None:
        self.axis = int(self.attr("axis", 1 if self.opset < 13 else -1))

    def _apply(self, x: torch.Tensor, fn) -> torch.Tensor:
        axis = norm_axis(self.axis, x.dim())
        if self.opset >= 13:
            return fn(x, axis)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, 1).reshape(x.shape)


@rule("Softmax", since=(1, 11, 13))
class Softmax(_SoftmaxBase):
    """Its Jacobian diag(p) - p p^T is positive semidefinite with eigenvalues <= max p <= 1: 1 in l2; its
    rows' abs sums are 2 p_i (1 - p_i) <= 1/2 in l_inf."""

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0 if args.l2 else 0.5], "theorem")

    def forward(self, x):
        return self._apply(x, lambda t, a: torch.softmax(t, dim=a))


@rule("LogSoftmax", since=(1, 11, 13))
class LogSoftmax(_SoftmaxBase):
    """Jacobian I - 1 p^T over n classes: rows' abs sums 2 (1 - p_i) <= 2, columns' <= n - 1, so
    sqrt(2 (n - 1)) in l2 (Hoelder) and 2 in l_inf."""

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        shape = args.in_shapes[0]
        axis = norm_axis(self.axis, len(shape))
        n = shape[axis] if self.opset >= 13 else math.prod(shape[axis:])
        return Lipschitz([math.sqrt(2.0 * max(n - 1, 1)) if args.l2 else 2.0], "theorem")

    def forward(self, x):
        return self._apply(x, lambda t, a: torch.log_softmax(t, dim=a))
