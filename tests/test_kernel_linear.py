"""The linear (CROWN) rule of ``KernelExpansion`` (``verifier.ops.kernel_linear``) against brute force: for random
boxes and rows lam, lam . out >= coef . x + bias at sampled points of the box (corners included), for the forward
in float64 and in the box's dtype; and tighter than the box rule on small boxes."""
from __future__ import annotations

import pytest
import torch

from verifier.box import Box
from verifier.linear import box_backward
from verifier.ops.kernels import KernelExpansion

from .onnx_graphs import l2_radii, pgd_succeeds_inside

F = 6
KERNELS = [("RBF", 1), ("LINEAR", 1), ("POLY", 2), ("POLY", 3), ("SIGMOID", 1)]


def op_and_constants(kernel: str, degree: int, seed: int, n: int = 12, p: int = 4):
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(n, F, generator=gen)
    a = torch.randn(p, n, generator=gen) * 3
    b = torch.randn(p, generator=gen)
    op = KernelExpansion({"kernel_type": kernel.encode(), "gamma": 0.8, "coef0": 0.3, "degree": degree}, {}, 1, "k")
    return op, s, a, b


def concretized(coef: torch.Tensor, bias: torch.Tensor, box: Box) -> torch.Tensor:
    """min over the box of coef . x + bias, per row (B * R,)."""
    rows = coef.shape[0] // box.shape[0]
    lo, hi = box.lo.double().repeat_interleave(rows, 0), box.hi.double().repeat_interleave(rows, 0)
    return torch.minimum(coef * lo, coef * hi).sum(1) + bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,degree", KERNELS)
def test_linear_rule_holds_at_sampled_points(kernel, degree, dtype):
    gen = torch.Generator().manual_seed(3)
    for seed, width in enumerate((0.0, 1e-3, 0.05, 0.3, 2.0)):
        op, s, a, b = op_and_constants(kernel, degree, seed)
        c = torch.rand(3, F, generator=gen, dtype=torch.float64) * 2 - 0.5
        box = Box(c.to(dtype), torch.full_like(c, width).to(dtype))
        lam = torch.randn(3 * 5, a.shape[0], generator=gen, dtype=torch.float64)
        coef, bias = op.linear([box, s.double(), a.double(), b.double()], [lam])
        coef = coef[0]
        u = torch.rand(300, 3, F, generator=gen, dtype=torch.float64)
        u = torch.where(u < 0.2, torch.zeros_like(u), torch.where(u > 0.8, torch.ones_like(u), u))
        pts = (box.lo.double() + u * (box.hi.double() - box.lo.double())).to(dtype).double()  # points of the box
        for precision in (torch.float64, dtype):
            out = op.forward(pts.reshape(-1, F).to(precision), s.to(precision), a.to(precision),
                             b.to(precision)).double().reshape(300, 3, 1, -1)
            lam_b = lam.reshape(3, 5, -1)
            lhs = (lam_b * out).sum(-1)  # (300, 3, 5)
            rhs = (coef.reshape(3, 5, F) * pts[:, :, None]).sum(-1) + bias.reshape(3, 5)
            assert (lhs >= rhs).all(), float((rhs - lhs).max())


@pytest.mark.parametrize("kernel,degree", KERNELS)
def test_linear_rule_beats_the_box_on_small_boxes(kernel, degree):
    """On boxes of width 0.02 the rule's bound, concretized over the box, is above the box rule's on most rows
    (the lines follow the kernel's slope; the box ignores it)."""
    gen = torch.Generator().manual_seed(5)
    op, s, a, b = op_and_constants(kernel, degree, 7)
    c = torch.rand(8, F, generator=gen, dtype=torch.float64)
    box = Box(c, torch.full_like(c, 0.01))
    lam = torch.randn(8 * 4, a.shape[0], generator=gen, dtype=torch.float64)
    coef, bias = op.linear([box, s.double(), a.double(), b.double()], [lam])
    linear = concretized(coef[0], bias, box)
    boxed = box_backward([lam], [op.interval(box, s.double(), a.double(), b.double())])
    assert (linear >= boxed - 1e-12).float().mean() >= 0.9 and (linear > boxed).float().mean() >= 0.75


# --- CROWN on support vector machines -------------------------------------------------------------------------------
sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install lipverify[sklearn])")
skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_crown_radii_on_svms_survive_pgd_and_beat_ibp(kernel):
    """CROWN through the kernel op's linear rule: PGD (20 restarts) never changes the label inside its radii, and
    they are at least IBP's (the box rule) everywhere, larger on most inputs."""
    import numpy as np
    from sklearn.svm import SVC

    from frontends import load_onnx

    rng = np.random.default_rng(2)
    x = rng.random((240, F)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(int) + (x[:, 1] > 0.6).astype(int)
    est = SVC(kernel=kernel, gamma=2.0, degree=3).fit(x, y)
    module = load_onnx(skl2onnx.to_onnx(est, x[:1], options={id(est): {"zipmap": False}}))
    xt = torch.from_numpy(rng.random((30, F)).astype(np.float32))
    with torch.no_grad():
        yt = module(xt).argmax(1).clamp_max(2)
    radii = l2_radii(module, xt, yt, ("crown", "ibp"))
    crown = radii["crown"]
    keep = crown > 0
    assert keep.float().mean() > 0.6
    assert (crown >= radii["ibp"]).all() and (crown > radii["ibp"]).float().mean() > 0.6
    assert not pgd_succeeds_inside(module, xt[keep], yt[keep], crown[keep])


def test_kernel_certificate_beats_crown_on_fashion_mnist():
    """On 784 Fashion-MNIST features (the bundled 1,000 test images; an SVC(rbf) for T-shirt vs shirt trained
    on all but the last 12 of them) the kernel radius is larger than CROWN's on most inputs."""
    import numpy as np
    from sklearn.svm import SVC

    from frontends import load_onnx

    from .test_onnx_ml import _fashion

    x, y = _fashion(1000)
    keep = np.isin(y, [0, 6])
    x, y = x[keep], (y[keep] == 6).astype(int)
    est = SVC(kernel="rbf", C=10, gamma="scale").fit(x[:-12], y[:-12])
    module = load_onnx(skl2onnx.to_onnx(est, x[:1], options={id(est): {"zipmap": False}}))
    radii = l2_radii(module, torch.from_numpy(x[-12:]), torch.from_numpy(y[-12:]), ("crown", "kernel"))
    assert (radii["crown"] > 0).float().mean() > 0.5
    assert (radii["kernel"] >= radii["crown"]).float().mean() >= 0.75
