"""The radius search every decision procedure shares: the largest eps per input at which a sound check proves
the robustness problem, by batched bisection on all inputs at once. The lower end of the bracket is always an eps
at which the check succeeded (or 0), so the radius returned is proved whatever the monotonicity of the check in
eps."""
from __future__ import annotations

import math
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


#: a margin bound: (a chunk of inputs, eps per input) -> per input, a lower bound of the smallest margin of the
#: problem at eps (positive: proved)
Margin = Callable[[RadiusProblem, Tensor], Tensor]
#: the margin search stops once the bracket is this narrow relative to its upper end
RTOL = 1e-4


def largest_positive(balls: RadiusProblem, margin: Margin, start: Tensor | None, steps: int, batch_size: int,
                     rtol: float = RTOL) -> Tensor:
    """Per input, the largest eps found at which the margin bound ``margin(inputs, eps)`` is positive, guided by
    its values. Until a failure is known the guess grows: to 1.1x the root of the line through the last two
    values (within 1.25x and 100x the lower end), from max(2 lo, 1e-3). Then regula falsi with the Illinois rule
    between the largest proved eps and the smallest failed one, each guess at least 2% of the bracket from its
    ends, until the bracket is within ``rtol`` of its upper end, or ``steps`` guesses in all; each guess bounds
    only the inputs still open. As in ``largest_verified``, the lower end is always proved (or ``start``: radii
    already proved, or 0); where the margin at ``start`` is not positive, the search ends there."""
    out = []
    for i in range(0, len(balls), batch_size):
        part = balls[i:i + batch_size].to(torch.float64)
        zero = torch.zeros(len(part), dtype=torch.float64)
        m0 = margin(part, zero)
        correct = m0 > 0
        lo = zero if start is None else torch.where(correct, start[i:i + batch_size].double().clamp_min(0), zero)
        m_lo = m0
        failed = torch.zeros_like(correct)
        if bool((lo > 0).any()):  # the margin at a start from elsewhere: a value to guess from where positive
            m_start = _on(margin, part, lo, lo > 0)
            m_lo = torch.where(lo == 0, m0, torch.where(m_start > 0, m_start, torch.nan))
            failed = (lo > 0) & ~(m_start > 0)  # the check fails at the start already: nothing to look for above
        state = _Bracket(lo, m_lo, zero, m0)
        state.hi = torch.where(failed, lo, state.hi)
        for _ in range(steps):
            open_ = correct & ~state.narrow(rtol)
            if not bool(open_.any()):
                break
            guess = torch.where(open_, state.guess(), state.lo)
            state.update(guess, _on(margin, part, guess, open_), open_)
        out.append(torch.where(correct, state.lo, zero))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _on(margin: Margin, part: RadiusProblem, eps: Tensor, which: Tensor) -> Tensor:
    """The margin bound of the inputs ``which`` (NaN for the others)."""
    index = which.nonzero()[:, 0]
    values = torch.full_like(eps, torch.nan)
    values[index] = margin(part[index], eps[index]).to(values.dtype)
    return values


class _Bracket:
    """The search state per input: the largest proved eps ``lo`` with its margin (NaN where it came from
    ``start``), the previous proved point, the smallest failed eps ``hi`` (inf until one fails) with its margin,
    and which end the last guess replaced (the Illinois rule halves the value of an end kept twice)."""

    def __init__(self, lo: Tensor, m_lo: Tensor, prev: Tensor, m_prev: Tensor):
        self.lo, self.m_lo, self.prev, self.m_prev = lo, m_lo, prev, m_prev
        self.hi, self.m_hi = torch.full_like(lo, math.inf), torch.zeros_like(lo)
        self.side = torch.zeros_like(lo)

    def narrow(self, rtol: float) -> Tensor:
        return torch.isfinite(self.hi) & (self.hi - self.lo <= rtol * self.hi)

    def guess(self) -> Tensor:
        lo, hi = self.lo, self.hi
        slope = (self.m_prev - self.m_lo) / (lo - self.prev).clamp_min(1e-300)
        root = lo + self.m_lo / slope.clamp_min(1e-300)
        usable = torch.isfinite(root) & (slope > 0) & (lo > 0)
        grow = torch.where(usable, torch.minimum(torch.maximum(1.1 * root, 1.25 * lo), 100 * lo),
                           torch.maximum(2 * lo, torch.full_like(lo, 1e-3)))
        bracketed = torch.isfinite(hi)
        width = torch.where(bracketed, hi - lo, torch.zeros_like(lo))
        falsi = lo + width * self.m_lo / (self.m_lo - self.m_hi)
        falsi = torch.where(torch.isfinite(falsi), falsi, lo + width / 2)  # no value at a start from elsewhere
        falsi = torch.minimum(torch.maximum(falsi, lo + 0.02 * width), hi - 0.02 * width)
        return torch.where(bracketed, falsi, grow)

    def update(self, guess: Tensor, value: Tensor, open_: Tensor) -> None:
        good = open_ & (value > 0)
        bad = open_ & ~good
        self.m_hi = torch.where(good & (self.side > 0), self.m_hi / 2, self.m_hi)
        self.m_lo = torch.where(bad & (self.side < 0), self.m_lo / 2, self.m_lo)
        self.side = torch.where(good, 1.0, torch.where(bad, -1.0, self.side))
        self.prev, self.m_prev = torch.where(good, self.lo, self.prev), torch.where(good, self.m_lo, self.m_prev)
        self.lo, self.m_lo = torch.where(good, guess, self.lo), torch.where(good, value, self.m_lo)
        self.hi, self.m_hi = torch.where(bad, guess, self.hi), torch.where(bad, value, self.m_hi)
