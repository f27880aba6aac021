"""alpha-CROWN (``verifier.engines.alpha_crown``): every choice of lower slopes is a sound relaxation (brute force),
the optimized bounds are never below CROWN's and hold at sampled points, its radii are never below CROWN's and
survive PGD, and it improves on CROWN where ReLUs are unstable."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.box import Box
from verifier.certificates.certify import compute_bounds
from verifier.engines import alpha_crown, bcp
from verifier.engines.alpha_crown import alpha_crown_radii, optimized_low
from verifier.engines.attacks import pgd
from verifier.engines.crown import crown_margin, crown_radii, prepare, spec_bounds
from verifier.linear import relu_backward
from verifier.problem import Conjunction, InputBox, LpBall, Problem, RadiusProblem

from .cases.models import NORMS_L2_FAST, blob_model
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


def test_relu_relaxation_holds_for_every_lower_slope_per_row():
    gen = torch.Generator().manual_seed(5)
    lo = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(3, 40, generator=gen, dtype=torch.float64) * 3
    box = Box.from_bounds(lo, hi)
    lam = torch.randn(3 * 4, 40, generator=gen, dtype=torch.float64)
    slopes = torch.rand(3, 4, 40, generator=gen, dtype=torch.float64) * 1.4 - 0.2  # clamped to [0, 1] inside
    coeffs, bias = relu_backward(lam, box, slopes)
    t = torch.linspace(0, 1, 51, dtype=torch.float64).reshape(-1, 1, 1)
    points = torch.cat([box.lo + (box.hi - box.lo) * t, torch.zeros(1, 3, 40).double().clamp(box.lo, box.hi)])
    lhs = (lam.reshape(1, 3, 4, 40) * torch.relu(points)[:, :, None]).sum(-1)
    rhs = (coeffs.reshape(1, 3, 4, 40) * points[:, :, None]).sum(-1) + bias.reshape(1, 3, 4)
    assert bool((lhs >= rhs).all()), float((rhs - lhs).max())


@pytest.fixture(scope="module")
def deep_mlp(tmp_path_factory):
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 3))
    path, _, x, y = blob_model(tmp_path_factory.mktemp("alpha_crown"), net)
    module = load_onnx(path)
    with torch.no_grad():
        keep = module(x).argmax(1) == y
    return module, x[keep][:24], y[keep][:24]


@pytest.mark.parametrize("intermediate", [True, False], ids=["all-slopes", "spec-slopes"])
def test_optimized_bounds_beat_crown_and_hold_at_sampled_points(deep_mlp, intermediate, monkeypatch):
    """Random linear rows over input boxes: alpha-CROWN's bound of each row is >= CROWN's and below the row's
    value at every sampled point; with the intermediate slopes too (the default) and with the spec's alone."""
    if not intermediate:
        monkeypatch.setattr(alpha_crown, "SLOPE_ENTRIES", 0)
    module, x, y = deep_mlp
    gen = torch.Generator().manual_seed(11)
    width = 1.5 * torch.rand(x.shape, generator=gen)
    inputs = InputBox(x - width, x + width)
    with torch.no_grad():
        z = module(x).double()
    c = torch.randn(len(x), 3, 3, generator=gen, dtype=torch.float64)
    spec = Conjunction(c, 1.0 - (c @ z[..., None])[..., 0])
    crown = spec_bounds(prepare(module), Problem(inputs, spec))
    with torch.no_grad():
        before = crown.low()
    after = optimized_low(crown)
    assert bool((after >= before).all())
    assert float((after - before).max()) > 1e-3, "the slopes moved nothing"
    points = inputs.lower + (inputs.upper - inputs.lower) * torch.rand((256, *x.shape), generator=gen).double()
    with torch.no_grad():
        zs = module(points.reshape(-1, 6).float()).double().reshape(256, len(x), 3)
    values = (c[None] @ zs[..., None])[..., 0] + spec.d[None]
    assert bool((values >= after[None]).all()), float((after[None] - values).max())


def test_the_slope_limit_argument_overrides_the_default(deep_mlp, monkeypatch):
    """``slope_entries`` (what branch and bound's single region passes) lifts ``SLOPE_ENTRIES``: with the default at
    0 the intermediate slopes are dropped, with the argument they are optimized, and tighten the bounds."""
    monkeypatch.setattr(alpha_crown, "SLOPE_ENTRIES", 0)
    module, x, y = deep_mlp
    inputs = InputBox(x - 1.5, x + 1.5)
    crown = spec_bounds(prepare(module), Problem(inputs, Conjunction.robustness(y, 3)))
    spec_only = alpha_crown.optimized(crown)[0]
    everything = alpha_crown.optimized(crown, slope_entries=2 ** 20)[0]
    open_ = spec_only <= 0
    assert bool(open_.any())
    assert float((everything - spec_only)[open_].sum()) > 0.1


@pytest.mark.parametrize("norm", NORMS_L2_FAST)
def test_alpha_crown_radii_never_below_crown_and_survive_pgd(deep_mlp, norm):
    module, x, y = deep_mlp
    balls = RadiusProblem(x, y, norm)
    report = compute_bounds(module, 2.0, input_dim=6).l2 if norm == 2 else None
    crown = crown_radii(module, balls, report)
    alpha = alpha_crown_radii(module, balls, report, start=crown)
    assert bool((alpha >= crown).all())
    assert float((alpha > 1.0005 * crown).double().mean()) > 0.5, "alpha-CROWN improved few radii"
    ctx = bcp.prepare(module, report) if report is not None else None
    ok = crown_margin(module, balls.at(crown), *((ctx.module64, ctx.ball) if ctx else ())) > 0
    assert bool(ok.all()), "CROWN's radii are proved points"
    _, success = pgd(module, balls.at(alpha.float() * 0.999), steps=100, restarts=10)
    assert not success.any(), "an attack broke an alpha-CROWN radius"


def test_alpha_crown_on_a_point_and_a_disjunction(deep_mlp):
    """At eps = 0 every correctly classified input is proved; a disjunction is proved where a part is."""
    module, x, y = deep_mlp
    balls = RadiusProblem(x, y, 2.0)
    proved = alpha_crown.verify_alpha_crown(module, balls.at(0.0))
    assert bool(proved.all())
    wide = LpBall(x, 50.0, 2.0)
    assert not bool(alpha_crown.verify_alpha_crown(module, Problem(wide, balls.spec)).any())
