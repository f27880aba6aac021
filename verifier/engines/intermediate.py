"""CROWN's intermediate bounds: the forward boxes of every tensor over the input set, the inputs of nonlinear ops
tightened by CROWN itself (rows +e_i and -e_i through ``verifier.engines.backward``).

The forward boxes are interval images, intersected with prior boxes (BCP's when the l2 Lipschitz report is
given, ``verifier.engines.bcp.walk``); before each nonlinear op, the entries of its input whose relaxation
depends on the box (``Op.unstable``: for ReLU those whose box contains 0 inside) are tightened by CROWN within
``CROWN_BUDGET``, except where the box is already CROWN's (``settled``) and, past a probe, where CROWN does not
narrow it (``PROBE_RATIO``). Every box is sound, so every intersection is; the forward boxes after a tightened
one follow from it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from verifier.box import Box, EmptyIntersectionError, exact_float32, is_box
from verifier.ir import GraphModule
from verifier.patches import Patches
from verifier.problem import InputSet, LpBall

from .backward import backward, chunk_rows, concretize
from .bcp import BallBounds

#: CROWN tightens the input of a nonlinear op on the inputs whose unstable entries times the entries of the
#: graph before it (what the rows +-e_i cost, dense) stay within this; elsewhere the forward box is kept. MLPs
#: and small CNNs (oval21's cifar_base_kw, resnet_2b) get every intermediate bound
CROWN_BUDGET = 2 ** 24
#: CROWN first tightens this many entries of a tensor per input (in a fixed spread order), and the others only
#: for the inputs where the probed widths shrank to at most ``PROBE_RATIO`` of the forward box's, in sum (on
#: Lipschitz-trained models BCP's boxes are often as tight, and the rows would cost for nothing)
PROBE_ENTRIES = 16
PROBE_RATIO = 0.9
#: CROWN's rows +-e_i on (C, H, W) tensors start as local rows (``verifier.patches``: windows through 2-D
#: convolutions and activations, dense from the first other op); False: dense from the start (same bounds)
LOCAL_ROWS = True


def _tightened(module64: GraphModule, env: dict[str, Any], inputs: InputSet, name: str, mask: Tensor | None,
               slopes: Any = None) -> Box:
    """CROWN's box of the tensor ``name`` on the entries of ``mask`` (B, *shape) (all when None), intersected
    with its interval box: per input, rows +e_i and -e_i for each of its masked entries, first
    ``PROBE_ENTRIES`` of them, then the others for the inputs where those shrank enough (``PROBE_RATIO``).
    ``slopes``: alpha-CROWN's variables (``verifier.engines.alpha_crown.Slopes``: it fixes the entries per
    tensor and gives the slopes per chunk; no probe then)."""
    box = env[name]
    b, shape = box.shape[0], tuple(box.shape[1:])
    n = math.prod(shape)
    mask = torch.ones((b, n), dtype=torch.bool) if mask is None else mask.reshape(b, n)
    counts = mask.sum(1)
    key = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # masked entries first, in a spread order
    index = torch.argsort(torch.where(mask, key, key + n), dim=1)[:, :int(counts.max()) if b else 0]
    valid = torch.arange(index.shape[1])[None] < counts[:, None]  # (B, most)
    if slopes is not None:
        index, valid = slopes.entries(name, index, valid)
    lo, hi = box.lo.reshape(b, n), box.hi.reshape(b, n)
    if slopes is not None or index.shape[1] <= PROBE_ENTRIES:
        lo, hi = _entries(module64, env, inputs, name, index, valid, lo, hi, slopes)
        return _met(lo.reshape(b, *shape), hi.reshape(b, *shape), name)
    probed, ok = index[:, :PROBE_ENTRIES], valid[:, :PROBE_ENTRIES]
    before = torch.where(ok, hi.gather(1, probed) - lo.gather(1, probed), 0.0).sum(1)
    lo, hi = _entries(module64, env, inputs, name, probed, ok, lo, hi)
    ratio = torch.where(ok, hi.gather(1, probed) - lo.gather(1, probed), 0.0).sum(1) / before
    rest = valid[:, PROBE_ENTRIES:] & ~(ratio > PROBE_RATIO)[:, None]
    sel = rest.any(1).nonzero()[:, 0]
    if len(sel):  # the other entries, on the inputs that go on only
        part = {k: v[sel] if is_box(v) else v for k, v in env.items()}
        lo_s, hi_s = _entries(module64, part, inputs[sel], name, index[sel, PROBE_ENTRIES:], rest[sel], lo[sel],
                              hi[sel])
        lo, hi = lo.index_copy(0, sel, lo_s), hi.index_copy(0, sel, hi_s)
    return _met(lo.reshape(b, *shape), hi.reshape(b, *shape), name)


def _met(lo: Tensor, hi: Tensor, name: str) -> Box:
    """The box met from the tensor's box and CROWN's bounds. Both are sound over the input set, so where they
    do not meet the set is empty: a branch and bound part whose split constraints (``prior`` boxes) contradict
    CROWN's bounds, which ``verifier.decisions.bab`` counts as proved; anywhere else one of them is unsound.
    Either way ``EmptyIntersectionError``."""
    bad = lo > hi
    if bool(bad.any()):
        raise EmptyIntersectionError(f"CROWN's bounds of '{name}' miss its box at {int(bad.sum())} entries: the "
                                     "input set is empty (or a bound is unsound)")
    return Box.from_bounds(lo, hi)


def _entries(module64: GraphModule, env: dict[str, Any], inputs: InputSet, name: str, index: Tensor,
             valid: Tensor, lo: Tensor, hi: Tensor, slopes: Any = None) -> tuple[Tensor, Tensor]:
    """``lo``, ``hi`` (B, n) of the tensor ``name`` met with CROWN's bounds on the entries ``index`` (B, k) where
    ``valid`` (a prefix per input; padding after): rows +e_i and -e_i (local rows on (C, H, W) tensors,
    ``LOCAL_ROWS``), in chunks."""
    b, shape = lo.shape[0], tuple(env[name].shape[1:])
    n = lo.shape[1]
    most = int(valid.sum(1).max()) if b else 0
    step = max(1, chunk_rows(module64, b) // 2)
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
        low = concretize(inputs, env[module64.graph.input_name], coeffs, 2 * r) + bias.reshape(b, 2 * r)
        new_lo, new_hi = low[:, :r], -low[:, r:]
        keep = ok & (new_lo <= new_hi)  # a crossing can only come from rounding at a point box: keep the interval
        old_lo, old_hi = lo.gather(1, idx), hi.gather(1, idx)
        met_lo = torch.where(keep, torch.maximum(old_lo, new_lo), old_lo)
        met_hi = torch.where(keep, torch.minimum(old_hi, new_hi), old_hi)
        if slopes is not None:  # the slopes' gradient through the new bounds, wherever they stand
            met_lo, met_hi = _through(new_lo, met_lo), _through(new_hi, met_hi)
        lo = lo.scatter(1, idx, met_lo)
        hi = hi.scatter(1, idx, met_hi)
    return lo, hi


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
    CROWN on the inputs where the entries to tighten (``Op.unstable``) times the entries of the graph before them
    are at most ``budget`` (default ``CROWN_BUDGET``; 0: none), except on the inputs ``done`` names per tensor
    (``settled``; default: those ``settled`` finds without a ball). ``slopes``: alpha-CROWN's variables for those
    tightenings (as in ``_tightened``), the boxes then differentiable in them."""
    g = module64.graph
    prior = prior or {}
    limit = CROWN_BUDGET if budget is None else budget
    done = settled(module64, inputs) if done is None else done
    through = slopes is not None
    env: dict[str, Any] = {g.input_name: meet(inputs.box(torch.float64), prior.get(g.input_name))}

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
                b = args[k].shape[0]
                counts = torch.full((b,), math.prod(args[k].shape[1:])) if mask is None else mask.flatten(1).sum(1)
                within = counts * _prefix_entries(module64, t) <= limit  # per input: the bounds of one input never
                if bool(within.any()):  # depend on the others in its batch
                    if not bool(within.all()):
                        mask = _unsettled(mask, args[k], ~within)
                    env[t] = args[k] = _tightened(module64, env, inputs, t, mask, slopes)
        out = node.op.interval(*args)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(meet(v, prior.get(o), through) if o else v for o, v in zip(node.outputs, outs))
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


def meet(box: Any, other: Any, through: bool = False) -> Any:
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
