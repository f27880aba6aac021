"""Linear bounds, backward: the rule kit the ops' ``linear`` rules are written in (CROWN, Zhang et al. 2018, §3).

A backward linear bound on an op's output is a coefficient tensor ``lam`` per output (batch B * R: R rows per
forward sample, sample-major, like the gradient seeds of ``verifier.jacobian``); an op's linear rule returns
coefficients on its input-dependent inputs and a bias, one per row, such that

    sum_o lam_o . out_o  >=  sum_i lam_i' . in_i + beta

for every value of the inputs in their forward boxes (the ``Box`` arguments, batch B). Chained backward from a
spec's rows C through the graph, this gives C z >= A x + b on the input set (CROWN's A matrices), concretized over
the set by the engine (``verifier.engines.crown``).

Soundness, floating point included: the inequality holds in real arithmetic for the coefficients as computed.
The products and sums that give lam' and beta round; their error is at most gamma_n (|lam| |J|) . |in| for an
affine op (|J| the magnitudes of its matrix, n < 1e6 terms per sum, so gamma_n < REL64 in float64), which is
taken off beta with |in| bounded by the forward boxes: |J| m comes from the op's own interval rule at the box
[-m, m] (its radius is |J| m, widened). Relaxations of nonlinear ops (ReLU's triangle) are valid over the whole
input box with their own rounding allowance. Rules run in float64 (the engines' module copy).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.rounding import REL64, TINY64


def rows_of(lam: Tensor, batch: int) -> Tensor:
    """``lam`` (B * R, *shape) viewed as (B, R, *shape)."""
    return lam.reshape(batch, lam.shape[0] // batch, *lam.shape[1:])


def magnitude(box: Box) -> Tensor:
    """The largest |value| of each entry of a box (batch B)."""
    return torch.maximum(box.lo.abs(), box.hi.abs())


def affine_backward(op: Any, inputs: Sequence[Any], lams: Sequence[Tensor | None],
                    transpose: Callable[[Tensor], Tensor] | None = None) -> tuple[list[Tensor | None], Tensor]:
    """The exact backward rule of an op affine in its input-dependent inputs (the Box entries of ``inputs``):
    lam_i' = J_i^T lam (autograd through ``op.forward`` at zero inputs, one forward sample per input and the rows
    as a batch of output gradients; or ``transpose(lam)``, the op's own J^T for its one input-dependent input and
    one output, e.g. a product with a weight) and beta = lam . f(0), less the rounding allowance
    REL64 |lam| . (|J| m + |f(0)|) with m the magnitudes of the input boxes (module docstring), that sum bounded
    by norms of lam."""
    like = next(v for v in lams if v is not None)
    dyn = [k for k, x in enumerate(inputs) if is_box(x)]
    if any(inputs[k].integer for k in dyn):
        raise NoRuleError(f"no linear rule for {op.op_type} (node '{op.name}'): an integer-valued input")
    batch = next(inputs[k] for k in dyn).shape[0]
    rows = like.shape[0]
    per = rows // batch
    direct = transpose is not None and len(dyn) == 1 and len(lams) == 1
    tracked = any(lam is not None and lam.requires_grad for lam in lams)  # alpha-CROWN differentiates the walk
    with torch.enable_grad() if not direct else torch.no_grad():
        xs = [torch.zeros((batch, *inputs[k].shape[1:]), dtype=like.dtype, device=like.device,
                          requires_grad=not direct) for k in dyn]
        args = list(inputs)
        for k, v in zip(dyn, xs):
            args[k] = v
        outs = op.forward(*args)
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        if not direct:
            pairs = [(o, lam) for o, lam in zip(outs, lams) if lam is not None]
            seeds = [rows_of(lam, batch).transpose(0, 1) for _, lam in pairs]  # (R, B, *out): a batch of seeds
            grads = torch.autograd.grad([o for o, _ in pairs], xs, seeds, allow_unused=True, create_graph=tracked,
                                        is_grads_batched=True)
    # rounding: |J| m from the interval rule at [-m, m], per forward sample, then |lam| . (|J| m + |f(0)|)
    args = list(inputs)
    for k in dyn:
        m = magnitude(inputs[k])
        args[k] = Box(torch.zeros_like(m), m)
    boxes = op.interval(*args)
    boxes = list(boxes) if isinstance(boxes, tuple) else [boxes]
    bias = slack = torch.zeros(rows, dtype=like.dtype, device=like.device)
    for b, o, lam in zip(boxes, outs, lams):
        if lam is None:
            continue
        o = o.detach()
        spread = b.radius.abs() + b.center.abs() + o.abs()  # (B, *out): |J| m + |f(0)| up to rounding
        lam3 = lam.reshape(batch, per, -1)
        bias = bias + torch.bmm(lam3, o.reshape(batch, -1, 1)).reshape(rows)
        # |lam| . spread <= min(||lam||_2 ||spread||_2, ||lam||_1 max spread) (Cauchy-Schwarz, Hoelder: norms
        # without an |lam| copy; the allowance dwarfs their rounding)
        flat = spread.reshape(batch, 1, -1)
        if flat.shape[-1] == 0:
            continue
        slack = slack + torch.minimum(torch.linalg.vector_norm(lam3, dim=-1) * torch.linalg.vector_norm(flat, dim=-1),
                                      torch.linalg.vector_norm(lam3, 1, dim=-1) * flat.amax(-1)).reshape(rows)
    out: list[Tensor | None] = [None] * len(inputs)
    if direct:
        out[dyn[0]] = transpose(lams[0])
        return out, bias - REL64 * slack - TINY64
    for k, x, g in zip(dyn, xs, grads):
        g = torch.zeros((per, *x.shape), dtype=x.dtype, device=x.device) if g is None else g
        g = g.transpose(0, 1).reshape(rows, *x.shape[1:])
        out[k] = g if tracked else g.detach()
    return out, bias - REL64 * slack - TINY64


def lines_backward(lam: Tensor, box: Box, lower: tuple[Tensor, Tensor],
                   upper: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The backward rule of an elementwise function bounded on its input box by lines, a_l x + b_l <= f(x) <=
    a_u x + b_u (``lower`` = (a_l, b_l), ``upper`` = (a_u, b_u), shaped like the box, batch B): rows take the
    lower line where lam >= 0 and the upper one where lam < 0. The products lam' = lam a round once each (an
    allowance REL64 |lam'| . m, m the box's magnitudes), the bias sum too (REL64 of its terms' magnitudes).
    Shapes: lam (B * R, *shape); each line's slope and offset shaped like the box or, for lines chosen per row
    (alpha-CROWN), (B, R, *shape)."""
    batch = box.shape[0]
    lam_b = rows_of(lam, batch)
    if lower[0].dim() < lam_b.dim():
        fast = _mostly_one_line(lam_b, box, lower, upper)
        if fast is None:
            fast = _box_lines(lam_b, box, lower, upper)
        if fast is not None:
            return fast[0].reshape(lam.shape), fast[1]
    (a_l, b_l), (a_u, b_u) = ((v if v.dim() == lam_b.dim() else v[:, None] for v in line) for line in (lower, upper))
    pos, neg = lam_b.clamp_min(0), lam_b.clamp_max(0)
    out = pos * a_l + neg * a_u
    zero = torch.zeros((), dtype=lam.dtype, device=lam.device)
    terms = torch.where(pos > 0, pos * b_l, zero) + torch.where(neg < 0, neg * b_u, zero)
    terms = terms.reshape(lam_b.shape[0], lam_b.shape[1], -1)
    spread = torch.where(out == 0, zero, out.abs() * magnitude(box)[:, None])
    slack = REL64 * (spread.reshape(terms.shape).sum(-1) + terms.abs().sum(-1))
    return out.reshape(lam.shape), (terms.sum(-1) - slack - TINY64).reshape(-1)


def _mostly_one_line(lam_b: Tensor, box: Box, lower: tuple[Tensor, Tensor],
                     upper: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor] | None:
    """``lines_backward`` where most entries have one line through 0 for both bounds (stable ReLUs: a x with
    a = 0 or 1) and the box is finite: lam' = lam a there, and the other entries, gathered, choose their line
    by the sign of lam as in the general case; the allowance is the same, REL64 (|lam'| . m + |terms|), its
    first sum a batched product. None where this does not apply (the general case then)."""
    (a_l, b_l), (a_u, b_u) = lower, upper
    b, r = lam_b.shape[:2]
    m = magnitude(box).reshape(b, -1)
    a_l, a_u, b_l, b_u = (t.reshape(b, -1) for t in (a_l, a_u, b_l, b_u))
    same = (a_l == a_u) & (b_l == 0) & (b_u == 0)
    if float(same.double().mean()) < 0.5 or not bool(torch.isfinite(m).all() and torch.isfinite(a_l).all()):
        return None
    lam3 = lam_b.reshape(b, r, -1)
    out = lam3 * a_l[:, None]
    counts = (~same).sum(1)
    k = int(counts.max())
    terms = torch.zeros((b, r), dtype=lam3.dtype, device=lam3.device)
    if k:
        index = torch.argsort(same.to(torch.int8), dim=1, stable=True)[:, :k]  # (B, k): the other entries first
        valid = (torch.arange(k, device=index.device)[None] < counts[:, None])[:, None]  # (B, 1, k)
        at = index[:, None].expand(b, r, k)
        lam_d = lam3.gather(2, at)
        al, au, bl, bu = (t.gather(1, index)[:, None] for t in (a_l, a_u, b_l, b_u))
        out_d = torch.where(lam_d >= 0, lam_d * al, lam_d * au)
        zero = torch.zeros((), dtype=lam3.dtype, device=lam3.device)
        part = torch.where(lam_d > 0, lam_d * bl, torch.where(lam_d < 0, lam_d * bu, zero))
        part = torch.where(valid, part, zero)
        out.scatter_(2, at, torch.where(valid, out_d, out.gather(2, at)))
        terms = part.sum(-1)
        slack_terms = part.abs().sum(-1)
    else:
        slack_terms = terms
    spread = torch.bmm(out.abs(), m[..., None])[..., 0]  # |lam'| . m
    bias = terms - REL64 * (spread + slack_terms) - TINY64
    return out, bias.reshape(-1)


def _box_lines(lam_b: Tensor, box: Box, lower: tuple[Tensor, Tensor],
               upper: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor] | None:
    """``lines_backward`` for lines per box entry (not per row) with finite offsets and box: the same
    coefficients and the same sums, as batched products: with lam = pos + neg (its positive and negative parts),
    the bias pos . b_l + neg . b_u, the allowance REL64 (|lam'| . m + pos . |b_l| - neg . |b_u|). None where an
    offset or the box is not finite (the general case then)."""
    (a_l, b_l), (a_u, b_u) = lower, upper
    b, r = lam_b.shape[:2]
    m = magnitude(box).reshape(b, -1, 1)
    if not bool(torch.isfinite(m).all() and torch.isfinite(b_l).all() and torch.isfinite(b_u).all()):
        return None
    lam3 = lam_b.reshape(b, r, -1)
    a_l, a_u, b_l, b_u = (torch.broadcast_to(t, box.shape).reshape(b, 1, -1) for t in (a_l, a_u, b_l, b_u))
    pos = lam3.clamp_min(0)
    neg = lam3 - pos  # exact
    out = lam3 * torch.where(lam3 >= 0, a_l, a_u)  # one rounded product per entry, as in the general case
    terms = torch.bmm(pos, b_l.transpose(1, 2)) + torch.bmm(neg, b_u.transpose(1, 2))
    spread = torch.bmm(out.abs(), m) + torch.bmm(pos, b_l.abs().transpose(1, 2)) \
        - torch.bmm(neg, b_u.abs().transpose(1, 2))
    return out, (terms - REL64 * spread - TINY64).reshape(-1)


def adaptive_slope(box: Box) -> Tensor:
    """CROWN's lower slope of ReLU over [l, u]: 1 where u >= -l, else 0 (the line closer to the triangle)."""
    return (box.hi >= -box.lo).to(box.lo.dtype)


def relu_backward(lam: Tensor, box: Box, lower_slope: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """ReLU's triangle relaxation (CROWN): over the input box [l, u], relu(z) >= a z with a in [0, 1] (``lower_slope``
    per entry; default CROWN's adaptive choice, 1 where u >= -l, else 0) and, where l < 0 < u, relu(z) <= s (z - l)
    with s = u / (u - l); exact where the entry is stable (u <= 0: 0; l >= 0: z). The upper line is raised by
    8 u_64 s (|l| + |u|) + tiny so that it stays above relu in spite of the rounding of s and of s l
    (``lines_backward`` then). Shapes: lam (B * R, *shape), box batch B, ``lower_slope`` like the box or one
    per row, (B, R, *shape) (alpha-CROWN's variables, clamped to [0, 1] here)."""
    return lines_backward(lam, box, *relu_lines(box, lower_slope))


def relu_lines(box: Box, lower_slope: Tensor | None = None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The lines (slope, offset) below and above relu of ``relu_backward`` (its docstring), shaped like the box
    or, with per-row ``lower_slope``, the lower one like those."""
    lo, hi = box.lo, box.hi
    active, unstable = lo >= 0, (lo < 0) & (hi > 0)
    width = (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
    zero, one = torch.zeros_like(hi), torch.ones_like(hi)
    s = torch.where(unstable, hi / width, zero)
    t = torch.where(unstable, -s * lo + 8 * 2.0 ** -53 * s * (lo.abs() + hi.abs()) + TINY64, zero)
    if lower_slope is None:
        a = torch.where(active, one, torch.where(unstable, adaptive_slope(box), zero))
    else:
        rows = lower_slope.dim() > lo.dim()
        fixed, free = (active[:, None], unstable[:, None]) if rows else (active, unstable)
        a = torch.where(fixed, 1.0, torch.where(free, lower_slope.clamp(0.0, 1.0), 0.0))
    return (a, torch.zeros_like(a)), (torch.where(active, one, s), t)


def box_backward(lams: Sequence[Tensor | None], boxes: Sequence[Box]) -> Tensor:
    """sum_o min over the output box of lam_o . out_o: where an op has no linear rule the bound is concretized at
    its output (its forward box), and the walk stops on that branch. Summed in float64 with REL64 slack."""
    total = None
    for lam, box in zip(lams, boxes):
        if lam is None:
            continue
        lam_b = rows_of(lam, box.shape[0])
        lo, hi = box.lo[:, None], box.hi[:, None]
        value = torch.minimum(lam_b * lo, lam_b * hi).reshape(lam_b.shape[0], lam_b.shape[1], -1)
        err = (lam_b.abs() * torch.maximum(lo.abs(), hi.abs())).reshape(value.shape)
        part = (value.sum(-1) - REL64 * err.sum(-1) - TINY64).reshape(-1)
        total = part if total is None else total + part
    return total


def mean_value_backward(op: Any, inputs: Sequence[Any], lam: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """The linear rule of an op with a gradient rule (``Op.grad_interval``) whose first input is its only
    input-dependent one (``inputs`` as for ``Op.linear``; x = inputs[0]), in the mean-value form:
    for x' in the box x (centre c, radius r), lam . f(x') = lam . f(c) + int_0^1 (J^T lam)(xi_t) . (x' - c) dt
    (Lebourg's mean-value theorem for the Lipschitz f on the segment, with Clarke's Jacobians), and J^T lam lies
    in the op's gradient box [G_c - G_r, G_c + G_r] of the rows over x, so

        lam . f(x') >= G_c . x' + (lam . f(c) - G_c . c - G_r . r) - |lam| . error,

    lam . f(c) bounded below by the op's interval rule at the point c, and ``error`` (B, *out) a bound on the
    distance between the float forward and the real f anywhere on the box. First order: the gap is at most
    2 G_r . r, which the gradient box makes small on small boxes. Returns (G_c, bias), rows of batch B * R."""
    x = inputs[0]
    b = x.shape[0]
    rows = lam.shape[0] // b
    grad = op.grad_interval(list(inputs), [Box(lam.double(), torch.zeros_like(lam, dtype=torch.float64))])[0]
    g_c, g_r = grad.center.double(), grad.radius.double()
    at_c = op.interval(Box.point(x.center), *inputs[1:])
    lam_b = rows_of(lam.double(), b)
    f_lo, f_hi = at_c.lo.double()[:, None], at_c.hi.double()[:, None]
    c, r = x.center.double()[:, None], x.radius.double()[:, None]

    def total(v: Tensor) -> Tensor:
        return v.reshape(b, rows, -1).sum(-1)

    low = total(torch.minimum(lam_b * f_lo, lam_b * f_hi))
    g_cb, g_rb = rows_of(g_c, b), rows_of(g_r, b)
    size = total(lam_b.abs() * torch.maximum(f_lo.abs(), f_hi.abs())) + total((g_cb.abs() + g_rb) * (c.abs() + r))
    bias = low - total(g_cb * c) - total(g_rb * r) - total(lam_b.abs() * error.double()[:, None]) \
        - REL64 * size - TINY64
    return g_c, bias.reshape(-1)
