"""The last layer's problem, exactly: a lower bound of min c.d over a box of d, or over a box intersected with an
l2 ball (BCP problem (11), Lee et al. 2020, Proposition 2), for many rows c at once. BCP's certificates
(``verifier.engines.bcp``) and BCP training (``training.bcp_bound``) solve it at the input h of the last affine layer,
where z = W h + b makes every output row c.z a linear function of h.

Soundness: every value returned is at most the true minimum, with the float64 rounding of its own sums covered
by ``REL64`` of the magnitudes summed.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.rounding import REL64


def ball_box_min(c: Tensor, lo: Tensor, hi: Tensor, rho: Tensor | None, rounds: int | None = None) -> Tensor:
    """A lower bound of min c.d over {lo <= d <= hi} (and ||d||_2 <= rho when given), for every row of c.

    Shapes: c (B, K, n), lo/hi (B, 1, n) with lo <= 0 <= hi (d = h - h(x); the clean point is feasible), rho
    (B, 1). Returns (B, K).

    Without rho: sum_i min(c_i lo_i, c_i hi_i), the exact minimum over the box.

    With rho, problem (11). The iteration of Proposition 2 (Lee et al.): start at d = -rho c / ||c|| (the ball
    minimizer), put the coordinates that leave the box into the clipped set I (fixed at the box face that
    -c points to), rescale the free ones, d_F = -t c_F with t = sqrt(rho^2 - ||d_I||^2) / ||c_F||, so that d is
    on the sphere, and repeat until no free coordinate leaves the box: at most n rounds, as I only grows.
    Soundness does not rest on that iteration: for any mu >= 0, weak Lagrangian duality gives, for every
    feasible d, c.d >= c.d + mu (||d||^2 - rho^2) >= min over the box of the same = G(mu), a separable
    problem solved by d_i = clip(-c_i / (2 mu), lo_i, hi_i) (a convex parabola on an interval). ``rounds``
    caps the iteration (training): the result stays a lower bound, only possibly a looser one. We return
    max(G(1 / (2 t)), G(0)) with the t of the iteration; when the iteration is exact (Proposition 2) the KKT
    conditions hold with mu = 1 / (2 t) and G(mu) equals the minimum (strong duality), so nothing is lost.
    """
    lo, hi = torch.broadcast_to(lo, c.shape), torch.broadcast_to(hi, c.shape)
    corner = torch.where(c > 0, lo, hi)  # the box face -c points to
    g0 = (c * corner).sum(-1)
    if rho is None:
        return g0 - REL64 * (c.abs() * (lo.abs() + hi.abs())).sum(-1)
    rho2 = (rho * rho)
    t = iteration_t(c.detach(), lo.detach(), hi.detach(), corner.detach(), rho2.detach(), rounds)
    finite = torch.isfinite(t) & (t > 0)
    mu = torch.where(finite, 0.5 / t.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(t))
    safe_mu = torch.where(finite, mu, torch.ones_like(mu))
    d = torch.minimum(torch.maximum(-c / (2 * safe_mu[..., None]), lo), hi)
    g_mu = (c * d + safe_mu[..., None] * d * d).sum(-1) - safe_mu * rho2
    g = torch.where(finite, torch.maximum(g_mu, g0), g0)
    slack = REL64 * ((c.abs() * (lo.abs() + hi.abs())).sum(-1) + safe_mu * rho2 * finite)
    return g - slack


def iteration_t(c: Tensor, lo: Tensor, hi: Tensor, corner: Tensor, rho2: Tensor, rounds: int | None) -> Tensor:
    """Proposition 2's iteration (see ``ball_box_min``): the scale t of the free coordinates, per row. It only
    picks the dual variable mu = 1 / (2 t), so it runs without autograd (training differentiates G(mu))."""
    with torch.no_grad():
        clipped = torch.zeros_like(c, dtype=torch.bool)
        t = torch.zeros(c.shape[:-1], dtype=c.dtype, device=c.device)
        for _ in range(c.shape[-1] + 1 if rounds is None else rounds):
            dI2 = torch.where(clipped, corner * corner, torch.zeros_like(c)).sum(-1)
            cF = torch.where(clipped, torch.zeros_like(c), c).norm(dim=-1)
            s2 = (rho2 - dI2).clamp_min(0.0)
            t = torch.where(cF > 0, s2.sqrt() / cF.clamp_min(torch.finfo(c.dtype).tiny),
                            torch.full_like(cF, math.inf))
            d = -t[..., None] * c
            new = ~clipped & (c != 0) & ((d < lo) | (d > hi))
            if not bool(new.any()):
                break
            clipped |= new
    return t


def box_min_pairs(w: Tensor, y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``ball_box_min`` without a ball for c = w_y - w_j, by matrix products instead of a (B, K, n) tensor:
    min over the box of c.d = c.m - |c|.r with m, r the box's centre and radius (B, n), and |w_y - w_j| for the
    K^2 pairs computed once; the same REL64 slack for the rounding of the sums."""
    k = w.shape[0]
    pairs = (w[:, None, :] - w[None, :, :]).abs().reshape(k * k, -1)  # row y * K + j: |w_y - w_j|
    m, r = (lo + hi) / 2, (hi - lo) / 2
    cm = m @ w.T  # (B, K): w_j . m
    rows = y[:, None] * k + torch.arange(k)[None, :]
    spread = (r @ pairs.T).gather(1, rows)
    slack = ((lo.abs() + hi.abs()) @ pairs.T).gather(1, rows)
    return (cm.gather(1, y[:, None]) - cm) - spread - REL64 * slack
