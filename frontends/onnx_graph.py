"""An ONNX graph's structure and constants, read off its protos: the nodes in topological order (linear time),
declared shapes, and the values of Constant nodes and sparse initializers."""
from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import numpy_helper

from verifier.errors import ModelImportError


def topological_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes in an order where every tensor is produced before it is read (Kahn's algorithm: linear
    in the number of node inputs; nodes that are ready together keep the file's order)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    available |= {i.name for i in graph.sparse_initializer}
    nodes = list(graph.node)
    waiting = [0] * len(nodes)  # per node: how many of its inputs are not available yet
    readers: dict[str, list[int]] = {}
    ready: list[int] = []
    for k, node in enumerate(nodes):
        missing = {t for t in node.input if t not in available}
        waiting[k] = len(missing)
        for t in missing:
            readers.setdefault(t, []).append(k)
        if not missing:
            ready.append(k)
    ordered: list[onnx.NodeProto] = []
    heapq.heapify(ready)
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for t in nodes[k].output:
            if t in available:
                continue
            available.add(t)
            for r in readers.pop(t, ()):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(ready, r)
    if len(ordered) < len(nodes):
        missing = sorted(readers)
        raise ModelImportError(f"graph has a cycle or reads undefined tensors: {', '.join(missing[:5])}")
    return ordered


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")


def value_shape(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    return [_dim(d) for d in t.shape.dim] if t.HasField("shape") else None


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto:
    """The value of a Constant node, whichever of its attributes holds it."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
        if a.name == "sparse_value":
            return numpy_helper.from_array(numpy_helper.to_array(a.sparse_tensor))
    raise ModelImportError(f"Constant node '{node.name}' has no value")


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse initializer as a dense array (indices flat or per axis)."""
    values, indices = numpy_helper.to_array(sp.values), numpy_helper.to_array(sp.indices)
    dense = np.zeros(tuple(sp.dims), dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense
