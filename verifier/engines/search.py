"""The radius search every decision procedure shares: the largest eps per input at which a sound check proves
the robustness problem, by batched bisection on all inputs at once. The lower end of the bracket is always an eps
at which the check succeeded (or 0), so the radius returned is proved whatever the monotonicity of the check in
eps."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from verifier.problem import RadiusProblem

#: a check prepared for one chunk of inputs: eps (one per input) -> per input, whether it is proved
Check = Callable[[Tensor], Tensor]


def largest_verified(balls: RadiusProblem, prepare: Callable[[RadiusProblem], Check], start: Tensor | None,
                     steps: int, batch_size: int) -> Tensor:
    """Per input, the largest eps found at which ``prepare(chunk)(eps)`` holds (0 where it fails at eps = 0, e.g.
    a misclassified input): from ``start`` (radii already proved, a sound lower end) or 0, the upper end grows
    x4 from max(2 lo, 1e-3) while the check holds, then ``steps`` bisection steps. Chunks of ``batch_size``
    inputs, in float64 on the CPU."""
    out = []
    for i in range(0, len(balls), batch_size):
        part = balls[i:i + batch_size].to(torch.float64)
        check = prepare(part)
        n = len(part)
        base = torch.zeros(n, dtype=torch.float64) if start is None else start[i:i + batch_size].double().clamp_min(0)
        correct = check(torch.zeros(n, dtype=torch.float64))
        lo = torch.where(correct, base, torch.zeros_like(base))
        hi = torch.maximum(2 * lo, torch.full_like(lo, 1e-3))
        for _ in range(40):
            good = check(hi) & correct
            if not bool(good.any()):
                break
            lo = torch.where(good, hi, lo)
            hi = torch.where(good, hi * 4, hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            good = check(mid) & correct
            lo = torch.where(good, mid, lo)
            hi = torch.where(good, hi, mid)
        out.append(torch.where(correct, lo, torch.zeros_like(lo)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
