"""Exact rewrites of op patterns into single IR nodes, so that each gets one rule.

- GELU in Erf form, as PyTorch exports it before opset 20: ``0.5 x (1 + erf(x / sqrt(2)))`` in any of the
  usual association orders -> one ``Gelu`` node.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from verifier.ir import Node
from verifier.ops import lookup


def _scalar(const: dict[str, np.ndarray], name: str) -> float | None:
    value = const.get(name)
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind != "f":
        return None
    return float(np.asarray(value).reshape(-1)[0])


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-4 * abs(target)


def _other(node: Node, name: str) -> str:
    """The other input of a binary node."""
    a, b = node.inputs[:2]
    return b if a == name else a


def fuse_gelu(nodes: list[Node], const: dict[str, np.ndarray], opset: int, uses: Counter) -> list[Node]:
    producer = {o: n for n in nodes for o in n.outputs}
    readers: dict[str, list[Node]] = {}
    for n in nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)

    def only_reader(t: str, op_type: str) -> Node | None:
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and uses[t] == 1 and r[0].op_type == op_type else None

    def times_half(node: Node | None, t: str) -> bool:
        return node is not None and _close(_scalar(const, _other(node, t)), 0.5)

    removed: set[int] = set()
    replaced: dict[int, Node] = {}
    for erf in (n for n in nodes if n.op_type == "Erf"):
        scale = producer.get(erf.inputs[0])
        if scale is None or uses[erf.inputs[0]] != 1 or scale.op_type not in ("Div", "Mul"):
            continue
        x = next((t for t in scale.inputs if t not in const), None)
        c = _scalar(const, _other(scale, x)) if x else None
        if not (_close(c, math.sqrt(2)) if scale.op_type == "Div" else _close(c, 1 / math.sqrt(2))):
            continue
        add = only_reader(erf.outputs[0], "Add")
        if add is None or not _close(_scalar(const, _other(add, erf.outputs[0])), 1.0):
            continue
        mul = only_reader(add.outputs[0], "Mul")
        if mul is None:
            continue
        partner = _other(mul, add.outputs[0])
        group = [scale, erf, add, mul]
        if partner == x:  # (x * (1 + erf)) * 0.5
            last = only_reader(mul.outputs[0], "Mul")
            if not times_half(last, mul.outputs[0]):
                continue
            group.append(last)
        elif times_half(mul, add.outputs[0]):  # x * ((1 + erf) * 0.5)
            last = only_reader(mul.outputs[0], "Mul")
            if last is None or _other(last, mul.outputs[0]) != x:
                continue
            group.append(last)
        else:  # (x * 0.5) * (1 + erf)
            half = producer.get(partner)
            if half is None or half.op_type != "Mul" or uses[partner] != 1 or x not in half.inputs \
                    or not times_half(half, x):
                continue
            group.append(half)
            last = mul
        gelu = lookup("Gelu", 20)({"approximate": "none"}, {}, opset, f"{last.name}_gelu")
        replaced[id(last)] = Node(gelu.name, gelu, [x], list(last.outputs))
        removed.update(id(n) for n in group if n is not last)
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]
