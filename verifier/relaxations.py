"""Sound linear relaxations of scalar functions over intervals: the lines that the activations' linear rules
(``Activation.linear``, CROWN's relaxations, Zhang et al. 2018 §3.2) put below and above f on an input box.

Any slope a gives a valid pair of lines once their offsets are sound bounds of min and max over [l, u] of
g(x) = f(x) - a x. Those are computed here from what every activation already has, sound bounds of f at points
(its interval rule at point boxes) and of f' on intervals (its slope range), so one routine serves every
activation, smooth or with kinks: [l, u] is cut into ``PIECES`` pieces [p, q]; on each, g' lies in
[d_lo, d_hi] = [s_lo - a, s_hi - a], hence g(x) >= g(p) + d_lo (x - p) and g(x) >= g(q) - d_hi (q - x); the
larger of these two lines is at least the smaller of the two taken at any point, so min over [p, q] of g is at
least min(g(p) + d_lo (x_c - p), g(q) - d_hi (q - x_c)) for any x_c (the lines' crossing is the best choice),
or g(p) where d_lo >= 0, g(q) where d_hi <= 0. The gap to the true minimum is at most the width of the
slope range times the piece's width: second order in the piece's width for smooth f, 0 for piecewise linear f
cut at its kinks' pieces.

Slopes: CROWN's choice for convex or concave pieces is the chord or a tangent; not knowing the shape, every
rule here tries the chord and the tangents at ``TANGENTS`` points of the box and keeps, per entry, the line
highest (lower line) or lowest (upper line) at the box's centre, the least area between line and function.
Soundness does not depend on the choice: any slope, the optimized ones of alpha-CROWN included, is made sound
by its offsets.

Rounding: everything runs in float64; the offsets are reduced by 32 u_64 times the magnitudes of the terms they
are computed from (a dozen roundings at most), plus TINY64.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from verifier.rounding import TINY64

#: pieces the box is cut into for the offsets (their error shrinks with the square of the piece width)
PIECES = 8
#: interior fractions of the box where tangents are tried as slopes (besides the ends and the chord)
TANGENTS = (0.25, 0.5, 0.75)

#: entries of a box fitted at once (``fit_lines``)
CHUNK = 2 ** 16

_U64 = 2.0 ** -53
#: sound bounds (lo, hi) of f at the points of a tensor
Values = Callable[[Tensor], tuple[Tensor, Tensor]]
#: sound bounds (lo, hi) of f' over the intervals [p, q] (entrywise)
Slopes = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Line = tuple[Tensor, Tensor]


def _cuts(lo: Tensor, hi: Tensor, pieces: int) -> Tensor:
    """(pieces + 1, *shape) points from lo to hi, the ends exactly lo and hi (so the pieces cover [lo, hi]
    whatever the rounding of the interior points)."""
    t = torch.linspace(0.0, 1.0, pieces + 1, dtype=lo.dtype, device=lo.device).reshape(-1, *[1] * lo.dim())
    pts = lo + (hi - lo) * t
    pts[0], pts[-1] = lo, hi
    return torch.minimum(torch.maximum(pts, lo), hi)


def _stacked(fn: Callable, *points: Tensor) -> tuple[Tensor, Tensor]:
    """``fn`` on points stacked along a leading axis, run with that axis folded into the batch."""
    lead = points[0].shape[:2]
    out = fn(*(p.reshape(-1, *p.shape[2:]) for p in points))
    return out[0].reshape(*lead, *out[0].shape[1:]), out[1].reshape(*lead, *out[1].shape[1:])


def min_offset(values: Values, slopes: Slopes, lo: Tensor, hi: Tensor, a: Tensor,
               pieces: int = PIECES) -> Tensor:
    """A lower bound of min over x in [lo, hi] of f(x) - a x, entrywise (module docstring). Finite boxes."""
    pts = _cuts(lo, hi, pieces)
    f_lo, _ = _stacked(values, pts)
    p, q = pts[:-1], pts[1:]
    s_lo, s_hi = _stacked(slopes, p, q)
    g = f_lo - a * pts
    gp, gq = g[:-1], g[1:]
    d_lo, d_hi = s_lo - a, s_hi - a
    width = q - p
    both = (d_lo < 0) & (d_hi > 0)
    cross = ((gp - gq + d_hi * width) / torch.where(both, d_hi - d_lo, torch.ones_like(width))).clamp(min=0.0)
    x_c = p + torch.minimum(cross, width)
    inner = torch.minimum(gp + d_lo * (x_c - p), gq - d_hi * (q - x_c))
    low = torch.where(d_lo >= 0, gp, torch.where(d_hi <= 0, gq, inner))
    scale = (f_lo[:-1].abs() + f_lo[1:].abs() + a.abs() * (p.abs() + q.abs())
             + (s_lo.abs() + s_hi.abs() + 2 * a.abs()) * width)
    return (low - 32 * _U64 * scale).amin(0) - TINY64


def max_offset(values: Values, slopes: Slopes, lo: Tensor, hi: Tensor, a: Tensor,
               pieces: int = PIECES) -> Tensor:
    """An upper bound of max over x in [lo, hi] of f(x) - a x: minus ``min_offset`` of -f at slope -a."""
    def neg_values(x: Tensor) -> tuple[Tensor, Tensor]:
        v_lo, v_hi = values(x)
        return -v_hi, -v_lo

    def neg_slopes(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        s_lo, s_hi = slopes(p, q)
        return -s_hi, -s_lo

    return -min_offset(neg_values, neg_slopes, lo, hi, -a, pieces)


def candidate_slopes(values: Values, slopes: Slopes, lo: Tensor, hi: Tensor) -> Tensor:
    """(C, *shape) slopes to try: the chord, and tangents at the ends and at ``TANGENTS`` (midpoints of the slope
    range at each point), all clipped to the slope range of the box."""
    s_lo, s_hi = slopes(lo, hi)
    f_lo, f_hi = values(torch.stack([lo, hi]).reshape(-1, *lo.shape[1:]))
    mid_f = ((f_lo + f_hi) / 2).reshape(2, *lo.shape)
    width = hi - lo
    chord = torch.where(width > 0, (mid_f[1] - mid_f[0]) / torch.where(width > 0, width, torch.ones_like(width)),
                        (s_lo + s_hi) / 2)
    fractions = torch.tensor([0.0, *TANGENTS, 1.0], dtype=lo.dtype, device=lo.device).reshape(-1, *[1] * lo.dim())
    pts = lo + width * fractions
    t_lo, t_hi = _stacked(slopes, pts, pts)
    tangents = (t_lo + t_hi) / 2
    return torch.cat([chord[None], tangents]).clamp(min=s_lo, max=s_hi)


def fit_lines(values: Values, slopes: Slopes, lo: Tensor, hi: Tensor) -> tuple[Line, Line]:
    """``fit_box_lines`` in chunks of the batch axis (its temporaries are ~50 times the box)."""
    step = max(1, CHUNK // max(1, lo[0].numel()))
    if lo.shape[0] <= step:
        return fit_box_lines(values, slopes, lo, hi)
    parts = [fit_box_lines(values, slopes, lo[i:i + step], hi[i:i + step]) for i in range(0, lo.shape[0], step)]
    return ((torch.cat([p[0][0] for p in parts]), torch.cat([p[0][1] for p in parts])),
            (torch.cat([p[1][0] for p in parts]), torch.cat([p[1][1] for p in parts])))


def fit_box_lines(values: Values, slopes: Slopes, lo: Tensor, hi: Tensor) -> tuple[Line, Line]:
    """Lines (slope, offset) with a_l x + b_l <= f(x) <= a_u x + b_u on [lo, hi], entrywise: of the candidate
    slopes, the lower line highest and the upper line lowest at the box's centre. Non-finite boxes get flat lines
    at f's box bounds (``values`` of the box itself is not available here, so their offsets are -inf / inf)."""
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    lo_f = torch.where(finite, lo, torch.zeros_like(lo))
    hi_f = torch.where(finite, hi, torch.zeros_like(hi))
    cands = candidate_slopes(values, slopes, lo_f, hi_f)
    n = cands.shape[0]
    lo_c, hi_c = lo_f.expand(n, *lo.shape), hi_f.expand(n, *hi.shape)
    flat = (n * lo.shape[0], *lo.shape[1:])
    b_l = min_offset(values, slopes, lo_c.reshape(flat), hi_c.reshape(flat), cands.reshape(flat)).reshape(cands.shape)
    b_u = max_offset(values, slopes, lo_c.reshape(flat), hi_c.reshape(flat), cands.reshape(flat)).reshape(cands.shape)
    centre = (lo_f + hi_f) / 2
    pick_l = (cands * centre + b_l).argmax(0, keepdim=True)
    pick_u = (cands * centre + b_u).argmin(0, keepdim=True)
    a_l, b_l = cands.gather(0, pick_l)[0], b_l.gather(0, pick_l)[0]
    a_u, b_u = cands.gather(0, pick_u)[0], b_u.gather(0, pick_u)[0]
    inf = torch.full_like(lo, torch.inf)
    zero = torch.zeros_like(lo)
    return ((torch.where(finite, a_l, zero), torch.where(finite, b_l, -inf)),
            (torch.where(finite, a_u, zero), torch.where(finite, b_u, inf)))
