"""CROWN (``verifier.engines.crown``) and the ops' linear rules (``Op.linear``, ``verifier/linear.py``): every
op case's backward bound holds at sampled points of random boxes (an op without a linear rule falls back to its
box), ReLU's relaxation at its corners, and CROWN's radii survive PGD and beat IBP on small MLPs (CNNs are too
slow for the engine as it stands)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.box import Box
from verifier.certificates.certify import compute_bounds
from verifier.engines.attacks import pgd
from verifier.engines.backward import backward
from verifier.engines.bcp import ibp_radii
from verifier.engines.crown import crown_radii, verify_crown
from verifier.engines.intermediate import boxes
from verifier.errors import NoRuleError
from verifier.linear import relu_backward
from verifier.problem import Conjunction, InputBox, LpBall, Problem, RadiusProblem

from .cases.boxes import CASES, case_boxes, sample_points
from .cases.models import NORMS_L2_FAST, blob_model, mlp_and_cnn, relu_tanh_blobs
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


def _holds(lhs: torch.Tensor, rhs: torch.Tensor, what: str) -> None:
    tol = 1e-12 * (1 + float(lhs.abs().max()) + float(rhs.abs().max()))
    gap = float((rhs - lhs).max())
    assert gap <= tol, f"{what}: the linear bound exceeds the function by {gap:.3g}"


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"], marks=c["marks"]) for c in CASES])
def test_linear_rule_of_every_op_holds_at_sampled_points(spec):
    """lam . f(x) >= coeffs . x + bias at sampled points (corners included) of random boxes, for random lam."""
    module, gen, lo, hi, env = case_boxes(spec, 7)
    g = module.graph
    out = env[g.output_name]
    rows = 3
    lam = torch.randn((len(lo) * rows, *out.shape[1:]), generator=gen, dtype=torch.float64)
    try:
        coeffs, bias = backward(module, env, g.output_name, lam)
    except NoRuleError as e:
        assert "batch axis in front" in str(e)
        pytest.skip(str(e))
    points = sample_points(lo, hi, gen, count=32)  # (S, B, ...)
    s, b = points.shape[:2]
    with torch.no_grad():
        y = module(points.reshape(s * b, *points.shape[2:])).reshape(s, b, 1, -1)
    lhs = (lam.reshape(1, b, rows, -1) * y).sum(-1)
    rhs = bias.reshape(1, b, rows)
    if coeffs is not None:
        rhs = rhs + (coeffs.reshape(1, b, rows, -1) * points.reshape(s, b, 1, -1)).sum(-1)
    _holds(lhs, rhs, spec["id"])


def test_relu_relaxation_at_the_corners_and_kinks():
    gen = torch.Generator().manual_seed(3)
    lo = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(4, 50, generator=gen, dtype=torch.float64) * 3
    lo[0, :5], hi[0, :5] = -1e-300, 1e-300  # tiny unstable boxes
    box = Box.from_bounds(lo, hi)
    lam = torch.randn(4 * 6, 50, generator=gen, dtype=torch.float64)
    coeffs, bias = relu_backward(lam, box)
    t = torch.linspace(0, 1, 101, dtype=torch.float64).reshape(-1, 1, 1)
    points = box.lo + (box.hi - box.lo) * t  # (101, 4, 50): both ends, and 0 where it lies inside
    points = torch.cat([points, torch.zeros_like(points[:1]).clamp(box.lo, box.hi)])
    lhs = (lam.reshape(1, 4, 6, 50) * torch.relu(points)[:, :, None]).sum(-1)
    rhs = (coeffs.reshape(1, 4, 6, 50) * points[:, :, None]).sum(-1) + bias.reshape(1, 4, 6)
    _holds(lhs, rhs, "relu")


@pytest.fixture(scope="module")
def smooth_model(tmp_path_factory):
    return relu_tanh_blobs(tmp_path_factory.mktemp("smooth_crown"))


@pytest.fixture(scope="module")
def relu_mlp(tmp_path_factory):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    path, _, x, y = blob_model(tmp_path_factory.mktemp("crown_relu"), net)
    module = load_onnx(path)
    with torch.no_grad():
        keep = module(x).argmax(1) == y
    return module, x[keep][:40], y[keep][:40]


def test_prior_boxes_that_contradict_crown_mean_an_empty_set(relu_mlp):
    """A prior box (branch and bound's split constraint) on the second ReLU's input that the interval box
    allows but CROWN's bound excludes: the set is empty, ``EmptyIntersectionError`` (branch and bound counts the
    part as proved), never an invalid box."""
    from verifier.box import EmptyIntersectionError
    from verifier.engines.crown import prepare, spec_bounds

    module, x, y = relu_mlp
    module64 = prepare(module)
    relu2 = [n for n in module64.graph.nodes() if n.op_type == "Relu"][1].inputs[0]
    # an entry that the interval box leaves unstable and CROWN proves stable (lo > 0 or hi < 0): a prior that
    # keeps it unstable but outside CROWN's bounds ([lo_interval, lo_crown / 2] or [hi_crown / 2, hi_interval])
    # is consistent with the interval box only
    found = []
    for i in range(10):
        inputs = InputBox(x[i:i + 1] - 0.5, x[i:i + 1] + 0.5)
        spec = Conjunction.robustness(y[i:i + 1], 3)
        crown = spec_bounds(module64, Problem(inputs, spec)).env[relu2]
        loose = boxes(module64, inputs, budget=0)[relu2]
        c_lo, c_hi = crown.lo.reshape(-1), crown.hi.reshape(-1)
        unstable = (loose.lo.reshape(-1) < 0) & (loose.hi.reshape(-1) > 0)
        score = torch.where(unstable, torch.maximum(c_lo, -c_hi), -math.inf)
        found.append((float(score.max()), int(score.argmax()), inputs, spec, loose, c_lo, c_hi))
    best, j, inputs, spec, loose, c_lo, c_hi = max(found, key=lambda f: f[0])
    assert best > 0.005
    lo, hi = loose.lo.reshape(-1).clone(), loose.hi.reshape(-1).clone()
    if float(c_lo[j]) > 0:
        hi[j] = c_lo[j] / 2
    else:
        lo[j] = c_hi[j] / 2
    prior = {relu2: Box.from_bounds(lo.reshape(loose.shape), hi.reshape(loose.shape))}
    with pytest.raises(EmptyIntersectionError, match="input set is empty"):
        spec_bounds(module64, Problem(inputs, spec), prior=prior)


@pytest.mark.parametrize("prior", ["interval", "bcp"])
@pytest.mark.parametrize("norm", NORMS_L2_FAST)
def test_crown_radii_survive_pgd_and_beat_ibp(relu_mlp, norm, prior):
    """CROWN from interval boxes, and from BCP's boxes with intermediate CROWN bounds switched off."""
    module, x, y = relu_mlp
    balls = RadiusProblem(x, y, norm)
    report = compute_bounds(module, 2.0, input_dim=6).l2
    if prior == "bcp":
        radii = crown_radii(module, balls, report=report, budget=0)
    else:
        radii = crown_radii(module, balls)
    ibp = ibp_radii(module, report, balls)
    assert (radii > 0).float().mean() > 0.8
    assert float(radii.median()) > 1.2 * float(ibp.median())
    assert bool(verify_crown(module, balls.at(radii)).all())
    _, success = pgd(module, balls.at(radii.float() * 0.999), steps=100, restarts=10)
    assert not success.any(), "an attack broke a CROWN radius"


def test_crown_on_models_with_fallback_ops(smooth_model):
    """Through Tanh (two lines over its box, verifier/relaxations.py) and the bundled CNN: CROWN stays sound."""
    name, module, x, y, lower, upper = next(iter(mlp_and_cnn(smooth_model)))
    balls = RadiusProblem(x[:30], y[:30], 2.0, lower, upper)
    radii = crown_radii(module, balls, steps=10)
    ok = radii > 0
    assert ok.float().mean() > 0.5, name
    _, success = pgd(module, balls[ok.nonzero()[:, 0]].at(radii[ok].float() * 0.999), steps=100, restarts=10)
    assert not success.any(), f"{name}: an attack broke a CROWN radius"


def test_crown_decides_linear_specs_on_boxes(relu_mlp):
    """A plain input box and random linear rows: CROWN's intermediate boxes hold at sampled points, and a
    verified spec has no sampled violation."""
    module, x, y = relu_mlp
    gen = torch.Generator().manual_seed(9)
    width = 0.5 * torch.rand(x.shape, generator=gen)
    inputs = InputBox(x - width, x + width)
    module64 = module.double()
    env = boxes(module64, inputs)
    points = inputs.lower + (inputs.upper - inputs.lower) * torch.rand((64, *x.shape), generator=gen).double()
    with torch.no_grad():
        values = module64.run(points.reshape(-1, 6), keep=set(env))
    for name, box in env.items():
        v = values[name].reshape(64, len(x), *box.shape[1:])
        assert bool((v >= box.lo - 1e-12).all()) and bool((v <= box.hi + 1e-12).all()), name
    with torch.no_grad():
        z = module(x).double()
    c = torch.randn(len(x), 2, 3, generator=gen, dtype=torch.float64)
    spec = Conjunction(c, 0.3 - (c @ z[..., None])[..., 0])
    ok = verify_crown(module, Problem(inputs, spec))
    assert ok.any() and not ok.all()
    with torch.no_grad():
        zs = module(points.reshape(-1, 6).float()).double().reshape(64, len(x), 3)
    values = (c[None] @ zs[..., None])[..., 0] + spec.d[None]
    assert bool((values[:, ok] > 0).all())
    assert bool(verify_crown(module, Problem(LpBall(x, 0.0, math.inf), spec)).all())


def test_l2_concretization_is_the_dual_norm_unless_the_domain_cuts_the_ball():
    from verifier.engines.backward import concretize

    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    eps = torch.tensor([0.01, 0.1, 0.5, 2.0], dtype=torch.float64)
    c = torch.randn(4 * 3, 6, generator=gen, dtype=torch.float64)
    ball = LpBall(x0, eps, 2.0)
    got = concretize(ball, ball.box(torch.float64), c, 3)
    exact = (c.reshape(4, 3, 6) * x0[:, None]).sum(-1) - eps[:, None] * c.reshape(4, 3, 6).norm(dim=-1)
    assert bool((got <= exact).all()) and bool((got >= exact - 1e-7 * (1 + exact.abs())).all())  # REL64 slack
    clipped = LpBall(x0, eps, 2.0, torch.zeros_like(x0), torch.ones_like(x0))  # the domain [0, 1] cuts the ball
    tight = concretize(clipped, clipped.box(torch.float64), c, 3)
    assert bool((tight >= got - 1e-7).all()) and bool((tight[3] > got[3] + 1e-4).all())
    d = torch.randn(4000, 4, 6, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True) * eps[:, None] * torch.rand(4000, 4, 1, generator=gen).double()
    points = (x0 + d).clamp(0.0, 1.0)  # inside the ball and the domain (clamping to the box only moves toward x0)
    values = (c.reshape(1, 4, 3, 6) * points[:, :, None]).sum(-1)
    assert bool((values >= tight[None]).all())


def test_maxpool_linear_rule_is_exact_where_one_entry_dominates():
    """A window whose largest lower bound beats every other upper bound passes the rows through exactly (no
    constant term); elsewhere the lower line is x_j and the upper one the window's largest upper bound."""
    from verifier.ops.pooling import MaxPool

    op = MaxPool({"kernel_shape": [2, 2], "strides": [2, 2]}, {}, 13, "pool")
    lo = torch.tensor([[[[0.0, 5.0], [1.0, 2.0]]]], dtype=torch.float64)  # one window: 5 dominates
    box = Box.from_bounds(lo, lo + 1.0)
    lam = torch.tensor([[[[-2.0]]], [[[3.0]]]], dtype=torch.float64)  # two rows of one input
    (coeffs,), bias = op.linear([box], [lam])
    expected = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    expected[0, 0, 0, 1], expected[1, 0, 0, 1] = -2.0, 3.0
    assert torch.equal(coeffs, expected) and float(bias.abs().max()) < 1e-200
    box = Box.from_bounds(lo, lo + 4.0)  # 5 no longer dominates ([1, 5] meets [5, 9])
    (coeffs,), bias = op.linear([box], [lam])
    assert float(coeffs[0].abs().sum()) == 0.0 and float(coeffs[1, 0, 0, 1]) == 3.0
    assert abs(float(bias[0]) - (-2.0 * 9.0)) < 1e-7 and abs(float(bias[1])) < 1e-200


def test_relu_rows_through_mostly_stable_boxes_match_the_general_rule(monkeypatch):
    """Mostly stable boxes take the fast path of ``lines_backward`` (one line for both bounds, unstable entries
    gathered), other boxes its batched sums: the same coefficients and, up to rounding allowances, the same bias
    as the general rule, and sound at sampled points."""
    import verifier.linear as linear

    gen = torch.Generator().manual_seed(8)
    lo = torch.randn(3, 200, generator=gen, dtype=torch.float64) * 3
    hi = lo + torch.rand(3, 200, generator=gen, dtype=torch.float64) * 0.8  # few boxes contain 0
    box = Box.from_bounds(lo, hi)
    assert float(((lo < 0) & (hi > 0)).double().mean()) < 0.3
    lam = torch.randn(3 * 5, 200, generator=gen, dtype=torch.float64)
    fast = relu_backward(lam, box)
    monkeypatch.setattr(linear, "_mostly_one_line", lambda *args: None)
    batched = relu_backward(lam, box)  # lines per entry, batched sums (_box_lines)
    monkeypatch.setattr(linear, "_box_lines", lambda *args: None)
    general = relu_backward(lam, box)
    for other in (fast, batched):
        assert torch.equal(other[0], general[0])
        assert torch.allclose(other[1], general[1], rtol=0, atol=1e-8)
    points = box.lo + (box.hi - box.lo) * torch.rand((64, 3, 200), generator=gen, dtype=torch.float64)
    lhs = (lam.reshape(1, 3, 5, 200) * torch.relu(points)[:, :, None]).sum(-1)
    rhs = (fast[0].reshape(1, 3, 5, 200) * points[:, :, None]).sum(-1) + fast[1].reshape(1, 3, 5)
    _holds(lhs, rhs, "relu, fast path")


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"]) for c in CASES
                                  if c["id"].startswith(("Gemm", "MatMul", "Conv"))])
def test_weight_products_equal_the_generic_affine_rule(spec):
    """Gemm's and MatMul's own backward products, and Conv's transposed convolution, give the generic rule's
    coefficients (autograd through the forward) and bias."""
    from verifier.ops.base import Op

    module, gen, lo, hi, env = case_boxes(spec, 9)
    g = module.graph
    node = list(g.nodes())[-1]
    args = module.node_args(node, env)
    if not node.op.linear_in_inputs([isinstance(a, Box) for a in args]):
        pytest.skip("not affine in its inputs")
    if not all(g.keeps_batch_in_front(t) for t in [*node.inputs, *node.outputs] if t in env):
        pytest.skip("the batch axis is not in front (CROWN refuses such graphs)")
    lam = torch.randn((len(lo) * 3, *env[g.output_name].shape[1:]), generator=gen, dtype=torch.float64)
    own, own_bias = node.op.linear(args, [lam])
    generic, generic_bias = Op.linear(node.op, args, [lam])
    for a, b in zip(own, generic):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.allclose(own_bias, generic_bias, rtol=1e-12, atol=1e-12)
