"""LayerNormalization and InstanceNormalization (``verifier.ops.normalization``): their box, Lipschitz, gradient and
linear rules against brute force (float64 and float32 forwards, boxes of several widths, one and two normalized
axes, per-channel scales, negative scales); GroupNorm and InstanceNorm from PyTorch's exporters; and
models with ``nn.LayerNorm`` from both PyTorch exporters (the opset 17 op, and the decomposed form before it that
``frontends.onnx_patterns`` folds) importing with parity and certifying without PGD breaking CROWN."""
from __future__ import annotations

import math

import pytest
import torch

from verifier.box import Box
from verifier.ops.base import RuleArgs
from verifier.ops.normalization import InstanceNormalization, LayerNormalization

from .onnx_graphs import box_points, l2_radii, pgd_succeeds_inside

#: (sample shape, axis): one or two normalized axes; a tuple: those axes (lipverify's rewrite of decomposed
#: group norms: any set, a scale per entry); None: InstanceNormalization (channels first)
SHAPES = [((5,), -1), ((3, 4), -1), ((3, 4), 1), ((3, 2, 4), (1, 3)), ((3, 4), None), ((2, 3, 2), None)]


def op_and_constants(shape: tuple[int, ...], axis: int | tuple[int, ...] | None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if axis is None:
        scale, bias = (torch.randn(shape[0], generator=gen, dtype=torch.float64) for _ in range(2))
        return InstanceNormalization({"epsilon": 1e-3}, {}, 6, "in"), scale, bias
    if isinstance(axis, tuple):
        scale, bias = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        return LayerNormalization({"axes": list(axis), "epsilon": 1e-3}, {}, 1, "gn"), scale, bias
    tail = shape[axis - 1:] if axis > 0 else shape[axis:]  # (axis counts the batch axis)
    scale = torch.randn(tail, generator=gen, dtype=torch.float64)
    bias = torch.randn(tail, generator=gen, dtype=torch.float64)
    return LayerNormalization({"axis": axis, "epsilon": 1e-3}, {}, 17, "ln"), scale, bias


def boxes(shape, seed: int = 1, batch: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    centre[:2] = 1.0 + 1e-3 * centre[:2]  # rows of (almost) equal entries: variance near 0
    widths = torch.tensor([0.0, 1e-3, 0.05, 0.5], dtype=torch.float64).repeat(batch // 4)
    radius = torch.rand(batch, *shape, generator=gen, dtype=torch.float64) * widths.reshape(-1, *[1] * len(shape))
    return centre - radius, centre + radius


def points(lo: torch.Tensor, hi: torch.Tensor, count: int, seed: int = 2) -> torch.Tensor:
    return box_points(lo, hi, count, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_box_rule_contains_sampled_outputs(shape, axis, dtype):
    op, scale, bias = op_and_constants(shape, axis)
    lo, hi = boxes(shape)
    box = Box.from_bounds(lo.to(dtype), hi.to(dtype))
    out = op.interval(box, scale, bias)
    pts = points(box.lo.double(), box.hi.double(), 500).reshape(-1, *shape)
    for precision in (torch.float64, dtype):
        y = op.forward(pts.to(precision), scale.to(precision), bias.to(precision)).double().reshape(500, *lo.shape)
        assert (y >= out.lo.double()).all() and (y <= out.hi.double()).all()


@pytest.mark.parametrize("norm", [2.0, math.inf])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_lipschitz_rule_bounds_sampled_jacobians(shape, axis, norm):
    op, scale, bias = op_and_constants(shape, axis)
    args = RuleArgs([None, scale, bias], [True, False, False], [(1, *shape), None, None], [(1, *shape)], norm)
    bound = op.lipschitz(args).value
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(50, *shape, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1, 50).reshape(
        -1, *[1] * len(shape)).double()
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: op.forward(v[None], scale, bias)[0], x[i])
        jac = jac.reshape(math.prod(shape), -1)
        value = torch.linalg.matrix_norm(jac, ord=2) if norm == 2 else jac.abs().sum(1).max()
        assert float(value) <= bound


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_gradient_rule_contains_sampled_vector_jacobian_products(shape, axis):
    op, scale, bias = op_and_constants(shape, axis)
    lo, hi = boxes(shape)
    gen = torch.Generator().manual_seed(4)
    g = Box(torch.randn(12 * 3, *shape, generator=gen, dtype=torch.float64),
            torch.rand(12 * 3, *shape, generator=gen, dtype=torch.float64) * 0.1)
    out = op.grad_interval([Box.from_bounds(lo, hi), scale, bias], [g])[0]
    pts = points(lo, hi, 200).repeat_interleave(3, 1).requires_grad_(True)  # (200, 36, *shape)
    seeds = g.center + g.radius * (2 * torch.rand(200, *g.shape, generator=gen, dtype=torch.float64) - 1)
    y = op.forward(pts.reshape(-1, *shape), scale, bias).reshape(pts.shape)
    (vjp,) = torch.autograd.grad(y, pts, seeds)
    assert (vjp >= out.lo).all() and (vjp <= out.hi).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_linear_rule_holds_at_sampled_points_and_beats_the_box_on_small_boxes(shape, axis, dtype):
    from verifier.linear import box_backward

    op, scale, bias = op_and_constants(shape, axis)
    lo, hi = boxes(shape, seed=5)
    box = Box.from_bounds(lo.to(dtype), hi.to(dtype))
    gen = torch.Generator().manual_seed(6)
    lam = torch.randn(12 * 4, *shape, generator=gen, dtype=torch.float64)
    coef, bias_ = op.linear([box, scale, bias], [lam])
    coef = coef[0].reshape(48, -1)
    pts = points(box.lo.double(), box.hi.double(), 300).to(dtype)
    flat = pts.double().reshape(300, 12, -1).repeat_interleave(4, 1)
    for precision in (torch.float64, dtype):
        y = op.forward(pts.reshape(-1, *shape).to(precision), scale.to(precision), bias.to(precision)).double()
        y = y.reshape(300, 12, -1).repeat_interleave(4, 1)
        lhs = (lam.reshape(48, -1) * y).sum(-1)
        rhs = (coef * flat).sum(-1) + bias_
        assert (lhs >= rhs).all(), float((rhs - lhs).max())
    small = torch.arange(12).repeat_interleave(4) % 4 == 1  # the boxes of width 1e-3
    b_lo, b_hi = box.lo.double().reshape(12, -1).repeat_interleave(4, 0), box.hi.double().reshape(12, -1) \
        .repeat_interleave(4, 0)
    linear = torch.minimum(coef * b_lo, coef * b_hi).sum(-1) + bias_
    boxed = box_backward([lam], [op.interval(box, scale, bias)])
    assert (linear[small] > boxed[small]).float().mean() >= 0.75


def layer_norm_mlp() -> torch.nn.Module:
    """A small MLP with nn.LayerNorm, trained a few steps on a synthetic two-feature rule."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.GELU(),
                                torch.nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(400, 6, generator=gen)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.6).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript-14"])
def test_torch_layer_norm_models_import_with_parity_and_crown_survives_pgd(tmp_path, exporter):
    """Both exporters' forms import (the opset 17 op; the decomposed one folded into it) with onnxruntime parity;
    the Lipschitz report is finite; CROWN certifies most inputs and PGD (20 restarts) never succeeds inside."""
    import onnx

    from frontends import load_onnx
    from frontends.parity import check_parity
    from verifier.engines.lipschitz import graph_lipschitz

    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install lipverify[torch])")
    model = layer_norm_mlp()
    path = tmp_path / "m.onnx"
    example = torch.rand(1, 6)
    if exporter == "dynamo":
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("b")},))
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=14, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})
    proto = onnx.load(path)
    module = load_onnx(proto)
    assert module.graph.op_counts().get("LayerNormalization") == 1
    assert check_parity(proto, module)["ok"]
    assert math.isfinite(graph_lipschitz(module).lipschitz)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(30, 6, generator=gen)
    _crown_survives_pgd(module, x)


def _crown_survives_pgd(module, x: torch.Tensor) -> None:
    """CROWN certifies most inputs (labels: the predictions) and PGD never succeeds inside its radii."""
    with torch.no_grad():
        y = module(x).argmax(1)
    radii = l2_radii(module, x, y, ("crown",))["crown"]
    keep = radii > 0
    assert keep.float().mean() > 0.6
    assert not pgd_succeeds_inside(module, x[keep], y[keep], radii[keep])


def decomposed(form: str, bare: bool = False, group: bool = False):
    """A Gemm, a layer normalization in one exporter's decomposed form (module docstring of
    ``frontends.onnx_patterns``), then a Gemm: PyTorch's TorchScript (opset 14), jax2onnx's (Flax; opset 18,
    axes as an input, var = E[x^2] - m^2), tf2onnx's (Keras; opset 15, x (r g) + ((-m) (r g) + b)); or
    ONNX's own op (opset 17). ``bare``: the normalization alone, on 8 inputs. ``group``: as Keras and Flax write
    GroupNorm, over axes (1, 3) of the features reshaped to (B, 2, 2, 2), a scale and shift per entry."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    inits = {"w1": rng.normal(size=(6, 8)), "b1": rng.normal(size=8), "w2": rng.normal(size=(8, 3)),
             "b2": rng.normal(size=3), "gamma": rng.normal(size=8), "beta": rng.normal(size=8),
             "eps": np.array(1e-5), "two": np.array(2.0), "zero": np.array(0.0)}
    if form == "keras":
        inits["gamma"] = inits["gamma"].reshape(1, 8)
    if group:
        inits["gamma"], inits["beta"] = inits["gamma"].reshape(-1, 2, 2, 2), inits["beta"].reshape(2, 2, 2)
    n = helper.make_node
    reduced = [1, 3] if group else [1] if form == "keras" else [-1]
    mean = {"keepdims": 1, "axes": reduced} if form != "flax" else {"keepdims": 1}
    axes = ["axes"] if form == "flax" else []
    nodes = [n("Gemm", ["x", "w1", "b1"], ["h"]), n("ReduceMean", ["h", *axes], ["m"], **mean),
             n("Sub", ["h", "m"], ["d"])]
    if form == "onnx":
        nodes = [nodes[0], n("LayerNormalization", ["h", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5)]
    elif form == "torch":
        nodes += [n("Pow", ["d", "two"], ["sq"]), n("ReduceMean", ["sq"], ["var"], **mean),
                  n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["s"]), n("Div", ["d", "s"], ["y"]),
                  n("Mul", ["y", "gamma"], ["yg"]), n("Add", ["yg", "beta"], ["ln"])]
    elif form == "flax":
        nodes += [n("Mul", ["h", "h"], ["hh"]), n("ReduceMean", ["hh", "axes"], ["m2"], keepdims=1),
                  n("Mul", ["m", "m"], ["mm"]), n("Sub", ["m2", "mm"], ["v0"]), n("Max", ["v0", "zero"], ["var"]),
                  n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["s"]), n("Div", ["d", "s"], ["y"]),
                  n("Mul", ["y", "gamma"], ["yg"]), n("Add", ["yg", "beta"], ["ln"])]
    else:
        nodes += [n("Neg", ["m"], ["negm"]), n("Mul", ["d", "d"], ["sq"]), n("ReduceMean", ["sq"], ["var"], **mean),
                  n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["s"]), n("Reciprocal", ["s"], ["r"]),
                  n("Mul", ["r", "gamma"], ["rg"]), n("Mul", ["h", "rg"], ["a"]), n("Mul", ["negm", "rg"], ["c0"]),
                  n("Add", ["c0", "beta"], ["c"]), n("Add", ["a", "c"], ["ln"])]
    nodes.append(n("Gemm", ["ln", "w2", "b2"], ["z"]))
    if bare:
        nodes = [n("Identity", ["x"], ["h"])] + nodes[1:-1] + [n("Identity", ["ln"], ["z"])]
    if group:  # h (B, 8) -> (B, 2, 2, 2) before, ln back to (B, 8) after
        nodes[0].output[0] = "h8"
        nodes.insert(1, n("Reshape", ["h8", "to4"], ["h"]))
        nodes[-1].input[0] = "ln8"
        nodes.insert(len(nodes) - 1, n("Reshape", ["ln", "to2"], ["ln8"]))
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    tensors.append(numpy_helper.from_array(np.array(reduced, dtype=np.int64), "axes"))
    tensors.append(numpy_helper.from_array(np.array([-1, 2, 2, 2], dtype=np.int64), "to4"))
    tensors.append(numpy_helper.from_array(np.array([-1, 8], dtype=np.int64), "to2"))
    width, out = (8, 8) if bare else (6, 3)
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", out])], tensors)
    opset = {"torch": 14, "flax": 18, "keras": 15, "onnx": 17}[form]
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("group", [False, True], ids=["layer", "group"])
@pytest.mark.parametrize("form", ["torch", "flax", "keras"])
def test_decomposed_layer_norms_fold_into_one_node_with_parity(form, group):
    from frontends import load_onnx
    from frontends.parity import check_parity

    model = decomposed(form, group=group)
    module = load_onnx(model)
    counts = module.graph.op_counts()
    assert counts.get("LayerNormalization") == 1 and not {"ReduceMean", "Sqrt", "Div", "Neg"} & set(counts)
    assert check_parity(model, module)["ok"]
    if form == "keras":  # its scale and shift are the node's trainable weights, written back where they were
        assert {"gamma", "beta"} <= set(module.onnx_weights())


@pytest.mark.parametrize("form", ["onnx", "torch", "flax", "keras"])
def test_box_rule_contains_onnxruntimes_float32_evaluations_of_every_form(form):
    """onnxruntime's float32 evaluation of ONNX's op (a one-pass kernel) and of each decomposed form (the
    one-pass variance of jax2onnx, tf2onnx's distributed products), on boxes whose mean is large against their
    spread (where a one-pass variance cancels): every value inside the imported op's box, also where the box
    is propagated in float64 (as the engines' float64 copies do)."""
    import numpy as np
    import onnxruntime as ort

    from frontends import load_onnx
    from verifier.engines.ibp import logit_box

    model = decomposed(form, bare=True)
    module = load_onnx(model)
    gen = torch.Generator().manual_seed(11)
    centre = 40.0 + torch.randn(16, 8, generator=gen, dtype=torch.float64) * torch.logspace(-0.7, 0.5, 16).reshape(
        -1, 1).double()
    radius = torch.rand(16, 8, generator=gen, dtype=torch.float64) * 1e-3
    box = Box.from_bounds((centre - radius).float(), (centre + radius).float())
    out = logit_box(module, box)  # (the torch and flax forms keep their scale and shift as Mul and Add)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pts = points(box.lo.double(), box.hi.double(), 200).float()
    got = session.run(None, {"x": pts.reshape(-1, 8).numpy()})[0].reshape(200, 16, 8)
    got = torch.from_numpy(np.asarray(got, dtype=np.float64))
    assert (got >= out.lo.double()).all() and (got <= out.hi.double()).all()
    wide = logit_box(module.float64(), Box(box.center.double(), box.radius.double()))  # as float64 engines run
    assert (got >= wide.lo).all() and (got <= wide.hi).all()


@pytest.mark.parametrize("form", ["torch", "flax", "keras"])
def test_a_decomposition_whose_mean_is_read_elsewhere_keeps_its_nodes(form):
    """Folding must not remove a tensor another node reads: with the mean also added to the output, the pattern
    stays decomposed (and its Sqrt is refused), never a graph with a dangling tensor."""
    from onnx import helper

    from frontends import load_onnx
    from verifier.errors import UnsupportedOpsError

    model = decomposed(form)
    gemm = model.graph.node[-1]
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("Add", ["ln", "m"], ["ln_m"]))
    gemm.input[0] = "ln_m"
    with pytest.raises(UnsupportedOpsError, match="Sqrt"):
        load_onnx(model)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("layer", ["group", "instance"])
def test_torch_group_and_instance_norm_cnns_import_and_crown_survives_pgd(tmp_path, layer, exporter):
    """nn.GroupNorm (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add) and nn.InstanceNorm2d (affine) from
    both exporters: parity, a finite Lipschitz report, CROWN radii that PGD (20 restarts) cannot break."""
    import onnx

    from frontends import load_onnx
    from frontends.parity import check_parity
    from verifier.engines.lipschitz import graph_lipschitz

    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install lipverify[torch])")
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4) if layer == "group" else torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), norm, torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path / "m.onnx"
    example = torch.rand(1, 1, 8, 8)
    if exporter == "dynamo":
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("b")},))
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    proto = onnx.load(path)
    module = load_onnx(proto)
    assert module.graph.op_counts().get("InstanceNormalization") == 1
    assert check_parity(proto, module)["ok"]
    assert math.isfinite(graph_lipschitz(module).lipschitz)
    _crown_survives_pgd(module, torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
