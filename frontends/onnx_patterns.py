"""Exact rewrites of ONNX node patterns that exporters emit for one function, applied before the IR is built
(so that their helper ops, which have no IR op of their own, never reach the support check).

- Softplus with a threshold, as the PyTorch dynamo exporter writes ``nn.Softplus``:
  ``Where(Greater(x, t), x, Softplus(x))`` -> ``Softplus(x, t)`` (the IR's Softplus takes the threshold as an
  optional constant second input; ``torch.nn.functional.softplus(x, threshold=t)`` is exactly this function).
- Layer (and group) normalization as exporters decompose it (``fuse_layer_norm``), with m = ReduceMean(x) over
  any axes (Keras and Flax write GroupNorm as one over (H, W, C / G) of an (N, H, W, G, C / G) reshape),
  d = x - m and s = Sqrt(var + eps): PyTorch's TorchScript exporter ``d / s`` with var = ReduceMean(Pow(d, 2));
  jax2onnx (Flax) ``d / s`` with var = [Max(., 0) of] ReduceMean(x x) - m m; tf2onnx (Keras)
  ``x (r g) + ((-m) (r g) [+ b])`` with r = Reciprocal(s), var = ReduceMean(d d) -> ``LayerNormalization(x,
  scale, bias)`` with that epsilon (in lipverify's domain, with the attribute ``axes``: the file's opset may
  predate the op, and the axes need not be the last ones); a scale and shift after ``d / s`` stay
  their own Mul and Add. The same real function; the op's box rule allows for any order of the sums' roundings
  (``verifier.ops.normalization``).
- GELU's tanh approximation as tf2onnx writes Keras' ``gelu(approximate=True)``:
  ``(0.5 x) (1 + Tanh(c (x + k Pow(x, 3))))`` with c = sqrt(2 / pi), k = 0.044715 (each product and sum in either
  order) -> ``Gelu(x, approximate="tanh")`` (``fuse_tanh_gelu``; lipverify's domain, as above).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from verifier.ops.base import LIPVERIFY


def rewrite_patterns(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], graph_outputs: set[str]
                     ) -> list[onnx.NodeProto]:
    """Every rewrite of the module docstring, in order (``graph_outputs``: tensors read outside the nodes)."""
    nodes = fuse_layer_norm(fuse_thresholded_softplus(nodes, graph_outputs), const, graph_outputs)
    return fuse_tanh_gelu(nodes, const, graph_outputs)


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


class _Nodes:
    """Who writes each tensor, how often each is read, and constant values, in a node list."""

    def __init__(self, nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], graph_outputs: set[str]):
        self.producer = {o: n for n in nodes for o in n.output}
        self.uses = Counter(t for n in nodes for t in n.input)
        self.uses.update(graph_outputs)
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes:
            for t in set(n.input):
                self.readers.setdefault(t, []).append(n)
        self.outputs, self.const = graph_outputs, const

    def closed(self, group: list[onnx.NodeProto], last: onnx.NodeProto) -> bool:
        """Whether every tensor the ``group`` writes is read by the group and ``last`` only (so that replacing them
        all by one node writing ``last``'s outputs leaves no reader without its tensor)."""
        inside = {id(n) for n in group} | {id(last)}
        return all(o not in self.outputs and all(id(r) in inside for r in self.readers.get(o, []))
                   for n in group for o in n.output)

    def single(self, t: str, op_type: str, count: int = 1) -> onnx.NodeProto | None:
        """The node writing ``t`` when it is an ``op_type`` and ``t`` is read ``count`` times."""
        node = self.producer.get(t)
        return node if node is not None and node.op_type == op_type and self.uses[t] == count else None

    def value(self, t: str) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output."""
        if t in self.const:
            return np.asarray(self.const[t])
        node = self.producer.get(t)
        if node is None or node.op_type != "Constant" or not node.attribute:
            return None
        attr = node.attribute[0]
        return numpy_helper.to_array(attr.t) if attr.name == "value" else np.asarray(helper.get_attribute_value(attr))

    def scalar(self, t: str) -> float | None:
        v = self.value(t)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 and v.dtype.kind == "f" else None

    def mean(self, t: str, count: int) -> tuple[str, tuple[int, ...]] | None:
        """(x, axes) when ``t`` = ReduceMean(x) over given axes, dims kept, read ``count`` times."""
        node = self.single(t, "ReduceMean", count)
        if node is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = list(attrs.get("axes", []))
        if len(node.input) > 1 and node.input[1]:
            found = self.value(node.input[1])
            axes = [] if found is None else [int(a) for a in found.reshape(-1)]
        return (node.input[0], tuple(axes)) if axes and int(attrs.get("keepdims", 1)) == 1 else None

    def std(self, t: str) -> tuple[str, float, list[onnx.NodeProto]] | None:
        """(var, eps, nodes) when ``t`` = Sqrt(var + eps), eps > 0 a constant."""
        sqrt = self.single(t, "Sqrt")
        add = self.single(sqrt.input[0], "Add") if sqrt is not None else None
        if add is None:
            return None
        for var, other in (add.input, add.input[::-1]):
            eps = self.scalar(other)
            if eps is not None and eps > 0 and self.value(var) is None:
                return var, eps, [add, sqrt]
        return None

    def variance(self, var: str, x: str, axes: tuple[int, ...], m: str, d: str) -> list[onnx.NodeProto] | None:
        """The nodes computing ``var`` as the variance of x over ``axes`` (m its mean, d = x - m), in one of the
        exporters' forms (module docstring), else None."""
        found = self.mean(var, 1)
        if found is not None and found[1] == axes:
            square = self.producer.get(found[0])
            if self.uses[found[0]] == 1 and square is not None and (
                    (square.op_type == "Pow" and square.input[0] == d and self.scalar(square.input[1]) == 2.0)
                    or (square.op_type == "Mul" and list(square.input) == [d, d])):
                return [self.producer[var], square]
        nonneg = self.single(var, "Max")
        if nonneg is not None and len(nonneg.input) == 2 and self.scalar(nonneg.input[1]) == 0.0:
            var = nonneg.input[0]
        sub = self.single(var, "Sub")
        if sub is None:
            return None
        second, mm = self.mean(sub.input[0], 1), self.single(sub.input[1], "Mul")
        square = self.single(second[0], "Mul") if second is not None and second[1] == axes else None
        if square is None or list(square.input) != [x, x] or mm is None or list(mm.input) != [m, m]:
            return None
        return [n for n in (nonneg, sub, self.producer[sub.input[0]], square, mm) if n is not None]


def _centred(view: _Nodes, d: str, count: int) -> tuple[str, tuple[int, ...], str] | None:
    """(x, axes, m) when ``d`` = x - m with m = ReduceMean(x), d read ``count`` times."""
    sub = view.single(d, "Sub", count)
    if sub is None:
        return None
    for uses in (1, 2, 3):
        found = view.mean(sub.input[1], uses)
        if found is not None and found[0] == sub.input[0]:
            return found[0], found[1], sub.input[1]
    return None


def _normalized(view: _Nodes, last: onnx.NodeProto) -> tuple[list[str], tuple[int, ...], float, list] | None:
    """(LayerNormalization's inputs, axes, eps, the nodes it replaces besides ``last``) when ``last`` ends a layer
    normalization in one of the forms of the module docstring."""
    if last.op_type == "Div" and len(last.input) == 2:  # d / s (PyTorch, Flax)
        d, root = last.input
        for count in (2, 1):
            centred = _centred(view, d, count)
            if centred is not None:
                break
        std = view.std(root)
        if centred is None or std is None:
            return None
        x, axes, m = centred
        var_nodes = view.variance(std[0], x, axes, m, d)
        if var_nodes is None:
            return None
        return [x, None, None], axes, std[1], [view.producer[m], view.producer[d]] + var_nodes + std[2]
    if last.op_type != "Add" or len(last.input) != 2:  # x (r g) + ((-m) (r g) [+ b]) (Keras)
        return None
    for left, right in (last.input, last.input[::-1]):
        found = _keras_form(view, left, right)
        if found is not None:
            return found
    return None


def _keras_form(view: _Nodes, left: str, right: str) -> tuple[list[str], tuple[int, ...], float, list] | None:
    """tf2onnx's form: ``left`` = x (r g), ``right`` = (-m) (r g) [+ b], r = Reciprocal(Sqrt(var + eps))."""
    xs, shift = view.single(left, "Mul"), view.single(right, "Mul") or view.single(right, "Add")
    if xs is None or shift is None:
        return None
    bias, shifted = None, shift
    if shift.op_type == "Add":
        bias = next((t for t in shift.input if view.value(t) is not None), None)
        shifted = view.single(next((t for t in shift.input if t != bias), ""), "Mul")
    rg = next((t for t in xs.input if view.single(t, "Mul", 2) is not None), None)
    if rg is None or shifted is None or rg not in shifted.input:
        return None
    x = next(t for t in xs.input if t != rg)
    neg = view.single(next(t for t in shifted.input if t != rg), "Neg")
    scale_node = view.producer[rg]
    recip = next((view.producer[t] for t in scale_node.input if view.single(t, "Reciprocal")), None)
    scale = next((t for t in scale_node.input if view.value(t) is not None), None)
    std = view.std(recip.input[0]) if recip is not None else None
    if neg is None or scale is None or std is None:
        return None
    mean_sq = view.producer.get(std[0])
    square = view.producer.get(mean_sq.input[0]) if mean_sq is not None and mean_sq.op_type == "ReduceMean" else None
    d = square.input[0] if square is not None and square.op_type == "Mul" else None
    centred = _centred(view, d, 2) if d is not None else None
    if centred is None or centred[0] != x or neg.input[0] != centred[2]:
        return None
    var_nodes = view.variance(std[0], x, centred[1], centred[2], d)
    if var_nodes is None:
        return None
    group = [view.producer[centred[2]], view.producer[d], neg, recip, scale_node, xs, shifted] + var_nodes + std[2]
    return [x, scale, bias], centred[1], std[1], group + ([shift] if shift is not shifted else [])


def fuse_layer_norm(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], graph_outputs: set[str]
                    ) -> list[onnx.NodeProto]:
    """Every decomposed layer normalization of the module docstring -> one ``LayerNormalization`` node (a scale of
    ones added to ``const`` where the form has none)."""
    view = _Nodes(nodes, const, graph_outputs)
    removed, replaced = set(), {}
    for last in nodes:
        found = _normalized(view, last)
        if found is None or any(id(n) in removed for n in found[3]):
            continue
        (x, scale, bias), axes, eps, group = found
        if not view.closed(group, last):
            continue
        if scale is None:
            scale = f"{last.name or last.output[0]}_layer_norm_scale"
            const[scale] = np.ones(1, dtype=np.float32)
        inputs = [x, scale] + ([bias] if bias else [])
        replaced[id(last)] = helper.make_node("LayerNormalization", inputs, list(last.output), axes=list(axes),
                                              epsilon=eps, domain=LIPVERIFY,
                                              name=f"{last.name or last.output[0]}_layer_norm")
        removed.update(id(n) for n in group)
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]


def fuse_tanh_gelu(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], graph_outputs: set[str]
                   ) -> list[onnx.NodeProto]:
    """The decomposed tanh GELU of the module docstring -> one ``Gelu`` node; intermediate tensors read once (x
    three times: the half, the cube, the sum)."""
    view = _Nodes(nodes, const, graph_outputs)

    def times(t: str, op_type: str, factor: float) -> tuple[str, onnx.NodeProto] | None:
        """(y, node) when ``t`` = ``op_type``(y, c) in either order, c within float32 rounding of ``factor``."""
        node = view.single(t, op_type)
        if node is None or len(node.input) != 2:
            return None
        for y, c in (node.input, node.input[::-1]):
            value = view.scalar(c)
            if value is not None and abs(value - factor) <= 1e-6 * abs(factor) and view.value(y) is None:
                return y, node
        return None

    removed, replaced = set(), {}
    for last in (n for n in nodes if n.op_type == "Mul" and len(n.input) == 2):
        for left, right in (last.input, last.input[::-1]):
            half, one = times(left, "Mul", 0.5), times(right, "Add", 1.0)
            tanh = view.single(one[0], "Tanh") if one else None
            inner = times(tanh.input[0], "Mul", math.sqrt(2 / math.pi)) if tanh is not None else None
            total = view.single(inner[0], "Add") if inner else None
            if half is None or total is None or half[0] not in total.input:
                continue
            x = half[0]
            cubic = times(next(t for t in total.input if t != x) if list(total.input).count(x) == 1 else "", "Mul",
                          0.044715)
            power = view.single(cubic[0], "Pow") if cubic else None
            if power is None or power.input[0] != x or view.scalar(power.input[1]) != 3.0:
                continue
            replaced[id(last)] = helper.make_node("Gelu", [x], list(last.output), approximate="tanh",
                                                  domain=LIPVERIFY, name=f"{last.name or last.output[0]}_gelu")
            removed.update(id(n) for n in (half[1], one[1], tanh, inner[1], total, cubic[1], power))
            break
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]
