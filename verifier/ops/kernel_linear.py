"""The linear (CROWN) rule of ``KernelExpansion`` (``verifier.ops.kernels``): two lines per kernel value over the
input box, combined through the decision functions' coefficients (CROWN, Zhang et al. 2018, §3.2, applied to a
composition of a scalar function with a quadratic or linear argument).

Every kernel value is k_r(x) = h(tau_r(x)) with a scalar h and an argument tau_r whose float evaluation lies in
an interval around its real value:

- RBF: h(tau) = e^{-tau}, tau = gamma ||x - s_r||^2. t(x) = ||x - s_r||^2 is convex and separable, so over the
  box [lo, hi] (v = lo + hi, c = v / 2) it lies between two planes with the same direction v - 2 s_r:
  the chord per coordinate above, T(x) = (v - 2 s_r) . x + ||s_r||^2 - lo . hi, and the tangent at c below,
  Tl(x) = (v - 2 s_r) . x + ||s_r||^2 - ||c||^2; the float exponent lies in gamma t(x) [1 - G', 1 + G] (the
  box rule's model). A line a tau + b below (above) h then gives one in x by taking T with the factor 1 + G
  where the slope's sign needs tau large, Tl with 1 - G' where it needs tau small.
- LINEAR, POLY, SIGMOID: tau = gamma <x, s_r> + coef0 (LINEAR: <x, s_r>, h the identity), linear in x; its
  float evaluation lies within delta_r of it (the box rule's interval dot product), so a line a tau + b in tau
  moves by at most |a| delta_r.

The lines in tau are ``verifier.relaxations.fit_lines`` of h over the argument's range (the float one
included), with h's values widened by what the forward's evaluation of h can be off by anywhere on that range,
so they hold for the real h and for its float evaluation. Per kernel value the sloped line is kept where it is
better at the box's centre than the flat one (k_lo or k_hi of the box rule), which is also sound.

For rows lam (B * R, P) of the op's output, w = lam A picks per support vector the lower line (w_r >= 0) or the
upper one: lam . (A k + b) >= sum_r w_r (alpha_r dir_r . x + beta_r) + lam . b, dir_r = v - 2 s_r (RBF) or
gamma s_r. So the rule costs two (B R, n) x (n, d) products, never a (B, n, d) tensor.

Soundness: the inequality holds for every x in the box in real arithmetic and for the float forward, minus
|lam| . (the decision sum's float error g_{n+4} (|A| max|k| + |b|), as in the box rule) and minus REL64 times
the magnitudes of everything this rule computes in float64 (w = lam A, the coefficients, the offsets, the
planes' constants), which bounds their rounding (module ``verifier.linear``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from verifier.box import Box
from verifier.linear import magnitude, rows_of
from verifier.ops.kernel_ranges import ULPS, power_range, squared_distance_range
from verifier.relaxations import fit_lines
from verifier.rounding import REL64, TINY64, gamma, tiny, unit_roundoff


def kernel_lines(op, x: Box, s: Tensor) -> tuple:
    """The lines below and above every kernel value over the box x (B, d) (module docstring), with the kernel
    values' largest magnitudes and the magnitudes the lines are computed from: what ``kernel_linear`` needs that
    does not depend on the rows (the op keeps them for the box, as CROWN's passes meet it often)."""
    lo, hi = x.lo.double().reshape(x.shape[0], -1), x.hi.double().reshape(x.shape[0], -1)
    return (_rbf_lines if op.kernel == "RBF" else _dot_lines)(op, lo, hi, s, x.dtype)


def kernel_linear(op, x: Box, lines: tuple, s: Tensor, a: Tensor, b: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(coefficients on x (B * R, *x's sample shape), bias (B * R,)) of the linear rule (module docstring);
    ``op`` the KernelExpansion, ``lines`` its ``kernel_lines`` on x, ``s`` (n, d), ``a`` (P, n), ``b`` (P,)
    float64, ``lam`` (B * R, P)."""
    lo, hi = x.lo.double().reshape(x.shape[0], -1), x.hi.double().reshape(x.shape[0], -1)
    (lower, upper), k_mag, size = lines
    lam_b = rows_of(lam.double(), x.shape[0])  # (B, R, P)
    w = lam_b @ a  # (B, R, n)
    pos = w >= 0
    alpha = torch.where(pos, w * lower[0][:, None], w * upper[0][:, None])
    beta = torch.where(pos, w * lower[1][:, None], w * upper[1][:, None])
    m = magnitude(Box.from_bounds(lo, hi))[:, None]  # (B, 1, d)
    if op.kernel == "RBF":  # sum_r alpha_r (v - 2 s_r)
        coef = (lo + hi)[:, None] * alpha.sum(-1, keepdim=True) - 2 * (alpha @ s)
        made = ((lo.abs() + hi.abs())[:, None] * alpha.abs().sum(-1, keepdim=True) + 2 * (alpha.abs() @ s.abs()))
    else:  # sum_r alpha_r gamma s_r
        scale = 1.0 if op.kernel == "LINEAR" else op.gamma
        coef, made = scale * (alpha @ s), abs(scale) * (alpha.abs() @ s.abs())
    n = s.shape[0]
    g_sum = gamma(n + 4, x.dtype) + gamma(n + 4, torch.float64)
    forward = g_sum * (k_mag @ a.abs().T + b.abs()) * (1 + REL64)  # (B, P): the decision sum's float error
    rounding = ((lam_b.abs() @ a.abs()) * k_mag[:, None]).sum(-1) + (w.abs() * size[:, None]).sum(-1) + \
        (made * m).sum(-1) + lam_b.abs() @ b.abs()
    bias = beta.sum(-1) + lam_b @ b - (lam_b.abs() * forward[:, None]).sum(-1) - 4 * REL64 * rounding - TINY64
    return coef.reshape(lam.shape[0], *x.shape[1:]), bias.reshape(-1)


def _choose(line: tuple[Tensor, Tensor], flat: Tensor, at_centre: Tensor, lower: bool) -> tuple[Tensor, Tensor]:
    """Per kernel value the sloped line (alpha, beta) or the flat line (0, flat), whichever is better at the box's
    centre (``at_centre``: the sloped line's value there)."""
    better = at_centre >= flat if lower else at_centre <= flat
    return torch.where(better, line[0], torch.zeros_like(flat)), torch.where(better, line[1], flat)


def _fit(h, slope_range, t_lo: Tensor, t_hi: Tensor, rel: float, dtype: torch.dtype):
    """Lines below and above h on [t_lo, t_hi] (B, n), valid for h and for every evaluation of it within
    ``rel`` |h| + tiny(dtype) (the forward's): ``verifier.relaxations.fit_lines`` of h (1 -+ rel) at points,
    widened by 4 REL64 for their own rounding, whose slopes h' (1 -+ rel) the slope range covers."""
    wide = rel + 4 * REL64

    def values(p: Tensor) -> tuple[Tensor, Tensor]:
        v = h(p)
        off = wide * v.abs() + tiny(dtype)
        return v - off, v + off

    def slopes(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        s_lo, s_hi = slope_range(p, q)
        return s_lo - wide * s_lo.abs() - TINY64, s_hi + wide * s_hi.abs() + TINY64

    return fit_lines(values, slopes, t_lo, t_hi)


def _rbf_lines(op, lo: Tensor, hi: Tensor, s: Tensor, dtype: torch.dtype):
    """Lines alpha (v - 2 s_r) . x + beta below and above each kernel value (B, n), the kernel values' largest
    magnitudes, and the magnitudes the lines are computed from (module docstring)."""
    d = s.shape[1]
    u = unit_roundoff(dtype) + unit_roundoff(torch.float64)
    g = gamma(d + 8, dtype) + gamma(d + 8, torch.float64)
    up, down = (1 + g) * (1 + 4 * u), (1 - g) * (1 - 4 * u)
    near, far = squared_distance_range(lo, hi, s)
    tau_lo, tau_hi = op.gamma * near * down, op.gamma * far * up
    (a_l, b_l), (a_u, b_u) = _fit(lambda p: torch.exp(-p), lambda p, q: (-torch.exp(-p), -torch.exp(-q)),
                                  tau_lo, tau_hi, ULPS * u, dtype)
    sq, c = (s * s).sum(1), (lo + hi) / 2
    err = REL64 * (sq + (lo.abs() * hi.abs() + c * c + (lo.abs() + hi.abs()) * (lo.abs() + hi.abs())).sum(
        1, keepdim=True))
    const_hi = sq - (lo * hi).sum(1, keepdim=True) + err  # T(x) = (v - 2 s_r) . x + const_hi >= t(x)
    const_lo = sq - (c * c).sum(1, keepdim=True) - err  # Tl(x) = (v - 2 s_r) . x + const_lo <= t(x)

    def in_x(slope: Tensor, offset: Tensor, lower: bool) -> tuple[Tensor, Tensor]:
        # a lower line with slope <= 0 (an upper one with slope > 0) needs tau <= gamma up T(x); else
        # tau >= gamma down Tl(x)
        big = (slope <= 0) if lower else (slope > 0)
        factor = torch.where(big, op.gamma * up * slope, op.gamma * down * slope)
        return factor, offset + factor * torch.where(big, const_hi, const_lo)

    k_lo, k_hi = op._kernel_range(lo, hi, s, dtype, (near, far))
    at_c = 2 * (c * c).sum(1, keepdim=True) - 2 * c @ s.T  # (v - 2 s_r) . c
    lower, upper = in_x(a_l, b_l, True), in_x(a_u, b_u, False)
    lower = _choose(lower, k_lo, lower[0] * at_c + lower[1], True)
    upper = _choose(upper, k_hi, upper[0] * at_c + upper[1], False)
    t_mag = far + const_hi.abs() + const_lo.abs() + at_c.abs()
    size = (a_l.abs() + a_u.abs()) * op.gamma * up * t_mag + b_l.abs() + b_u.abs() + k_hi.abs()
    return (lower, upper), torch.maximum(k_lo.abs(), k_hi.abs()), size


def _dot_lines(op, lo: Tensor, hi: Tensor, s: Tensor, dtype: torch.dtype):
    """Lines alpha (gamma s_r) . x + beta (LINEAR: alpha s_r . x + beta) below and above each kernel value, as
    ``_rbf_lines`` returns them (module docstring)."""
    d = s.shape[1]
    u = unit_roundoff(dtype) + unit_roundoff(torch.float64)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    t_lo, t_hi = op._argument_range(lo, hi, s, dtype)  # the real and the float argument's range
    t_mag = torch.maximum(t_lo.abs(), t_hi.abs())
    delta = (gamma(d + 4, dtype) + gamma(d + 4, torch.float64)) * ((c.abs() + r) @ s.abs().T) + tiny(dtype)
    k_lo, k_hi = op._kernel_range(lo, hi, s, dtype)
    if op.kernel == "LINEAR":
        one, zero = torch.ones_like(t_lo), torch.zeros_like(t_lo)
        lines = ((one, zero), (one, zero))  # k = tau (its float error delta: below)
        scale, coef0 = 1.0, 0.0
    else:
        scale, coef0 = op.gamma, op.coef0
        delta = abs(scale) * delta + 4 * u * (t_mag + abs(coef0)) + tiny(dtype)
        if op.kernel == "POLY":
            m = op.degree

            def h(p):
                return p.pow(m)

            def slope_range(p, q):
                f_lo, f_hi = power_range(p, q, m - 1)
                return m * f_lo, m * f_hi
        else:
            def h(p):
                return torch.tanh(p)

            def slope_range(p, q):
                near = torch.where((p <= 0) & (q >= 0), torch.zeros_like(p), torch.minimum(p.abs(), q.abs()))
                far = torch.maximum(p.abs(), q.abs())
                return 1 - torch.tanh(far) ** 2, 1 - torch.tanh(near) ** 2
        rel = (ULPS + 2 * (op.degree if op.kernel == "POLY" else 1)) * u
        lines = _fit(h, slope_range, t_lo, t_hi, rel, dtype)
    (a_l, b_l), (a_u, b_u) = lines
    lower = (a_l, b_l + a_l * coef0 - a_l.abs() * delta)
    upper = (a_u, b_u + a_u * coef0 + a_u.abs() * delta)
    at_c = scale * (c @ s.T)
    lower = _choose(lower, k_lo, lower[0] * at_c + lower[1], True)
    upper = _choose(upper, k_hi, upper[0] * at_c + upper[1], False)
    size = (a_l.abs() + a_u.abs()) * (t_mag + abs(coef0) + delta) + b_l.abs() + b_u.abs() + k_hi.abs()
    return (lower, upper), torch.maximum(k_lo.abs(), k_hi.abs()), size
