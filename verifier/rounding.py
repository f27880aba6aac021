"""lipverify's rounding model: the allowances sound bounds add for floating-point arithmetic, one name per
constant. ``verifier/box.py`` states how the box rules use them (Higham's gamma_n for sums, a few ulps for
elementwise ops and activations, ``tiny`` for underflow); the Lipschitz rules multiply float64 norms by
``SAFETY``; float64 engines (gradient boxes, BCP, LipLT's vectors) widen by ``REL64``; margins are reduced by
``FLOAT_SLACK`` for the float32 forward.
"""
from __future__ import annotations

import torch

from .errors import NoRuleError

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
