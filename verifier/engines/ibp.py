"""Interval bound propagation (IBP) over the IR: every op's box rule (``Op.interval``, written in the kit of
``verifier/box.py``) applied in topological order (BCP eq. 7-8, the "IA" half of BCP; IBP of Gowal et al. for
l_inf balls). Soundness, floating point included, is ``verifier/box.py``'s: each rule's box contains the real
image and the float forward, so the propagated box of any tensor contains every value it takes for inputs in
the input box.
"""
from __future__ import annotations

from verifier.box import Box, exact_float32
from verifier.errors import InputShapeError
from verifier.ir import GraphModule
from verifier.problem import InputSet


def _walk(module: GraphModule, box: Box, target: str) -> dict[str, Box]:
    return module.walk({module.graph.input_name: box}, lambda node, args: node.op.interval(*args), upto=target)


def propagate(module: GraphModule, box: Box, upto: str | None = None) -> dict[str, Box]:
    """Interval bound propagation: the box of every tensor of ``module``'s graph, in topological order, up to
    the tensor ``upto`` (default: the logits, ``Graph.logits_tensor``), for the input ``box`` of
    shape (B, *sample_shape). Each node's ``op.interval`` gets a ``Box`` for each input-dependent input, the
    module's tensors for constant inputs (as ``forward`` gets them) and None for static or absent inputs.

    Graphs that do not run batched (they mix the batch axis) are propagated one sample at a time, as
    ``GraphModule.run_per_sample`` runs them; their per-tensor boxes are then stacked along a new first axis
    (concatenated where the file's tensor has a leading axis of size 1 and the file a batch axis).
    """
    g = module.graph
    target = g.logits_tensor() if upto is None else upto
    known = g.dependent_tensors()
    if target not in known:
        raise ValueError(f"no tensor '{target}' in the graph")
    expected = tuple(g.sample_shape)
    if box.dim() != len(expected) + 1 or tuple(box.shape[1:]) != expected:
        shape = ", ".join(["B", *map(str, expected)])
        raise InputShapeError(f"expected an input box of shape ({shape}), got {tuple(box.shape)}")
    box = box.to(device=module.device, dtype=module.float_dtype)
    with exact_float32():
        if g.batched:
            return _walk(module, box, target)
        per_sample = [_walk(module, box[i:i + 1] if g.leading_batch else box[i], target) for i in range(len(box))]
    out: dict[str, Box] = {}
    for name in per_sample[0]:
        boxes = [p[name] for p in per_sample]
        if name == g.input_name:
            out[name] = box
        elif name == g.output_name:
            out[name] = Box.stack([b[0] for b in boxes] if g.output_leading_batch else boxes)
        elif g.leading_batch and boxes[0].dim() > 0 and boxes[0].shape[0] == 1:
            out[name] = Box.cat(boxes)
        else:
            out[name] = Box.stack(boxes)
    return out


def logit_box(module: GraphModule, box: Box) -> Box:
    """The box of the logits (the input of a trailing Softmax/LogSoftmax, else the graph output)."""
    return propagate(module, box)[module.graph.logits_tensor()]


def ibp(module: GraphModule, inputs: InputSet) -> Box:
    """IBP over an input set (``verifier.problem``: an l_p ball within the domain, by its enclosing l_inf box,
    or a plain box): the box of the logits."""
    return logit_box(module, inputs.box(module.float_dtype))
