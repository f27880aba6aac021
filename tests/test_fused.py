"""The fused training steps of ``verifier.fused`` and the box arithmetic of training (``rounding.training_arithmetic``):
the same values and gradients as the plain formulas, and the same boxes as the certificate's walk."""
from __future__ import annotations

import pytest
import torch

from frontends import load_onnx
from verifier import fused
from verifier.box import Box
from verifier.certificates.certify import compute_bounds
from verifier.engines.bcp import BallBounds, clean_values, prepare, walk
from verifier.rounding import training_arithmetic

from .cases.models import BUNDLED


def _plain_intersect(ac, ar, bc, br):
    return torch.maximum(ac - ar, bc - br), torch.minimum(ac + ar, bc + br)


def _plain_midrad(lo, hi):
    return (lo + hi) / 2, ((hi - lo) / 2).clamp_min(0.0)


def _inputs(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_(True) for s in shapes]


def test_intersect_equals_max_min_with_gradients():
    full = (4, 3, 5)
    for shapes in [(full,) * 4, (full, full, full, (3, 5)), (full, (4, 1, 1), full, (5,))]:
        ac, ar, bc, br = _inputs(*shapes)
        ar, br = ar.detach().abs().requires_grad_(True), br.detach().abs().requires_grad_(True)
        got, want = fused.intersect_bounds(ac, ar, bc, br), _plain_intersect(ac, ar, bc, br)
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        w_lo, w_hi = _inputs(full, full, seed=1)
        for use_lo, use_hi in [(True, True), (True, False), (False, True)]:  # an unused output gets None
            def loss(out):
                return (out[0] * w_lo.detach()).sum() * use_lo + (out[1] * w_hi.detach()).sum() * use_hi
            g_got = torch.autograd.grad(loss(fused.intersect_bounds(ac, ar, bc, br)), (ac, ar, bc, br))
            g_want = torch.autograd.grad(loss(_plain_intersect(ac, ar, bc, br)), (ac, ar, bc, br))
            for g, w in zip(g_got, g_want):
                assert g.shape == w.shape
                assert torch.allclose(g, w, atol=1e-12)
        assert torch.autograd.gradcheck(fused.intersect_bounds, (ac, ar, bc, br))


def test_intersect_with_a_product_radius():
    """The ball of BCP: radius (per-sample scale) x (per-entry row norms), never materialized."""
    full = (4, 3, 5)
    ac, bc, w_lo, w_hi = _inputs(full, full, full, full, seed=4)
    ar, rows, scale = (t.detach().abs().requires_grad_(True) for t in _inputs(full, full[1:], (4, 1, 1), seed=5))
    for args in [(ac, ar, bc, rows, scale), (ac, ar, bc, scale, rows), (ac, ar, bc, rows, scale[:1, 0])]:
        got = fused.intersect_bounds(*args)
        want = _plain_intersect(ac, ar, bc, args[3] * args[4])
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-15)
        inputs = (ac, ar, bc, args[3], args[4])
        g_got = torch.autograd.grad((got[0] * w_lo).sum() + (got[1] * w_hi).sum(), inputs)
        g_want = torch.autograd.grad((want[0] * w_lo).sum() + (want[1] * w_hi).sum(), inputs)
        for g, w in zip(g_got, g_want):
            assert g.shape == w.shape and torch.allclose(g, w, atol=1e-12)
        assert torch.autograd.gradcheck(fused.intersect_bounds, inputs)


def test_midrad_equals_the_plain_formulas_with_gradients():
    lo, hi = _inputs((6, 7), (6, 7), seed=2)  # about half the pairs cross: radius 0 there
    got, want = fused.midrad(lo, hi), _plain_midrad(lo, hi)
    assert bool(((hi - lo) < 0).any())
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-15)
    w_c, w_r = _inputs((6, 7), (6, 7), seed=3)
    for scale_c, scale_r in [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)]:
        def loss(out):
            return (out[0] * w_c.detach()).sum() * scale_c + (out[1] * w_r.detach()).sum() * scale_r
        for g, w in zip(torch.autograd.grad(loss(fused.midrad(lo, hi)), (lo, hi)),
                        torch.autograd.grad(loss(_plain_midrad(lo, hi)), (lo, hi))):
            assert torch.allclose(g, w, atol=1e-15)
    assert torch.autograd.gradcheck(fused.midrad, (lo, hi))


def test_training_walk_equals_the_certificate_walk():
    """With the sound bounds in the context, the walk in training arithmetic (fused steps, [lo, hi] boxes,
    no rounding slack) gives the certificate's boxes up to that slack."""
    module = load_onnx(BUNDLED)
    report = compute_bounds(module, 2.0, input_dim=1).l2
    ctx = prepare(module, report)
    x = torch.rand((8, *module.graph.sample_shape), generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    clean = clean_values(ctx, x)
    eps = torch.full((8,), 0.3, dtype=torch.float64)
    for chains_only in (False, True):
        sound = walk(ctx.module64, ctx.ball, Box.ball(x, eps, 0.0, 1.0), clean, eps, report.last_input,
                     chains_only=chains_only)[report.last_input]
        with training_arithmetic():
            train = walk(ctx.module64, ctx.ball, Box.ball(x, eps, 0.0, 1.0), clean, eps, report.last_input,
                         grad=True, chains_only=chains_only)[report.last_input]
        assert type(train).__name__ == "_Bounds"
        lo, hi = train.lo.detach(), train.hi.detach()
        assert float((sound.hi - sound.lo).max()) > 0.01  # not a vacuous comparison
        # the certificate's box is the wider by its rounding slack (REL64 = 1e-9 relative, verifier.rounding) only
        scale = float(torch.maximum(sound.lo.abs(), sound.hi.abs()).max())
        assert bool((sound.lo <= lo).all()) and bool((hi <= sound.hi).all())
        assert float((lo - sound.lo).max()) < 1e-7 * scale
        assert float((sound.hi - hi).max()) < 1e-7 * scale


def test_training_walk_survives_inconsistent_estimates():
    """Training estimates can under-estimate (power iteration): the ball may then miss the interval image and
    a bound pair cross. The training walk must go on (radius 0 at the midpoint), finite and differentiable."""
    module = load_onnx(BUNDLED)
    report = compute_bounds(module, 2.0, input_dim=1).l2
    ctx = prepare(module, report)
    shrunk = {k: 1e-3 * v for k, v in report.tensor_bounds.items()}  # far below the true constants
    bad = BallBounds(shrunk, {k: 1e-3 * v for k, v in ctx.ball.row_norms.items()}, ctx.ball.chain_input)
    x = torch.rand((8, *module.graph.sample_shape), generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    clean = clean_values(ctx, x)
    clean = {k: v + 0.5 for k, v in clean.items()}  # and off-centre: the ball and the box are disjoint
    eps = torch.full((8,), 0.3, dtype=torch.float64)
    with training_arithmetic():
        env = walk(ctx.module64, bad, Box.ball(x, eps, 0.0, 1.0), clean, eps, report.last_input, grad=True)
    crossed = [name for name, b in env.items() if bool((b.lo > b.hi).any())]
    assert crossed, "the case should cross somewhere"
    out = env[report.last_input]
    assert bool(torch.isfinite(out.center).all()) and bool((out.radius >= 0).all())
    out.center.sum().backward()


def _small_cnn(act: torch.nn.Module, pool: torch.nn.Module) -> torch.nn.Sequential:
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), act, pool, nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 12), act, nn.Linear(12, 3))
    with torch.no_grad():  # running statistics that are not the identity
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("act", ["Relu", "Tanh", "Sigmoid", "LeakyRelu-neg", "Gelu"])
@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_training_walk_equals_the_certificate_walk_for_other_ops(act, pool):
    """The same comparison on batch norm, both poolings and activations that take the nondecreasing shortcut
    (Relu, Tanh, Sigmoid) or the general hull (LeakyRelu with a negative slope, Gelu: turning points)."""
    from torch import nn

    from training.arch import to_onnx

    acts = {"Relu": nn.ReLU(), "Tanh": nn.Tanh(), "Sigmoid": nn.Sigmoid(), "LeakyRelu-neg": nn.LeakyReLU(-0.5),
            "Gelu": nn.GELU()}
    pools = {"MaxPool": nn.MaxPool2d(2), "AveragePool": nn.AvgPool2d(2)}
    module = load_onnx(to_onnx(_small_cnn(acts[act], pools[pool]), (1, 8, 8)))
    report = compute_bounds(module, 2.0, input_dim=1).l2
    ctx = prepare(module, report)
    x = torch.rand((6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clean = clean_values(ctx, x)
    eps = torch.full((6,), 0.2, dtype=torch.float64)
    sound = walk(ctx.module64, ctx.ball, Box.ball(x, eps, 0.0, 1.0), clean, eps, report.last_input)
    with training_arithmetic():
        train = walk(ctx.module64, ctx.ball, Box.ball(x, eps, 0.0, 1.0), clean, eps, report.last_input, grad=True)
    assert float((sound[report.last_input].hi - sound[report.last_input].lo).max()) > 1e-3
    for name, b in sound.items():
        if not isinstance(b, Box):
            continue
        lo, hi = train[name].lo.detach(), train[name].hi.detach()
        scale = 1.0 + float(torch.maximum(b.lo.abs(), b.hi.abs()).max())
        assert bool((b.lo <= lo + 1e-12 * scale).all()) and bool((hi <= b.hi + 1e-12 * scale).all()), name
        assert float((lo - b.lo).max()) < 1e-6 * scale and float((b.hi - hi).max()) < 1e-6 * scale, name
