"""Lower bounds of a region's margin (``spec.RegionSpec.margin``) over batches of boxes, by CROWN and alpha-CROWN
(``verifier.engines.crown``, ``verifier.engines.alpha_crown``), optionally under branch and bound's split
constraints (``prior``: sound boxes of some tensors on each sub-domain).

Soundness: every bound is CROWN's over the box (less the float32 forward's allowance), so a positive margin
proves that no point of the box (of the sub-domain, under split constraints) satisfies any disjunct.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from verifier.engines.alpha_crown import Slopes, _hopeless, optimized
from verifier.engines.backward import dense_rows
from verifier.errors import NoRuleError
from verifier.engines.crown import SpecBounds, prepare, spec_bounds
from verifier.engines.ibp import ibp
from verifier.ir import GraphModule
from verifier.linear import box_backward
from verifier.margins import spec_allowance
from verifier.problem import InputBox, Problem
from verifier.rounding import REL64

from .spec import RegionSpec

#: beta-CROWN's steps per bound and the step sizes of the slopes and the multipliers
BETA_STEPS = 20
ALPHA_LR, BETA_LR = 0.1, 0.05
#: alpha-CROWN's intermediate slope variables per region (one box, not a batch as in certificates, so far more
#: than ``alpha_crown.SLOPE_ENTRIES``; 64 MB of float64, ~4x that with Adam's state): eran's mnist_relu_9_200 needs
#: ~2.9 million; with them alpha-CROWN proves its property idx 1013 (margin 0.028) in 5 s, without them the
#: margin is -5.3 and 60 s of ReLU splitting do not prove it
REGION_SLOPE_ENTRIES = 2 ** 23


class RegionBounds:
    """CROWN and alpha-CROWN on one model and one region's rows; boxes are (B, n) flattened float64 tensors.
    Models that run sample by sample (``Graph.whole_batches`` False) get interval bounds only (``interval``).
    The engines bound the logits (``Graph.logits_tensor``: the input of a trailing Softmax or LogSoftmax); where
    that is not the output, only rows that compare two outputs are bounded (``RegionSpec.compares_outputs``),
    else NoRuleError."""

    def __init__(self, module: GraphModule, spec: RegionSpec):
        g = module.graph
        if g.logits_tensor() != g.output_name and not spec.compares_outputs():
            raise NoRuleError("the model ends in Softmax or LogSoftmax, and the engines bound its logits: only "
                              "output constraints that compare two outputs (Y_i >= Y_j) are bounded there")
        self.linear = g.whole_batches
        self.module64 = prepare(module) if self.linear else module.float64()
        self.spec = spec
        self.shape = tuple(module.graph.sample_shape)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """(IBP's margin bound per box, the widest input per box): the spec's rows over the logits' box, less
        the float32 forward's allowance (``margins.spec_allowance``)."""
        b = len(lower)
        inputs = InputBox(lower.reshape(b, *self.shape), upper.reshape(b, *self.shape))
        with torch.no_grad():
            box = ibp(self.module64, inputs)
            z = self.module64(inputs.center).reshape(b, -1)
        c, d = self.spec.negated(b).rows()
        r = c.shape[1]
        low = box_backward([c.reshape(b * r, *box.shape[1:])], [box]).reshape(b, r) + d
        low = low - REL64 * d.abs() - spec_allowance(z, c)
        return self.spec.margin(low), (upper - lower).argmax(1)

    def bounds(self, lower: Tensor, upper: Tensor, prior: dict[str, Any] | None = None) -> SpecBounds:
        """CROWN's forward boxes and rows over the boxes [lower, upper] (met with ``prior``)."""
        b = len(lower)
        inputs = InputBox(lower.reshape(b, *self.shape), upper.reshape(b, *self.shape))
        with torch.no_grad():
            return spec_bounds(self.module64, Problem(inputs, self.spec.negated(b)), None, None, prior)

    def crown(self, lower: Tensor, upper: Tensor, prior: dict[str, Any] | None = None
              ) -> tuple[Tensor, SpecBounds, Tensor]:
        """(CROWN's margin bound per box, its bounds, a candidate counterexample per box): the candidate is the
        corner of the box where the line of the row that decides the margin is lowest (``_vertices``)."""
        found = self.bounds(lower, upper, prior)
        with torch.no_grad():
            low, coeffs = found.lines()
        return self.spec.margin(low), found, self._vertices(low, coeffs, lower, upper)

    def _vertices(self, low: Tensor, coeffs: Tensor | None, lower: Tensor, upper: Tensor) -> Tensor:
        """Per box, the corner minimizing A x for the deciding row's line A x + b (the centre where the line does
        not depend on the input): where the bound is loosest, often near a counterexample."""
        if coeffs is None:
            return (lower + upper) / 2
        a = self._deciding_line(low, coeffs)
        return torch.where(a > 0, lower, torch.where(a < 0, upper, (lower + upper) / 2))

    def relu_scores(self, found: SpecBounds, relus: dict[str, str]) -> dict[str, Tensor]:
        """Per ReLU input t (``relus``: input -> output tensor), a score per entry (B, *shape): what CROWN's upper
        line there costs the row that decides the margin, |lam_j| u_j (-l_j) / (u_j - l_j) where that row's
        coefficient lam_j on the ReLU's output is negative (BaBSR's intercept score, Bunel et al. 2020), 0 on
        stable entries."""
        with torch.no_grad():
            low = found.low()
            row = self.spec.deciding_row(low)[:, None]
            record: dict[str, Any] = {o: None for o in relus.values()}
            found.select(torch.arange(len(low)), row).lines(record=record)
        scores = {}
        for t, o in relus.items():
            box = found.env[t]
            lam = record[o] if record[o] is not None else torch.zeros(box.shape, dtype=torch.float64)
            lo, hi = box.lo, box.hi
            unstable = (lo < 0) & (hi > 0)
            height = torch.where(unstable, hi * -lo / (hi - lo).clamp_min(1e-300), 0.0)
            scores[t] = (-lam.reshape(box.shape)).clamp_min(0.0) * height + unstable * 1e-12 * height
        return scores

    def crown_split(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CROWN's margin bound per box, |A_i| x width_i per box and input, a candidate counterexample per box):
        A the coefficients of the line the margin comes from (what each input's width costs the bound), the
        candidate as in ``crown``. Interval bounds, the widths and the centres for models that run sample by
        sample."""
        width = upper - lower
        if not self.linear:
            return self.interval(lower, upper)[0], width, (lower + upper) / 2
        found = self.bounds(lower, upper)
        with torch.no_grad():
            low, coeffs = found.lines()
        margin, corner = self.spec.margin(low), self._vertices(low, coeffs, lower, upper)
        if coeffs is None:
            return margin, torch.zeros_like(width), corner
        return margin, self._deciding_line(low, coeffs).abs() * width, corner

    def _deciding_line(self, low: Tensor, coeffs: Tensor) -> Tensor:
        """Per box, the coefficients A (B, n) of the line of the row that decides the margin."""
        b = len(low)
        return dense_rows(coeffs).reshape(b, low.shape[1], -1)[torch.arange(b), self.spec.deciding_row(low)]

    def alpha(self, found: SpecBounds, steps: int = 20, deadline: float | None = None) -> tuple[Tensor, SpecBounds]:
        """alpha-CROWN's margin bound per box, from CROWN's ``found`` (never below it), and its bounds (boxes
        tightened by every step); at most until ``deadline``."""
        low, tightened = optimized(found, steps, deadline=deadline, slope_entries=REGION_SLOPE_ENTRIES)
        return self.spec.margin(low), tightened

    def beta(self, found: SpecBounds, splits: dict[str, Tensor], steps: int = BETA_STEPS,
             deadline: float | None = None) -> Tensor:
        """alpha-beta-CROWN's margin bound per part (Wang et al. 2021, "Beta-CROWN", eq. 6-7): on a part where
        the split ReLU inputs satisfy s_j z_j >= 0 (``splits``: s in {-1, 0, +1} per entry, (B, *shape) per
        tensor), f >= f - sum_j beta_j s_j z_j for any beta >= 0, so CROWN's bound of the right side (the
        beta terms enter the backward walk as ``extra`` rows) is a bound of f there. beta and the spec rows' lower
        slopes (alpha) are optimized by projected Adam on the rows CROWN did not prove (``_unproved``); every
        iterate is sound, the best per row is kept (never below ``found``'s CROWN bound). Stops early once every
        part is proved or none will be at its pace (``alpha_crown._hopeless``), or at ``deadline``."""
        with torch.no_grad():
            full = found.low()
        if bool((self.spec.margin(full) > 0).all()):
            return self.spec.margin(full)
        rows, sub = _unproved(found, full)
        best = full.gather(1, rows)
        b, r = best.shape
        slopes = Slopes(self.module64, intermediate=False)
        betas = {t: torch.zeros((b, r, *s.shape[1:]), dtype=torch.float64, requires_grad=True)
                 for t, s in splits.items()}
        signs = {t: s.to(torch.float64)[:, None] for t, s in splits.items()}
        optimizer, history = None, []
        for step in range(steps + 1):
            extra = {t: -(betas[t] * signs[t]).reshape(b * r, *signs[t].shape[2:]) for t in betas}
            low = sub.lines(slopes.spec(sub), extra)[0]
            best = torch.maximum(best, low.detach())
            margin = self.spec.margin(full.scatter_reduce(1, rows, best, reduce="amax"))
            history.append(margin)
            late = deadline is not None and time.monotonic() > deadline
            if step == steps or late or bool((margin > 0).all()) or _hopeless(history, steps - step):
                break
            if optimizer is None:
                groups = [{"params": list(slopes.values.values()), "lr": ALPHA_LR},
                          {"params": list(betas.values()), "lr": BETA_LR}]
                optimizer = torch.optim.Adam([g for g in groups if g["params"]])
            optimizer.zero_grad()
            (-torch.where(best > 0, 0.0, low).sum()).backward()
            optimizer.step()
            with torch.no_grad():
                for v in slopes.values.values():
                    v.clamp_(0.0, 1.0)
                for v in betas.values():
                    v.clamp_(min=0.0)
        return history[-1]


def _unproved(found: SpecBounds, low: Tensor) -> tuple[Tensor, SpecBounds]:
    """(the positions (B, R') of each part's rows with a bound <= 0, padded with its first such row; the bounds
    of those rows only)."""
    open_ = low <= 0
    count = int(open_.sum(1).max())
    order = torch.argsort((~open_).to(torch.int8), dim=1, stable=True)[:, :count]
    first = order[:, :1].expand(-1, count)
    rows = torch.where(open_.gather(1, order), order, first)
    return rows, found.select(torch.arange(len(low)), rows)
