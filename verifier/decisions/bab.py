"""Branch and bound over a region: split the input box (few inputs) or the unstable ReLUs (many inputs) until
every part is proved, a counterexample is confirmed, or the deadline passes.

- ``split_inputs``: the boxes still open are bisected along the input whose width costs CROWN's bound most
  (``RegionBounds.crown_split``), a batch of the lowest bounds first; every box's centre is a candidate
  counterexample.
- ``split_relus``: a sub-domain is the region's box with some ReLUs' inputs fixed to >= 0 (active: the ReLU is
  the identity there) or <= 0 (inactive: 0). Both halves cover the parent, and on each the fixed input's box is
  [max(l, 0), u] or [l, min(u, 0)], a sound box of the real pre-activation on that half, met with every box
  CROWN computes there (``prior`` in ``verifier.engines.crown.spec_bounds``); the split is the unstable entry
  with the largest triangle height u (-l) / (u - l) (what CROWN's relaxation loses there), the lowest bounds
  first, batched. A sub-domain whose constraints contradict CROWN's own boxes is empty: proved. This is BaB with
  CROWN per split (alpha-beta-CROWN adds optimized slopes and beta multipliers for the split constraints;
  neither is here yet).

The region holds when no part is left. Soundness: every part dropped has a positive CROWN margin, and the parts
cover the region.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from verifier.box import Box, EmptyIntersectionError
from verifier.engines.crown import SpecBounds
from verifier.ops.activations import Relu

from .bounds import BETA_STEPS, RegionBounds
from .falsify import float32_box, pgd_box

#: a confirmed counterexample (x, y) from a float32 candidate x, or None
Confirm = Callable[[Tensor], "tuple | None"]
#: most open parts kept, and most bytes of their state (ReLU splitting keeps boxes, signs and scores of every
#: ReLU input per part: ~100 KB on a small CIFAR CNN); beyond either the search gives up ("open")
MAX_PARTS = 2 ** 21
MAX_STATE_BYTES = 2 ** 32
#: beta-CROWN's steps on a part with every ReLU fixed (linear there: more steps approach the exact bound)
STUCK_STEPS = 200


@dataclass
class Search:
    """The end of a search: ``status`` 'holds', 'violated' (with ``counterexample``) or 'open' (the deadline or
    the part cap came first); ``parts``: the parts bounded."""

    status: str
    parts: int
    counterexample: tuple | None = None


def split_inputs(bounds: RegionBounds, model: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor,
                 deadline: float, confirm: Confirm, batch: int = 2048) -> Search:
    """Input splitting (module docstring): ``lower``/``upper`` (n,) float64, ``model`` on flat float32 inputs."""
    spec = bounds.spec
    lo_q, hi_q, key = lower[None], upper[None], torch.full((1,), -torch.inf, dtype=torch.float64)
    parts = 0
    while len(lo_q):
        if time.monotonic() > deadline or len(lo_q) > MAX_PARTS:
            return Search("open", parts)
        order = key.argsort()
        take, rest = order[:batch], order[batch:]
        lo, hi = lo_q[take], hi_q[take]
        lo_q, hi_q, key = lo_q[rest], hi_q[rest], key[rest]
        margin, score, corner = bounds.crown_split(lo, hi)
        parts += len(lo)
        open_ = margin <= 0
        if not bool(open_.any()):
            continue
        lo, hi, margin, score = lo[open_], hi[open_], margin[open_], score[open_]
        found = _try(model, spec, torch.cat([(lo + hi) / 2, corner[open_]]), confirm)
        if found is not None:
            return Search("violated", parts, found)
        dim = _direction(model, lo, hi, spec, score)
        c32 = torch.stack(float32_box(lo, hi)).mean(0)
        with torch.no_grad():
            hit = (spec.violation(model(c32)) >= 0).nonzero()[:, 0]
        for i in hit[:8].tolist():
            found = confirm(c32[i])
            if found is not None:
                return Search("violated", parts, found)
        rows = torch.arange(len(lo))
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        left_hi, right_lo = hi.clone(), lo.clone()
        left_hi[rows, dim], right_lo[rows, dim] = mid, mid
        lo_q = torch.cat([lo_q, lo, right_lo])
        hi_q = torch.cat([hi_q, left_hi, hi])
        key = torch.cat([key, margin, margin])
    return Search("holds", parts)


def _try(model: Callable[[Tensor], Tensor], spec: Any, points: Tensor, confirm: Confirm, most: int = 8
         ) -> tuple | None:
    """The first of ``points`` (float64, (N, n)) that is a confirmed counterexample as the model receives it (its
    float32 rounding), among the ``most`` with the largest violation >= 0; None otherwise."""
    if not len(points):
        return None
    x = points.float()
    with torch.no_grad():
        v = spec.violation(model(x))
    for i in v.argsort(descending=True)[:most].tolist():
        if float(v[i]) < 0:
            break
        found = confirm(x[i])
        if found is not None:
            return found
    return None


def _direction(model: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, spec: Any, line: Tensor) -> Tensor:
    """The input to bisect per box: the largest sum of two scores, each scaled to a maximum of 1 per box: the
    violation's gradient at the centre times the width (how much the model's output moves along the input) and
    ``line``, CROWN's |A_i| x width_i (what the input's width costs the bound's line). On acasxu's network 1_1
    (properties 3 and 4) the sum needs 4,483 and 819 parts, the gradient alone 8,237 and 891, the line alone
    6,093 and more than 83,000."""
    width = hi - lo
    x = torch.stack(float32_box(lo, hi)).mean(0).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(spec.violation(model(x)).sum(), x)
    smear = grad.abs().double() * width
    score = smear / smear.amax(1, keepdim=True).clamp_min(1e-300) + line / line.amax(1, keepdim=True).clamp_min(1e-300)
    return torch.where(score.amax(1) > 0, score.argmax(1), width.argmax(1))


def relu_inputs(bounds: RegionBounds) -> dict[str, str]:
    """The tensors that ReLUs read (what ``split_relus`` splits), each with the ReLU's output."""
    g = bounds.module64.graph
    return {node.inputs[0]: node.outputs[0] for node in g.nodes() if isinstance(node.op, Relu)}


def split_relus(bounds: RegionBounds, model: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor,
                root: SpecBounds, root_margin: float, deadline: float, confirm: Confirm, batch: int = 64,
                attack_every: int = 8) -> Search:
    """ReLU splitting (module docstring) from the bounds ``root`` over the whole box (B = 1); ``lower``/``upper``
    (n,) float64. Every ``attack_every`` rounds, PGD runs again from new random points (a counterexample the
    first pass missed)."""
    relus = {t: o for t, o in relu_inputs(bounds).items() if t in root.env}
    if not relus:
        return Search("open", 0)
    scores = bounds.relu_scores(root, relus)
    state = {t: (root.env[t].lo, root.env[t].hi, torch.zeros(root.env[t].shape, dtype=torch.int8), scores[t])
             for t in relus}
    key = torch.tensor([root_margin], dtype=torch.float64)
    parts, rounds = 0, 0
    lo32, hi32 = float32_box(lower[None], upper[None])
    while len(key):
        held = sum(v.element_size() * v.numel() for values in state.values() for v in values)
        if time.monotonic() > deadline or len(key) > MAX_PARTS or held > MAX_STATE_BYTES:
            return Search("open", parts)
        rounds += 1
        if rounds % attack_every == 0:
            x, v = pgd_box(model, lo32, hi32, bounds.spec, restarts=16, seed=rounds)
            if float(v[0]) >= 0:
                found = confirm(x[0])
                if found is not None:
                    return Search("violated", parts, found)
        order = key.argsort()
        take, rest = order[:batch], order[batch:]
        picked = {t: tuple(v[take] for v in values) for t, values in state.items()}
        state = {t: tuple(v[rest] for v in values) for t, values in state.items()}
        key = key[rest]
        stuck = ~_splittable(picked)
        if bool(stuck.any()):  # no unstable ReLU left: the part is linear; more beta steps, else give up
            last = {t: tuple(v[stuck] for v in values[:3]) for t, values in picked.items()}
            margin, _, _, _ = _bound(bounds, lower, upper, last, int(stuck.sum()), relus, STUCK_STEPS, deadline)
            if bool((margin <= 0).any()):
                return Search("open", parts)
            picked = {t: tuple(v[~stuck] for v in values) for t, values in picked.items()}
            if not bool((~stuck).any()):
                continue
        children = _children(picked)
        n = len(next(iter(children.values()))[0])
        margin, boxes, scores, corner = _bound(bounds, lower, upper, children, n, relus, deadline=deadline)
        parts += n
        found = _try(model, bounds.spec, corner[margin <= 0], confirm)
        if found is not None:
            return Search("violated", parts, found)
        open_ = margin <= 0
        if bool(open_.any()):
            new = {t: (boxes[t].lo, boxes[t].hi, children[t][2], scores[t]) for t in relus}
            state = {t: tuple(torch.cat([old, more[open_]]) for old, more in zip(state[t], new[t])) for t in relus}
            key = torch.cat([key, margin[open_]])
    return Search("holds", parts)


def _splittable(picked: dict[str, tuple[Tensor, ...]]) -> Tensor:
    """Per part, whether it has an unstable ReLU input entry (l < 0 < u)."""
    return torch.stack([((lo < 0) & (hi > 0)).flatten(1).any(1) for lo, hi, _, _ in picked.values()]).any(0)


def _children(picked: dict[str, tuple[Tensor, ...]]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Both halves of each picked part (boxes and split signs per ReLU input), split at its unstable entry with
    the largest score (``RegionBounds.relu_scores``): the active halves first, then the inactive ones (every
    part has an unstable entry, ``_splittable``)."""
    flat_lo = torch.cat([lo.flatten(1) for lo, _, _, _ in picked.values()], 1)
    flat_hi = torch.cat([hi.flatten(1) for _, hi, _, _ in picked.values()], 1)
    flat_score = torch.cat([score.flatten(1) for _, _, _, score in picked.values()], 1)
    unstable = (flat_lo < 0) & (flat_hi > 0)
    choice = torch.where(unstable, flat_score, -1.0).argmax(1)
    rows = torch.arange(len(choice))
    out, offset = {}, 0
    for t, (lo, hi, sign, _) in picked.items():
        shape, size = lo.shape[1:], lo[0].numel()
        local = choice - offset
        here = (local >= 0) & (local < size)
        active_lo, inactive_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
        active_lo[rows[here], local[here]] = 0.0
        inactive_hi[rows[here], local[here]] = 0.0
        active, inactive = sign.flatten(1).clone(), sign.flatten(1).clone()
        active[rows[here], local[here]] = 1
        inactive[rows[here], local[here]] = -1
        out[t] = (torch.cat([active_lo, lo.flatten(1)]).reshape(-1, *shape),
                  torch.cat([hi.flatten(1), inactive_hi]).reshape(-1, *shape),
                  torch.cat([active, inactive]).reshape(-1, *shape))
        offset += size
    return out


def _bound(bounds: RegionBounds, lower: Tensor, upper: Tensor, parts: dict[str, tuple[Tensor, Tensor, Tensor]],
           n: int, relus: dict[str, str], steps: int = BETA_STEPS, deadline: float | None = None
           ) -> tuple[Tensor, dict[str, Box], dict[str, Tensor], Tensor]:
    """The margin on each part (CROWN, then alpha-beta-CROWN where CROWN does not prove it), its ReLU inputs'
    boxes, their branching scores and a candidate counterexample (``RegionBounds.crown``); a part whose
    constraints contradict CROWN's boxes is empty (margin +inf). Batches with such a part are bisected to find
    it."""
    prior = {t: Box.from_bounds(lo, hi) for t, (lo, hi, _) in parts.items()}
    try:
        margin, found, corner = bounds.crown(lower.expand(n, -1), upper.expand(n, -1), prior)
    except EmptyIntersectionError:
        if n == 1:
            zeros = {t: torch.zeros(b.shape, dtype=torch.float64) for t, b in prior.items()}
            return torch.full((1,), torch.inf, dtype=torch.float64), prior, zeros, lower[None]
        half = n // 2
        first = _bound(bounds, lower, upper, {t: tuple(v[:half] for v in p) for t, p in parts.items()}, half, relus,
                       steps, deadline)
        second = _bound(bounds, lower, upper, {t: tuple(v[half:] for v in p) for t, p in parts.items()}, n - half,
                        relus, steps, deadline)
        return (torch.cat([first[0], second[0]]), {t: Box.cat([first[1][t], second[1][t]]) for t in parts},
                {t: torch.cat([first[2][t], second[2][t]]) for t in parts}, torch.cat([first[3], second[3]]))
    boxes = {t: found.env[t] for t in parts}
    open_ = (margin <= 0).nonzero()[:, 0]
    scores = {t: torch.zeros(b.shape, dtype=torch.float64) for t, b in boxes.items()}
    if len(open_):
        sub = found.select(open_)
        signs = {t: s[open_] for t, (_, _, s) in parts.items()}
        margin = margin.index_copy(0, open_, bounds.beta(sub, signs, steps, deadline))
        for t, score in bounds.relu_scores(sub, relus).items():
            scores[t] = scores[t].index_copy(0, open_, score)
    return margin, boxes, scores, corner
