"""CROWN (Zhang et al. 2018): linear bounds propagated backward through the graph, concretized over the input set.

For the spec's rows C (``verifier.problem``), the walk goes backward from the logits with lam = C and applies each
op's linear rule (``Op.linear``, written in the kit of ``verifier/linear.py``): affine ops exactly, ReLU by its
triangle relaxation over its input box; an op without a linear rule is bounded by its output box there (that
branch stops). What reaches the input is C z(x') >= A x' + b for every x' of the set, and min over the set of
A x' is taken exactly: over the box for l_inf balls and plain boxes, and for l2 balls within the domain box as
BCP's problem (11) (``verifier.last_layer.ball_box_min``), which is at least the dual-norm bound of the ball
alone.

Intermediate bounds: the forward boxes are interval images, intersected with BCP's boxes when the l2 Lipschitz
report is given (``verifier.engines.bcp.walk``); before each nonlinear op whose inputs have at most
entries whose relaxation depends on the box (``Op.unstable``: for ReLU those whose box contains 0 inside), these
entries are tightened by CROWN itself, within ``CROWN_BUDGET`` (rows +e_i and -e_i, chunked). Every box is
sound, so every intersection is; the forward boxes after a tightened one follow from it.

Arithmetic as in ``verifier.engines.bcp``: a float64 copy of the module, the rules' rounding allowances, and
the final lower bounds reduced by ``FLOAT_SLACK`` x max(1, max |z|) per unit of a row's l1 norm over 2, for the
float32 forward. Needs a model that runs whole batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from verifier.box import Box, exact_float32, is_box
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.last_layer import ball_box_min
from verifier.linear import box_backward
from verifier.margins import spec_allowance
from verifier.patches import Patches
from verifier.problem import Conjunction, Disjunction, InputSet, LpBall, Problem, RadiusProblem
from verifier.rounding import REL64, TINY64

from . import bcp
from .bcp import BallBounds, walk
from .lipschitz import LipschitzReport
from .search import largest_positive

#: most guesses of the radius search (it usually stops after 6 to 10, at a relative width of 1e-4)
SEARCH_STEPS = 40
#: rounds of BCP's iteration for min over the l2 ball and the domain box (any number gives a lower bound: weak
#: duality, ``verifier.last_layer.ball_box_min``)
BALL_ROUNDS = 16
#: CROWN tightens the input of a nonlinear op only where its unstable entries per input times the entries of
#: the graph before it (what the rows +-e_i cost, dense) stay within this; else the forward box is kept. MLPs
#: and small CNNs (oval21's cifar_base_kw) get every intermediate bound; larger convolutional layers cost too
#: much with dense rows
CROWN_BUDGET = 2 ** 24
#: CROWN's rows +-e_i on (C, H, W) tensors start as local rows (``verifier.patches``: windows through 2-D
#: convolutions and activations, dense from the first other op); False: dense from the start (same bounds)
LOCAL_ROWS = True
#: most float64 entries of the coefficient tensors of one backward pass (rows x largest tensor)
ROW_BUDGET = 2 ** 24


def prepare(module: GraphModule) -> GraphModule:
    """The float64 copy CROWN runs on; NoRuleError for models that do not run whole batches."""
    if not module.graph.whole_batches:
        raise NoRuleError("CROWN needs a model that runs whole batches")
    return module.float64()


def backward(module64: GraphModule, env: dict[str, Any], target: str, lam: Tensor,
             slopes: dict[str, Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
    """Coefficients on the model input and a bias (B * R,) with lam . target >= coeffs . x + bias for every input
    whose tensors lie in the boxes ``env``; ``lam``: (B * R, *target's sample shape). ``slopes``: the lower slopes
    of the nodes named there (ops with ``slope_variable``; alpha-CROWN's variables, differentiated through the
    walk). NoRuleError when an input-dependent tensor does not keep the batch axis in front (rows are stacked
    along it)."""
    g = module64.graph
    slopes = slopes or {}
    lams: dict[str, Any] = {target: lam}
    like = lam.data if isinstance(lam, Patches) else lam
    bias = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    if target == g.input_name:
        return lam, bias
    with torch.set_grad_enabled(any(v.requires_grad for v in slopes.values())):
        for node in reversed(g.nodes_up_to(target)):
            outs = [lams.pop(o, None) if o else None for o in node.outputs]
            if all(o is None for o in outs):
                continue
            args = module64.node_args(node, env)
            for t, a in [*zip(node.inputs, args), *((o, env.get(o)) for o in node.outputs)]:
                if is_box(a) and not g.keeps_batch_in_front(t):
                    raise NoRuleError(f"CROWN: the tensor '{t}' (node '{node.name}') does not keep the batch axis "
                                      "in front")
            local = node.op.linear_patches(args, outs[0]) if isinstance(outs[0], Patches) else None
            if local is None:
                outs = [_dense(o) for o in outs]
            try:
                if local is not None:
                    in_lams, b = local
                elif node.name in slopes:
                    in_lams, b = node.op.linear(args, outs, lower_slope=slopes[node.name])
                else:
                    in_lams, b = node.op.linear(args, outs)
            except NoRuleError:  # bound the output by its box here; the walk stops on this branch
                in_lams, b = [], box_backward(outs, [env[o] for o in node.outputs])
            bias = bias + b
            for t, part in zip(node.inputs, in_lams):
                if part is not None and t and is_box(env.get(t)):
                    lams[t] = _dense(lams[t]) + _dense(part) if t in lams else part
    return lams.get(g.input_name), bias


def _dense(lam: Any) -> Any:
    """Rows as dense coefficients (local rows, ``verifier.patches``, made dense; anything else as it is)."""
    return lam.dense() if isinstance(lam, Patches) else lam


def _concretize(inputs: InputSet, box: Box, coeffs: Tensor | None, rows: int) -> Tensor:
    """min over the input set of coeffs . x, (B, R) (coeffs: (B * R, *sample))."""
    b = box.shape[0]
    if coeffs is None:
        return torch.zeros((b, rows), dtype=torch.float64)
    if not isinstance(inputs, LpBall) or inputs.norm != 2:
        return box_backward([_dense(coeffs)], [box]).reshape(b, rows)
    x0 = inputs.center.to(torch.float64).reshape(b, 1, -1)
    lo = ((box.lo.reshape(b, 1, -1) - x0) * (1 + REL64) - TINY64).clamp_max(0.0)
    hi = ((box.hi.reshape(b, 1, -1) - x0) * (1 + REL64) + TINY64).clamp_min(0.0)
    rho = inputs.eps.to(torch.float64)[:, None]
    uncut = bool(((lo <= -rho[..., None]) & (hi >= rho[..., None])).all())
    if uncut and isinstance(coeffs, Patches):  # each row's window holds all its nonzero entries
        centre = inputs.center.to(torch.float64)
        at_centre = coeffs.dot(centre) - REL64 * Patches.dot(replace(coeffs, data=coeffs.data.abs()), centre.abs())
        norm = torch.linalg.vector_norm(coeffs.data.flatten(1), dim=1)
        return (at_centre - TINY64).reshape(b, rows) - rho * norm.reshape(b, rows) * (1 + 2 * REL64) - TINY64
    c = _dense(coeffs).reshape(b, rows, -1)
    x0v = x0.reshape(b, -1, 1)
    at_centre = (torch.bmm(c, x0v) - REL64 * torch.bmm(c.abs(), x0v.abs()))[..., 0] - TINY64
    if uncut:
        # the box does not cut the ball: min over the ball alone, -rho ||c||_2 (the sum of squares rounds by
        # at most REL64 relative, the root halves that, the product rounds once)
        return at_centre - rho * torch.linalg.vector_norm(c, dim=-1) * (1 + 2 * REL64) - TINY64
    return at_centre + ball_box_min(c, lo, hi, rho, rounds=BALL_ROUNDS)


def _chunk_rows(module64: GraphModule, batch: int) -> int:
    return max(1, ROW_BUDGET // max(1, batch * module64.graph.largest_sample()))


def _tightened(module64: GraphModule, env: dict[str, Any], inputs: InputSet, name: str, mask: Tensor | None,
               slopes: Any = None) -> Box:
    """CROWN's box of the tensor ``name`` on the entries of ``mask`` (B, *shape) (all when None), intersected
    with its interval box: per input, rows +e_i and -e_i for each of its masked entries (padded with zero rows
    to the largest count), in chunks. ``slopes``: alpha-CROWN's variables
    (``verifier.engines.alpha_crown.Slopes``: it fixes the entries per tensor and gives the slopes per chunk)."""
    box = env[name]
    b, shape = box.shape[0], tuple(box.shape[1:])
    n = math.prod(shape)
    mask = torch.ones((b, n), dtype=torch.bool) if mask is None else mask.reshape(b, n)
    counts = mask.sum(1)
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :int(counts.max()) if b else 0]
    valid = torch.arange(index.shape[1])[None] < counts[:, None]  # (B, most): masked entries first
    if slopes is not None:
        index, valid = slopes.entries(name, index, valid)
    most = index.shape[1]
    if most == 0:
        return box
    lo, hi = box.lo.reshape(b, n), box.hi.reshape(b, n)
    step = max(1, _chunk_rows(module64, b) // 2)
    for j in range(0, most, step):
        idx, ok = index[:, j:j + step], valid[:, j:j + step]
        r = idx.shape[1]
        chunk = slopes.chunk(name, env, j, r) if slopes is not None else None
        if LOCAL_ROWS and len(shape) == 3 and chunk is None:
            one = ok.to(torch.float64)
            rows = Patches.start(torch.cat([one, -one], 1), torch.cat([idx, idx], 1), shape)
        else:
            rows = torch.zeros((b, 2 * r, n), dtype=torch.float64)  # (B, 2r, n): +e_i, then -e_i
            one = ok[..., None].to(torch.float64)
            rows[:, :r].scatter_(2, idx[..., None], one)
            rows[:, r:].scatter_(2, idx[..., None], -one)
            rows = rows.reshape(b * 2 * r, *shape)
        coeffs, bias = backward(module64, env, name, rows, chunk)
        low = _concretize(inputs, env[module64.graph.input_name], coeffs, 2 * r) + bias.reshape(b, 2 * r)
        new_lo, new_hi = low[:, :r], -low[:, r:]
        keep = ok & (new_lo <= new_hi)  # a crossing can only come from rounding at a point box: keep the interval
        old_lo, old_hi = lo.gather(1, idx), hi.gather(1, idx)
        met_lo = torch.where(keep, torch.maximum(old_lo, new_lo), old_lo)
        met_hi = torch.where(keep, torch.minimum(old_hi, new_hi), old_hi)
        if slopes is not None:  # the slopes' gradient through the new bounds, wherever they stand
            met_lo, met_hi = _through(new_lo, met_lo), _through(new_hi, met_hi)
        lo = lo.scatter(1, idx, met_lo)
        hi = hi.scatter(1, idx, met_hi)
    return Box.from_bounds(lo.reshape(b, *shape), hi.reshape(b, *shape))


def _prefix_entries(module64: GraphModule, name: str) -> int:
    """The entries per input of the tensors from the model input to ``name`` (what one backward row visits)."""
    g = module64.graph
    tensors = {g.input_name, *(o for node in g.nodes_up_to(name) for o in node.outputs if o)}
    return sum(math.prod(g.shapes[t][1:]) for t in tensors if t in g.shapes)


def settled(module64: GraphModule, inputs: InputSet, ball: BallBounds | None = None) -> dict[str, Tensor]:
    """Per tensor, the inputs (B,) where its forward box is already what CROWN would give it (tightening it
    cannot help): where the set is concretized over a box (l_inf balls, boxes), the output of an affine op whose
    one input-dependent argument is the model input (the interval image of a box under an affine map is exact up
    to rounding); for l2 balls the domain box does not cut, with BCP's ``ball`` bounds (their boxes start the
    walk), the outputs of the affine chains from the model input whose row norms are exact: BCP's (b) is then
    A x0 + a +- eps ||A_i||_2, CROWN's closed form. Skipping a tightening is always sound."""
    g = module64.graph
    b = len(inputs)
    every = torch.ones(b, dtype=torch.bool)
    if not isinstance(inputs, LpBall) or inputs.norm != 2:
        dynamic = g.dependent_tensors()
        out = {}
        for node in g.nodes():
            flags = [bool(t) and t in dynamic for t in node.inputs]
            if flags.count(True) == 1 and node.inputs[flags.index(True)] == g.input_name \
                    and node.op.linear_in_inputs(flags):
                out.update({o: every for o in node.outputs if o})
        return out
    if ball is None or float(ball.tensor_bounds.get(g.input_name, math.inf)) > 1.0:
        return {}
    box, x0 = inputs.box(torch.float64), inputs.center.to(torch.float64)
    rho = inputs.eps.to(torch.float64).reshape(-1, *[1] * (x0.dim() - 1))
    uncut = ((box.lo <= x0 - rho) & (box.hi >= x0 + rho)).reshape(b, -1).all(1)
    return {t: uncut for t in ball.exact_rows if ball.chain_input.get(t) == g.input_name}


def boxes(module64: GraphModule, inputs: InputSet, prior: dict[str, Any] | None = None,
          budget: int | None = None, slopes: Any = None, done: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Forward boxes of every tensor over the input set: interval images, intersected with the ``prior`` boxes
    when given (e.g. BCP's, ``verifier.engines.bcp.walk``), and the inputs of every nonlinear op tightened by
    CROWN where the entries to tighten per input (``Op.unstable``) times the entries of the graph before them
    are at most ``budget`` (default ``CROWN_BUDGET``; 0: none), except on the inputs ``done`` names per tensor
    (``settled``; default: those ``settled`` finds without a ball). ``slopes``: alpha-CROWN's variables for those
    tightenings (as in ``_tightened``), the boxes then differentiable in them."""
    g = module64.graph
    prior = prior or {}
    limit = CROWN_BUDGET if budget is None else budget
    done = settled(module64, inputs) if done is None else done
    through = slopes is not None
    env: dict[str, Any] = {g.input_name: _meet(inputs.box(torch.float64), prior.get(g.input_name))}

    def rule(node: Any, args: list[Any]) -> Any:
        args = module64.node_args(node, env)  # the tightened boxes, for every reader
        dynamic = [is_box(a) for a in args]
        if not node.op.linear_in_inputs(dynamic):
            for k, t in enumerate(node.inputs):
                if not dynamic[k] or args[k].integer:
                    continue
                mask = node.op.unstable(args[k]) if k == 0 else None
                if t in done:
                    mask = _unsettled(mask, args[k], done[t])
                count = math.prod(args[k].shape[1:]) if mask is None else int(mask.flatten(1).sum(1).max())
                if count * _prefix_entries(module64, t) <= limit:
                    env[t] = args[k] = _tightened(module64, env, inputs, t, mask, slopes)
        out = node.op.interval(*args)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(_meet(v, prior.get(o), through) if o else v for o, v in zip(node.outputs, outs))
        for o, v in zip(node.outputs, outs):
            if o:
                env[o] = v
        return outs if isinstance(out, tuple) else outs[0]

    with exact_float32(), torch.set_grad_enabled(slopes is not None):
        module64.walk(dict(env), rule)
    return env


def _unsettled(mask: Tensor | None, box: Box, done: Tensor) -> Tensor:
    """The entries of ``mask`` (all when None) on the inputs not ``done``."""
    keep = (~done).reshape(-1, *[1] * (box.dim() - 1))
    return keep.expand(box.shape) if mask is None else mask & keep


def _meet(box: Any, other: Any, through: bool = False) -> Any:
    """The intersection of two sound boxes of one tensor (the first where the other does not apply). With
    ``through`` (alpha-CROWN), its bounds carry the first box's gradient: the value is the intersection, the
    derivative that of the first box, so that a slope keeps its gradient where an older box is tighter."""
    if not is_box(box) or not is_box(other) or box.integer or other.integer or box.shape != other.shape:
        return box
    meet = box.intersect(other)
    if not through:
        return meet
    return Box.from_bounds(_through(box.lo, meet.lo), _through(box.hi, meet.hi))


def _through(mine: Tensor, value: Tensor) -> Tensor:
    """``value``, differentiated as ``mine`` where that is finite (a straight-through estimate: the value is what
    is used)."""
    return torch.where(torch.isfinite(mine), mine + (value - mine).detach(), value)


@dataclass
class SpecBounds:
    """What the final bound of a ``Conjunction`` spec needs: the forward boxes ``env``, the spec's rows C
    (B, R, *logits) and offsets d (B, R), and the float32 forward's allowance (B, R) (``spec_allowance``)."""

    module64: GraphModule
    problem: Problem
    env: dict[str, Any]
    c: Tensor
    d: Tensor
    allowance: Tensor
    budget: int | None = None
    done: dict[str, Tensor] | None = None

    def tightened(self, other: "SpecBounds") -> "SpecBounds":
        """These bounds over the intersection of both boxes of every tensor (both are sound), detached."""
        env = {}
        for name, box in self.env.items():
            new = other.env.get(name)
            if is_box(new) and not new.integer:
                new = Box(new.center.detach(), new.radius.detach())
            env[name] = _meet(box, new)
        return SpecBounds(self.module64, self.problem, env, self.c, self.d, self.allowance, self.budget, self.done)

    def rebound(self, slopes: Any) -> "SpecBounds":
        """The same bounds over boxes recomputed with alpha-CROWN's ``slopes`` (as in ``boxes``), each
        intersected with this one's: differentiable in the slopes, never looser than these."""
        env = boxes(self.module64, self.problem.inputs, self.env, self.budget, slopes, self.done)
        return SpecBounds(self.module64, self.problem, env, self.c, self.d, self.allowance, self.budget, self.done)

    def low(self, slopes: dict[str, Tensor] | None = None) -> Tensor:
        """(B, R) lower bounds of C z + d over the input set, less the allowance; ``slopes`` as in ``backward``
        (differentiable in them)."""
        g = self.module64.graph
        out = g.logits_tensor()
        b, r = self.c.shape[:2]
        coeffs, bias = backward(self.module64, self.env, out, self.c.reshape(b * r, *g.shapes[out][1:]), slopes)
        low = _concretize(self.problem.inputs, self.env[g.input_name], coeffs, r) + bias.reshape(b, r) + self.d
        return low - REL64 * self.d.abs() - self.allowance


def spec_low(module64: GraphModule, problem: Problem, ball: BallBounds | None = None,
             budget: int | None = None) -> Tensor:
    """(B, R) lower bounds of C z + d over the input set (a ``Conjunction`` spec), less the float32 forward's
    allowance. ``ball``: BCP's ball bounds (``verifier.engines.bcp.prepare(...).ball``), whose boxes then start
    the forward pass."""
    with torch.no_grad():
        return spec_bounds(module64, problem, ball, budget).low()


def spec_bounds(module64: GraphModule, problem: Problem, ball: BallBounds | None = None,
                budget: int | None = None) -> SpecBounds:
    """The forward boxes and rows of ``spec_low`` (arguments as there)."""
    spec = problem.spec
    g = module64.graph
    out = g.logits_tensor()
    centre, rho = problem.inputs.l2_ball()
    prior = None
    with torch.no_grad():
        keep = {out} | (set(ball.tensor_bounds) if ball is not None else set())
        clean = module64.run(centre.to(torch.float64), keep=keep)
        if ball is not None:
            prior = walk(module64, ball, problem.inputs.box(torch.float64), clean, rho.to(torch.float64), out)
    z = clean[out].reshape(len(problem), -1)
    if spec.is_robustness:
        spec = Conjunction.robustness(spec.labels, z.shape[1])
    c, d = spec.rows()
    done = settled(module64, problem.inputs, ball)
    env = boxes(module64, problem.inputs, prior, budget, done=done)
    return SpecBounds(module64, problem, env, c, d, spec_allowance(z, c), budget, done)


def crown_margin(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                 ball: BallBounds | None = None, budget: int | None = None) -> Tensor:
    """Per input, a lower bound of the problem's margin (the smallest row of a conjunction, the largest such over
    a disjunction's parts): positive where CROWN proves ``problem``. With BCP's ``ball`` bounds (and its
    ``module64``), its boxes start the forward pass; ``budget`` as in ``boxes``."""
    module64 = module64 or prepare(module)
    return over_parts(problem, lambda part: spec_low(module64, part, ball, budget).amin(dim=1))


def over_parts(problem: Problem, margin: Any) -> Tensor:
    """A margin bound of any spec from one of conjunctions (``margin(conjunctive problem)``, per input): the
    largest over a disjunction's parts."""
    if isinstance(problem.spec, Disjunction):
        return torch.stack([margin(part) for part in problem.conjunctions()]).amax(0)
    return margin(problem)


def context(module: GraphModule, report: LipschitzReport | None) -> tuple[GraphModule, BallBounds | None]:
    """The float64 module and, with the l2 Lipschitz ``report``, BCP's ball bounds that start every forward pass
    (the arguments ``crown_margin`` and alpha-CROWN take)."""
    if report is None:
        return prepare(module), None
    ctx = bcp.prepare(module, report)
    return ctx.module64, ctx.ball


def verify_crown(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                 ball: BallBounds | None = None, budget: int | None = None) -> Tensor:
    """Per input: whether CROWN proves ``problem`` (any input set, any linear spec or disjunction); arguments as
    ``crown_margin``."""
    return crown_margin(module, problem, module64, ball, budget) > 0


def crown_radii(module: GraphModule, balls: RadiusProblem, report: LipschitzReport | None = None,
                start: Tensor | None = None, steps: int = SEARCH_STEPS, batch_size: int = 256,
                budget: int | None = None) -> Tensor:
    """The largest eps (model space) at which CROWN proves ``balls.at(eps)``, per input, by the margin-guided
    search (``verifier.engines.search.largest_positive``, at most ``steps`` guesses) from ``start`` (radii
    already proved) when given; the result is max(search, start). With the l2 Lipschitz ``report``, BCP's boxes
    start every forward pass; ``budget`` as in ``boxes`` (0: CROWN only for the spec's rows)."""
    module64, ball = context(module, report)
    r = largest_positive(balls, lambda part, eps: crown_margin(module, part.at(eps), module64, ball, budget),
                         start, steps, batch_size)
    return r if start is None else torch.maximum(r, start.double().cpu())
