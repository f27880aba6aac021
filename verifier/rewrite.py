"""Exact rewrites of op patterns into single IR nodes, so that each gets one rule (``fuse_patterns`` applies
them all). Every rewritten function is the same real function; the float forward differs by a few roundings,
which the new node's box rule allows for (its ``ULPS``).

- GELU in Erf form, as PyTorch exports it before opset 20: ``0.5 x (1 + erf(x / sqrt(2)))`` in any of the
  usual association orders -> one ``Gelu`` node.
- Hard sigmoid as ReLU6: ``Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) -> ``HardSigmoid(x)`` (alpha 1/6, beta 1/2).
- Gated activations x * gate(x), as exporters write them (the product of two input-dependent tensors has no
  rule of its own): ``x * Sigmoid(x)`` and ``x * Sigmoid(a x)`` (SiLU, Swish; a > 0) -> ``Swish``,
  ``x * Tanh(Softplus(x))`` -> ``Mish``, ``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2; also after the rewrite
  above) and ``x * Clip(x + 3, 0, 6) / 6`` -> ``HardSwish``.
Only single-use intermediate tensors are folded (a tensor also read elsewhere keeps its nodes).
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
    """``value`` is ``target`` up to its float32 rounding (a rewrite must compute the same real function: a
    constant off by more, e.g. a half-precision sqrt 2, keeps its nodes)."""
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def _other(node: Node, name: str) -> str:
    """The other input of a binary node."""
    a, b = node.inputs[:2]
    return b if a == name else a


def fuse_patterns(nodes: list[Node], const: dict[str, np.ndarray], opset: int, uses: Counter) -> list[Node]:
    """Every rewrite of the module docstring, in order (topological order kept)."""
    nodes = fuse_gelu(nodes, const, opset, uses)
    nodes = _fuse(nodes, const, uses, _hard_sigmoid)
    return _fuse(nodes, const, uses, _gated)


class _View:
    """Who writes each tensor, and which tensors are read exactly once, in a node list."""

    def __init__(self, nodes: list[Node], const: dict[str, np.ndarray], uses: Counter):
        self.producer = {o: n for n in nodes for o in n.outputs}
        self.const, self.uses = const, uses

    def single(self, t: str, *op_types: str) -> Node | None:
        """The node writing ``t`` when it is one of ``op_types`` and ``t`` has no other reader."""
        node = self.producer.get(t)
        return node if node is not None and node.op_type in op_types and self.uses[t] == 1 else None

    def scaled(self, node: Node | None, t: str) -> float | None:
        """For a Mul or Div node with input ``t`` and a scalar constant: the factor it applies to ``t``."""
        if node is None or node.op_type not in ("Mul", "Div") or t not in node.inputs[:2]:
            return None
        c = _scalar(self.const, _other(node, t))
        if c is None or (node.op_type == "Div" and (node.inputs[0] != t or c == 0)):
            return None
        return c if node.op_type == "Mul" else 1.0 / c

    def relu6_of_shift(self, t: str) -> tuple[str, list[Node]] | None:
        """(x, nodes) when ``t`` = Clip(x + 3, 0, 6), its intermediate tensor read once."""
        clip = self.single(t, "Clip")
        if clip is None or clip.op.min != 0.0 or clip.op.max != 6.0:
            return None
        add = self.single(clip.inputs[0], "Add")
        if add is None:
            return None
        x = next((i for i in add.inputs[:2] if _close(_scalar(self.const, _other(add, i)), 3.0)), None)
        return (x, [add, clip]) if x is not None and x not in self.const else None


Match = tuple[str, str, dict, list[Node]]  # (x, op_type, attributes, nodes folded besides the last)


def _fuse(nodes: list[Node], const: dict[str, np.ndarray], uses: Counter, match) -> list[Node]:
    """Replace every node for which ``match(view, node)`` gives (x, op, attributes, folded) by one ``op`` node on
    x writing that node's outputs, and drop the folded nodes (each is matched once)."""
    view = _View(nodes, const, uses)
    removed: set[int] = set()
    replaced: dict[int, Node] = {}
    for last in nodes:
        found = None if id(last) in removed else match(view, last)
        if found is None or any(id(n) in removed or id(n) in replaced for n in found[3]):
            continue
        x, op_type, attrs, folded = found
        since = {"Swish": 24, "Mish": 18, "HardSwish": 14, "HardSigmoid": 6}[op_type]
        op = lookup(op_type, since)(attrs, {}, since, f"{last.name}_{op_type.lower()}")
        replaced[id(last)] = Node(op.name, op, [x], list(last.outputs))
        removed.update(id(n) for n in folded)
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]


def _hard_sigmoid(view: _View, last: Node) -> Match | None:
    """Clip(x + 3, 0, 6) / 6 -> HardSigmoid(x)."""
    if last.op_type not in ("Mul", "Div"):
        return None
    for t in last.inputs[:2]:
        if t in view.const or not _close(view.scaled(last, t), 1.0 / 6.0):
            continue
        found = view.relu6_of_shift(t)
        if found is not None:
            return found[0], "HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}, found[1]
    return None


def _gated(view: _View, last: Node) -> Match | None:
    """x * gate(x) -> one node (module docstring); also (x * Clip(x + 3, 0, 6)) / 6."""
    if last.op_type in ("Mul", "Div") and len(last.inputs) >= 2:
        for t in last.inputs[:2]:
            mul = view.single(t, "Mul")
            if mul is None or not _close(view.scaled(last, t), 1.0 / 6.0):
                continue
            for x in mul.inputs[:2]:
                found = view.relu6_of_shift(_other(mul, x))
                if found is not None and found[0] == x:
                    return x, "HardSwish", {}, found[1] + [mul]
    if last.op_type != "Mul" or len(last.inputs) < 2 or any(t in view.const for t in last.inputs[:2]):
        return None
    for x in last.inputs[:2]:
        gate = view.single(_other(last, x), "Sigmoid", "Tanh", "HardSigmoid")
        if gate is None:
            continue
        arg = gate.inputs[0]
        if gate.op_type == "Sigmoid":
            if arg == x:
                return x, "Swish", {"alpha": 1.0}, [gate]
            scale = view.single(arg, "Mul")
            a = view.scaled(scale, x)
            if a is not None and a > 0:
                return x, "Swish", {"alpha": a}, [scale, gate]
        elif gate.op_type == "Tanh":
            softplus = view.single(arg, "Softplus")
            if softplus is not None and softplus.inputs[0] == x and softplus.op.threshold is None:
                return x, "Mish", {}, [softplus, gate]
        elif arg == x and _close(gate.op.alpha, 1.0 / 6.0) and _close(gate.op.beta, 0.5):
            return x, "HardSwish", {}, [gate]
    return None


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
