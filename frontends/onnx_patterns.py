"""Exact rewrites of ONNX node patterns that exporters emit for one function, applied before the IR is built
(so that their helper ops, which have no IR op of their own, never reach the support check).

- Softplus with a threshold, as the PyTorch dynamo exporter writes ``nn.Softplus``:
  ``Where(Greater(x, t), x, Softplus(x))`` -> ``Softplus(x, t)`` (the IR's Softplus takes the threshold as an
  optional constant second input; ``torch.nn.functional.softplus(x, threshold=t)`` is exactly this function).
"""
from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper


def fuse_thresholded_softplus(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    producer = {o: n for n in nodes for o in n.output}
    uses = Counter(t for n in nodes for t in n.input)
    uses.update(graph_outputs)
    removed, replaced = set(), {}
    for where in (n for n in nodes if n.op_type == "Where" and len(n.input) == 3):
        cond, x, other = where.input
        greater, softplus = producer.get(cond), producer.get(other)
        if (greater is None or softplus is None or greater.op_type != "Greater" or softplus.op_type != "Softplus"
                or greater.input[0] != x or softplus.input[0] != x or uses[cond] != 1 or uses[other] != 1):
            continue
        fused = helper.make_node("Softplus", [x, greater.input[1]], list(where.output),
                                 name=where.name or softplus.name)
        replaced[id(where)] = fused
        removed.update((id(greater), id(softplus)))
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]
