"""Falsification: projected gradient ascent on a region's violation inside its input box.

A counterexample is a point x of the box whose outputs satisfy every row of one disjunct (``spec.RegionSpec``).
PGD maximizes the violation max_k min_{i in k} (a z(x) + c)_i (untargeted restarts) or one disjunct's
min_i (a z(x) + c)_i (targeted restarts, one per disjunct in turn) by signed gradient steps (the box is an l_inf
set) of a size that decays from a quarter of the box's width to 0 along a cosine, each step clipped to the box.
Restart 0 starts at the centre, the others at uniform random points. Every iterate is scored; the best point
(largest violation) is returned with its value. A candidate is only a candidate: the decision re-checks it on
the original file (``verify``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .spec import RegionSpec

Model = Callable[[Tensor], Tensor]


def pgd_box(model: Model, lower: Tensor, upper: Tensor, spec: RegionSpec, steps: int = 50, restarts: int = 10,
            seed: int = 0, max_batch: int = 512, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The best point found per box and its violation: ``lower``/``upper`` (B, *sample_shape) float32 boxes, the
    same ``spec`` for all; returns (x (B, *sample_shape), violation (B,) float64). Restarts run as one batch
    of at most ``max_batch`` rows at a time. ``start``: where restart 0 starts instead of the centre (e.g. the
    corner where CROWN's line is lowest)."""
    b = lower.shape[0]
    gen = torch.Generator(device=lower.device).manual_seed(seed)
    best_x = (lower + upper) / 2 if start is None else torch.minimum(torch.maximum(start.to(lower.dtype), lower),
                                                                     upper)
    with torch.no_grad():
        best_v = spec.violation(model(best_x)).detach()
    per = max(1, max_batch // max(b, 1))
    for first in range(0, restarts, per):
        group = list(range(first, min(restarts, first + per)))
        lo, hi = lower.repeat(len(group), *[1] * (lower.dim() - 1)), upper.repeat(len(group), *[1] * (lower.dim() - 1))
        u = torch.rand(lo.shape, generator=gen, device=lo.device, dtype=lo.dtype)
        first = best_x.repeat(len(group), *[1] * (lower.dim() - 1))
        x0 = torch.where(torch.tensor([k == 0 for k in group], device=lo.device).repeat_interleave(b).view(
            -1, *[1] * (lo.dim() - 1)), first, lo + u * (hi - lo))
        target = torch.tensor([k - 1 if k >= 1 else -1 for k in group], device=lo.device).repeat_interleave(b)
        target = torch.where(target >= 0, target % max(spec.disjuncts, 1), target)
        x, v = _ascend(model, x0, lo, hi, spec, target, steps)
        v = v.view(len(group), b)
        pick = v.argmax(0)
        cand_v = v[pick, torch.arange(b)]
        cand_x = x.view(len(group), b, *lower.shape[1:])[pick, torch.arange(b)]
        better = cand_v > best_v
        best_x = torch.where(better.view(-1, *[1] * (lower.dim() - 1)), cand_x, best_x)
        best_v = torch.where(better, cand_v, best_v)
    return best_x.detach(), best_v.detach()


def _ascend(model: Model, x: Tensor, lo: Tensor, hi: Tensor, spec: RegionSpec, target: Tensor, steps: int
            ) -> tuple[Tensor, Tensor]:
    """PGD from ``x`` on each row: the violation where ``target`` is -1, else that disjunct's value; returns
    each row's best point and its violation."""
    width = hi - lo
    best_x, best_v = x.clone(), torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    targeted = target >= 0
    safe = target.clamp_min(0)[:, None]
    for t in range(steps + 1):
        xg = x.detach().requires_grad_(True)
        z = model(xg)
        per = spec.disjunct_values(z)
        v = per.amax(1)
        better = v.detach() > best_v
        best_x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x.detach(), best_x)
        best_v = torch.where(better, v.detach(), best_v)
        if t == steps:
            break
        loss = torch.where(targeted, per.gather(1, safe)[:, 0], v)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        step = width * 0.25 * 0.5 * (1 + math.cos(math.pi * t / steps))
        x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lo), hi)
    return best_x, best_v


def float32_box(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """The float32 points a float32 model receives for the real points of [lower, upper]: the box between the
    bounds rounded to nearest (``frontends.vnnlib.Region.contains``)."""
    return lower.float(), upper.float()
