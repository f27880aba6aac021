"""Local certificates from boxes: IBP (interval bound propagation) and BCP (box constraint propagation, Lee et
al. 2020, §3), a given eps verified for a batch of inputs, and the radius per input by batched bisection.

Arithmetic and what is certified
--------------------------------
Everything is computed on a float64 copy of the module: the boxes of ``verifier.box`` then enclose the
real-arithmetic image (their rounding rules cover float64 evaluation), the Lipschitz bounds of
``verifier.lipschitz`` are real-arithmetic bounds, and the final margins are reduced by
``margins.FLOAT_SLACK`` x max |z| for the float32 forward, exactly as the LMT certificates of ``certify.py``
are. Both methods need a model that runs whole batches (as the Lipschitz bounds do).

IBP (``verify_ibp``)
    The input set is the l_inf box x +- eps (for l2 this box contains the l2 ball), intersected with the
    domain [lower, upper]. Boxes are propagated to h = the input of the last affine chain z = W h + b, and
    the last layer is bounded exactly over the box of h: min over the box of (w_y - w_j).h + (b_y - b_j)
    = (w_y - w_j).(h(x)) + (b_y - b_j) + sum_i min(c_i lo_i, c_i hi_i) with c = w_y - w_j and [lo, hi] the
    box of h - h(x) (a linear function attains its minimum over a box at the corner picked coordinatewise).
    (w_y - w_j).h(x) + b_y - b_j = z_y(x) - z_j(x) since the chain is affine.

BCP (``verify_bcp``, l2)
    Let L(t) = ``report.tensor_bounds[t]``, a sound l2 Lipschitz bound of input -> t. For ||x' - x||_2 <= eps:
    (a) every tensor t lies in the ball ||t(x') - t(x)||_2 <= eps L(t), hence in the box t(x) +- eps L(t)
        (each coordinate is at most the norm);
    (b) at the output of an affine chain t_out = A t_in + a (eq. 6): |t_out,i(x') - t_out,i(x)| =
        |A_i.(t_in(x') - t_in(x))| <= ||A_i||_2 eps L(t_in) by Cauchy-Schwarz. The row norms ||A_i||_2 are
        exact (rows of the materialized chain matrix, ``lipschitz.chain_matrix``) when the chain has at most
        ``lipschitz.MATERIALIZE_LIMIT`` entries; otherwise every row gets the chain's operator-norm bound
        ``Segment.bound`` >= ||A||_2 >= ||A_i||_2 (sound, looser);
    (c) the interval image of the previous box (eq. 7-8, ``verifier.box``) encloses t as well.
    Every set enclosing the reachable values can be intersected with every other, so the box of each tensor is
    the intersection of its interval image with (a), and at chain outputs with (b). At the last chain input h
    the reachable set lies in the ball ||h - h(x)|| <= rho = eps L(h) AND the box, and problem (11)
    min c.(h - h(x)) over that intersection is solved for all class pairs in parallel (``_ball_box_min``).
    l_inf balls (BCP §3.1): the input box is the l_inf ball itself and the Lipschitz ball the l2 ball of radius
    sqrt(N) eps that circumscribes it (``ball_radius``). Models whose logits do not come from an affine layer
    (e.g. a final ReLU) bound z_y - z_j by the tightened box of the logits, lo_y - hi_j.

Radii (``ibp_radii``, ``bcp_radii``) bisect eps on all inputs at once; the lower end of the bisection is
always an eps at which verification succeeded (or 0), so the radius returned is certified whatever the
monotonicity of verification in eps. BCP's radius is max(bisection, LMT Prop. 2), both being sound.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import fused
from .box import Box, exact_float32, outward_rounding
from .errors import NoRuleError
from .ir import GraphModule
from .lipschitz import MATERIALIZE_LIMIT, LipschitzReport, chain_matrix
from .rounding import FLOAT_SLACK, REL64, TINY64

#: relative safety factor on float64 norms and ball radii
BISECTION_STEPS = 20


@dataclass
class Context:
    """What verification needs that does not depend on eps: the float64 module, the report, the row norms."""

    module64: GraphModule
    report: LipschitzReport
    row_norms: dict[str, Tensor] = field(default_factory=dict)  # chain output -> per-entry row norm (sample shape)
    chain_input: dict[str, str] = field(default_factory=dict)  # chain output -> chain input


def prepare(module: GraphModule, report: LipschitzReport, bcp: bool = True) -> Context:
    g = module.graph
    if not g.batched or not g.leading_batch:
        raise NoRuleError("IBP/BCP certificates need a model that runs whole batches")
    module64 = module if module.float_dtype == torch.float64 else copy.deepcopy(module).double()
    module64 = module64.eval()
    ctx = Context(module64, report)
    if not bcp:
        return ctx
    dynamic = g.dependent_tensors()
    for seg in report.segments:
        if seg.output == report.output:
            continue  # the last chain is handled by problem (11)
        out_shape = tuple(g.shapes[seg.output][1:])
        n_in, n_out = math.prod(g.shapes[seg.input][1:]), math.prod(out_shape)
        if n_in * n_out <= MATERIALIZE_LIMIT:
            nodes = [g.node(name) for name in seg.nodes]
            with torch.no_grad():
                _, matrix = chain_matrix(module64, nodes, dynamic)
            rows = matrix.double().norm(dim=1) * (1 + REL64)
        else:
            rows = torch.full((n_out,), seg.bound * (1 + REL64), dtype=torch.float64)
        ctx.row_norms[seg.output] = rows.reshape(out_shape)
        ctx.chain_input[seg.output] = seg.input
    return ctx


def _clean(ctx: Context, x: Tensor) -> dict[str, Tensor]:
    """The float64 values at x of every tensor with a Lipschitz bound (and the logits)."""
    keep = set(ctx.report.tensor_bounds) | {ctx.report.output}
    with torch.no_grad():
        return ctx.module64.run(x.to(torch.float64), keep=keep)


def _ball_box(center: Tensor, radius: Tensor) -> Box:
    """The box center +- radius, the radius widened for the float64 rounding of the centre."""
    r = radius * (1 + REL64) + REL64 * center.abs() + TINY64
    return Box(center, r)


def _per_sample(eps: Tensor, t: Tensor) -> Tensor:
    return eps.reshape(-1, *([1] * (t.dim() - 1)))


def walk(ctx: Any, box: Box, clean: dict[str, Tensor], eps: Tensor | None, target: str | None = None,
         grad: bool = False, chains_only: bool = False) -> dict[str, Any]:
    """Boxes of every tensor from the input box to ``target`` (default ``report.last_input``); with ``eps``
    (BCP, l2), each tensor's box intersected with the ball bounds (a) and, at chain outputs, (b) of the module
    docstring. ``grad``: keep the autograd graph (BCP training, ``training.bcp_bound``, passes a context of
    differentiable estimates instead of sound bounds); ``chains_only``: intersect only at chain outputs, with
    (b), the per-layer bound of the paper's training (cheaper; the boxes may be looser)."""
    module, report = ctx.module64, ctx.report
    g = module.graph
    target = report.last_input if target is None else target

    def tighten(name: str, b: Any) -> Any:
        if eps is None or not isinstance(b, Box) or b.integer or name not in clean:
            return b
        c = clean[name]
        if not c.is_floating_point() or c.shape != b.shape:
            return b
        e = _per_sample(eps, c)
        if name in ctx.row_norms:  # (b): eq. 6
            scale, rows = e * report.tensor_bounds[ctx.chain_input[name]], ctx.row_norms[name]
        elif name in report.tensor_bounds and not chains_only:  # (a)
            scale, rows = e * report.tensor_bounds[name], None
        else:
            return b
        if not outward_rounding():  # training: one fused step (verifier.fused), the radius never materialized
            ball = (scale,) if rows is None else (rows, scale)
            return Box.from_bounds(*fused.intersect_bounds(b.center, b.radius, c, *ball))
        radius = (scale * rows) if rows is not None else scale.expand_as(c)
        return b.intersect(_ball_box(c, radius))

    env: dict[str, Any] = {g.input_name: tighten(g.input_name, box)}
    if target == g.input_name:
        return env
    with exact_float32(), (contextlib.nullcontext() if grad else torch.no_grad()):
        for node in g.nodes():
            args = module.node_args(node, env)
            out = node.op.interval(*args)
            outs = out if isinstance(out, tuple) else (out,)
            for o, v in zip(node.outputs, outs):
                if o:
                    env[o] = tighten(o, v)
            if target in node.outputs:
                break
    return env


def _ball_box_min(c: Tensor, lo: Tensor, hi: Tensor, rho: Tensor | None, rounds: int | None = None) -> Tensor:
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
    t = _iteration_t(c.detach(), lo.detach(), hi.detach(), corner.detach(), rho2.detach(), rounds)
    finite = torch.isfinite(t) & (t > 0)
    mu = torch.where(finite, 0.5 / t.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(t))
    safe_mu = torch.where(finite, mu, torch.ones_like(mu))
    d = torch.minimum(torch.maximum(-c / (2 * safe_mu[..., None]), lo), hi)
    g_mu = (c * d + safe_mu[..., None] * d * d).sum(-1) - safe_mu * rho2
    g = torch.where(finite, torch.maximum(g_mu, g0), g0)
    slack = REL64 * ((c.abs() * (lo.abs() + hi.abs())).sum(-1) + safe_mu * rho2 * finite)
    return g - slack


def _iteration_t(c: Tensor, lo: Tensor, hi: Tensor, corner: Tensor, rho2: Tensor, rounds: int | None) -> Tensor:
    """Proposition 2's iteration (see ``_ball_box_min``): the scale t of the free coordinates, per row. It only
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


def ball_radius(eps: Tensor, norm: float, n_in: int) -> Tensor:
    """The radius of the l2 ball around the input that BCP propagates for an l_p ball of radius eps: eps for
    p = 2, sqrt(N) eps for p = inf (the l2 ball circumscribing the box, BCP §3.1), rounded up."""
    return eps if norm == 2 else eps * math.sqrt(n_in) * (1 + REL64)


def _box_min_pairs(w: Tensor, y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``_ball_box_min`` without a ball for c = w_y - w_j, by matrix products instead of a (B, K, n) tensor:
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


def _verify(ctx: Context, x: Tensor, y: Tensor, eps: Tensor, lower: Any, upper: Any, bcp: bool,
            clean: dict[str, Tensor] | None = None, norm: float = 2) -> Tensor:
    report = ctx.report
    x64 = x.to(torch.float64)
    y = y.to(torch.long)
    eps = torch.as_tensor(eps, dtype=torch.float64).expand(len(x64)).clone() if torch.as_tensor(eps).dim() == 0 \
        else torch.as_tensor(eps, dtype=torch.float64)
    clean = _clean(ctx, x64) if clean is None else clean
    z = clean[report.output].double().reshape(len(x64), -1)
    correct = z.argmax(1) == y
    box = Box.ball(x64, eps, _bound(lower), _bound(upper))
    ball = ball_radius(eps, norm, math.prod(x64.shape[1:])) if bcp else None
    slack = FLOAT_SLACK * z.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    if report.last_matrix is None or report.last_input is None:
        # no affine last layer: bound z_y - z_j by the logit box (BCP's boxes, tightened by the ball, or IBP's)
        zb = walk(ctx, box, clean, ball, target=report.output)[report.output]
        lo, hi = zb.lo.reshape(len(x64), -1), zb.hi.reshape(len(x64), -1)
        low = lo.gather(1, y[:, None]) - hi
    else:
        hbox = walk(ctx, box, clean, ball)[report.last_input]
        h = clean[report.last_input].double().reshape(len(x64), -1)
        lo = (hbox.lo.reshape(len(x64), -1) - h).clamp_max(0.0)
        hi = (hbox.hi.reshape(len(x64), -1) - h).clamp_min(0.0)
        w = report.last_matrix.to(torch.float64)
        low = (z.gather(1, y[:, None]) - z) + _box_min_pairs(w, y, lo, hi)
        rows, cols = ((low - slack).scatter(1, y[:, None], math.inf) <= 0).nonzero(as_tuple=True)
        if bcp and len(rows):  # problem (11) for the (input, class) pairs the box alone does not prove
            yr = y[rows]
            c = (w[yr] - w[cols])[:, None, :]
            rho = (ball[rows] * report.tensor_bounds[report.last_input])[:, None]
            ball_low = (z[rows, yr] - z[rows, cols]) + _ball_box_min(c, lo[rows, None, :], hi[rows, None, :],
                                                                      rho)[:, 0]
            low[rows, cols] = torch.maximum(low[rows, cols], ball_low)
    low = low - slack
    low.scatter_(1, y[:, None], math.inf)
    return correct & (low > 0).all(dim=1)


def _bound(b: Any) -> Any:
    if b is None:
        return None
    return torch.as_tensor(b).to(torch.float64)


def verify_ibp(module: GraphModule, report: LipschitzReport, x: Tensor, y: Tensor, eps: float | Tensor,
               norm: float = 2, lower: Any = None, upper: Any = None, ctx: Context | None = None) -> Tensor:
    """Per input: whether the prediction y provably holds on the l_p ball of radius eps (l_inf: the box; l2:
    the l_inf box of the same radius, which contains the ball) within [lower, upper]. ``norm`` only says which
    ball; both use the same box."""
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or inf")
    ctx = ctx or prepare(module, report, bcp=False)
    return _verify(ctx, x, y, torch.as_tensor(eps, dtype=torch.float64), lower, upper, bcp=False)


def verify_bcp(module: GraphModule, report: LipschitzReport, x: Tensor, y: Tensor, eps: float | Tensor,
               lower: Any = None, upper: Any = None, ctx: Context | None = None, norm: float = 2) -> Tensor:
    """Per input: whether BCP proves the prediction y on the l_p ball (p = ``norm``, 2 or inf) of radius eps
    within [lower, upper]. ``report`` must be the l2 report (``graph_lipschitz(module, 2)``)."""
    if report.norm != 2:
        raise ValueError("BCP needs the l2 Lipschitz report")
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or inf")
    ctx = ctx or prepare(module, report, bcp=True)
    return _verify(ctx, x, y, torch.as_tensor(eps, dtype=torch.float64), lower, upper, bcp=True, norm=norm)


def _radii(ctx: Context, x: Tensor, y: Tensor, bcp: bool, lower: Any, upper: Any, start: Tensor | None,
           steps: int, batch_size: int, norm: float = 2) -> Tensor:
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(torch.float64), y[i:i + batch_size].to(torch.long)
        clean = _clean(ctx, xb)

        def ok(eps: Tensor) -> Tensor:
            return _verify(ctx, xb, yb, eps, lower, upper, bcp, clean, norm)

        n = len(xb)
        base = torch.zeros(n, dtype=torch.float64) if start is None else start[i:i + batch_size].double().clamp_min(0)
        correct = ok(torch.zeros(n, dtype=torch.float64))
        lo = torch.where(correct, base, torch.zeros_like(base))
        # an upper end where verification fails: grow from max(2 lo, 1e-3)
        hi = torch.maximum(2 * lo, torch.full_like(lo, 1e-3))
        for _ in range(40):
            good = ok(hi) & correct
            if not bool(good.any()):
                break
            lo = torch.where(good, hi, lo)
            hi = torch.where(good, hi * 4, hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            good = ok(mid) & correct
            lo = torch.where(good, mid, lo)
            hi = torch.where(good, hi, mid)
        out.append(torch.where(correct, lo, torch.zeros_like(lo)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def ibp_radii(module: GraphModule, report: LipschitzReport, x: Tensor, y: Tensor, norm: float = 2,
              lower: Any = None, upper: Any = None, steps: int = BISECTION_STEPS, batch_size: int = 256) -> Tensor:
    """The largest eps (model space, bisection) at which ``verify_ibp`` holds, per input (0 if misclassified)."""
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or inf")
    ctx = prepare(module, report, bcp=False)
    return _radii(ctx, x, y, False, lower, upper, None, steps, batch_size)


def bcp_radii(module: GraphModule, report: LipschitzReport, x: Tensor, y: Tensor, lower: Any = None,
              upper: Any = None, prop2: Tensor | None = None, steps: int = BISECTION_STEPS,
              batch_size: int = 256, norm: float = 2) -> Tensor:
    """The largest l_p eps (p = ``norm``; model space) at which ``verify_bcp`` holds, per input, by bisection
    from ``prop2`` (the LMT Prop. 2 radii in that norm, a sound lower end) when given; the result is
    max(bisection, prop2)."""
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or inf")
    ctx = prepare(module, report, bcp=True)
    r = _radii(ctx, x, y, True, lower, upper, prop2, steps, batch_size, norm)
    if prop2 is not None:
        r = torch.maximum(r, prop2.double().cpu())
    return r
