"""Per-op parity with onnxruntime: data movement (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat,
Split, Slice, Gather, Pad), reductions and Softmax/LogSoftmax; constant folding at import (shape chains,
Constant, Identity, Dropout, initializers listed as inputs).

Every case runs with a symbolic batch axis ('N') and with the batch fixed to 1 in the file (but for a few that
only make sense with batch 1), at batch sizes 1 and 7. ``batched=False`` marks graphs that mix the batch axis
into others (the IR then runs them per sample). (Reshape allowzero=1 is only tested without 0 entries: a 0 there
needs an empty input.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from .cases.ops import BATCHES, SIGNED
from .cases.shape import (CONCAT, FLATTEN, PAD, RESHAPE, SHAPE4, SLICE, TRANSPOSE, _axes, gather_cases, reduce_cases,
                          softmax_cases, split_cases, squeeze_cases)
from .onnx_graphs import check, make_model, node, params, rand, run_case, tensor, torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.mark.parametrize("spec,batch", params(FLATTEN + RESHAPE + TRANSPOSE + squeeze_cases()))
def test_reshaping_ops(spec, batch):
    run_case(spec, batch)


@pytest.mark.parametrize("spec,batch", params(CONCAT + split_cases() + SLICE + gather_cases() + PAD))
def test_data_movement_ops(spec, batch):
    run_case(spec, batch)


def test_concat_with_constant():
    """A constant can be concatenated only where the file fixes batch 1: the IR runs it per sample."""
    nodes = [node("Concat", ["x", "c"], axis=1)]
    module = check(make_model(nodes, [3, 4], {"c": rand(1, 2, 4)}, batch=1), batched=False)
    assert module(torch.rand(7, 3, 4)).shape == (7, 5, 4)
    nodes = [node("Unsqueeze", ["x", "zero"], ["u"]), node("Concat", ["c", "u"], axis=1)]  # no batch axis
    check(make_model(nodes, [4], {"c": rand(1, 2, 4), "zero": np.int64([1])}, batch=1), batched=False)


@pytest.mark.parametrize("spec,batch", params(reduce_cases() + softmax_cases()))
def test_reductions(spec, batch):
    run_case(spec, batch)


# --- constant folding at import -------------------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("opset", [11, 13])
def test_view_flatten_chain_runs_batched(opset, batch):
    """``x.view(x.size(0), -1)`` as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    inits = {"zero": np.int64(0), "minus1": np.int64([-1]), "W": rand(3, 24), "b": rand(3, seed=1)}
    extra, attrs = _axes(opset, 13, [0], inits, "ax")
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
             node("Unsqueeze", ["n", *extra], ["nu"], **attrs), node("Concat", ["nu", "minus1"], ["shape"], axis=0),
             node("Reshape", ["x", "shape"], ["f"]), node("Gemm", ["f", "W", "b"], transB=1)]
    module = check(make_model(nodes, SHAPE4, inits, opset, batch))
    assert module.graph.op_counts() == {"Reshape": 1, "Gemm": 1}
    assert module(torch.rand(7, *SHAPE4)).shape == (7, 3)


def test_constant_nodes_are_folded():
    nodes = [node("Constant", [], ["c"], value=tensor("cv", rand(3, 1, 1))),
             node("Constant", [], ["k"], value_float=2.5), node("Constant", [], ["s"], value_ints=[0, -1]),
             node("Constant", [], ["one"], value_int=1),
             node("Cast", ["one"], ["onef"], to=1), node("Add", ["c", "onef"], ["c1"]),  # folded
             node("Add", ["x", "c1"], ["a"]), node("Mul", ["a", "k"], ["m"]), node("Reshape", ["m", "s"])]
    module = check(make_model(nodes, [3, 2, 2], affine=SIGNED))
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 2, "Add": 1, "Reshape": 1}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("opset", [7, 13])
def test_identity_and_dropout_are_removed(opset, batch):
    dropout = node("Dropout", ["c"], ["d", "mask"], ratio=0.3) if opset < 12 else \
        node("Dropout", ["c", "ratio"], ["d", "mask"])  # the mask output is unused
    nodes = [node("Identity", ["x"], ["i"]), node("Conv", ["i", "W"], ["c"]), dropout, node("Identity", ["d"], ["j"]),
             node("Relu", ["j"])]
    inits = {"W": rand(2, 3, 2, 2)} | ({"ratio": np.float32(0.3)} if opset >= 12 else {})
    module = check(make_model(nodes, [3, 4, 4], inits, opset, batch, affine=SIGNED))
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Conv": 1, "Relu": 1}


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity_or_dropout_as_last_node(op):
    nodes = [node("Relu", ["x"], ["r"]), node(op, ["r"])]
    module = check(make_model(nodes, [3], affine=SIGNED))
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Relu": 1}


@pytest.mark.parametrize("batch", BATCHES)
def test_initializers_listed_as_inputs_are_constants(batch):
    nodes = [node("Gemm", ["x", "W", "b"], ["g"], transB=1), node("Sub", ["g", "m"])]
    model = make_model(nodes, [4], {"W": rand(3, 4), "b": rand(3, seed=1), "m": rand(3, seed=2)}, batch=batch,
                       inits_as_inputs=True)
    assert len(model.graph.input) == 4
    module = check(model)
    assert module.graph.input_name == "x" and module.graph.op_counts() == {"Gemm": 1, "Sub": 1}
    assert isinstance(module.tensor("W"), nn.Parameter) and not isinstance(module.tensor("m"), nn.Parameter)


def test_constant_subgraph_is_folded():
    nodes = [node("Mul", ["W", "two"], ["W2"]), node("Transpose", ["W2"], ["Wt"]), node("Relu", ["Wt"], ["Wr"]),
             node("MatMul", ["x", "Wr"], ["m"]), node("Add", ["m", "b"])]
    module = check(make_model(nodes, [4], {"W": rand(3, 4), "two": np.float32(2.0), "b": rand(3)}))
    assert module.graph.op_counts() == {"MatMul": 1, "Add": 1}
    expected = np.maximum(rand(3, 4).T * 2, 0)
    np.testing.assert_allclose(module.tensor("Wr").detach().numpy(), expected, rtol=1e-6)
