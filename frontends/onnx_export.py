"""Write trained parameters back into the original ONNX model: the same graph, node for node, new weights.

Every trainable weight of the IR (``GraphModule.onnx_weights``) and every BatchNormalization running
statistic is written into the tensor it came from: an initializer, or the value of a Constant node, or for an
ONNX-ML linear model the ``coefficients`` / ``intercepts`` attribute (``Graph.info['attribute_weights']``). Weights
the file derives from an initializer through layout ops (Transpose, Reshape, Squeeze, Unsqueeze, Flatten,
Identity, Cast; ``Graph.weight_sources``) are mapped back by running those same ops on an array of indices:
the derived tensor's entry k came from the initializer entry index[k]. Nothing else of the file changes:
nodes, names, opsets, metadata and the other tensors stay as they were.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import onnx
from onnx import numpy_helper

from verifier.errors import LipverifyError
from verifier.ir import GraphModule

from .onnx_io import read_model


def _tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor of the main graph by name: initializers and Constant nodes' 'value'."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = attr.t
    return out


def _index_map(model: onnx.ModelProto, root: onnx.TensorProto, chain: list[onnx.NodeProto]) -> np.ndarray:
    """For a tensor derived from ``root`` by the layout ops ``chain``: the root's flat index of each entry."""
    from onnx.reference import ReferenceEvaluator

    dims = tuple(root.dims)
    size = int(np.prod(dims)) if dims else 1
    dtype = onnx.helper.tensor_dtype_to_np_dtype(root.data_type)
    if size >= 2 ** 24 or np.dtype(dtype).itemsize < 4 or dtype.kind != "f":
        raise LipverifyError(f"cannot map weight '{root.name}' back through its layout ops (too large or not a "
                             "float32/float64 tensor)")
    index = numpy_helper.from_array(np.arange(size, dtype=dtype).reshape(dims), root.name)
    known = _tensors(model)
    needed = {t for n in chain for t in n.input[1:] if t}
    inits = [index] + [known[t] for t in needed if t in known and t != root.name]
    graph = onnx.helper.make_graph(list(chain), "index_map", [], [onnx.helper.make_tensor_value_info(
        chain[-1].output[0], onnx.TensorProto.UNDEFINED, None)], initializer=inits)
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    (value,) = ReferenceEvaluator(sub).run(None, {})
    return np.asarray(value).astype(np.int64)


def export_weights(module: GraphModule, source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``source`` (the model ``module`` was imported from) with ``module``'s current weights and
    BatchNormalization statistics. Raises LipverifyError when a weight cannot be located in the file."""
    model = copy.deepcopy(read_model(source))
    tensors = _tensors(model)
    g = module.graph
    values = {name: module.tensor(name) for name in g.weights}
    for node in g.nodes():  # running statistics are constants of the IR, updated in training mode
        if node.op_type == "BatchNormalization":
            for t in node.inputs[3:5]:
                if t and t in g.constants:
                    values[t] = module.tensor(t)
    roots: dict[str, np.ndarray] = {}
    attributes = g.info.get("attribute_weights", {})
    for name, value in values.items():
        array = value.detach().cpu().double().numpy()
        if name in attributes:
            _write_attribute(model, *attributes[name], array)
        elif name in g.weight_sources:
            root_name, chain = g.weight_sources[name]
            if root_name not in tensors:
                raise LipverifyError(f"weight '{name}': its source tensor '{root_name}' is not in the file")
            root = tensors[root_name]
            if root_name not in roots:
                roots[root_name] = numpy_helper.to_array(root).astype(np.float64).copy()
            index = _index_map(model, root, chain)
            roots[root_name].reshape(-1)[index.reshape(-1)] = array.reshape(-1)
        elif name in tensors:
            roots[name] = array
        else:
            raise LipverifyError(f"weight '{name}' is not an initializer or Constant of the file")
    for name, array in roots.items():
        old = tensors[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        new = numpy_helper.from_array(array.astype(dtype).reshape(tuple(old.dims)), name)
        old.Clear()
        old.CopyFrom(new)
    return model


def _write_attribute(model: onnx.ModelProto, output: str, name: str, array: np.ndarray) -> None:
    """The float list attribute ``name`` of the node whose first output is ``output`` (an ONNX-ML linear model's
    coefficients or intercepts, ``frontends.onnx_ml``) set to ``array``'s entries in order, the same count."""
    node = next((n for n in model.graph.node if n.output and n.output[0] == output), None)
    attr = None if node is None else next((a for a in node.attribute if a.name == name), None)
    if attr is None or len(attr.floats) != array.size:
        raise LipverifyError(f"weight for attribute '{name}' of the node writing '{output}' has no place in the file")
    del attr.floats[:]
    attr.floats.extend(array.reshape(-1).astype(np.float32).tolist())


def serialize(model: onnx.ModelProto) -> bytes:
    """``model``'s bytes after ``onnx.checker`` accepts it (full check with shape inference). Where the file's own
    ``value_info`` (optional shape hints of intermediate tensors) contradicts what shape inference finds, as an
    exporter's stale hints can (NHWC where the graph computes NCHW), they are dropped and inferred again: the
    graph, its inputs and outputs stay as they are."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if not len(model.graph.value_info):
            raise LipverifyError(f"the exported model does not pass onnx.checker: {first}")
        hints = list(model.graph.value_info)
        del model.graph.value_info[:]
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception:
            model.graph.value_info.extend(hints)
            raise LipverifyError(f"the exported model does not pass onnx.checker: {first}")
    return model.SerializeToString()
