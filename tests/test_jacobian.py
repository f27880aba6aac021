"""verifier.jacobian and every op's gradient rule (``Op.grad_interval``), against brute force.

- Soundness: for every op case of test_ops.py / test_ops_shape.py, random input boxes and random seeds: the
  gradient of seed . output at many points of the box (autograd through the float64 IR) lies in the gradient box.
  Ops without a gradient rule raise NoRuleError naming the node, and only the listed ones lack one.
- Exactness: for affine graphs the box is J^T s itself; a seed box with a radius gives |J|^T r (materialized J);
  activation slope ranges are reached at sampled points (they are hulls, not looser).
"""
from __future__ import annotations

import math

import pytest
import torch

from verifier.box import Box
from verifier.engines.gradients import gradient_box
from verifier.engines.ibp import propagate
from verifier.errors import NoRuleError
from verifier.jacobian import dual_norm_bound
from verifier.ops.activations import Activation
from verifier.ops.base import _REGISTRY

from .cases.boxes import AFFINE, CASES, case_boxes, module_of, random_bounds, sample_points
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

#: ops without a gradient rule in some configurations (two input-dependent operands of Mul/Div/MatMul, integer
#: casts, a batch axis not in front, 3-D max pools, reductions by max, softmax, the thresholded Softplus)
LACKING = {"Cast", "Div", "Mul", "MatMul", "Gemm", "Transpose", "Softmax", "LogSoftmax", "MaxPool", "ReduceMax",
           "ReduceMin", "Softplus", "Max", "Min"}


def _gradients(module, points, seeds):
    """(S, B * P, *input): the gradient of seed . output at each point, for each sample's P seeds."""
    s, b = points.shape[:2]
    p = seeds.shape[1]
    x = points.reshape(s * b, *points.shape[2:]).clone().requires_grad_(True)
    with torch.enable_grad():
        y = module(x).reshape(s, b, 1, -1)
        out = []
        for k in range(p):
            if not y.requires_grad:  # a constant output (e.g. Clip with min > max)
                out.append(torch.zeros_like(points))
                continue
            (gk,) = torch.autograd.grad((y[:, :, 0] * seeds[:, k].reshape(1, b, -1)).sum(), x, retain_graph=True)
            out.append(gk.reshape(s, b, *points.shape[2:]))
    return torch.stack(out, dim=2).reshape(s, b * p, *points.shape[2:])


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"], marks=c["marks"]) for c in CASES])
def test_gradient_box_contains_sampled_gradients(spec):
    module, gen, lo, hi, env = case_boxes(spec, 5)
    out_name = module.graph.output_name
    out_shape = tuple(env[out_name].shape[1:])
    seeds = torch.randn((len(lo), 3, *out_shape), generator=gen, dtype=torch.float64)
    try:
        grad = gradient_box(module, env, seeds, out_name)
    except NoRuleError as e:
        named = str(e).split(" (node '")[0].split()[-1]
        assert named in LACKING and "node '" in str(e), str(e)
        return
    points = sample_points(lo, hi, gen, count=32)
    grads = _gradients(module, points, seeds)
    tol = 1e-12 * (1 + float(grad.center.abs().max()))
    assert bool((grads >= grad.lo - tol).all()) and bool((grads <= grad.hi + tol).all()), (
        f"{spec['id']}: gradients outside the box by up to "
        f"{float(torch.maximum(grad.lo - grads, grads - grad.hi).max()):.3g}")


def test_every_op_has_a_gradient_rule_or_is_linear():
    """Ops with their own rule are the activations, the max pools, elementwise Max/Min, the kernel expansion
    (its rule is tested in ``tests/test_svm.py``), the Normalizer and LayerNormalization (``tests/
    test_normalizer_rules.py``, ``tests/test_layer_norm.py``); every other op with a box rule relies on the
    default (affine) rule, and a nonlinear configuration of it must raise, never return a box."""
    from verifier.ops.base import Op

    own = {t for (_, t), entries in _REGISTRY.items() for _, cls in entries
           if cls.grad_interval is not Op.grad_interval}
    assert {"Relu", "Sigmoid", "Tanh", "Softplus", "MaxPool", "GlobalMaxPool", "Max", "Min"} <= own
    assert all(issubclass(cls, Activation) or t in ("MaxPool", "GlobalMaxPool", "Max", "Min", "Sum",
                                                     "KernelExpansion", "Normalizer", "LayerNormalization",
                                                     "InstanceNormalization")
               for (_, t), entries in _REGISTRY.items() for _, cls in entries
               if cls.grad_interval is not Op.grad_interval)
    from verifier.ops.base import lookup

    mul = lookup("Mul", 13)({}, {}, 13, "m")
    a = Box(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(NoRuleError, match="Mul \\(node 'm'\\)"):
        mul.grad_interval([a, a], [a])


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"]) for c in AFFINE[::2]])
def test_affine_gradient_box_is_exact(spec):
    """Affine graphs: J^T s exactly (radius ~0) for a point seed, and |J|^T r for a seed box of radius r."""
    module = module_of(spec).double()
    g = module.graph
    gen = torch.Generator().manual_seed(7)
    lo, hi = (t.double() for t in random_bounds(g.sample_shape, gen, boxes=1))
    env = propagate(module, Box.from_bounds(lo, hi), upto=g.output_name)
    out_shape = tuple(env[g.output_name].shape[1:])
    seed = torch.randn((1, 1, *out_shape), generator=gen, dtype=torch.float64)
    try:
        grad = gradient_box(module, env, seed, g.output_name)
    except NoRuleError as e:
        assert "batch axis" in str(e)  # e.g. Gemm with transA: the batch is not the leading axis
        pytest.skip(str(e))
    x = env[g.input_name].center.clone().requires_grad_(True)
    with torch.enable_grad():
        y = module(x)
        (exact,) = torch.autograd.grad((y * seed[:, 0]).sum(), x, retain_graph=True)
        jac = torch.stack([torch.autograd.grad(y.reshape(-1)[j], x, retain_graph=True)[0].reshape(-1)
                           for j in range(y.numel())])  # (n_out, n_in)
    scale = 1 + float(exact.abs().max())
    assert torch.allclose(grad.center, exact, atol=1e-12 * scale)
    assert float(grad.radius.max()) <= 1e-8 * scale
    # a seed box: the default rule on the last node with radius r gives |J|^T r
    r = torch.rand(out_shape, generator=gen, dtype=torch.float64)
    node = list(g.nodes())[-1]
    if len(list(g.nodes())) == 1:
        args = [env[t] if t in env else (module.tensor(t) if t else None) for t in node.inputs]
        out = node.op.grad_interval(args, [Box(seed[:, 0], r[None])])
        k = next(i for i, a in enumerate(args) if isinstance(a, Box))
        expected = jac.abs().T @ r.reshape(-1)
        allowance = 2e-9 * (jac.abs().T @ seed.abs().reshape(-1) + expected) + 1e-250  # REL64 (|J|^T |c| + ...)
        got = out[k].radius.reshape(-1)
        assert bool((got >= expected * (1 - 1e-12)).all())
        assert bool((got <= expected + allowance).all()), float((got - expected - allowance).max())


ACTIVATION_TYPES = sorted({t for (_, t), entries in _REGISTRY.items() for _, cls in entries
                           if issubclass(cls, Activation)} - {"PRelu", "Clip"})


@pytest.mark.parametrize("op_type", ACTIVATION_TYPES)
def test_slope_ranges_enclose_and_reach_the_derivative(op_type):
    from verifier.ops.base import lookup

    cls = lookup(op_type, 21)
    op = cls({}, {}, 21, "act")
    gen = torch.Generator().manual_seed(11)
    centre = torch.randn(400, generator=gen, dtype=torch.float64) * 3
    width = torch.rand(400, generator=gen, dtype=torch.float64) * torch.tensor([0.0, 0.1, 1.0, 5.0]).repeat(100)
    lo, hi = centre - width, centre + width
    s_lo, s_hi = op.slope_range(lo, hi, ())
    t = torch.linspace(0, 1, 201, dtype=torch.float64)[:, None]
    pts = (lo + (hi - lo) * t).requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(op.forward(pts).sum(), pts)
    assert bool((d >= s_lo - 1e-12).all()) and bool((d <= s_hi + 1e-12).all()), op_type
    if op_type in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Elu"):  # exact ranges
        gap = torch.maximum(d.amin(0) - s_lo, s_hi - d.amax(0))
        smooth = width > 0
        assert float(gap[smooth & ((lo > 0.01) | (hi < -0.01))].max()) < 1e-3 * (1 + float(s_hi.max())), op_type


def test_maxpool_gradient_box_is_exact_with_unique_maxima():
    """Well-separated windows (one possible maximum each): the gradient box is the exact transpose."""
    from frontends import load_onnx

    from .onnx_graphs import make_model, node

    model = make_model([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [1, 4, 4])
    module = load_onnx(model).double()
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4) * 10
    env = propagate(module, Box(x, torch.full_like(x, 0.1)), upto=module.graph.output_name)
    seed = torch.randn((1, 2, 1, 2, 2), dtype=torch.float64)
    grad = gradient_box(module, env, seed, module.graph.output_name)
    assert bool((grad.radius <= 1e-8 * (1 + grad.center.abs())).all())
    expected = torch.zeros((2, 1, 4, 4), dtype=torch.float64)
    expected[:, 0, 1::2, 1::2] = seed[0, :, 0]
    assert torch.allclose(grad.center, expected)
    # ties possible: every candidate gets [min(g, 0), max(g, 0)]
    env = propagate(module, Box(torch.zeros_like(x), torch.ones_like(x)), upto=module.graph.output_name)
    grad = gradient_box(module, env, seed, module.graph.output_name)
    g0 = seed[0, 0, 0, 0, 0]
    assert float(grad.lo[0, 0, 0, 0]) <= min(float(g0), 0.0) and float(grad.hi[0, 0, 0, 0]) >= max(float(g0), 0.0)


def test_dual_norm_bound():
    box = Box(torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert float(dual_norm_bound(box, 2)) == pytest.approx(math.hypot(1.5, 2.5), rel=1e-8)
    assert float(dual_norm_bound(box, math.inf)) == pytest.approx(4.0, rel=1e-8)
