"""Boxes (axis-aligned intervals in centre/radius form) and the rule kit the ops' box rules are written in; the
walk over the IR (interval bound propagation) is ``verifier/engines/ibp.py``.

A ``Box`` holds a batch of boxes like a forward tensor holds a batch of samples: ``center`` and ``radius`` have
the tensor's shape (batch axis in front), ``radius >= 0``, and the box is {x : |x - center| <= radius}
entrywise (BCP §3.1 writes it midrad(m, r)). Each op's ``interval`` rule (``verifier/ops``, next to its forward
and Lipschitz rule) maps boxes of its input-dependent inputs to a box of its output; ``ibp.propagate`` walks the
graph with them (BCP eq. 7-8, the "IA" half of BCP; IBP of Gowal et al. for l_inf balls).

Soundness, including floating point
-----------------------------------
Every rule returns a box that contains
  (a) the exact (real-arithmetic) image of the input boxes under the op, with the weights as stored, and
  (b) what the op's forward returns in floating point for any input point of the boxes: the IR's ``forward``
      in the boxes' dtype, or any evaluation in that precision that obeys the standard model of IEEE
      arithmetic (onnxruntime's CPU kernels for float32),
so that the box of the logits contains both the model's real outputs and the float outputs one observes.
Float32 boxes (the module as imported) thus cover the float32 model as it runs; float64 boxes (``module.double()``)
cover real arithmetic and float64 evaluation, with slack ~1e-16 instead of ~1e-7 (use them for the tightest
real-arithmetic bounds; float32 outputs can leave them by the float32 rounding of the forward).

How, with u the unit roundoff of the boxes' dtype (2^-24 for float32) and gamma_n = n u / (1 - n u) (Higham,
"Accuracy and Stability of Numerical Algorithms", §3.1):

- Affine ops y = A x + b (Gemm, MatMul by a constant, Conv, ConvTranspose, BatchNormalization, pooling averages,
  sums and means; ``affine``): every output is a sum of at most n products, so any evaluation at x is within
  gamma_n (|A||x| + |b|) of the real value (any summation order, FMA or not). The centre is the forward at c,
  the radius |A| r (the forward with |weights| and no bias), widened by gamma (|A|(r + 2|c|) + 2|b|) with
  gamma = gamma_{n+4} covering the few roundings of the widening itself, all in one extra pass of the
  abs-weight forward. That widening is what a float evaluation can really be off by in the worst case; it
  does not vanish with the radius, and IBP amplifies it through the layers like any radius: for float32 on
  MNIST inputs it adds ~5% to the logit box of a 9-layer ReLU net at eps = 0.001 and ~0.1% at eps = 0.1.
- Elementwise arithmetic (Add, Sub, Mul, Div, Sum): one rounding per output, widened by 4 u relative to the
  magnitudes involved (``Box.widen``).
- Activations: exact hull of the real function from its values at lo, hi (and at its interior turning
  points), widened by 2 ULPS u (|f| + |x|): torch's float32 implementations of the transcendental functions
  are accurate to a few ulp of that (measured on 3e6 points against float64: at most 5.4 for GELU, 2 for
  sigmoid, softplus, SELU; ULPS = 16), once for the bound's own evaluation and once for the forward's. Relu,
  Clip, max and min round nothing and are not widened.
- Softmax / LogSoftmax: the bound is computed in float64 with explicit slack for its cancellations and its own
  rounding, then widened by the forward's error in the boxes' dtype.
- ``lo`` / ``hi`` round c - r and c + r outward (exactly: TwoSum gives the rounding error), and
  ``from_bounds`` rounds the radius up, so converting between the two forms never loses enclosure (and is
  exact wherever the float results are).
- An absolute ``tiny`` (2^-900 in float64, 2^-100 in float32: far above the subnormal spacing, and keeping radii
  normal numbers, see ``tiny``) covers underflow in every widened rule.
- TF32 (which CUDA may use for float32 matmuls and convolutions, with u = 2^-11) is switched off during
  ``ibp.propagate`` (``exact_float32``); FFT or Winograd convolution algorithms (cuDNN may pick them) have only
  normwise error bounds and are not covered: on CUDA, compute boxes in float64 when in doubt.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from verifier import fused
from verifier.rounding import gamma, outward_rounding, tiny, unit_roundoff


def _toward(t: Tensor, direction: float) -> Tensor:
    return torch.nextafter(t, torch.full_like(t, direction))


def _add_rounded(a: Tensor, b: Tensor, up: bool) -> Tensor:
    """a + b rounded up (or down): the float sum, one ulp further where it is inexact on the wrong side. The
    rounding error is exact by TwoSum (Knuth): s + err == a + b exactly in round-to-nearest."""
    if not outward_rounding():
        return a + b
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return torch.where(err > 0, _toward(s, math.inf), s) if up else torch.where(err < 0, _toward(s, -math.inf), s)


def round_toward(value: float, dtype: torch.dtype, down: bool) -> float:
    """``value`` rounded to ``dtype`` downward (``down``) or upward, as a python float."""
    exact = torch.tensor(value, dtype=torch.float64)
    q = exact.to(dtype)
    if down and q.double() > exact:
        q = _toward(q, -math.inf)
    elif not down and q.double() < exact:
        q = _toward(q, math.inf)
    return float(q)


class EmptyIntersectionError(RuntimeError):
    """Two boxes that should both enclose the same set do not intersect: one of them is unsound (a bug)."""


@dataclass
class Box:
    """Boxes {x : |x - center| <= radius} in centre/radius form, batched like forward tensors.

    ``integer``: the box encloses an integer-typed tensor (after a Cast to an integer type); its values are
    integers, and integer ops (Div truncates) follow integer semantics. The box itself stays float.
    """

    center: Tensor
    radius: Tensor
    integer: bool = False

    def __post_init__(self) -> None:
        if self.center.shape != self.radius.shape:
            raise ValueError(f"box centre {tuple(self.center.shape)} and radius {tuple(self.radius.shape)} "
                             f"differ in shape")

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_bounds(cls, lo: Tensor, hi: Tensor, integer: bool = False, check: bool = True) -> "Box":
        """The box [lo, hi] (entrywise, finite); the radius is rounded up so that the box contains [lo, hi]."""
        lo, hi = torch.broadcast_tensors(lo, hi)
        if not outward_rounding():  # training: kept as bounds, unchecked (see _Bounds)
            return _Bounds(lo, hi, integer)
        if check and not bool((lo <= hi).all()):
            raise ValueError("empty box: lo > hi (or NaN) somewhere")
        c = (lo + hi) / 2
        r = torch.maximum(_add_rounded(hi, -c, up=True), _add_rounded(c, -lo, up=True))
        return cls(c, r, integer)

    @classmethod
    def point(cls, x: Tensor, dtype: torch.dtype | None = None) -> "Box":
        """The degenerate box {x}."""
        integer = not x.is_floating_point()
        x = x.to(dtype if dtype is not None else (x.dtype if not integer else torch.get_default_dtype()))
        return cls(x, torch.zeros_like(x), integer)

    @classmethod
    def ball(cls, x: Tensor, eps: float | Tensor, lower: Any = None, upper: Any = None) -> "Box":
        """The l_inf ball of radius ``eps`` (a scalar, or one per sample: shape (B,)) around ``x``, intersected
        with the domain [``lower``, ``upper``] (scalars or tensors broadcastable to ``x``) when given."""
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if eps_t.dim() == 1 and x.dim() > 1:
            eps_t = eps_t.reshape(-1, *([1] * (x.dim() - 1)))
        if bool((eps_t < 0).any()) or not bool(torch.isfinite(eps_t).all()):
            raise ValueError("eps must be finite and >= 0")
        box = cls(x, torch.broadcast_to(eps_t, x.shape).clone())
        if lower is None and upper is None:
            return box
        lo, hi = box.lo, box.hi
        if lower is not None:
            lo = torch.maximum(lo, torch.as_tensor(lower, dtype=x.dtype, device=x.device))
        if upper is not None:
            hi = torch.minimum(hi, torch.as_tensor(upper, dtype=x.dtype, device=x.device))
        if not bool((lo <= hi).all()):
            raise ValueError("the ball does not meet the domain [lower, upper]")
        return cls.from_bounds(lo, hi)

    # --- views ---------------------------------------------------------------------------------------------
    @property
    def lo(self) -> Tensor:
        """Lower bounds c - r, rounded down."""
        if not outward_rounding():
            return self.center - self.radius
        return _add_rounded(self.center, -self.radius, up=False)

    @property
    def hi(self) -> Tensor:
        """Upper bounds c + r, rounded up."""
        return _add_rounded(self.center, self.radius, up=True)

    @property
    def _like(self) -> Tensor:
        """A tensor of the box's shape, dtype and device (what the views below read)."""
        return self.center

    @property
    def shape(self) -> torch.Size:
        return self._like.shape

    @property
    def dtype(self) -> torch.dtype:
        return self._like.dtype

    @property
    def device(self) -> torch.device:
        return self._like.device

    def dim(self) -> int:
        return self._like.dim()

    @property
    def width(self) -> Tensor:
        return self.hi - self.lo

    def __getitem__(self, index: Any) -> "Box":
        return Box(self.center[index], self.radius[index], self.integer)

    def __len__(self) -> int:
        return len(self._like)

    def to(self, *args: Any, **kwargs: Any) -> "Box":
        return Box(self.center.to(*args, **kwargs), self.radius.to(*args, **kwargs), self.integer)

    def detach(self) -> "Box":
        return Box(self.center.detach(), self.radius.detach(), self.integer)

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Box":
        """Apply a data-movement map (reshape, transpose, slice, gather, ...) to centre and radius alike:
        exact for maps that only move, select or copy entries."""
        return Box(fn(self.center), fn(self.radius), self.integer)

    @staticmethod
    def cat(boxes: Sequence["Box"], dim: int = 0) -> "Box":
        return Box(torch.cat([b.center for b in boxes], dim), torch.cat([b.radius for b in boxes], dim),
                   all(b.integer for b in boxes))

    @staticmethod
    def stack(boxes: Sequence["Box"], dim: int = 0) -> "Box":
        return Box(torch.stack([b.center for b in boxes], dim), torch.stack([b.radius for b in boxes], dim),
                   all(b.integer for b in boxes))

    # --- set operations -------------------------------------------------------------------------------------
    def intersect(self, other: "Box") -> "Box":
        """The intersection (lo = max, hi = min). Both boxes are meant to enclose the same set, so an empty
        intersection means that one of them is unsound: ``EmptyIntersectionError``. A NaN bound (an overflow
        upstream: it bounds nothing) gives way to the other box's bound; where both are NaN the result stays NaN,
        which no certificate accepts (every comparison with NaN is false)."""
        if not outward_rounding():  # training: one fused pass (verifier.fused), no emptiness check
            lo, hi = fused.intersect_bounds(self.center, self.radius, other.center, other.radius)
            return _Bounds(lo, hi, self.integer and other.integer)
        lo = torch.fmax(self.lo, other.lo)
        hi = torch.fmin(self.hi, other.hi)
        bad = lo > hi
        if bool(bad.any()):
            raise EmptyIntersectionError(f"empty intersection of two boxes at {int(bad.sum())} entries (largest "
                                         f"gap {float((lo - hi)[bad].max()):.3g}): one of them is unsound")
        return Box.from_bounds(lo, hi, self.integer and other.integer, check=False)

    def contains(self, x: Tensor, tol: float = 0.0) -> bool:
        """Whether every entry of ``x`` (broadcastable to the box) lies in [lo - tol, hi + tol]."""
        x = x.to(self.dtype)
        return bool(((x >= self.lo - tol) & (x <= self.hi + tol)).all())

    def widen(self, rel: float, mag: Tensor | None = None) -> "Box":
        """Radius r -> r + rel (r + mag) (mag defaults to |centre|; a tensor broadcastable to the box), rounded
        up, plus ``tiny``: the slack that covers rounding errors of at most rel * (|value| + mag)."""
        if not outward_rounding():  # training: no rounding slack
            return self
        mag = self.center.abs() if mag is None else mag
        u = unit_roundoff(self.dtype)
        r = (self.radius * (1 + rel) + rel * mag) * (1 + 4 * u) + tiny(self.dtype)
        return Box(self.center, torch.broadcast_to(r, self.center.shape), self.integer)

    def with_integer(self, integer: bool) -> "Box":
        return replace(self, integer=integer)


class _Bounds(Box):
    """Training arithmetic only (``rounding.training_arithmetic``): a box kept as [lo, hi] as the rules that
    produce it
    (intersections, activations) compute it, its centre and radius computed when a rule asks for them (affine
    maps), so that a walk does not convert back and forth at every tensor. A bound pair that crosses (lo > hi,
    possible when the training estimates disagree) has radius 0 at its midpoint."""

    def __init__(self, lo: Tensor, hi: Tensor, integer: bool = False) -> None:
        self._lo, self._hi, self.integer = lo, hi, integer
        self._midrad: tuple[Tensor, Tensor] | None = None

    def _centre_radius(self) -> tuple[Tensor, Tensor]:
        if self._midrad is None:
            self._midrad = fused.midrad(self._lo, self._hi)
        return self._midrad

    @property  # type: ignore[override]
    def center(self) -> Tensor:
        return self._centre_radius()[0]

    @property  # type: ignore[override]
    def radius(self) -> Tensor:
        return self._centre_radius()[1]

    @property
    def lo(self) -> Tensor:
        return self._lo

    @property
    def hi(self) -> Tensor:
        return self._hi

    @property
    def _like(self) -> Tensor:
        return self._lo

    def with_integer(self, integer: bool) -> "Box":
        return _Bounds(self._lo, self._hi, integer)


# ----------------------------------------------------------------------------------------------- rule helpers
def is_box(x: Any) -> bool:
    return isinstance(x, Box)


def affine(box: Box, forward: Callable[[Tensor], Tensor], abs_forward: Callable[[Tensor, float], Tensor],
           fan_in: int, integer: bool = False) -> Box:
    """The image of ``box`` under an affine map y = A x + b.

    ``forward(x)``: the op's forward (A x + b); ``abs_forward(v, k)``: |A| v + k |b| (the forward with the weights
    replaced by their absolute values and the bias by k |bias|); ``fan_in``: the most roundings per output of
    the forward (terms of each dot product, plus scalings and the bias).

    Centre A c + b and radius |A| r are the exact image of a box under a linear map (BCP eq. 7). Rounding
    (module docstring): any float evaluation at a point x of the box, and the computed centre, are within
    gamma_n (|A||c| + |A| r + |b|) and gamma_n (|A||c| + |b|) of the real values, so the radius needed is
    rho = |A|((1 + g) r + 2 g |c|) + 2 g |b| with g >= gamma_n. It is computed as one abs-weight pass on
    v = (1 + g) r + 2 g |c| with g = gamma_{n+4} (the float constants 1 + g and 2 g round by u at most, which
    the 4 extra terms cover). v and the pass are sums of nonnegative terms with at most n + 8 roundings
    (constants, products, sums, the bias k |b|), relative error <= (n + 8) u + O(u^2) <= 2 g, and the radius is
    divided back by that: the final factor (1 + 2 g).
    """
    c = forward(box.center)
    if not outward_rounding():  # training: the exact-arithmetic image only
        return Box(c, torch.broadcast_to(abs_forward(box.radius, 0.0), c.shape), integer)
    g = gamma(fan_in + 4, box.dtype)
    v = box.radius * (1 + g) + box.center.abs() * (2 * g)
    r = abs_forward(v, 2 * g) * (1 + 2 * g) + tiny(box.dtype)
    return Box(c, torch.broadcast_to(r, c.shape), integer)


def interval_matmul(a: Box, b: Box, fan_in: int) -> Box:
    """torch.matmul of two boxes (centre/radius interval arithmetic, Rump 1999): centre A_c B_c, radius
    |A_c| B_r + A_r |B_c| + A_r B_r, plus 2 g (|A_c| + A_r)(|B_c| + B_r) for the rounding of the forward at
    any point and of the centre (g = gamma_{fan_in+4}); two products of nonnegative matrices, whose own
    relative rounding (at most fan_in + 6 roundings) the final factor (1 + 2 g) covers."""
    g = gamma(fan_in + 4, a.dtype)
    c = torch.matmul(a.center, b.center)
    ac, bc = a.center.abs(), b.center.abs()
    r = (torch.matmul(ac, b.radius * (1 + 2 * g) + bc * (2 * g))
         + torch.matmul(a.radius, (bc + b.radius) * (1 + 2 * g)))
    r = r * (1 + 2 * g) + tiny(a.dtype)
    return Box(c, r, a.integer and b.integer)


def parts(x: Box | Tensor, like: Box) -> tuple[Tensor, Tensor]:
    """(centre, radius) of a box, or of a constant as a degenerate box in the dtype of ``like``."""
    if isinstance(x, Box):
        return x.center, x.radius
    x = x.to(device=like.device)
    c = x.to(like.dtype) if x.is_floating_point() else x
    return c, torch.zeros(x.shape, dtype=like.dtype, device=like.device)


def is_integer(x: Box | Tensor) -> bool:
    return x.integer if isinstance(x, Box) else not x.is_floating_point()


def outward(lo64: Tensor, hi64: Tensor, dtype: torch.dtype, integer: bool = False) -> Box:
    """The box [lo64, hi64] (computed in float64) in ``dtype``, rounded outward."""
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    lo = torch.where(lo.double() > lo64, _toward(lo, -math.inf), lo)
    hi = torch.where(hi.double() < hi64, _toward(hi, math.inf), hi)
    return Box.from_bounds(lo, hi, integer, check=False)


# ------------------------------------------------------------------------------------------------ the engine
@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Switch TF32 off (CUDA may use it for float32 matmuls and convolutions, breaking the rounding model)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
