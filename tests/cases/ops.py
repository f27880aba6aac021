"""Case tables of the arithmetic ops: Gemm, MatMul, Conv, ConvTranspose, BatchNormalization, activations,
pooling, elementwise arithmetic and Cast (run by ``test_ops.py``, ``test_box.py``, ``test_jacobian.py``)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from onnx import TensorProto

from ..onnx_graphs import case, make_model, node, onnxruntime_runs, rand


BATCHES = ["N", 1]


SIGNED = (0.5, 6.0)  # x -> (x - 0.5) * 6: inputs in [-3, 3)


# --- Gemm, MatMul ----------------------------------------------------------------------------------------
def gemm_cases():
    out = []
    c_variants = [(1.0, 1.0, None), (1.0, 1.0, (3,)), (0.5, 2.0, (1, 3)), (1.5, -0.7, ()), (1.0, 0.3, (3,)),
                  (2.0, 1.0, (1,)), (1.0, 1.0, (1, 1))]
    for ta, tb, (alpha, beta, cshape) in itertools.product((0, 1), (0, 1), c_variants):
        nodes, a = [], "x"
        if ta:  # A' = A^T: feed the transposed input so that the batch stays in front
            nodes.append(node("Transpose", ["x"], ["xt"], perm=[1, 0]))
            a = "xt"
        inits = {"W": rand(*((3, 4) if tb else (4, 3)))}
        ins = [a, "W"]
        if cshape is not None:
            inits["C"] = rand(*cshape, seed=1)
            ins.append("C")
        nodes.append(node("Gemm", ins, alpha=alpha, beta=beta, transA=ta, transB=tb))
        out.append(case(f"Gemm-tA{ta}-tB{tb}-a{alpha}-b{beta}-C{cshape}", nodes, [4], inits))
    # the constant on the A side: (W x^T)^T
    out.append(case("Gemm-const-A", [node("Transpose", ["x"], ["xt"]), node("Gemm", ["W", "xt", "C"], ["g"],
                                                                            alpha=0.7, beta=1.3),
                                     node("Transpose", ["g"])], [4], {"W": rand(3, 4), "C": rand(3, 1)}))
    out.append(case("Gemm-opset9", [node("Gemm", ["x", "W", "C"], transB=1)], [4],
                    {"W": rand(3, 4), "C": rand(3)}, opset=9))
    return out


MATMUL = [
    case("MatMul-const-right", [node("MatMul", ["x", "W"])], [4], {"W": rand(4, 3)}),
    case("MatMul-const-left", [node("MatMul", ["W", "x"])], [5, 2], {"W": rand(3, 5)}),
    case("MatMul-3d-broadcast", [node("MatMul", ["x", "W"])], [3, 2, 4], {"W": rand(3, 4, 5)}),
    case("MatMul-3d-const-left", [node("MatMul", ["W", "x"])], [3, 4, 2], {"W": rand(3, 5, 4)}),
    case("MatMul-1d-right", [node("MatMul", ["x", "W"])], [3, 4], {"W": rand(4)}),
    case("MatMul-1d-left", [node("MatMul", ["W", "x"])], [3, 4], {"W": rand(3)}),
    case("MatMul-two-branches", [node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), node("MatMul", ["x", "xt"])],
         [3, 4], affine=SIGNED),
]


# --- Conv, ConvTranspose --------------------------------------------------------------------------------
def _pads(nd, begin=(1, 0, 2), end=(2, 1, 0)):
    return list(begin[:nd]) + list(end[:nd])


CONV_VARIANTS = {
    "plain": lambda nd: {},
    "nobias": lambda nd: {"bias": False},
    "strides": lambda nd: {"strides": [2] * nd},
    "dilations": lambda nd: {"dilations": [2] * nd},
    "pads-asym": lambda nd: {"pads": _pads(nd)},
    "strides-dil-pads": lambda nd: {"strides": [2, 1, 3][:nd], "dilations": [1, 2, 2][:nd], "pads": _pads(nd)},
    "group2": lambda nd: {"cin": 4, "cout": 6, "group": 2},
    "depthwise": lambda nd: {"cin": 4, "cout": 4, "group": 4, "pads": [1] * 2 * nd},
    "depthwise-x2": lambda nd: {"cin": 4, "cout": 8, "group": 4, "strides": [2] * nd},
    "same-upper": lambda nd: {"auto_pad": "SAME_UPPER", "strides": [2] * nd},
    "same-lower": lambda nd: {"auto_pad": "SAME_LOWER", "strides": [2] * nd},
    "same-upper-s1": lambda nd: {"auto_pad": "SAME_UPPER"},
    "same-lower-s1": lambda nd: {"auto_pad": "SAME_LOWER"},
    # (auto_pad SAME with dilations: onnxruntime refuses it, "Dilation not supported for AutoPadType::SAME_*")
    "valid": lambda nd: {"auto_pad": "VALID", "strides": [2] * nd},
}


KERNEL = {1: [3], 2: [3, 2], 3: [2, 3, 2]}


def conv_case(case_id, nd, cin=2, cout=4, group=1, bias=True, opset=13, **attrs):
    spatial = {1: [9], 2: [7, 8], 3: [5, 6, 4]}[nd]
    inits = {"W": rand(cout, cin // group, *KERNEL[nd])}
    if bias:
        inits["B"] = rand(cout, seed=1)
    nodes = [node("Conv", ["x", "W", "B"] if bias else ["x", "W"], group=group, **attrs)]
    return case(case_id, nodes, [cin, *spatial], inits, opset)


CONV = [conv_case(f"Conv{nd}d-{name}", nd, **v(nd)) for nd in (1, 2, 3) for name, v in CONV_VARIANTS.items()]


CONV.append(conv_case("Conv2d-opset1", 2, pads=[1, 1, 1, 1], opset=1))


CONV.append(conv_case("Conv2d-kernel_shape-attr", 2, kernel_shape=KERNEL[2], strides=[1, 2]))


CONV.append(conv_case("Conv2d-notset-pads", 2, auto_pad="NOTSET", pads=[0, 1, 2, 1]))


OUT_SHAPE = {1: [10], 2: [8, 9], 3: [5, 8, 5]}


CONVT_VARIANTS = {
    "plain": lambda nd: {},
    "nobias": lambda nd: {"bias": False},
    "strides": lambda nd: {"strides": [2, 3, 2][:nd]},
    "pads": lambda nd: {"strides": [2] * nd, "pads": _pads(nd, (1, 0, 1), (0, 2, 1))},
    "output-padding": lambda nd: {"strides": [2, 3, 2][:nd], "output_padding": [1, 2, 0][:nd]},
    "output-padding-pads": lambda nd: {"strides": [3] * nd, "output_padding": [1] * nd, "pads": [1] * 2 * nd},
    # full sizes with strides 2: 1-D 11, 2-D (9, 10), 3-D (6, 9, 6); crop 1 (odd) or 2 (even) per axis
    "output-shape-odd": lambda nd: {"strides": [2] * nd, "output_shape": OUT_SHAPE[nd]},
    "output-shape-even": lambda nd: {"strides": [2] * nd, "output_shape": [d - 1 for d in OUT_SHAPE[nd]]},
    "output-shape-full": lambda nd: {"strides": [2] * nd, "output_shape": [[11], [9, 10], [6, 9, 6]][nd - 1]},
    "output-shape-same-upper": lambda nd: {"strides": [2] * nd, "output_shape": OUT_SHAPE[nd],
                                           "auto_pad": "SAME_UPPER"},
    "output-shape-same-lower": lambda nd: {"strides": [2] * nd, "output_shape": OUT_SHAPE[nd],
                                           "auto_pad": "SAME_LOWER"},
    "output-shape-output-padding": lambda nd: {"strides": [2] * nd, "output_padding": [1] * nd,
                                               "output_shape": OUT_SHAPE[nd]},
    "dilations": lambda nd: {"dilations": [2] * nd, "strides": [2] * nd},
    "group2": lambda nd: {"cin": 4, "cout": 6, "group": 2, "strides": [2] * nd},
    "depthwise": lambda nd: {"cin": 4, "cout": 4, "group": 4},
    "same-upper": lambda nd: {"auto_pad": "SAME_UPPER", "strides": [2] * nd},
    "same-lower": lambda nd: {"auto_pad": "SAME_LOWER", "strides": [2] * nd},
    "same-upper-s3": lambda nd: {"auto_pad": "SAME_UPPER", "strides": [3] * nd, "dilations": [1, 2, 1][:nd]},
    "same-lower-s3": lambda nd: {"auto_pad": "SAME_LOWER", "strides": [3] * nd, "dilations": [1, 2, 1][:nd]},
    "valid": lambda nd: {"auto_pad": "VALID", "strides": [2] * nd},
    "same-upper-output-padding": lambda nd: {"auto_pad": "SAME_UPPER", "strides": [2] * nd, "output_padding": [1] * nd},
    "same-lower-output-padding": lambda nd: {"auto_pad": "SAME_LOWER", "strides": [3] * nd, "output_padding": [1] * nd},
    "combo": lambda nd: {"cin": 4, "cout": 6, "group": 2, "strides": [2] * nd, "dilations": [2] * nd,
                         "pads": _pads(nd, (1, 0, 1), (0, 1, 1)), "output_padding": [1] * nd},
}


def convt_case(case_id, nd, cin=2, cout=3, group=1, bias=True, **attrs):
    spatial = {1: [5], 2: [4, 5], 3: [3, 4, 3]}[nd]
    inits = {"W": rand(cin, cout // group, *KERNEL[nd])}
    if bias:
        inits["B"] = rand(cout, seed=1)
    nodes = [node("ConvTranspose", ["x", "W", "B"] if bias else ["x", "W"], group=group, **attrs)]
    return case(case_id, nodes, [cin, *spatial], inits)


CONVT = [convt_case(f"ConvTranspose{nd}d-{name}", nd, **v(nd))
         for nd in (1, 2) for name, v in CONVT_VARIANTS.items()]


CONVT += [convt_case(f"ConvTranspose3d-{name}", 3, **CONVT_VARIANTS[name](3))
          for name in ("plain", "output-padding", "output-shape-odd", "same-upper", "combo")]


def bn_case(opset, sample_shape, eps=1e-3):
    c = sample_shape[0]
    rng = np.random.default_rng(3)
    inits = {"s": rand(c), "b": rand(c, seed=1), "m": rand(c, seed=2),
             "v": rng.uniform(0.2, 2.0, c).astype(np.float32)}
    return case(f"BatchNorm-opset{opset}-{len(sample_shape) + 1}d", [
        node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=eps)], sample_shape, inits, opset, SIGNED)


BN = [bn_case(o, s) for o in (7, 9, 14, 15) for s in ([3], [3, 5], [3, 4, 5], [3, 2, 3, 2])]


BN.append(bn_case(15, [3, 4, 4], eps=1e-5))


for shape in ([3, 4], [3, 2, 3]):  # opset 7 spatial=0: per-activation parameters of shape (C, D1, ...)
    v = np.random.default_rng(3).uniform(0.2, 2.0, shape).astype(np.float32)
    BN.append(case(f"BatchNorm-opset7-spatial0-{len(shape) + 1}d", [
        node("BatchNormalization", ["x", "s", "b", "m", "v"], spatial=0, epsilon=1e-3)], shape,
        {"s": rand(*shape), "b": rand(*shape, seed=1), "m": rand(*shape, seed=2), "v": v}, 7, SIGNED))


# --- activations ---------------------------------------------------------------------------------------
def act(op_type, opset=13, inputs=(), inits=None, shape=(3, 4, 5), **attrs):
    name = "-".join([op_type, f"opset{opset}", *[f"{k}{v}" for k, v in attrs.items()],
                     *[f"in{i}" if t else "none" for i, t in enumerate(inputs, 1)]])
    return case(name, [node(op_type, ["x", *inputs], **attrs)], shape, inits, opset, SIGNED)


ACTIVATIONS = [
    act("Relu"), act("Relu", opset=7), act("Sigmoid"), act("Tanh"), act("Softplus"), act("Erf"),
    act("LeakyRelu"), act("LeakyRelu", alpha=0.3), act("LeakyRelu", opset=16, alpha=-0.2),
    act("Elu"), act("Elu", alpha=0.5), act("Elu", alpha=2.0, opset=7),
    act("Selu"), act("Selu", alpha=1.2, gamma=0.7),
    act("HardSigmoid"), act("HardSigmoid", alpha=0.3, beta=0.4), act("HardSigmoid", alpha=-0.5, beta=0.2),
    act("PRelu", inputs=["slope"], inits={"slope": rand(3, 1, 1)}),  # per channel
    act("PRelu", opset=16, inputs=["slope"], inits={"slope": rand(5)}),  # along the last axis
    act("PRelu", opset=9, inputs=["slope"], inits={"slope": np.float32([0.25])}),
    act("PRelu", opset=7, inputs=["slope"], inits={"slope": rand(3, 4, 5)}),
    act("PRelu", opset=16, inputs=["slope"], inits={"slope": rand(1, 3, 1, 1)}),
    # opset 7 (onnxruntime has no Sub-6 for the affine prefix) still means Relu-6, Elu-6, Clip-6
    act("Clip", opset=7, min=-1.0, max=0.5), act("Clip", opset=7, max=0.5), act("Clip", opset=7, min=-0.7),
    act("Clip", opset=7),  # (min > max: onnxruntime refuses Clip-6 attributes with min > max)
    *[act("Clip", opset=o, inputs=ins, inits={"lo": np.float32(-1.2), "hi": np.float32(0.4)})
      for o in (11, 12, 13) for ins in (["lo", "hi"], ["lo"], ["", "hi"], [])],
    act("Clip", opset=13, inputs=["hi", "lo"], inits={"lo": np.float32(-1.2), "hi": np.float32(0.4)}),  # min>max
    *[act("Gelu", opset=20, **attrs) for attrs in ({}, {"approximate": "tanh"}, {"approximate": "none"})],
    act("Mish", opset=18), act("Swish", opset=24), act("Swish", opset=24, alpha=1.7), act("Swish", opset=24, alpha=0.3),
]


def gated_patterns():
    """x * gate(x) as exporters write SiLU, Swish, Mish and HardSwish (``verifier.rewrite``: one node each)."""
    consts = {"a": np.float32(1.7), "three": np.float32(3.0), "six": np.float32(6.0), "sixth": np.float32(1 / 6),
              "zero": np.float32(0.0)}
    relu6 = [node("Add", ["x", "three"], ["s"]), node("Clip", ["s", "zero", "six"], ["r"])]
    forms = {
        "SiLU-pattern": [node("Sigmoid", ["x"], ["g"]), node("Mul", ["x", "g"])],
        "SiLU-pattern-gate-first": [node("Sigmoid", ["x"], ["g"]), node("Mul", ["g", "x"])],
        "Swish-pattern": [node("Mul", ["a", "x"], ["ax"]), node("Sigmoid", ["ax"], ["g"]), node("Mul", ["x", "g"])],
        "Mish-pattern": [node("Softplus", ["x"], ["p"]), node("Tanh", ["p"], ["g"]), node("Mul", ["x", "g"])],
        "HardSwish-pattern-hardsigmoid": [node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
                                          node("Mul", ["x", "g"])],
        "HardSwish-pattern-relu6-div": [*relu6, node("Div", ["r", "six"], ["g"]), node("Mul", ["x", "g"])],
        "HardSwish-pattern-relu6-times-sixth": [*relu6, node("Mul", ["sixth", "r"], ["g"]), node("Mul", ["g", "x"])],
        "HardSwish-pattern-div-last": [*relu6, node("Mul", ["x", "r"], ["m"]), node("Div", ["m", "six"])],
        "HardSigmoid-pattern-relu6": [*relu6, node("Div", ["r", "six"])],
    }
    return [case(name, nodes, (3, 4, 5), consts, 13, SIGNED) for name, nodes in forms.items()]


GATED = gated_patterns()
ACTIVATIONS += GATED


GELU20 = pytest.mark.skipif(not onnxruntime_runs("Gelu", 20), reason="this onnxruntime has no Gelu-20 kernel")


for spec in ACTIVATIONS:
    if spec["id"].startswith("Gelu"):
        spec["marks"] = (GELU20,)


def gelu_nodes(order, scale_op, swap):
    """0.5 x (1 + erf(x / sqrt 2)) in one of the three association orders PyTorch exporters use."""
    two = (lambda a, b: [b, a]) if swap else (lambda a, b: [a, b])
    nodes = [node(scale_op, ["x", "sqrt2" if scale_op == "Div" else "isqrt2"], ["s"]),
             node("Erf", ["s"], ["e"]), node("Add", two("e", "one"), ["p"])]
    if order == 0:  # (x * (1 + erf)) * 0.5
        nodes += [node("Mul", two("x", "p"), ["q"]), node("Mul", two("q", "half"))]
    elif order == 1:  # x * ((1 + erf) * 0.5)
        nodes += [node("Mul", two("p", "half"), ["q"]), node("Mul", two("x", "q"))]
    else:  # (x * 0.5) * (1 + erf)
        nodes = [node("Mul", two("x", "half"), ["h"]), *nodes, node("Mul", two("h", "p"))]
    return nodes


GELU_CONSTS = {"sqrt2": np.float32(math.sqrt(2)), "isqrt2": np.float32(1 / math.sqrt(2)),
               "one": np.float32(1.0), "half": np.float32(0.5)}


# --- pooling -------------------------------------------------------------------------------------------
POOL_VARIANTS = {
    "k2": lambda nd: {"kernel_shape": [2] * nd},
    "k3-s2": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd},
    "k3-s1-2": lambda nd: {"kernel_shape": [3, 2][:nd], "strides": [1, 2][:nd]},
    "pads-sym": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "pads": [1] * 2 * nd},
    "pads-asym": lambda nd: {"kernel_shape": [3] * nd, "pads": [1, 2][:nd] + [2, 0][:nd]},
    "ceil": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "ceil_mode": 1},
    "ceil-s3": lambda nd: {"kernel_shape": [2] * nd, "strides": [3] * nd, "ceil_mode": 1},
    "ceil-pads": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "pads": [1] * 2 * nd, "ceil_mode": 1},
    "ceil-pads-k2": lambda nd: {"kernel_shape": [2] * nd, "strides": [2] * nd, "pads": [1] * 2 * nd, "ceil_mode": 1},
    "ceil-pads-asym": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd,
                                  "pads": [1, 0][:nd] + [0, 2][:nd], "ceil_mode": 1},
    "same-upper": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "auto_pad": "SAME_UPPER"},
    "same-lower": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "auto_pad": "SAME_LOWER"},
    "same-upper-k2": lambda nd: {"kernel_shape": [2] * nd, "auto_pad": "SAME_UPPER"},
    "same-lower-k2": lambda nd: {"kernel_shape": [2] * nd, "auto_pad": "SAME_LOWER"},
    "valid": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "auto_pad": "VALID"},
    "valid-ceil": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "auto_pad": "VALID", "ceil_mode": 1},
    # (SAME needing negative padding, e.g. n 9, kernel 2, stride 3: onnxruntime refuses it)
    "same-upper-ceil": lambda nd: {"kernel_shape": [3] * nd, "strides": [2] * nd, "auto_pad": "SAME_UPPER",
                                   "ceil_mode": 1},
    "ceil-big-pads": lambda nd: {"kernel_shape": [3] * nd, "strides": [3] * nd, "pads": [2] * 2 * nd, "ceil_mode": 1},
}


MAXPOOL_ONLY = {
    "dil": lambda nd: {"kernel_shape": [2] * nd, "dilations": [2] * nd},
    "dil-pads": lambda nd: {"kernel_shape": [2] * nd, "dilations": [3, 2][:nd], "pads": [1, 0][:nd] + [1, 1][:nd]},
    "dil-ceil-pads": lambda nd: {"kernel_shape": [2] * nd, "dilations": [2] * nd, "strides": [2] * nd,
                                 "pads": [1] * 2 * nd, "ceil_mode": 1},
}


AVGPOOL_PADDED = ("pads-sym", "pads-asym", "ceil", "ceil-s3", "ceil-pads", "ceil-pads-k2", "ceil-pads-asym",
                  "same-upper", "same-lower", "same-upper-k2", "same-lower-k2", "same-upper-ceil", "ceil-big-pads")


POOL_SHAPE = {1: [2, 9], 2: [2, 7, 8], 3: [2, 5, 4, 5]}


def pool_cases():
    out = []
    for nd in (1, 2):
        for name, v in {**POOL_VARIANTS, **MAXPOOL_ONLY}.items():  # all-negative inputs: pads must be -inf
            out.append(case(f"MaxPool{nd}d-{name}", [node("MaxPool", ["x"], **v(nd))], POOL_SHAPE[nd],
                            affine=(2.0, 1.0)))
        for name, v in POOL_VARIANTS.items():
            for cip in ((0, 1) if name in AVGPOOL_PADDED else (0,)):
                out.append(case(f"AveragePool{nd}d-{name}-cip{cip}", [
                    node("AveragePool", ["x"], count_include_pad=cip, **v(nd))], POOL_SHAPE[nd]))
        for name in ("dil", "dil-pads", "dil-ceil-pads"):  # AveragePool has dilations from opset 19
            for cip in (0, 1):
                out.append(case(f"AveragePool{nd}d-{name}-cip{cip}-opset19", [
                    node("AveragePool", ["x"], count_include_pad=cip, **MAXPOOL_ONLY[name](nd))],
                    POOL_SHAPE[nd], opset=19))
    out.append(case("MaxPool3d-pads-ceil", [node("MaxPool", ["x"], kernel_shape=[2, 3, 2], strides=[2, 2, 1],
                                                  pads=[1, 0, 1, 0, 1, 1], ceil_mode=1)], POOL_SHAPE[3],
                    affine=(2.0, 1.0)))
    out.append(case("AveragePool3d-pads", [node("AveragePool", ["x"], kernel_shape=[2, 3, 2], pads=[1, 0, 1, 0, 1, 1],
                                                 count_include_pad=1)], POOL_SHAPE[3]))
    out.append(case("MaxPool2d-opset8", [node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                    POOL_SHAPE[2], opset=8, affine=(2.0, 1.0)))
    out.append(case("MaxPool2d-opset21", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                               ceil_mode=1)], POOL_SHAPE[2], opset=21, affine=(2.0, 1.0)))
    out.append(case("MaxPool2d-indices-unused", [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])],
                    POOL_SHAPE[2], affine=(2.0, 1.0)))
    for nd in (1, 2, 3):
        for op in ("GlobalAveragePool", "GlobalMaxPool"):
            out.append(case(f"{op}{nd}d", [node(op, ["x"])], POOL_SHAPE[nd], affine=SIGNED))
    return out


def same_pads(sizes, kernel, strides, dilations, upper):
    """The spec's SAME padding: output ceil(n / s), total padding split evenly, the odd pixel at the end
    (UPPER) or the beginning (LOWER)."""
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        begins.append(total // 2 if upper else total - total // 2)
        ends.append(total - total // 2 if upper else total // 2)
    return begins + ends


# --- elementwise arithmetic, Cast -----------------------------------------------------------------------
def elementwise_cases():
    out = []
    shape = [3, 4, 5]
    for op in ("Add", "Sub", "Mul", "Div"):
        for cshape in [(3, 1, 1), (5,), (), (1, 3, 1, 1), (4, 1), (3, 4, 5)]:
            c = rand(*cshape, seed=4)
            c = np.sign(c) * (0.5 + np.abs(c)) if op == "Div" else c  # keep divisors away from 0
            out.append(case(f"{op}-const-right-{cshape}", [node(op, ["x", "c"])], shape, {"c": c}, affine=SIGNED))
            # on the left: a divisor x + 1 in [1, 2)
            out.append(case(f"{op}-const-left-{cshape}", [node("Add", ["x", "one"], ["x1"]), node(op, ["c", "x1"])],
                            shape, {"c": c, "one": np.float32(1.0)}))
        mean = [node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Add", ["m", "one"], ["m1"])]
        out.append(case(f"{op}-branches-broadcast", [*mean, node(op, ["x", "m1"])], shape, {"one": np.float32(1.0)}))
        out.append(case(f"{op}-branches-broadcast-rev", [*mean, node("Add", ["x", "one"], ["x1"]),
                                                         node(op, ["m1", "x1"])], shape, {"one": np.float32(1.0)}))
        out.append(case(f"{op}-branches-same-shape", [node("Sigmoid", ["x"], ["s"]), node(op, ["x", "s"])],
                        shape, affine=SIGNED))
        out.append(case(f"{op}-same-input", [node(op, ["x", "x"])], shape, affine=(-0.5, 1.0)))
        out.append(case(f"{op}-opset7", [node(op, ["x", "c"])], shape, {"c": np.float32([1.5, -2.0, 0.75, 3.0, -1.0])},
                        opset=7, affine=SIGNED))
    out.append(case("Neg", [node("Neg", ["x"])], shape, affine=SIGNED))
    for dt, d in ((TensorProto.INT64, np.int64([-3, 2, -4, 5, 7])), (TensorProto.INT32, np.int32(3))):
        # integer Div truncates toward zero (C semantics), on both signs
        nodes = [node("Cast", ["x"], ["i"], to=dt), node("Div", ["i", "d"], ["q"]), node("Mul", ["q", "d"], ["p"]),
                 node("Cast", ["p"], to=TensorProto.FLOAT)]
        out.append(case(f"Div-int-{d.dtype}", nodes, shape, {"d": d}, affine=(0.5, 20.0)))
    out.append(case("Neg-opset7", [node("Neg", ["x"])], shape, opset=7, affine=SIGNED))
    out.append(case("normalize", [node("Sub", ["x", "mean"], ["t"]), node("Div", ["t", "std"])], shape,
                    {"mean": rand(3, 1, 1), "std": np.float32([0.2, 0.5, 2.0]).reshape(3, 1, 1)}))
    casts = {"FLOAT": [TensorProto.FLOAT], "INT64": [TensorProto.INT64, TensorProto.FLOAT],
             "INT32": [TensorProto.INT32, TensorProto.FLOAT], "INT8": [TensorProto.INT8, TensorProto.FLOAT],
             "DOUBLE": [TensorProto.DOUBLE, TensorProto.FLOAT], "BOOL": [TensorProto.BOOL, TensorProto.FLOAT],
             "INT64-DOUBLE": [TensorProto.INT64, TensorProto.DOUBLE]}
    for opset in (7, 13, 19):
        for name, chain in casts.items():
            # truncation toward zero on both signs; Relu gives the BOOL cast exact zeros
            nodes = [node("Relu" if name == "BOOL" else "Identity", ["x"], ["t0"])]
            nodes += [node("Cast", [f"t{i}"], [f"t{i + 1}"], to=to) for i, to in enumerate(chain)]
            nodes[-1].output[0] = "y"
            out.append(case(f"Cast-{name}-opset{opset}", nodes, shape, opset=opset, affine=(0.5, 10.0)))
    return out


# --- GraphModule basics --------------------------------------------------------------------------------
def small_net(batch="N"):
    nodes = [node("Sub", ["x", "mean"], ["t"]), node("Div", ["t", "std"], ["n"]),
             node("Conv", ["n", "W", "B"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]), node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "G", "gb"], transB=1)]
    inits = {"mean": np.float32([0.4, 0.5]).reshape(2, 1, 1), "std": np.float32([0.2, 0.3]).reshape(2, 1, 1),
             "W": rand(3, 2, 3, 3), "B": rand(3, seed=1), "G": rand(5, 18, seed=2), "gb": rand(5, seed=3)}
    return make_model(nodes, [2, 4, 6], inits, batch=batch)
