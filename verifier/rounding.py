"""lipverify's rounding model: the allowances sound bounds add for floating-point arithmetic, one name per
constant. ``verifier/box.py`` states how the box rules use them (Higham's gamma_n for sums, a few ulps for
elementwise ops and activations, ``tiny`` for underflow); the Lipschitz rules multiply float64 norms by
``SAFETY``; float64 engines (gradient boxes, BCP, LipLT's vectors) widen by ``REL64``; margins are reduced by
``FLOAT_SLACK`` for the float32 forward.

The one switch of that policy is ``training_arithmetic()``: inside it (training losses only) the box kit drops
its outward rounding and slack. The switch is a context variable, so it holds for the code run inside the
``with`` block in that thread (or task) only: a certificate computed in another thread never sees it, and it
is undone however the block exits.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch

from verifier.errors import NoRuleError

#: relative factor on a Lipschitz bound computed in float64 (an exact SVD, a norm), for its rounding
SAFETY = 1.0 + 1e-6
#: relative allowance of a float64 sum of nonnegative terms (gamma_n for n < 1e6 is < 1.2e-10)
REL64 = 1e-9
#: absolute allowance for underflow in float64 (far above the subnormal spacing, keeping radii normal numbers)
TINY64 = 2.0 ** -900
#: absolute allowance for underflow in float32
TINY32 = 2.0 ** -100
#: margins z_y - z_j are reduced by this times max(1, max |z|), for the rounding of the float32 forward pass
FLOAT_SLACK = 1e-5


def unit_roundoff(dtype: torch.dtype) -> float:
    """The unit roundoff of ``dtype``: the rounding model of every rule on boxes of that dtype."""
    return torch.finfo(dtype).eps / 2


def tiny(dtype: torch.dtype) -> float:
    """The absolute slack every widened rule adds for underflow: far above the subnormal spacing (the largest
    error a gradual underflow can make), and large enough that radii times ordinary weights stay normal numbers
    (subnormal arithmetic is ~100x slower on x86): 2^-900 in float64 (~1e-271), 2^-100 in float32 (~8e-31)."""
    return TINY64 if dtype == torch.float64 else TINY32


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of n roundings (Higham §3.1)."""
    nu = max(n, 1) * unit_roundoff(dtype)
    if nu >= 0.5:
        raise NoRuleError(f"an interval rule cannot bound the rounding of {n}-term sums in {dtype}")
    return nu / (1.0 - nu)


_OUTWARD: ContextVar[bool] = ContextVar("lipverify_outward_rounding", default=True)


@contextlib.contextmanager
def training_arithmetic() -> Iterator[None]:
    """For training losses only (``training.bcp_bound``): the box kit's lo/hi, affine images and intersections
    without outward rounding or slack and without emptiness checks, boxes kept as bounds where rules produce
    bounds, intersections as one fused step (``verifier.fused``): several times faster. Boxes computed inside
    are NOT sound for floating point; certificates never run inside this context."""
    token = _OUTWARD.set(False)
    try:
        yield
    finally:
        _OUTWARD.reset(token)


def outward_rounding() -> bool:
    """False inside ``training_arithmetic()`` (in this thread): rules may then skip their rounding slack."""
    return _OUTWARD.get()
