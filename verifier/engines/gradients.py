"""The gradient-box walk over the IR (``gradient_box``): boxes enclosing the gradient of a logit difference over
a box of inputs, for the local Cross-Lipschitz certificate (Hein & Andriushchenko 2017, Theorem 2.1;
``verifier/engines/local.py``). Each node's ``Op.grad_interval`` rule (written in the kit of ``verifier/jacobian.py``,
whose docstring states the soundness claim) is applied in reverse topological order.

The walk is batched over (input, class pair): the gradients have batch B * P (P seeds per input, in that order)
while the forward boxes have batch B. Gradients reaching a tensor along several paths are summed, widened by
``REL64`` for the rounding of the sum.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.rounding import REL64


def gradient_box(module: GraphModule, env: dict[str, Any], seeds: Tensor, output: str) -> Box:
    """A box enclosing J(x')^T s for every x' whose tensors lie in the forward boxes ``env`` (tensor name ->
    Box, from ``verifier.box`` / ``verifier.engines.bcp``; batch B) and every seed s of ``seeds`` (shape (B, P, *shape
    of ``output``'s sample)): the gradient with respect to the model input of s . output, as a Box of batch
    B * P. Raises NoRuleError naming the first node without a gradient rule."""
    g = module.graph
    batch = seeds.shape[0] * seeds.shape[1]
    start = seeds.reshape(batch, *seeds.shape[2:]).to(torch.float64)
    grads: dict[str, Box] = {output: Box(start, torch.zeros_like(start))}
    order = list(g.nodes())
    last = next(i for i, n in enumerate(order) if output in n.outputs) if output != g.input_name else -1
    with torch.no_grad():
        for node in reversed(order[:last + 1]):
            outs = [grads.get(o) if o else None for o in node.outputs]
            if all(o is None for o in outs):
                continue
            args = module.node_args(node, env)
            if not any(is_box(a) for a in args):
                continue
            for t, a in zip(node.inputs, args):
                if is_box(a) and not _batch_leads(g, t, a, seeds.shape[0]):
                    raise NoRuleError(f"no gradient rule for {node.op.op_type} (node '{node.name}'): its input "
                                      f"'{t}' does not keep the batch axis in front")
            in_grads = node.op.grad_interval(args, outs)
            for t, gi in zip(node.inputs, in_grads):
                if gi is None or not t or not is_box(env.get(t)):
                    continue
                prev = grads.get(t)
                if prev is not None:
                    radius = (prev.radius + gi.radius) * (1 + REL64)
                    gi = Box(prev.center + gi.center, radius + REL64 * (prev.center.abs() + gi.center.abs()))
                grads[t] = gi
    if g.input_name not in grads:
        zero = torch.zeros((batch, *env[g.input_name].shape[1:]), dtype=torch.float64)
        return Box(zero, zero.clone())
    return grads[g.input_name]


def _batch_leads(g: Any, name: str, box: Box, batch: int) -> bool:
    """Whether the tensor's axis 0 is the batch axis: batch-1 shape (1, *rest) at import, (B, *rest) here."""
    shape = g.shapes.get(name)
    return shape is not None and len(shape) >= 1 and shape[0] == 1 and tuple(box.shape) == (batch, *shape[1:])
