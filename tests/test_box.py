"""verifier.box: the Box type, every op's interval rule and IBP.

- Soundness: for every op case of test_ops.py / test_ops_shape.py (all attribute variants), random boxes; the
  IR forward of many points of each box (corners, including all of them for small inputs, and interior points)
  must lie in the propagated box, with no tolerance (the rules cover float32 rounding).
- Exactness where it must hold: chains of elementwise monotone (or piecewise monotone) maps reach both ends of
  their box; affine maps reach both ends at the corners sign(row) r; Gemm's radius is |W| r.
- Zoo models: IBP on l_inf balls of radius 0.001 around test inputs contains the outputs of random points and
  of PGD points of the ball; the box shrinks to the point as eps -> 0.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from frontends import load_onnx
from verifier.box import Box, EmptyIntersectionError
from verifier.engines.ibp import ibp, logit_box, propagate
from verifier.errors import NoRuleError
from verifier.ops.base import _REGISTRY
from verifier.problem import LpBall, RadiusProblem

from .cases.boxes import (AFFINE, CASES, ELEMENTWISE_CHAINS, TURNS, ZOO_PARAMS, assert_inside, module_of, outputs,
                          random_bounds, sample_points, zoo_inputs)
from .cases.ops import small_net
from .onnx_graphs import make_model, node, rand, torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


# --- the Box type ------------------------------------------------------------------------------------------
def test_intersect_lets_a_nan_bound_give_way_and_refuses_real_gaps():
    """A NaN bound (an overflow upstream) bounds nothing: the other box's bound stands; two NaNs stay NaN (no
    certificate accepts them); a real gap still means an unsound box."""
    a = Box.from_bounds(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0],
                                                                                        dtype=torch.float64))
    nan = float("nan")
    b = Box(torch.tensor([nan, 1.5, 2.5], dtype=torch.float64), torch.tensor([1.0, 0.1, nan], dtype=torch.float64))
    r = a.intersect(b)
    assert -1e-12 < float(r.lo[0]) <= 0.0 and 1.0 <= float(r.hi[0]) < 1.0 + 1e-12
    assert 1.4 - 1e-12 < float(r.lo[1]) and float(r.hi[1]) < 1.6 + 1e-12
    assert -1e-12 < float(r.lo[2]) - 2.0 and float(r.hi[2]) - 3.0 < 1e-12
    both = Box(torch.tensor([nan], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    assert bool(torch.isnan(both.intersect(both).lo).all())
    with pytest.raises(EmptyIntersectionError):
        a.intersect(Box.from_bounds(torch.full((3,), 5.0, dtype=torch.float64), torch.full((3,), 6.0,
                                                                                           dtype=torch.float64)))


def test_from_bounds_encloses_and_rounds_outward():
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(1000, generator=gen) * 10
    hi = lo + torch.rand(1000, generator=gen) * torch.tensor([0.0, 1e-6, 1.0, 1e3]).repeat(250)
    box = Box.from_bounds(lo, hi)
    assert bool((box.radius >= 0).all())
    assert bool((box.lo <= lo).all()) and bool((box.hi >= hi).all())
    # exact in float64: c - r <= lo and c + r >= hi
    c, r = box.center.double(), box.radius.double()
    assert bool((c - r <= lo.double()).all()) and bool((c + r >= hi.double()).all())
    # at most a few ulps (of the box's magnitude) looser
    ulp = float(torch.finfo(torch.float32).eps) * torch.maximum(lo.abs(), hi.abs())
    assert bool(((lo - box.lo) <= 4 * ulp).all()) and bool(((box.hi - hi) <= 4 * ulp).all())
    point = Box.point(lo)
    assert torch.equal(point.lo, lo) and torch.equal(point.hi, lo)
    with pytest.raises(ValueError, match="empty"):
        Box.from_bounds(hi + 1, hi)


def test_ball_intersect_contains():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    ball = Box.ball(x, 0.1)
    assert torch.equal(ball.center, x) and torch.allclose(ball.radius, torch.full_like(x, 0.1))
    clipped = Box.ball(x, 0.1, lower=0.0, upper=1.0)
    assert float(clipped.lo.min()) >= -2e-7 and float(clipped.hi.max()) <= 1.0 + 2e-7
    outside = torch.tensor([[-0.05, 0.5, 1.0]])
    assert clipped.contains(torch.tensor([[0.0, 0.45, 1.0]])) and not clipped.contains(outside)
    assert clipped.contains(outside, tol=0.06)
    both = ball.intersect(Box.from_bounds(torch.tensor([[-1.0, 0.55, 0.95]]), torch.tensor([[0.05, 2.0, 3.0]])))
    assert torch.allclose(both.lo, torch.tensor([[-0.1, 0.55, 0.95]])) and torch.allclose(
        both.hi, torch.tensor([[0.05, 0.6, 1.1]]))
    with pytest.raises(EmptyIntersectionError, match="unsound"):
        ball.intersect(Box.point(x + 1.0))
    per_sample = Box.ball(torch.zeros(2, 3), torch.tensor([0.1, 0.2]))
    assert torch.allclose(per_sample.radius[:, 0], torch.tensor([0.1, 0.2]))


def test_every_op_has_a_box_rule():
    missing = sorted({t for t, entries in _REGISTRY.items() for _, cls in entries if not cls.has_rule("interval")})
    assert not missing, f"ops without a box rule: {missing}"
    from verifier.commands.inspect import op_rules

    module = load_onnx(small_net())
    assert all(r["box"] for r in op_rules(module).values())


# --- every op: soundness by sampling -------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"], marks=c["marks"]) for c in CASES])
def test_op_box_contains_sampled_outputs(spec):
    module = module_of(spec)
    gen = torch.Generator().manual_seed(1)
    lo, hi = random_bounds(module.graph.sample_shape, gen)
    box = Box.from_bounds(lo, hi)
    out = propagate(module, box, upto=module.graph.output_name)[module.graph.output_name]
    points = sample_points(lo, hi, gen)
    y = outputs(module, points)
    assert out.shape == y.shape[1:]
    assert_inside(out, y, spec["id"])
    # the centre's output too, and the boxes of every intermediate tensor are well formed
    with torch.no_grad():
        assert_inside(out, module(box.center), spec["id"] + " (centre)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"], marks=c["marks"]) for c in ELEMENTWISE_CHAINS])
def test_elementwise_box_is_exact(spec, dtype):
    """Chains of elementwise (piecewise) monotone maps: each output's box is its exact range over its own input
    interval, reached at the ends or at the activation's turning point (sampled: a grid of 201 points per
    entry, plus the turning points), within 1e-5 in float32 (the rounding slack) and 1e-9 in float64."""
    module = module_of(spec).to(dtype)
    gen = torch.Generator().manual_seed(2)
    lo, hi = (b.to(dtype) for b in random_bounds(module.graph.sample_shape, gen, boxes=1, width=0.15))
    with torch.no_grad():
        out = propagate(module, Box.from_bounds(lo, hi), upto=module.graph.output_name)[module.graph.output_name]
    t = torch.linspace(0, 1, 201, dtype=dtype).reshape(-1, 1, *([1] * len(module.graph.sample_shape)))
    turns = torch.tensor(TURNS, dtype=dtype).reshape(-1, *t.shape[1:]).expand(-1, *lo.shape)
    points = torch.cat([lo + (hi - lo) * t, turns])
    y = outputs(module, torch.maximum(torch.minimum(points, hi), lo))
    assert_inside(out, y, spec["id"])
    tol = (2e-5 if dtype == torch.float32 else 1e-9) * (1 + float(y.abs().max()))
    assert float((y.amin(0) - out.lo).max()) <= tol, spec["id"]
    assert float((out.hi - y.amax(0)).max()) <= tol, spec["id"]


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"]) for c in AFFINE[::3]])
def test_affine_box_is_exact(spec):
    """y = A x + b: output j's range over the box is c'_j +- (|A| r)_j, reached at the corners c +- sign(A_j) r;
    the propagated box is that up to the float widening (float64 here, where it is ~1e-15 relative; in float32
    it is gamma_n (|A||c| + |b|), n the fan-in: see test_gemm_radius_is_abs_w_times_r)."""
    module = module_of(spec).double()
    gen = torch.Generator().manual_seed(3)
    lo, hi = (b.double() for b in random_bounds(module.graph.sample_shape, gen, boxes=1))
    box = Box.from_bounds(lo, hi)
    with torch.no_grad():
        out = propagate(module, box, upto=module.graph.output_name)[module.graph.output_name]
    x = box.center.clone().requires_grad_(True)
    with torch.enable_grad():
        y = module(x).reshape(-1)
    picks = torch.randperm(y.numel(), generator=gen)[:24]
    rows = torch.stack([torch.autograd.grad(y[j], x, retain_graph=True)[0][0] for j in picks])
    corners_hi = torch.maximum(torch.minimum(box.center + torch.sign(rows) * box.radius, hi), lo)
    corners_lo = torch.maximum(torch.minimum(box.center - torch.sign(rows) * box.radius, hi), lo)
    with torch.no_grad():
        y_hi = module(corners_hi).reshape(len(picks), -1)[torch.arange(len(picks)), picks]
        y_lo = module(corners_lo).reshape(len(picks), -1)[torch.arange(len(picks)), picks]
    top, bottom = out.hi.reshape(-1)[picks], out.lo.reshape(-1)[picks]
    tol = 1e-9 * (1 + float(out.center.abs().max()) + float(out.radius.max()))
    assert bool((y_hi <= top).all()) and bool((y_lo >= bottom).all())
    assert float((top - y_hi).max()) <= tol and float((y_lo - bottom).max()) <= tol, spec["id"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_radius_is_abs_w_times_r(trans_b):
    w = rand(*((5, 7) if trans_b else (7, 5)), seed=4)
    module = load_onnx(make_model([node("Gemm", ["x", "W", "B"], transB=trans_b, alpha=1.5)], [7],
                                  {"W": w, "B": rand(5, seed=5)}))
    gen = torch.Generator().manual_seed(4)
    lo, hi = random_bounds((7,), gen, boxes=3, width=0.5)
    box = Box.from_bounds(lo, hi)
    out = logit_box(module, box)
    w64 = torch.from_numpy(w).double()
    w64 = w64.T if trans_b else w64
    b64 = torch.from_numpy(rand(5, seed=5)).double()
    exact = 1.5 * box.radius.double() @ w64.abs()
    centre = 1.5 * box.center.double() @ w64 + b64
    # float32: |W| r plus the documented rounding slack 2 gamma (|alpha W||c| + |b|), gamma = gamma_{7 + 3 + 4}
    g = 14 * 2.0 ** -24 / (1 - 14 * 2.0 ** -24)
    slack = 2 * g * (1.5 * box.center.double().abs() @ w64.abs() + b64.abs())
    assert bool((out.radius.double() >= exact).all())
    torch.testing.assert_close(out.radius.double(), exact + slack, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.center.double(), centre, rtol=1e-6, atol=1e-6)
    # float64: |W| r to 1e-12
    out64 = logit_box(module.double(), box.to(torch.float64))
    torch.testing.assert_close(out64.radius, exact, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out64.center, centre, rtol=1e-6, atol=1e-6)


def test_swish_and_mish_constants():
    """SiLU's and Mish's minima and the turns of their slopes (where f'' = 0) and the slopes there, recomputed
    with mpmath: the constants the box, gradient and linear rules rely on."""
    from verifier.ops.smooth import Mish, Swish

    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    silu = lambda x: x / (1 + mp.exp(-x))  # noqa: E731
    mish = lambda x: x * mp.tanh(mp.log(1 + mp.exp(x)))  # noqa: E731
    for f, (x_star, f_min) in ((silu, Swish.MINIMUM), (mish, Mish.MINIMUM)):
        root = mp.findroot(lambda x: mp.diff(f, x), x_star)
        assert abs(float(root) - x_star) < 1e-14 and abs(float(f(root)) - f_min) < 1e-16
    for f, turns, slopes in ((silu, (-Swish.TURN, Swish.TURN), (Swish.SLOPE_MIN, Swish.SLOPE_MAX)),
                             (mish, Mish.TURNS, Mish.SLOPES)):
        for turn, slope in zip(turns, slopes):
            root = mp.findroot(lambda x: mp.diff(f, x, 2), turn)
            exact = float(mp.diff(f, root))
            assert abs(float(root) - turn) < 1e-12 and abs(exact - slope) < 2e-9
            assert (exact >= slope) if slope < 0 else (exact <= slope)  # rounded outward
    grid = [mp.mpf(x) / 20 for x in range(-400, 401)]  # f' stays within the slopes on [-20, 20]
    for f, (low, high) in ((silu, (Swish.SLOPE_MIN, Swish.SLOPE_MAX)), (mish, Mish.SLOPES)):
        d = [mp.diff(f, x) for x in grid]
        assert low - 1e-15 <= float(min(d)) and float(max(d)) <= high + 1e-15


def test_gelu_minimum_and_softplus_threshold():
    from verifier.ops.smooth import Gelu

    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    for form, (x_star, f_min) in Gelu.MINIMUM.items():
        if form == "none":
            f = lambda x: x * mp.ncdf(x)  # noqa: E731
        else:
            k, a = mp.sqrt(2 / mp.pi), mp.mpf("0.044715")
            f = lambda x: 0.5 * x * (1 + mp.tanh(k * (x + a * x ** 3)))  # noqa: E731
        root = mp.findroot(lambda x: mp.diff(f, x), -0.75)
        assert abs(float(root) - x_star) < 1e-14 and abs(float(f(root)) - f_min) < 1e-16
    # a thresholded Softplus (dynamo exporters): the jump from softplus(t) down to t inside the box
    nodes = [node("Softplus", ["x"], ["sp"]), node("Greater", ["x", "t"], ["gt"]), node("Where", ["gt", "x", "sp"])]
    module = load_onnx(make_model(nodes, [4], {"t": np.float32(0.5)}, opset=18))
    assert module.graph.op_counts() == {"Softplus": 1}
    box = Box.from_bounds(torch.full((1, 4), 0.2), torch.full((1, 4), 0.9))
    out = logit_box(module, box)
    sp = math.log1p(math.exp(0.5))
    # the hull of [softplus(0.2), softplus(0.5)] and (0.5, 0.9]
    torch.testing.assert_close(out.lo, torch.full((1, 4), 0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.hi, torch.full((1, 4), sp), rtol=0, atol=1e-5)
    points = torch.linspace(0.2, 0.9, 1001).reshape(-1, 1).expand(-1, 4)
    with torch.no_grad():
        assert out.contains(module(points))


def test_division_by_a_box_containing_zero_names_the_node():
    nodes = [node("Sigmoid", ["x"], ["s"]), node("Sub", ["s", "half"], ["d"]),
             node("Div", ["x", "d"], ["y"], name="the_div")]
    module = load_onnx(make_model(nodes, [3], {"half": np.float32(0.5)}))
    with pytest.raises(NoRuleError, match="the_div"):
        logit_box(module, Box.from_bounds(torch.full((1, 3), -1.0), torch.full((1, 3), 1.0)))
    out = logit_box(module, Box.from_bounds(torch.full((1, 3), 0.5), torch.full((1, 3), 1.0)))
    assert bool((out.lo > 0).all())


def test_softmax_of_a_point_is_the_point():
    model = make_model([node("Softmax", ["x"], axis=-1)], [6])
    module = load_onnx(model)
    x = torch.randn(3, 6) * 5
    with torch.no_grad():
        out = logit_box(module, Box.point(x))  # logits: the softmax input
        p = propagate(module, Box.point(x), upto=module.graph.output_name)[module.graph.output_name]
        assert torch.equal(out.center, x)
        torch.testing.assert_close(p.center, torch.softmax(x, -1), rtol=1e-5, atol=1e-7)
        assert float(p.radius.max()) < 1e-5


def test_propagate_dict_upto_and_batch_check():
    module = load_onnx(small_net())
    x = torch.rand(3, 2, 4, 6)
    boxes = propagate(module, Box.ball(x, 0.01))
    assert list(boxes)[0] == module.graph.input_name and "y" in boxes and len(boxes) == 8
    part = propagate(module, Box.ball(x, 0.01), upto="r")
    assert list(part)[-1] == "r" and "y" not in part
    assert torch.equal(part["r"].center, boxes["r"].center)
    relu = boxes["r"]
    assert bool((relu.lo >= 0).all())
    with torch.no_grad():
        assert_inside(boxes["y"], module(x), "small_net")
    from verifier.errors import InputShapeError

    with pytest.raises(InputShapeError):
        propagate(module, Box.ball(torch.rand(3, 2, 4), 0.01))
    with pytest.raises(ValueError, match="no tensor"):
        propagate(module, Box.ball(x, 0.01), upto="nope")


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO_PARAMS)
def test_zoo_ibp_contains_random_and_pgd_points(path):
    from verifier.engines.attacks import pgd

    module = load_onnx(path)
    x = zoo_inputs(module, path)
    eps = 0.001
    lo, hi = x - eps, x + eps
    z_box = logit_box(module, Box.from_bounds(lo, hi))
    gen = torch.Generator().manual_seed(6)
    points = sample_points(lo, hi, gen, count=200)
    with torch.no_grad():
        z = module(x)
        assert_inside(z_box, z, "centre")
        assert_inside(z_box, outputs(module, points), "random points")
    if z.dim() == 2 and z.shape[1] >= 2:
        y = z.argmax(1)
        x_adv, _ = pgd(module, RadiusProblem(x, y, math.inf).at(eps), steps=20, restarts=3, seed=0)
        x_adv = torch.maximum(torch.minimum(x_adv, hi), lo)
        with torch.no_grad():
            assert_inside(z_box, module(x_adv), "PGD points")
        # the other direction too: PGD towards each sample's most likely wrong class from the box's view
        x_adv, _ = pgd(module, RadiusProblem(x, z.argmin(1), math.inf).at(eps), steps=20, restarts=2, seed=1)
        x_adv = torch.maximum(torch.minimum(x_adv, hi), lo)
        with torch.no_grad():
            assert_inside(z_box, module(x_adv), "PGD points (2)")


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO_PARAMS)
def test_zoo_box_shrinks_to_the_point(path):
    """Widths decrease with eps; in float64 (rounding 1e-16) the box of eps -> 0 is the point up to ~1e-9; in
    float32 it keeps the worst-case rounding slack of the forward, which is what float32 outputs may differ by."""
    module = load_onnx(path)
    x = zoo_inputs(module, path, count=2)
    module64 = copy.deepcopy(module).double()
    with torch.no_grad():
        z = module64(x.double())
        for m, dtype in ((module, torch.float32), (module64, torch.float64)):
            widths = [float(ibp(m, LpBall(x.to(dtype), eps, math.inf)).width.max())
                      for eps in (1e-2, 1e-3, 1e-4, 1e-6, 0.0)]
            assert all(a >= b for a, b in zip(widths, widths[1:])), widths
        point = ibp(module64, LpBall(x.double(), 1e-12, math.inf))
        assert float(point.width.max()) <= 1e-6 * (1 + float(z.abs().max()))
        assert_inside(point, z, "point")
