"""Local certificates from boxes: IBP (interval bound propagation) and BCP (box constraint propagation, Lee et
al. 2020, §3), a given eps verified for a batch of inputs, and the radius per input by batched bisection.

Arithmetic and what is certified
--------------------------------
Everything is computed on a float64 copy of the module: the boxes of ``verifier.box`` then enclose the
real-arithmetic image (their rounding rules cover float64 evaluation), the Lipschitz bounds of
``verifier.engines.lipschitz`` are real-arithmetic bounds, and the final margins are reduced by
``margins.FLOAT_SLACK`` x max |z| for the float32 forward, exactly as the LMT certificates of ``certify.py``
are. Both methods need a model that runs whole batches (as the Lipschitz bounds do).

IBP (``verify_ibp``)
    The input set's enclosing box: for a ball the l_inf box x +- eps (for l2 it contains the l2 ball),
    intersected with the domain [lower, upper]. Boxes are propagated to h = the input of the last affine chain
    z = W h + b, and the last layer is bounded exactly over the box of h: min over the box of
    (w_y - w_j).h + (b_y - b_j) = (w_y - w_j).(h(x)) + (b_y - b_j) + sum_i min(c_i lo_i, c_i hi_i) with
    c = w_y - w_j and [lo, hi] the box of h - h(x) (a linear function attains its minimum over a box at the
    corner picked coordinatewise).
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
    min c.(h - h(x)) over that intersection is solved for all class pairs in parallel
    (``last_layer.ball_box_min``).
    l_inf balls (BCP §3.1): the input box is the l_inf ball itself and the Lipschitz ball the l2 ball of radius
    sqrt(N) eps that circumscribes it (``LpBall.l2_ball``). Models whose logits do not come from an affine layer
    (e.g. a final ReLU) bound z_y - z_j by the tightened box of the logits, lo_y - hi_j.

Problems (``verifier.problem``): the input set is an l_p ball within the domain or a plain box (whose l2 ball is
the one around its midpoint through its farthest corner, ``InputBox.l2_ball``), the spec any linear rows
C z + d > 0 (``_spec_low``: the same last-layer problem for the rows c = C W) or their disjunction; the
robustness spec keeps its faster pairwise form (``_robust``).

Radii (``ibp_radii``, ``bcp_radii``) bisect eps on all inputs at once; the lower end of the bisection is
always an eps at which verification succeeded (or 0), so the radius returned is certified whatever the
monotonicity of verification in eps. BCP's radius is max(bisection, LMT Prop. 2), both being sound.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from verifier import fused
from verifier.box import Box, exact_float32
from verifier.engines.lipschitz import MATERIALIZE_LIMIT, LipschitzReport, chain_matrix
from verifier.engines.search import largest_verified
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.last_layer import ball_box_min, box_min_pairs
from verifier.margins import spec_allowance
from verifier.problem import Conjunction, Disjunction, Problem, RadiusProblem
from verifier.rounding import FLOAT_SLACK, REL64, TINY64, outward_rounding

#: relative safety factor on float64 norms and ball radii
BISECTION_STEPS = 20


@dataclass
class BallBounds:
    """What BCP's walk intersects the interval images with (module docstring, (a) and (b)): ``tensor_bounds``,
    per tensor t a bound of the l2 Lipschitz constant of input -> t (floats; differentiable estimates in
    training, ``training.bcp_bound``); ``row_norms``, per affine-chain output the l2 norms of the chain's rows
    (sample shape); ``chain_input``, per chain output the chain's input tensor; ``exact_rows``, the chain outputs
    whose row norms are exact (the materialized chain matrix's, or one weight op's ``Op.squared_row_norms``), not
    the operator-norm bound."""

    tensor_bounds: dict[str, Any] = field(default_factory=dict)
    row_norms: dict[str, Tensor] = field(default_factory=dict)
    chain_input: dict[str, str] = field(default_factory=dict)
    exact_rows: set[str] = field(default_factory=set)


@dataclass
class Context:
    """What verification needs that does not depend on the problem: the float64 module, the l2 report and the
    ball bounds of the walk."""

    module64: GraphModule
    report: LipschitzReport
    ball: BallBounds


def prepare(module: GraphModule, report: LipschitzReport, bcp: bool = True) -> Context:
    g = module.graph
    if not g.whole_batches:
        raise NoRuleError("IBP/BCP certificates need a model that runs whole batches")
    module64 = module.float64()
    ctx = Context(module64, report, BallBounds(report.tensor_bounds))
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
            ctx.ball.exact_rows.add(seg.output)
        elif (squares := _squared_rows(module64, seg)) is not None:
            rows = squares.clamp_min(0).sqrt() * (1 + REL64)
            ctx.ball.exact_rows.add(seg.output)
        else:
            rows = torch.full((n_out,), seg.bound * (1 + REL64), dtype=torch.float64)
        ctx.ball.row_norms[seg.output] = rows.reshape(out_shape)
        ctx.ball.chain_input[seg.output] = seg.input
    return ctx


def _squared_rows(module64: GraphModule, seg: Any) -> Tensor | None:
    """The squared row norms of a chain that is one weight op after data movements (``Op.permutes_entries``),
    from ``Op.squared_row_norms`` (a convolution of ones with the squared kernel: exact, borders included), for
    chains too large to materialize; None for other chains. Sums of nonnegative float64 terms: within REL64."""
    g = module64.graph
    nodes = [g.node(name) for name in seg.nodes]
    prev = seg.input
    for k, node in enumerate(nodes):
        if node.op.permutes_entries and k < len(nodes) - 1:
            prev = node.outputs[0]
            continue
        if k != len(nodes) - 1 or not node.inputs or node.inputs[0] != prev:
            return None
        args = [None if not t else (t if t == prev else module64.tensor(t)) for t in node.inputs]
        ones = torch.ones((1, *g.shapes[prev][1:]), dtype=torch.float64)
        with torch.no_grad():
            squares = node.op.squared_row_norms(ones, args)
        return None if squares is None else squares.reshape(g.shapes[seg.output][1:])
    return None


def clean_values(ctx: Context, x: Tensor) -> dict[str, Tensor]:
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


def walk(module: GraphModule, ball: BallBounds, box: Box, clean: dict[str, Tensor], eps: Tensor | None,
         target: str, grad: bool = False, chains_only: bool = False) -> dict[str, Any]:
    """Boxes of every tensor from the input box to ``target``; with ``eps`` (one l2 radius per input: BCP), each
    tensor's box intersected with the ball bounds (a) and, at chain outputs, (b) of the module docstring, around
    the ``clean`` values. ``grad``: keep the autograd graph (BCP training, ``training.bcp_bound``, passes
    differentiable estimates as ``ball``); ``chains_only``: intersect only at chain outputs, with (b), the
    per-layer bound of the paper's training (cheaper; the boxes may be looser)."""
    g = module.graph

    def tighten(name: str, b: Any) -> Any:
        if eps is None or not isinstance(b, Box) or b.integer or name not in clean:
            return b
        c = clean[name]
        if not c.is_floating_point() or c.shape != b.shape:
            return b
        e = _per_sample(eps, c)
        if name in ball.row_norms:  # (b): eq. 6
            scale, rows = e * ball.tensor_bounds[ball.chain_input[name]], ball.row_norms[name]
        elif name in ball.tensor_bounds and not chains_only:  # (a)
            scale, rows = e * ball.tensor_bounds[name], None
        else:
            return b
        if not outward_rounding():  # training: one fused step (verifier.fused), the radius never materialized
            radius_of = (scale,) if rows is None else (rows, scale)
            return Box.from_bounds(*fused.intersect_bounds(b.center, b.radius, c, *radius_of))
        radius = (scale * rows) if rows is not None else scale.expand_as(c)
        return b.intersect(_ball_box(c, radius))

    def rule(node: Any, args: list[Any]) -> Any:
        out = node.op.interval(*args)
        if isinstance(out, tuple):
            return tuple(tighten(o, v) if o else v for o, v in zip(node.outputs, out))
        return tighten(node.outputs[0], out)

    start = {g.input_name: tighten(g.input_name, box)}
    with exact_float32(), (contextlib.nullcontext() if grad else torch.no_grad()):
        return module.walk(start, rule, upto=target)


def _verify(ctx: Context, problem: Problem, bcp: bool, clean: dict[str, Tensor] | None = None) -> Tensor:
    """Per input: whether the spec provably holds on the input set (IBP's boxes, or BCP's with ``bcp``)."""
    if isinstance(problem.spec, Disjunction):
        return torch.stack([_verify(ctx, part, bcp, clean) for part in problem.conjunctions()]).any(0)
    spec = problem.spec
    centre, rho = problem.inputs.l2_ball()
    x64 = centre.to(torch.float64)
    clean = clean_values(ctx, x64) if clean is None else clean
    z = clean[ctx.report.output].double().reshape(len(x64), -1)
    box = problem.inputs.box(torch.float64)
    ball = rho if bcp else None
    if spec.is_robustness:
        return _robust(ctx, spec.labels, z, box, ball, clean)
    return (_spec_low(ctx, spec, z, box, ball, clean) > 0).all(dim=1)


def _robust(ctx: Context, y: Tensor, z: Tensor, box: Box, ball: Tensor | None, clean: dict[str, Tensor]) -> Tensor:
    """The robustness spec z_y - z_j > 0 by its pairwise form: K^2 row differences of the last layer computed
    once, problem (11) only for the (input, class) pairs the box alone does not prove."""
    report = ctx.report
    n = len(z)
    correct = z.argmax(1) == y
    slack = FLOAT_SLACK * z.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    if report.last_matrix is None or report.last_input is None:
        # no affine last layer: bound z_y - z_j by the logit box (BCP's boxes, tightened by the ball, or IBP's)
        zb = walk(ctx.module64, ctx.ball, box, clean, ball, report.output)[report.output]
        lo, hi = zb.lo.reshape(n, -1), zb.hi.reshape(n, -1)
        low = lo.gather(1, y[:, None]) - hi
    else:
        lo, hi = _last_box(ctx, box, clean, ball, n)
        w = report.last_matrix.to(torch.float64)
        low = (z.gather(1, y[:, None]) - z) + box_min_pairs(w, y, lo, hi)
        rows, cols = ((low - slack).scatter(1, y[:, None], math.inf) <= 0).nonzero(as_tuple=True)
        if ball is not None and len(rows):
            yr = y[rows]
            c = (w[yr] - w[cols])[:, None, :]
            rho = (ball[rows] * report.tensor_bounds[report.last_input])[:, None]
            ball_low = (z[rows, yr] - z[rows, cols]) + ball_box_min(c, lo[rows, None, :], hi[rows, None, :], rho)[:, 0]
            low[rows, cols] = torch.maximum(low[rows, cols], ball_low)
    low = low - slack
    low.scatter_(1, y[:, None], math.inf)
    return correct & (low > 0).all(dim=1)


def _last_box(ctx: Context, box: Box, clean: dict[str, Tensor], ball: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """The box of h - h(x) at the last affine layer's input h (flattened, (B, n)), lo <= 0 <= hi."""
    last = ctx.report.last_input
    hbox = walk(ctx.module64, ctx.ball, box, clean, ball, last)[last]
    h = clean[last].double().reshape(n, -1)
    return (hbox.lo.reshape(n, -1) - h).clamp_max(0.0), (hbox.hi.reshape(n, -1) - h).clamp_min(0.0)


def _spec_low(ctx: Context, spec: Conjunction, z: Tensor, box: Box, ball: Tensor | None,
              clean: dict[str, Tensor]) -> Tensor:
    """(B, R) lower bounds of C z + d over the input set, for any linear rows, less the float32 forward's
    allowance (``FLOAT_SLACK`` x max(1, max |z|) per unit of a row's l1 norm over 2: a robustness row's is 2).

    With an affine last layer z = W h + b: C z(x') + d = C z(x) + d + (C W)(h(x') - h(x)), minimized over the box
    of h (and BCP's ball at h) by ``ball_box_min``; the rounding of C W and of the sums is covered by ``REL64``
    of |C||W| and of the magnitudes summed. Otherwise sum_k min(C_rk lo_k, C_rk hi_k) + d_r over the logit box."""
    report = ctx.report
    n = len(z)
    c, d = spec.rows()
    c, d = c.to(z.device), d.to(z.device)
    if report.last_matrix is None or report.last_input is None:
        zb = walk(ctx.module64, ctx.ball, box, clean, ball, report.output)[report.output]
        lo, hi = zb.lo.reshape(n, 1, -1), zb.hi.reshape(n, 1, -1)
        low = torch.minimum(c * lo, c * hi).sum(-1) + d
        err = REL64 * ((c.abs() * (lo.abs() + hi.abs())).sum(-1) + d.abs())
    else:
        lo, hi = _last_box(ctx, box, clean, ball, n)
        w = report.last_matrix.to(torch.float64)
        cw = c @ w  # (B, R, n)
        rho = None if ball is None else (ball * report.tensor_bounds[report.last_input])[:, None]
        low = spec.values(z) + ball_box_min(cw, lo[:, None, :], hi[:, None, :], rho)
        err = REL64 * ((c.abs() @ w.abs()) * (lo.abs() + hi.abs())[:, None, :]).sum(-1) \
            + REL64 * ((c.abs() * z.abs()[:, None, :]).sum(-1) + d.abs())
    return low - err - spec_allowance(z, c)


def _bound(b: Any) -> Any:
    if b is None:
        return None
    return torch.as_tensor(b).to(torch.float64)


def verify_ibp(module: GraphModule, report: LipschitzReport, problem: Problem, ctx: Context | None = None) -> Tensor:
    """Per input: whether IBP proves ``problem`` (its input set's enclosing box: for an l2 ball the l_inf ball
    of the same radius, which contains it)."""
    ctx = ctx or prepare(module, report, bcp=False)
    return _verify(ctx, problem, bcp=False)


def verify_bcp(module: GraphModule, report: LipschitzReport, problem: Problem, ctx: Context | None = None) -> Tensor:
    """Per input: whether BCP proves ``problem`` (any input set: its l2 ball, ``l2_ball()``, tightens the boxes).
    ``report`` must be the l2 report (``graph_lipschitz(module, 2)``)."""
    if report.norm != 2:
        raise ValueError("BCP needs the l2 Lipschitz report")
    ctx = ctx or prepare(module, report, bcp=True)
    return _verify(ctx, problem, bcp=True)


def _radii(ctx: Context, balls: RadiusProblem, bcp: bool, start: Tensor | None, steps: int,
           batch_size: int) -> Tensor:
    def prepare_chunk(part: RadiusProblem):
        clean = clean_values(ctx, part.center)
        return lambda eps: _verify(ctx, part.at(eps), bcp, clean)

    return largest_verified(balls, prepare_chunk, start, steps, batch_size)


def ibp_radii(module: GraphModule, report: LipschitzReport, balls: RadiusProblem, steps: int = BISECTION_STEPS,
              batch_size: int = 256) -> Tensor:
    """The largest eps (model space, bisection) at which ``verify_ibp`` proves ``balls.at(eps)``, per input (0 if
    misclassified)."""
    ctx = prepare(module, report, bcp=False)
    return _radii(ctx, balls, False, None, steps, batch_size)


def bcp_radii(module: GraphModule, report: LipschitzReport, balls: RadiusProblem, start: Tensor | None = None,
              steps: int = BISECTION_STEPS, batch_size: int = 256) -> Tensor:
    """The largest eps (model space) at which ``verify_bcp`` proves ``balls.at(eps)``, per input, by bisection
    from ``start`` (radii already certified, e.g. LMT Prop. 2's in that norm, a sound lower end) when given; the
    result is max(bisection, start)."""
    ctx = prepare(module, report, bcp=True)
    r = _radii(ctx, balls, True, start, steps, batch_size)
    if start is not None:
        r = torch.maximum(r, start.double().cpu())
    return r
