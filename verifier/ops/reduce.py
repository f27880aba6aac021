"""Reductions over axes (ReduceMean, ReduceSum, ReduceMax, ReduceMin) and the normalizations Softmax and LogSoftmax."""
from __future__ import annotations

import math

import torch

from .base import Op, ints, norm_axis, rule


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

    def _dims(self, x: torch.Tensor) -> tuple[int, ...] | None:
        if not self.axes:
            return None if self.noop else tuple(range(x.dim()))
        return tuple(norm_axis(a, x.dim()) for a in self.axes)


@rule("ReduceMean", since=(1, 11, 13, 18))
class ReduceMean(_Reduce):
    axes_input_since = 18

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.mean(dim=dims, keepdim=self.keepdims)


@rule("ReduceSum", since=(1, 11, 13))
class ReduceSum(_Reduce):
    axes_input_since = 13

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.sum(dim=dims, keepdim=self.keepdims)


@rule("ReduceMax", since=(1, 11, 12, 13, 18, 20))
class ReduceMax(_Reduce):
    axes_input_since = 18

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.amax(dim=dims, keepdim=self.keepdims)


@rule("ReduceMin", since=(1, 11, 12, 13, 18, 20))
class ReduceMin(_Reduce):
    axes_input_since = 18

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
    def forward(self, x):
        return self._apply(x, lambda t, a: torch.softmax(t, dim=a))


@rule("LogSoftmax", since=(1, 11, 13))
class LogSoftmax(_SoftmaxBase):
    def forward(self, x):
        return self._apply(x, lambda t, a: torch.log_softmax(t, dim=a))
