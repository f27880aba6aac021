"""Ranges over boxes that the rules of ``KernelExpansion`` (``verifier.ops.kernels``: box, gradient box;
``verifier.ops.kernel_linear``: linear) share: squared distances to the support vectors and powers.
"""
from __future__ import annotations

import torch

#: ulps of torch's exp and tanh (as ``verifier.ops.activations``' ULPS)
ULPS = 16.0
#: entries of the (batch, support vector, feature) blocks ``squared_distance_range`` holds at once
BLOCK = 1 << 24


def squared_distance_range(lo: torch.Tensor, hi: torch.Tensor, s: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ||x - s_r||^2 over the box [lo, hi], exactly per coordinate: (B, n) each, float64, in
    blocks of ``BLOCK`` entries."""
    rows = max(1, BLOCK // max(1, len(lo) * s.shape[1]))
    near, far = [], []
    for start in range(0, s.shape[0], rows):
        sv = s[start:start + rows][None]  # (1, m, d)
        below, above = lo[:, None, :] - sv, sv - hi[:, None, :]  # > 0 where s lies outside the box
        gap = torch.maximum(below, above).clamp_min(0.0)
        span = torch.maximum(below.abs(), above.abs())  # the farthest end per coordinate
        near.append(gap.square().sum(-1))
        far.append(span.square().sum(-1))
    return torch.cat(near, 1), torch.cat(far, 1)


def power_range(t_lo: torch.Tensor, t_hi: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of t^m over [t_lo, t_hi] (m >= 0): the ends' values, and 0 for even m on an interval about 0."""
    p_lo, p_hi = t_lo.pow(m), t_hi.pow(m)
    f_lo, f_hi = torch.minimum(p_lo, p_hi), torch.maximum(p_lo, p_hi)
    if m % 2 == 0 and m > 0:
        f_lo = torch.where((t_lo <= 0) & (t_hi >= 0), torch.zeros_like(f_lo), f_lo)
    return f_lo, f_hi
