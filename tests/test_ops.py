"""Per-op parity with onnxruntime: affine ops (Gemm, MatMul, Conv, ConvTranspose, BatchNormalization),
activations (incl. the Erf-form GELU rewrite), pooling, elementwise arithmetic and Cast; GraphModule basics.

Every case runs with a symbolic batch axis ('N') and with the batch fixed to 1 in the file, at batch sizes 1
and 7 (``onnx_graphs.check``, relative tolerance 1e-4).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from frontends import load_onnx
from frontends.parity import check_parity

from .cases.ops import (ACTIVATIONS, BATCHES, BN, CONV, CONVT, GATED, GELU20, GELU_CONSTS, MATMUL, SIGNED, bn_case,
                        elementwise_cases, gelu_nodes, gemm_cases, pool_cases, same_pads, small_net)
from .onnx_graphs import check, check_reference, make_model, node, params, rand, run_case, torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.mark.parametrize("spec,batch", params(gemm_cases() + MATMUL + CONV + CONVT + BN))
def test_affine_ops(spec, batch):
    run_case(spec, batch)


@pytest.mark.parametrize("spec,batch", params(ACTIVATIONS))
def test_activations(spec, batch):
    run_case(spec, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("swap", [False, True], ids=["x-first", "const-first"])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
@pytest.mark.parametrize("order", [0, 1, 2], ids=["x*(1+erf)*0.5", "x*((1+erf)*0.5)", "(x*0.5)*(1+erf)"])
def test_erf_gelu_is_fused(order, scale_op, swap, batch):
    model = make_model(gelu_nodes(order, scale_op, swap), [3, 4], GELU_CONSTS, batch=batch, affine=SIGNED)
    module = check(model)
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Gelu": 1}  # the Sub and Mul of the affine prefix


@pytest.mark.parametrize("order", [0, 1, 2])
def test_erf_gelu_not_fused_when_another_tensor_is_multiplied(order):
    """z * 0.5 (1 + erf(x / sqrt 2)) with z != x is no GELU."""
    nodes = [node("Relu", ["x"], ["z"]), *gelu_nodes(order, "Div", False)]
    for n in nodes[1:]:
        if n.op_type == "Mul" and "x" in n.input:
            n.input[list(n.input).index("x")] = "z"
    module = check(make_model(nodes, [5], GELU_CONSTS, affine=SIGNED))
    assert "Gelu" not in module.graph.op_counts() and module.graph.op_counts()["Erf"] == 1


TANH_GELU_CONSTS = {"half": np.float32(0.5), "three": np.float32(3.0), "k": np.float32(0.044715),
                    "c": np.float32(math.sqrt(2 / math.pi)), "one": np.float32(1.0)}


def tanh_gelu_nodes(swap: bool) -> list:
    """(0.5 x) (1 + tanh(c (x + k x^3))) as tf2onnx writes Keras' gelu(approximate=True); ``swap`` flips every
    product's and sum's operands."""
    two = (lambda a, b: [b, a]) if swap else (lambda a, b: [a, b])
    return [node("Mul", two("half", "x"), ["h"]), node("Pow", ["x", "three"], ["p"]),
            node("Mul", two("k", "p"), ["kp"]), node("Add", two("x", "kp"), ["s"]), node("Mul", two("c", "s"), ["cs"]),
            node("Tanh", ["cs"], ["t"]), node("Add", two("one", "t"), ["o"]), node("Mul", two("h", "o"))]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("swap", [False, True])
def test_tanh_gelu_is_fused(swap, batch):
    module = check(make_model(tanh_gelu_nodes(swap), [5], TANH_GELU_CONSTS, opset=15, batch=batch, affine=SIGNED))
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Gelu": 1}


def test_tanh_gelu_not_fused_when_the_cube_differs():
    """x + k x^2 is no GELU: its Pow stays (and is refused)."""
    from verifier.errors import UnsupportedOpsError

    consts = dict(TANH_GELU_CONSTS, three=np.float32(2.0))
    with pytest.raises(UnsupportedOpsError, match="Pow"):
        load_onnx(make_model(tanh_gelu_nodes(False), [5], consts, opset=15, affine=SIGNED))


def test_erf_gelu_not_fused_when_constants_differ():
    consts = dict(GELU_CONSTS, half=np.float32(0.6))
    module = check(make_model(gelu_nodes(0, "Div", False), [5], consts, affine=SIGNED))
    assert "Gelu" not in module.graph.op_counts() and module.graph.op_counts()["Erf"] == 1


def test_erf_gelu_not_fused_when_intermediate_is_read():
    nodes = gelu_nodes(0, "Div", False)
    nodes[-1].output[0] = "g"
    nodes.append(node("Add", ["g", "e"]))  # the erf value is used elsewhere
    module = check(make_model(nodes, [5], GELU_CONSTS, affine=SIGNED))
    assert "Gelu" not in module.graph.op_counts()


@pytest.mark.parametrize("spec", GATED, ids=[c["id"] for c in GATED])
def test_gated_patterns_are_fused(spec):
    """Each exporter form of SiLU / Swish / Mish / HardSwish (and ReLU6-form HardSigmoid) becomes one node, with
    onnxruntime parity (``check``)."""
    module = check(make_model(spec["nodes"], spec["sample_shape"], spec["inits"], affine=spec["affine"]))
    fused = spec["id"].split("-")[0].replace("SiLU", "Swish")
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, fused: 1}
    if fused == "Swish":
        assert next(n.op for n in module.graph.nodes() if n.op_type == "Swish").alpha == \
            pytest.approx(1.7 if spec["id"] == "Swish-pattern" else 1.0)


@pytest.mark.parametrize("form", ["SiLU-pattern", "Mish-pattern", "HardSwish-pattern-relu6-div"])
def test_gated_patterns_not_fused_when_the_gate_is_read_elsewhere_or_gates_another_tensor(form):
    spec = next(c for c in GATED if c["id"] == form)
    *body, last = spec["nodes"]  # the gate's output is 'g' in these forms
    read = [*body, node(last.op_type, list(last.input), ["m"]), node("Add", ["g", "x"], ["h"]), node("Add", ["m", "h"])]
    other = [node("Relu", ["x"], ["z"]), *body, node("Mul", [t if t != "x" else "z" for t in last.input])]
    for nodes in (read, other):
        module = check(make_model(nodes, spec["sample_shape"], spec["inits"], affine=spec["affine"]))
        assert not {"Swish", "Mish", "HardSwish"} & set(module.graph.op_counts())


def test_patterns_need_their_constants_to_float32_precision():
    """A constant off by 1e-4 (a half-precision sqrt 2, a divisor 6.0006) is another function: no rewrite."""
    consts = dict(GELU_CONSTS, sqrt2=np.float32(np.float16(math.sqrt(2))))
    module = check(make_model(gelu_nodes(0, "Div", False), [5], consts, affine=SIGNED))
    assert "Gelu" not in module.graph.op_counts()
    spec = next(c for c in GATED if c["id"] == "HardSwish-pattern-relu6-div")
    nodes = [node("Div", ["r", "divisor"], ["g"]) if n.op_type == "Div" else n for n in spec["nodes"]]
    module = check(make_model(nodes, spec["sample_shape"], dict(spec["inits"], divisor=np.float32(6.0006)),
                              affine=spec["affine"]))
    assert not {"HardSwish", "HardSigmoid"} & set(module.graph.op_counts())


@pytest.mark.parametrize("spec,batch", params(pool_cases()))
def test_pooling(spec, batch):
    run_case(spec, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op,cip", [("MaxPool", 0), ("AveragePool", 0), ("AveragePool", 1)])
@pytest.mark.parametrize("sizes,kernel,strides,dilations", [([9], [2], [1], [2]), ([8], [2], [2], [2]),
                                                           ([8, 8], [3, 2], [2, 2], [2, 2])])
def test_pool_same_with_dilations_follows_the_spec(sizes, kernel, strides, dilations, op, cip, auto_pad, batch):
    """auto_pad SAME with dilations: onnxruntime computes the padding from the undilated kernel (its output is
    smaller than the spec's ceil(n / s)), so the IR is compared with onnxruntime on the same pool written
    with the spec's explicit pads (onnxruntime needs pads < kernel: the shapes are chosen so)."""
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations)
    if op == "AveragePool":
        attrs["count_include_pad"] = cip
    same = make_model([node(op, ["x"], auto_pad=auto_pad, **attrs)], [2, *sizes], opset=19, batch=batch,
                      affine=(2.0, 1.0))
    explicit = make_model([node(op, ["x"], pads=same_pads(sizes, kernel, strides, dilations,
                                                          auto_pad == "SAME_UPPER"), **attrs)],
                          [2, *sizes], opset=19, batch=batch, affine=(2.0, 1.0))
    check(explicit)
    module = load_onnx(same)
    assert tuple(module.graph.output_shape[-len(sizes):]) == tuple(math.ceil(n / s) for n, s in zip(sizes, strides))
    report = check_parity(explicit, module)
    assert report["ok"], report


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("kernel,stride", [(2, 3), (3, 5), (1, 2), (2, 2), (3, 2)])
def test_conv_transpose_same_output_is_input_times_stride(kernel, stride, auto_pad):
    """ConvTranspose SAME: output n * s (spec). With a kernel smaller than the stride the full result is
    shorter than that; onnxruntime then returns the full result, the spec (and ONNX's reference evaluator)
    pads it with bias-only positions, as the IR does: compared with the reference."""
    model = make_model([node("ConvTranspose", ["x", "W", "B"], auto_pad=auto_pad, strides=[stride])], [2, 5],
                       {"W": rand(2, 3, kernel), "B": rand(3, seed=1)})
    module = check_reference(model)
    assert module.graph.output_shape == (3, 5 * stride)


@pytest.mark.parametrize("spec,batch", params(elementwise_cases()))
def test_elementwise(spec, batch):
    run_case(spec, batch)


@pytest.mark.parametrize("batch", BATCHES)
def test_small_net_parity_and_float64(batch):
    module = check(small_net(batch))
    x = torch.rand(7, 2, 4, 6)
    with torch.no_grad():
        y32 = module(x)
        module.to(torch.float64)
        y64 = module(x.double())
    assert y64.dtype == torch.float64 and module.float_dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-5)


def test_weights_are_parameters_constants_are_buffers():
    module = check(small_net())
    weights = dict(module.onnx_weights())
    assert set(weights) == {"W", "B", "G", "gb"}
    for name, p in weights.items():
        assert isinstance(p, nn.Parameter) and p.requires_grad, name
    for name in ("mean", "std"):
        t = module.tensor(name)
        assert not isinstance(t, nn.Parameter) and not t.requires_grad, name
        assert any(t is b for b in module.buffers()), name
    assert len(list(module.parameters())) == 4
    module.zero_grad()
    loss = module(torch.rand(3, 2, 4, 6)).square().sum()
    loss.backward()
    for name, p in weights.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert module.tensor("mean").grad is None


def test_weight_update_changes_output():
    module = check(small_net())
    x = torch.rand(2, 2, 4, 6)
    with torch.no_grad():
        before = module(x)
        module.tensor("gb").add_(1.0)
        assert torch.allclose(module(x), before + 1.0, atol=1e-5)


def test_bn_scale_bias_are_parameters():
    module = run_case(bn_case(15, [3, 4, 4]), "N")
    assert set(module.onnx_weights()) == {"s", "b"}
    assert not isinstance(module.tensor("m"), nn.Parameter) and not isinstance(module.tensor("v"), nn.Parameter)


@pytest.mark.parametrize("opset, outputs, attrs", [
    (15, ["y", "rm", "rv"], {"training_mode": 1}),  # the attribute (opset 14 on)
    (9, ["y", "rm", "rv", "sm", "sv"], {}),  # before 14: the running-statistics outputs mark training mode
])
def test_batchnorm_training_mode_is_refused(opset, outputs, attrs):
    from verifier.errors import ModelImportError

    c = np.ones(3, np.float32)
    model = make_model([node("BatchNormalization", ["x", "s", "b", "m", "v"], outputs, **attrs)],
                       [3, 4], {"s": c, "b": c, "m": c, "v": c}, opset=opset)
    with pytest.raises(ModelImportError, match="training mode"):
        load_onnx(model)


@GELU20
def test_onnxruntime_gelu20_is_the_erf_form():
    """The Gelu-20 cases above compare with onnxruntime's own kernel: check that it computes x Phi(x)."""
    import onnxruntime as ort

    model = make_model([node("Gelu", ["x"])], [3], opset=20)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.float32([[-1.0, 0.0, 2.0]])
    ref = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5)
