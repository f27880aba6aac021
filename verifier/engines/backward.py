"""CROWN's backward walk (Zhang et al. 2018, §3) and its concretization over the input set, which the CROWN
engine (``verifier.engines.crown``) and its intermediate bounds (``verifier.engines.intermediate``) share.

For rows lam on a tensor, the walk goes backward through the graph and applies each op's linear rule
(``Op.linear``, written in the kit of ``verifier/linear.py``; local rows through ``Op.linear_patches``,
``verifier/patches.py``): affine ops exactly, activations by lines valid over their input box; an op without a
linear rule is bounded by its output box there (that branch stops). What reaches the input is
lam . t(x') >= A x' + b for every x' of the set, and min over the set of A x' is taken exactly: over the box for
l_inf balls and plain boxes, and for l2 balls within the domain box as BCP's problem (11)
(``verifier.last_layer.ball_box_min``), which is at least the dual-norm bound of the ball alone. Arithmetic in
float64 with the rules' rounding allowances.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.last_layer import ball_box_min
from verifier.linear import box_backward
from verifier.patches import Patches
from verifier.problem import InputSet, LpBall
from verifier.rounding import REL64, TINY64

#: rounds of BCP's iteration for min over the l2 ball and the domain box (any number gives a lower bound: weak
#: duality, ``verifier.last_layer.ball_box_min``)
BALL_ROUNDS = 16
#: most float64 entries of the coefficient tensors of one backward pass (rows x largest tensor)
ROW_BUDGET = 2 ** 24


def backward(module64: GraphModule, env: dict[str, Any], target: str, lam: Tensor,
             slopes: dict[str, Tensor] | None = None, extra: dict[str, Tensor] | None = None,
             record: dict[str, Any] | None = None) -> tuple[Tensor | None, Tensor]:
    """Coefficients on the model input and a bias (B * R,) with lam . target >= coeffs . x + bias for every input
    whose tensors lie in the boxes ``env``; ``lam``: (B * R, *target's sample shape). ``slopes``: the lower slopes
    of the nodes named there (ops with ``slope_variable``; alpha-CROWN's variables, differentiated through the
    walk). ``extra``: rows (B * R, *shape) of tensors before the target, added to what reaches them (the bound is
    then of lam . target + sum extra[t] . t: beta-CROWN's split terms). ``record``: its keys (tensors) get the
    rows that reached them (dense; branching heuristics read them). NoRuleError when an input-dependent tensor
    does not keep the batch axis in front (rows are stacked along it)."""
    g = module64.graph
    slopes = slopes or {}
    extra = extra or {}
    lams: dict[str, Any] = {target: lam}
    like = lam.data if isinstance(lam, Patches) else lam
    bias = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    if target == g.input_name:
        return lam, bias
    with torch.set_grad_enabled(any(v.requires_grad for v in [*slopes.values(), *extra.values()])):
        for node in reversed(g.nodes_up_to(target)):
            outs = [lams.pop(o, None) if o else None for o in node.outputs]
            outs = [_plus(out, extra.get(o)) for out, o in zip(outs, node.outputs)]
            for out, o in zip(outs, node.outputs):
                if record is not None and o in record and out is not None:
                    record[o] = dense_rows(out)
            if all(o is None for o in outs):
                continue
            args = module64.node_args(node, env)
            for t, a in [*zip(node.inputs, args), *((o, env.get(o)) for o in node.outputs)]:
                if is_box(a) and not g.keeps_batch_in_front(t):
                    raise NoRuleError(f"CROWN: the tensor '{t}' (node '{node.name}') does not keep the batch axis "
                                      "in front")
            local = node.op.linear_patches(args, outs[0]) if isinstance(outs[0], Patches) else None
            if local is None:
                outs = [dense_rows(o) for o in outs]
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
                    lams[t] = dense_rows(lams[t]) + dense_rows(part) if t in lams else part
    return lams.get(g.input_name), bias


def _plus(lam: Any, more: Tensor | None) -> Any:
    if more is None:
        return lam
    return more if lam is None else dense_rows(lam) + more


def dense_rows(lam: Any) -> Any:
    """Rows as dense coefficients (local rows, ``verifier.patches``, made dense; anything else as it is)."""
    return lam.dense() if isinstance(lam, Patches) else lam


def concretize(inputs: InputSet, box: Box, coeffs: Tensor | None, rows: int) -> Tensor:
    """min over the input set of coeffs . x, (B, R) (coeffs: (B * R, *sample))."""
    b = box.shape[0]
    if coeffs is None:
        return torch.zeros((b, rows), dtype=torch.float64)
    if not isinstance(inputs, LpBall) or inputs.norm != 2:
        return box_backward([dense_rows(coeffs)], [box]).reshape(b, rows)
    x0 = inputs.center.to(torch.float64).reshape(b, 1, -1)
    lo = ((box.lo.reshape(b, 1, -1) - x0) * (1 + REL64) - TINY64).clamp_max(0.0)
    hi = ((box.hi.reshape(b, 1, -1) - x0) * (1 + REL64) + TINY64).clamp_min(0.0)
    rho = inputs.eps.to(torch.float64)[:, None]
    uncut = bool(((lo <= -rho[..., None]) & (hi >= rho[..., None])).all())
    # c . x0 rounds by at most gamma_n |c| . |x0| <= REL64 ||c||_2 ||x0||_2 (Cauchy-Schwarz)
    x0_norm = torch.linalg.vector_norm(x0.reshape(b, -1), dim=1)[:, None]
    if uncut and isinstance(coeffs, Patches):  # each row's window holds all its nonzero entries
        norm = torch.linalg.vector_norm(coeffs.data.flatten(1), dim=1).reshape(b, rows)
        at_centre = coeffs.dot(inputs.center.to(torch.float64)).reshape(b, rows) - REL64 * norm * x0_norm
        return at_centre - TINY64 - rho * norm * (1 + 2 * REL64) - TINY64
    c = dense_rows(coeffs).reshape(b, rows, -1)
    norm = torch.linalg.vector_norm(c, dim=-1)
    at_centre = torch.bmm(c, x0.reshape(b, -1, 1))[..., 0] - REL64 * norm * x0_norm - TINY64
    if uncut:
        # the box does not cut the ball: min over the ball alone, -rho ||c||_2 (the sum of squares rounds by
        # at most REL64 relative, the root halves that, the product rounds once)
        return at_centre - rho * norm * (1 + 2 * REL64) - TINY64
    return at_centre + ball_box_min(c, lo, hi, rho, rounds=BALL_ROUNDS)


def chunk_rows(module64: GraphModule, batch: int) -> int:
    return max(1, ROW_BUDGET // max(1, batch * module64.graph.largest_sample()))
