"""The Normalizer's gradient and linear rules (``verifier.ops.ml``, ``verifier.linear.mean_value_backward``)
against brute force, on boxes where the norm stays positive; near 0 the gradient rule refuses in one line, and
a Pipeline(Normalizer, LogisticRegression) certifies through them (local, CROWN) without an attack breaking it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.box import Box
from verifier.errors import NoRuleError
from verifier.ops.ml import Normalizer

from .onnx_graphs import box_points, l2_radii, pgd_succeeds_inside


def boxes(norm: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(24, 5, generator=gen, dtype=torch.float64) * 2
    if norm == "MAX":
        centre[:12, 0] = 3.0  # rows with one sure maximum, and rows with several candidates
        centre[12:, :2] = 2.0
    centre[:, 1] = centre[:, 1].abs() + 1.5  # the norm stays away from 0
    widths = torch.tensor([0.001, 0.05, 0.3], dtype=torch.float64).repeat(8)[:, None]
    radius = torch.rand(24, 5, generator=gen, dtype=torch.float64) * widths
    return centre - radius, centre + radius


def points(lo: torch.Tensor, hi: torch.Tensor, count: int, seed: int = 1) -> torch.Tensor:
    return box_points(lo, hi, count, seed)


@pytest.mark.parametrize("norm", ["L1", "L2", "MAX"])
def test_gradient_rule_contains_sampled_vector_jacobian_products(norm):
    op = Normalizer({"norm": norm}, {}, 1, "n")
    lo, hi = boxes(norm)
    gen = torch.Generator().manual_seed(2)
    g = Box(torch.randn(24 * 3, 5, generator=gen, dtype=torch.float64),
            torch.rand(24 * 3, 5, generator=gen, dtype=torch.float64) * 0.1)
    (out,) = op.grad_interval([Box.from_bounds(lo, hi)], [g])
    pts = points(lo, hi, 300)
    seeds = g.center + g.radius * (2 * torch.rand(300, 24 * 3, 5, generator=gen, dtype=torch.float64) - 1)
    x = pts.repeat_interleave(3, 1).requires_grad_(True)
    (vjp,) = torch.autograd.grad(op.forward(x), x, seeds)
    assert (vjp >= out.lo).all() and (vjp <= out.hi).all()


def test_gradient_rule_refuses_where_the_norm_may_vanish():
    op = Normalizer({"norm": "L2"}, {}, 1, "n")
    box = Box.from_bounds(torch.full((1, 3), -0.1, dtype=torch.float64), torch.full((1, 3), 0.1, dtype=torch.float64))
    with pytest.raises(NoRuleError, match="norm may be 0"):
        op.grad_interval([box], [Box.point(torch.ones(1, 3, dtype=torch.float64))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["L1", "L2", "MAX"])
def test_linear_rule_holds_at_sampled_points_and_beats_the_box_on_small_boxes(norm, dtype):
    from verifier.linear import box_backward

    op = Normalizer({"norm": norm}, {}, 1, "n")
    lo, hi = boxes(norm, seed=3)
    box = Box.from_bounds(lo.to(dtype), hi.to(dtype))
    gen = torch.Generator().manual_seed(4)
    lam = torch.randn(24 * 4, 5, generator=gen, dtype=torch.float64)
    (coef,), bias = op.linear([box], [lam])
    pts = points(box.lo.double(), box.hi.double(), 400).to(dtype)
    for precision in (torch.float64, dtype):
        out = op.forward(pts.to(precision)).double().repeat_interleave(4, 1)  # (400, 24 * 4, 5)
        lhs = (lam * out).sum(-1)
        rhs = (coef * pts.double().repeat_interleave(4, 1)).sum(-1) + bias
        assert (lhs >= rhs).all(), float((rhs - lhs).max())
    small = torch.arange(24).repeat_interleave(4) % 3 == 0  # the boxes of width 0.001
    linear = torch.minimum(coef * box.lo.double().repeat_interleave(4, 0),
                           coef * box.hi.double().repeat_interleave(4, 0)).sum(-1) + bias
    boxed = box_backward([lam], [op.interval(box)])
    assert (linear[small] > boxed[small]).float().mean() >= 0.9


def test_a_normalizer_before_a_classifier_certifies_with_crown():
    """Pipeline(Normalizer("l2"), LogisticRegression): CROWN goes through the Normalizer's linear rule (before, it
    bounded it by its box: IBP's radii), larger than IBP on most inputs; PGD (20 restarts) never succeeds inside
    its radii. (The Lipschitz-based methods refuse: x / ||x|| is not Lipschitz near 0.)"""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install lipverify[sklearn])")
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer as SkNormalizer

    from frontends import load_onnx

    rng = np.random.default_rng(0)
    x = (rng.random((300, 6)) + 0.2).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(int) + (x[:, 2] > 0.9).astype(int)
    est = make_pipeline(SkNormalizer("l2"), LogisticRegression()).fit(x, y)
    module = load_onnx(skl2onnx.to_onnx(est, x[:1], options={id(est): {"zipmap": False}}))
    assert "Normalizer" in module.graph.op_counts()
    xt = torch.from_numpy(x[:30])
    with torch.no_grad():
        yt = module(xt).argmax(1)
    radii, ibp = l2_radii(module, xt, yt, ("crown", "ibp")).values()
    keep = radii > 0
    assert keep.float().mean() > 0.6 and (radii > ibp).float().mean() > 0.6
    assert not pgd_succeeds_inside(module, xt[keep], yt[keep], radii[keep])
