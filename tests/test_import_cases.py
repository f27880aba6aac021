"""Import cases met in real exporters' files (PyTorch dynamo and legacy, Keras on JAX, scikit-learn):
variadic Max/Min/Sum, HardSwish, CastLike of constants, model-local functions, weights behind layout ops,
a 1-D Gemm input, half- and double-precision files."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from frontends import load_onnx
from frontends.parity import HALF_TOLERANCE, check_parity

from .onnx_graphs import IR_VERSION, case, check, make_model, node, params, rand, run_case, torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
SIGNED = (0.5, 6.0)

CASES = [
    case("Max-const", [node("Max", ["x", "c"])], [3, 4], {"c": rand(4)}, affine=SIGNED),
    case("Min-three", [node("Relu", ["x"], ["r"]), node("Min", ["x", "r", "c"])], [3, 4], {"c": rand(1, 4)},
         affine=SIGNED),
    case("Max-relu6-opset8", [node("Max", ["x", "zero"], ["m"]), node("Min", ["m", "six"])], [5],
         {"zero": np.float32(0), "six": np.float32(6)}, opset=8, affine=SIGNED),
    case("Sum-three", [node("Neg", ["x"], ["n"]), node("Sum", ["x", "n", "c"])], [2, 3], {"c": rand(3)},
         affine=SIGNED),
    case("HardSwish", [node("HardSwish", ["x"])], [2, 5], opset=14, affine=(0.5, 10.0)),
    case("CastLike-constant", [node("CastLike", ["c", "x"], ["cc"]), node("Add", ["x", "cc"])], [3],
         {"c": np.float64([1.0, 2.0, 3.0])}, opset=15),
    case("CastLike-then-Expand", [node("CastLike", ["c", "x"], ["cc"]), node("Expand", ["cc", "shape"], ["e"]),
                                  node("Mul", ["x", "e"])], [2, 3], {"c": np.float64([2.0]),
                                                                    "shape": np.int64([2, 3])}, opset=15),
]


@pytest.mark.parametrize("spec, batch", params(CASES))
def test_exporter_ops(spec, batch):
    run_case(spec, batch)


def test_castlike_of_the_input_is_unsupported():
    from verifier.errors import UnsupportedOpsError

    model = make_model([node("CastLike", ["x", "c"], ["y"])], [3], {"c": np.float32([0])}, opset=15)
    with pytest.raises(UnsupportedOpsError, match="CastLike"):
        load_onnx(model)


def test_model_local_functions_are_inlined():
    body = [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["b"])]
    block = helper.make_function("local", "Block", ["a", "w"], ["b"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Block", ["x", "W"], ["h"], domain="local"),
             helper.make_node("Block", ["h", "W"], ["y"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(rand(4, 4), "W")])
    model = helper.make_model(graph, functions=[block], ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    module = check(model)
    assert module.graph.op_counts() == {"MatMul": 2, "Relu": 2}


def test_weights_behind_layout_ops_stay_trainable():
    # Keras on JAX: Conv(x, Transpose(kernel), Reshape(bias))
    kernel, bias = rand(3, 3, 2, 4), rand(4, seed=1)  # HWIO
    nodes = [node("Transpose", ["kernel"], ["w"], perm=[3, 2, 0, 1]),
             node("Reshape", ["bias", "bshape"], ["b"]), node("Conv", ["x", "w", "b"])]
    model = make_model(nodes, [2, 5, 5], {"kernel": kernel, "bias": bias, "bshape": np.int64([4])})
    module = check(model)
    weights = module.onnx_weights()
    assert set(weights) == {"w", "b"} and all(isinstance(p, nn.Parameter) for p in weights.values())
    sources = module.graph.weight_sources
    assert sources["w"][0] == "kernel" and [n.op_type for n in sources["w"][1]] == ["Transpose"]
    assert sources["b"][0] == "bias" and [n.op_type for n in sources["b"][1]] == ["Reshape"]
    np.testing.assert_allclose(weights["w"].detach().numpy(), kernel.transpose(3, 2, 0, 1))


def test_gemm_on_a_squeezed_vector_reads_one_row():
    # x.squeeze() before nn.Linear, exported with a dynamic batch: at batch 1 the Gemm input is 1-D
    nodes = [node("GlobalAveragePool", ["x"], ["p"]), node("Squeeze", ["p"], ["s"]),
             node("Gemm", ["s", "W", "b"], transB=1)]
    model = make_model(nodes, [4, 3, 3], {"W": rand(2, 4), "b": rand(2)}, opset=11)
    module = check(model, batched=False)
    assert module.graph.output_shape == (2,)


def test_half_precision_file_gets_the_half_tolerance():
    w = numpy_helper.from_array(rand(8, 5).astype(np.float16), "W")
    graph = helper.make_graph([node("MatMul", ["x", "W"], ["m"]), node("Relu", ["m"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)
    report = check_parity(model, load_onnx(model))
    assert report["tolerance"] == HALF_TOLERANCE and report["ok"], report


def test_double_conv_falls_back_to_the_reference_evaluator():
    # onnxruntime's CPU build has no float64 Conv
    w = numpy_helper.from_array(rand(2, 1, 3, 3).astype(np.float64), "W")
    graph = helper.make_graph([node("Conv", ["x", "W"], ["c"]), node("Relu", ["c"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2, 3, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)
    report = check_parity(model, load_onnx(model))
    assert report["ok"] and report["reference"] in ("onnxruntime", "onnx.reference"), report
    with torch.no_grad():
        module = load_onnx(model).double()
        x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
        expected = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(np.array(onnx.numpy_helper.to_array(w)))))
        assert torch.allclose(module(x), expected, atol=1e-12)


def test_four_d_pooling_is_refused_clearly():
    from verifier.errors import ModelImportError

    model = make_model([node("MaxPool", ["x"], kernel_shape=[2, 2, 2, 2])], [1, 4, 4, 4, 4])
    with pytest.raises(ModelImportError, match="4-D pooling"):
        load_onnx(model)


@pytest.mark.parametrize("threshold", [20.0, 0.5])
def test_dynamo_thresholded_softplus_is_one_node(threshold):
    nodes = [node("Softplus", ["x"], ["sp"]), node("Greater", ["x", "t"], ["gt"]), node("Where", ["gt", "x", "sp"])]
    model = make_model(nodes, [6], {"t": np.float32(threshold)}, opset=18, affine=(0.5, 60.0))
    module = check(model)
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Softplus": 1}


def test_where_without_the_softplus_pattern_is_unsupported():
    from verifier.errors import UnsupportedOpsError

    nodes = [node("Relu", ["x"], ["r"]), node("Greater", ["x", "t"], ["gt"]), node("Where", ["gt", "x", "r"])]
    with pytest.raises(UnsupportedOpsError, match="Greater.*Where"):
        load_onnx(make_model(nodes, [3], {"t": np.float32(0.0)}, opset=18))


def test_topological_order_of_shuffled_graphs_and_cycles():
    """``topological_nodes`` (Kahn's algorithm, linear time): a valid order for any node order of the file, the
    file's order when it is already sorted, and one clear error for cycles and undefined tensors."""
    import random

    from frontends.onnx_graph import topological_nodes
    from verifier.errors import ModelImportError

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Relu", ["a"], ["b"], name="b"),
             helper.make_node("Relu", ["x"], ["c"], name="c"), helper.make_node("Add", ["b", "c"], ["d"], name="d"),
             helper.make_node("Add", ["d", "a"], ["y"], name="y")]
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    assert [n.name for n in topological_nodes(helper.make_graph(nodes, "g", [value], [out]))] == list("abcdy")
    rng = random.Random(0)
    for _ in range(20):
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        order = [n.name for n in topological_nodes(helper.make_graph(shuffled, "g", [value], [out]))]
        assert sorted(order) == list("abcdy")
        for before, after in (("a", "b"), ("b", "d"), ("c", "d"), ("d", "y"), ("a", "y")):
            assert order.index(before) < order.index(after)
    cycle = [helper.make_node("Relu", ["q"], ["p"]), helper.make_node("Relu", ["p"], ["q"])]
    with pytest.raises(ModelImportError, match="cycle or reads undefined tensors: p, q"):
        topological_nodes(helper.make_graph(cycle, "g", [value], [out]))
    with pytest.raises(ModelImportError, match="undefined tensors: nowhere"):
        topological_nodes(helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g", [value], [out]))
