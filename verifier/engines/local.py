"""Local Cross-Lipschitz certificates (Hein & Andriushchenko 2017, Theorem 2.1 and Proposition 2.2).

Theorem 2.1: with margins m_j = z_y(x) - z_j(x) and, for a radius R, L_j(R) >= max over the ball B_p(x, R) of
||grad (z_y - z_j)||_q (1/p + 1/q = 1), the prediction cannot change within

    rho(R) = min(R, min_j m_j / L_j(R))

of x, for *every* R > 0 (mean-value inequality on the segment from x, which stays in the ball up to R). We take
the ball intersected with the data's domain box (the paper's remark after Theorem 2.1): that set is convex, so
the argument holds, and certificates are about inputs in the domain as for every other method.

L_j(R) for any graph (``local_bounds``): the forward boxes of every tensor over that set come from BCP's walk
(``verifier.engines.bcp.walk``: interval images intersected with the Lipschitz-ball boxes, for p = 2; for p = inf the
l2 ball of radius sqrt(N) R circumscribing the box, BCP §3.1), tightened by CROWN's intermediate bounds
(``verifier.engines.intermediate.boxes``, where they are cheap: ``CROWN_BOXES``), and the gradient of s . z with
s = e_y - e_j is enclosed by propagating a box backwards through every node's Jacobian rule
(``verifier.jacobian``); L_j is the q-norm of the largest magnitudes in the input gradient's box. Where the model
ends with an affine layer, the global pairwise bound L_sub ||w_y - w_j||_2 (LMT Prop. 2) also bounds the local
one, and L_j is the smaller.

Proposition 2.2 (``prop22_bounds``), for one-hidden-layer networks z = W sigma(U x + a) + b with a nondecreasing
activation: ||grad (z_y - z_j)||_2^2 = sum_{r,m} beta_rm s_r s_m with beta_rm = d_r d_m (U U^T)_rm, d = w_y - w_j
and s_r = sigma'((U y + a)_r) in [s_lo_r, s_hi_r] >= 0 over the ball, so it is at most
sum max(beta_rm, 0) s_hi_r s_hi_m + min(beta_rm, 0) s_lo_r s_lo_m. With sigma' increasing (softplus) the slope
range is [sigma'(lower end), sigma'(upper end)] of the pre-activation's range, which is the paper's statement
with the range <u_r, x> +- R ||u_r||_2; we use BCP's box of the pre-activation, which lies inside that range
(eq. 6 is exactly it) and inside the interval image of the domain-clipped ball. Both bounds are sound; the
certificate uses the smaller per pair.

The radius (``local_radii``) is max over the R evaluated of rho(R): R grows by x4 from a start until rho(R) < R,
then bisection on rho(R) >= R (L_j(R) grows with R, so that is where the maximum lies); every rho(R) evaluated is
a certified radius, whatever the monotonicity. Arithmetic as in ``verifier.engines.bcp``: float64 module, margins
reduced by ``margins.FLOAT_SLACK`` x max |z| for the float32 forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from verifier.engines.bcp import Context, clean_values, prepare, walk
from verifier.engines.gradients import gradient_box
from verifier.engines.intermediate import boxes, settled
from verifier.engines.lipschitz import MATERIALIZE_LIMIT, LipschitzReport, chain_matrix
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.jacobian import dual_norm_bound
from verifier.margins import margin_ratios, margins, pair_norms
from verifier.ops.activations import Activation
from verifier.problem import Problem, RadiusProblem
from verifier.rounding import REL64

BISECTION_STEPS = 10
#: the budget of CROWN's intermediate bounds (``verifier.engines.intermediate.boxes``) under the local bounds:
#: every R tried pays it, so only the cheap ones (MLP layers)
CROWN_BOXES = 2 ** 21
#: most float64 entries of the gradient boxes of one chunk of inputs (B * K * largest tensor)
GRADIENT_BUDGET = 2 ** 24


@dataclass
class OneHidden:
    """z = W sigma(U x + a) + b: the activation node's input and output and the Gram matrix U U^T."""

    pre: str
    activation: Activation
    gram: Tensor  # (U, U): U U^T
    u_abs: Tensor  # (U, d): |U|, for the rounding of the Gram matrix


@dataclass
class LocalContext:
    bcp: Context
    norm: float
    pair_bounds: Tensor | None  # (K, K) global bounds of ||grad (z_i - z_j)||_q, or None
    one_hidden: OneHidden | None


def prepare_local(module: GraphModule, report: LipschitzReport, norm: float = 2.0) -> LocalContext:
    """What ``local_bounds`` needs that does not depend on the radius. ``report``: the l2 Lipschitz report."""
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or inf")
    if report.norm != 2:
        raise ValueError("the local bounds need the l2 Lipschitz report (BCP's ball bounds)")
    ctx = prepare(module, report, bcp=True)
    pairs = None
    if norm == 2 and report.last_matrix is not None and report.lipschitz_sub is not None:
        pairs = pair_norms(report.last_matrix, 2) * report.lipschitz_sub
    return LocalContext(ctx, norm, pairs, _one_hidden(ctx) if norm == 2 else None)


def _one_hidden(ctx: Context) -> OneHidden | None:
    """The Prop. 2.2 structure, if the graph is input -> affine chain -> activation -> the last affine chain."""
    report, g = ctx.report, ctx.module64.graph
    if report.last_input is None or len(report.segments) != 2:
        return None
    first = report.segments[0]
    producer = next((n for n in g.nodes() if report.last_input in n.outputs), None)
    if producer is None or not isinstance(producer.op, Activation) or first.input != g.input_name:
        return None
    if producer.inputs[0] != first.output or any(t for t in producer.inputs[1:]):
        return None
    n_in, n_hidden = math.prod(g.shapes[first.input][1:]), math.prod(g.shapes[first.output][1:])
    if n_in * n_hidden > MATERIALIZE_LIMIT:
        return None
    dynamic = g.dependent_tensors()
    with torch.no_grad():
        _, u = chain_matrix(ctx.module64, [g.node(n) for n in first.nodes], dynamic)
    u = u.double()
    return OneHidden(first.output, producer.op, u @ u.T, u.abs())


def prop22_bounds(ctx: LocalContext, env: dict[str, Any], y: Tensor) -> Tensor | None:
    """Proposition 2.2 (module docstring) for every input and class j: (B, K) bounds of ||grad (z_y - z_j)||_2
    over the boxes ``env``; None when it does not apply (no such structure, or a slope range reaching below 0)."""
    one = ctx.one_hidden
    if one is None or ctx.norm != 2:
        return None
    box = env[one.pre]
    s_lo, s_hi = one.activation.slope_range(box.lo, box.hi, ())
    s_lo, s_hi = s_lo.reshape(len(y), -1), s_hi.reshape(len(y), -1)
    if bool((s_lo < 0).any()):
        return None
    w = ctx.bcp.report.last_matrix.double()
    k = w.shape[0]
    out = torch.zeros((len(y), k), dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            rows = ((y == i) | (y == j)).nonzero()[:, 0]
            if not len(rows):
                continue
            d = w[i] - w[j]
            beta = d[:, None] * d[None, :] * one.gram
            pos, neg = beta.clamp_min(0.0), beta.clamp_max(0.0)
            a, b = s_hi[rows], s_lo[rows]
            up = ((a @ pos) * a).sum(1)
            down = ((b @ neg) * b).sum(1)
            # rounding: of the Gram entries (<= gamma_d (|U||U|^T)_rm, d the input size, so <= gamma_d
            # || |U|^T (|d| a) ||^2 in all, as a >= b >= 0) and of the double sums (<= REL64 of their magnitudes)
            gram_error = (((d.abs()[None, :] * a) @ one.u_abs) ** 2).sum(1) * (one.u_abs.shape[1] + 2) * 2.0 ** -52
            value = (up + down).clamp_min(0.0) + REL64 * (up - down) + gram_error
            bound = value.sqrt() * (1 + REL64)
            other = torch.where(y[rows] == i, j, i)
            out[rows, other] = bound
    return out


def _seeds(y: Tensor, k: int, out_shape: tuple[int, ...]) -> Tensor:
    """(B, K, *out_shape): e_y - e_j for every class j (zero at j = y)."""
    eye = torch.eye(k, dtype=torch.float64)
    s = eye[y][:, None, :] - eye[None, :, :]
    return s.reshape(len(y), k, *out_shape)


def local_bounds(ctx: LocalContext, problem: Problem, clean: dict[str, Tensor] | None = None) -> Tensor:
    """(B, K): for each input and class j, an upper bound of ||grad (z_y - z_j)||_q over the input set of
    ``problem`` (an l_p ball in ``ctx.norm`` within the domain; its spec the robustness spec of labels y), 0 at
    j = y."""
    if not problem.spec.is_robustness:
        raise NoRuleError("the local Cross-Lipschitz bounds are for robustness specs (z_y - z_j > 0)")
    if getattr(problem.inputs, "norm", ctx.norm) != ctx.norm:
        raise ValueError(f"an l{problem.inputs.norm} ball for bounds prepared for the l{ctx.norm} ball")
    y = problem.spec.labels
    bctx = ctx.bcp
    report, module = bctx.report, bctx.module64
    centre, rho = problem.inputs.l2_ball()
    x64 = centre.to(torch.float64)
    clean = clean_values(bctx, x64) if clean is None else clean
    env = walk(module, bctx.ball, problem.inputs.box(torch.float64), clean, rho, report.output)
    # CROWN's intermediate bounds where they are cheap and tighter than BCP's
    env = boxes(module, problem.inputs, env, CROWN_BOXES, done=settled(module, problem.inputs, bctx.ball))
    out_shape = tuple(module.graph.shapes[report.output][1:])
    k = math.prod(out_shape)
    grad = gradient_box(module, env, _seeds(y, k, out_shape), report.output)
    bounds = dual_norm_bound(grad, ctx.norm).reshape(len(x64), k)
    p22 = prop22_bounds(ctx, env, y)
    if p22 is not None:
        bounds = torch.minimum(bounds, p22)
    if ctx.pair_bounds is not None:
        bounds = torch.minimum(bounds, ctx.pair_bounds[y])
    return bounds


def _rho(ctx: LocalContext, problem: Problem, clean: dict[str, Tensor], diff: Tensor) -> Tensor:
    """Theorem 2.1's min(R, min_j m_j / L_j(R)) per input (``diff``: the margins of ``margins.margins``, inf at
    j = y), 0 where a margin is not positive."""
    ratio = margin_ratios(diff, local_bounds(ctx, problem, clean))
    return torch.minimum(problem.inputs.eps, ratio.min(dim=1).values * (1 - REL64))


def _chunk(module: GraphModule, k: int, batch_size: int) -> int:
    return max(1, min(batch_size, GRADIENT_BUDGET // max(1, k * module.graph.largest_sample())))


def local_radii(module: GraphModule, report: LipschitzReport, balls: RadiusProblem, start: Tensor | None = None,
                steps: int = BISECTION_STEPS, batch_size: int = 256) -> Tensor:
    """Per input, the local Cross-Lipschitz certified radius (model space, 0 if misclassified): the largest
    rho(R) of Theorem 2.1 over the radii R tried. R starts at ``start`` (e.g. another method's radius; 1e-3
    where absent or 0), grows x4 while rho(R) = R, then bisects; a failed R gives the certified rho(R) < R,
    which becomes the lower end of the bracket (the optimum lies in [rho(R), R] when L_j grows with R)."""
    ctx = prepare_local(module, report, balls.norm)
    out_shape = tuple(module.graph.shapes[report.output][1:])
    n = _chunk(module, math.prod(out_shape), batch_size)
    radii = []
    for i in range(0, len(balls), n):
        part = balls[i:i + n].to(torch.float64)
        clean = clean_values(ctx.bcp, part.center)
        diff, correct = margins(clean[report.output], part.labels)

        def rho(eps: Tensor) -> Tensor:
            return _rho(ctx, part.at(eps), clean, diff)

        first = torch.zeros(len(part), dtype=torch.float64) if start is None \
            else start[i:i + n].double().cpu().clamp_min(0)
        best = torch.zeros(len(part), dtype=torch.float64)
        lo = torch.zeros_like(best)
        hi = torch.where(first > 0, first, torch.full_like(first, 1e-3))
        for _ in range(40):
            r = rho(hi)
            best = torch.maximum(best, r)
            good = (r >= hi) & correct
            lo = torch.where(good, hi, torch.maximum(lo, r))
            if not bool(good.any()):
                break
            hi = torch.where(good, hi * 4, hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            r = rho(mid)
            best = torch.maximum(best, r)
            good = r >= mid
            lo = torch.where(good, mid, torch.maximum(lo, r))
            hi = torch.where(good, hi, mid)
        radii.append(torch.where(correct, best, torch.zeros_like(best)))
    return torch.cat(radii) if radii else torch.zeros(0, dtype=torch.float64)


def check_supported(module: GraphModule, report: LipschitzReport) -> None:
    """Raise NoRuleError naming the first node without a gradient rule (before any work)."""
    from verifier.ops.base import Op

    g = module.graph
    dynamic = g.dependent_tensors()
    for node in g.nodes():
        dyn = [bool(t) and t in dynamic for t in node.inputs]
        if not any(dyn):
            continue
        op = node.op
        own = type(op).grad_interval is not Op.grad_interval
        if not own and not op.linear_in_inputs(dyn):
            raise NoRuleError(f"no gradient rule for {op.op_type} (node '{node.name}'): local bounds need its "
                              f"Jacobian")
        if report.output in node.outputs:
            break

