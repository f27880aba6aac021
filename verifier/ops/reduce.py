"""Reductions over axes (ReduceMean, ReduceSum, ReduceMax, ReduceMin) and the normalizations Softmax and LogSoftmax.

Box rules: sums and means are nonnegative linear maps (the affine rule), max and min are monotone ([f(lo),
f(hi)], exact); Softmax and LogSoftmax take the bounds of BCP-style interval softmax, computed in float64.
"""
from __future__ import annotations

import math

import torch

from verifier.box import Box, outward
from verifier.ops.base import Lipschitz, Op, RuleArgs, ints, norm_axis, rule
from verifier.ops.pooling import average_interval, monotone_interval
from verifier.rounding import SAFETY, gamma, unit_roundoff


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

    def _count(self, x: Box) -> int:
        dims = self._dims(x.center)
        return 1 if dims is None else math.prod(x.shape[d] for d in dims)


@rule("ReduceMean", since=(1, 11, 13, 18))
class ReduceMean(_Reduce):
    axes_input_since = 18

    def is_affine(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Means of k entries: 1/sqrt(k) in l2, 1 in l_inf."""
        k = self.reduced_count(args.in_shapes[0])
        return Lipschitz([SAFETY / math.sqrt(k) if args.l2 else 1.0], "exact")

    def interval(self, x, *rest):
        box = average_interval(self, x, self._count(x), *rest)
        return box.with_integer(x.integer) if self.op_type == "ReduceSum" else box

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

    def interval(self, x, *rest):
        box = average_interval(self, x, self._count(x), *rest)
        return box.with_integer(x.integer) if self.op_type == "ReduceSum" else box

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else x.sum(dim=dims, keepdim=self.keepdims)


class _ReduceExtreme(_Reduce):
    """ReduceMax / ReduceMin: monotone in every entry (box: the reduction of lo and of hi)."""

    axes_input_since = 18
    reduce = staticmethod(torch.amax)

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Each entry belongs to one group, and a max (min) is 1-Lipschitz (LMT Theorem 3 with n = 1)."""
        return Lipschitz([1.0], "theorem")

    def interval(self, x, *rest):
        return monotone_interval(self, x, *rest)

    def forward(self, x, *_):
        dims = self._dims(x)
        return x if dims is None else self.reduce(x, dim=dims, keepdim=self.keepdims)


@rule("ReduceMax", since=(1, 11, 12, 13, 18, 20))
class ReduceMax(_ReduceExtreme):
    reduce = staticmethod(torch.amax)


@rule("ReduceMin", since=(1, 11, 12, 13, 18, 20))
class ReduceMin(_ReduceExtreme):
    reduce = staticmethod(torch.amin)


class _SoftmaxBase(Op):
    """Before opset 13 the input is coerced to 2-D at ``axis`` (default 1) and normalized over the flattened
    trailing part; from 13 on, over the single ``axis`` (default -1)."""

    keeps_argmax = True  # both are strictly increasing in each entry given the others' order

    def setup(self) -> None:
        self.axis = int(self.attr("axis", 1 if self.opset < 13 else -1))

    def _apply(self, x: torch.Tensor, fn) -> torch.Tensor:
        axis = norm_axis(self.axis, x.dim())
        if self.opset >= 13:
            return fn(x, axis)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, 1).reshape(x.shape)

    def log_bounds(self, x: Box) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Float64 bounds of log softmax over the box, and the number n of entries normalized together.

        softmax_i = 1 / (1 + sum_{j != i} exp(x_j - x_i)) is decreasing in every x_j (j != i) and increasing
        in x_i, so over the box it lies in [1 / (1 + sum_{j != i} exp(hi_j - lo_i)), 1 / (1 + sum_{j != i}
        exp(lo_j - hi_i))] (exact per entry). With M = max_j hi_j, sum_{j != i} exp(hi_j - lo_i) =
        exp(M - lo_i) T_i with T_i = S - e_i (e_j = exp(hi_j - M) <= 1, S = sum e_j >= 1); the subtraction is
        made safe by the slack (n + 8) 2^-52 S >= the float64 rounding of S, e_i and the difference (each
        e_j is off by at most 1.4 u absolutely, the sum by (n - 1) u S), added to T_i (and subtracted for the
        upper bound, whose T'_i then stays an underestimate, clamped at 0). log of the bound is
        -log(1 + exp(z)) = -logaddexp(0, z) with z = log T_i + M - lo_i, stable for all values; its own float64
        rounding is at most a few u (|M| + |lo_i| + |log T_i| sigma(z) + |bound| + 1) <= 16 u (R + |bound| +
        log n + 40) with R the largest |lo|, |hi| of the input row, which is subtracted (added) as well."""
        lo, hi = x.lo.double(), x.hi.double()
        axis = norm_axis(self.axis, lo.dim())
        if self.opset < 13:
            lo, hi = lo.reshape(math.prod(lo.shape[:axis]), -1), hi.reshape(math.prod(hi.shape[:axis]), -1)
            axis = 1
        n = lo.shape[axis]
        slack = (n + 8) * 2.0 ** -52
        zero = torch.zeros((), dtype=torch.float64, device=lo.device)

        m_hi = hi.amax(axis, keepdim=True)
        e = torch.exp(hi - m_hi)
        total = e.sum(axis, keepdim=True)
        t = (total - e) + slack * total
        log_lower = -torch.logaddexp(zero, torch.log(t) + m_hi - lo)

        m_lo = lo.amax(axis, keepdim=True)
        e = torch.exp(lo - m_lo)
        total = e.sum(axis, keepdim=True)
        t = ((total - e) - slack * total).clamp_min(0.0)
        log_upper = -torch.logaddexp(zero, torch.log(t) + m_lo - hi)

        row = torch.maximum(lo.abs(), hi.abs()).amax(axis, keepdim=True)
        own = 16 * 2.0 ** -53
        log_lower = log_lower - own * (row + log_lower.abs() + math.log(n) + 40)
        log_upper = log_upper + own * (row + log_upper.abs() + math.log(n) + 40)
        return log_lower.reshape(x.shape), log_upper.reshape(x.shape), n


@rule("Softmax", since=(1, 11, 13))
class Softmax(_SoftmaxBase):
    """Its Jacobian diag(p) - p p^T is positive semidefinite with eigenvalues <= max p <= 1: 1 in l2; its
    rows' abs sums are 2 p_i (1 - p_i) <= 1/2 in l_inf."""

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0 if args.l2 else 0.5], "theorem")

    def interval(self, x):
        """exp of the log-softmax bounds (``log_bounds``), widened by the forward's rounding (in the box's
        dtype): p_i = exp(x_i - m) / sum_j exp(x_j - m) is off by at most gamma_{n+8} p_i (the exps, the sum of
        n terms, the division) plus u |x_i - m| p_i from rounding x_i - m, and |x_i - m| p_i <=
        |x_i - m| exp(x_i - m) <= 1/e: so 2 gamma_{n+8} p + 2 u."""
        log_lower, log_upper, n = self.log_bounds(x)
        lower, upper = torch.exp(log_lower), torch.exp(log_upper).clamp(max=1.0)
        rel, u = 2 * gamma(n + 8, x.dtype), unit_roundoff(x.dtype)
        return outward((lower * (1 - rel) - 2 * u).clamp_min(0.0), upper * (1 + rel) + 2 * u, x.dtype)

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

    def interval(self, x):
        """The log-softmax bounds (``log_bounds``), widened by the forward's rounding (box dtype): it computes
        (x_i - m) - log(sum_j exp(x_j - m)), off by at most gamma_{n+8} (|x_i - m| + log n + 1) with
        |x_i - m| <= |out_i| + log n, hence 2 gamma_{n+8} (|out| + log n + 1) (doubled for safety)."""
        log_lower, log_upper, n = self.log_bounds(x)
        rel = 2 * gamma(n + 8, x.dtype)
        mag = torch.maximum(log_lower.abs(), log_upper.abs()) + math.log(n) + 1.0
        return outward(log_lower - rel * mag, log_upper + rel * mag, x.dtype)
