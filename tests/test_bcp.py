"""IBP and BCP certificates (verifier.engines.bcp): soundness against PGD at 0.999 x the certified radius, BCP >= LMT
Prop. 2 per input, problem (11) against a brute-force solution, and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import certified_radii
from verifier.engines.attacks import pgd
from verifier.engines.bcp import bcp_radii, ibp_radii, verify_bcp, verify_ibp
from verifier.last_layer import ball_box_min
from verifier.problem import RadiusProblem

from .cases.models import (ALL_METHODS, NORMS_L2_FAST, blob_model, mlp_and_cnn, mnist_net, only_network_skips,
                           relu_tanh_blobs)
from .conftest import run_main
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.fixture(scope="module")
def smooth_model(tmp_path_factory):
    return relu_tanh_blobs(tmp_path_factory.mktemp("smooth_bcp"))


def _check_pgd(module, x, y, radii, norm, lower, upper):
    ok = radii > 0
    assert ok.float().mean() > 0.5, "the certificate is vacuous here"
    _, success = pgd(module, RadiusProblem(x[ok], y[ok], norm, lower, upper).at(radii[ok].float() * 0.999),
                     steps=100, restarts=10)
    assert not success.any(), "an attack broke a certified radius"


@pytest.mark.parametrize("norm", NORMS_L2_FAST)
def test_ibp_radii_survive_pgd(smooth_model, norm):
    for name, module, x, y, lower, upper in mlp_and_cnn(smooth_model):
        report = compute_bounds(module, 2.0, input_dim=1).l2
        balls = RadiusProblem(x, y, norm, lower, upper)
        radii = ibp_radii(module, report, balls)
        _check_pgd(module, x, y, radii, norm, lower, upper)
        # verification holds at the radius found
        assert verify_ibp(module, report, balls.at(radii))[radii > 0].all()


def test_bcp_radii_survive_pgd_and_beat_prop2(smooth_model):
    for name, module, x, y, lower, upper in mlp_and_cnn(smooth_model):
        bounds = compute_bounds(module, 2.0, input_dim=1)
        with torch.no_grad():
            logits = module(x)
        prop2 = certified_radii(logits, y, bounds, 2.0, "lmt-pairwise").double()
        balls = RadiusProblem(x, y, 2.0, lower, upper)
        radii = bcp_radii(module, bounds.l2, balls, start=prop2)
        assert (radii >= prop2 * (1 - 1e-6)).all()
        # the bisection alone (no prop2 floor) also reaches prop2 up to its tolerance
        alone = bcp_radii(module, bounds.l2, balls)
        assert (alone >= prop2 * 0.999 - 1e-9).all(), name
        # and BCP is at least as good as IBP in l2 (the ball only tightens the boxes)
        ibp = ibp_radii(module, bounds.l2, balls)
        assert (alone >= ibp * 0.999 - 1e-9).all(), name
        assert verify_bcp(module, bounds.l2, balls.at(alone))[alone > 0].all()
        _check_pgd(module, x, y, radii, 2.0, lower, upper)


@pytest.mark.slow
def test_bcp_linf_survives_pgd_and_beats_ibp(smooth_model):
    """l_inf BCP (§3.1): the box itself plus the l2 ball of radius sqrt(N) eps that circumscribes it."""
    for name, module, x, y, lower, upper in mlp_and_cnn(smooth_model):
        bounds = compute_bounds(module, 2.0, input_dim=1)
        balls = RadiusProblem(x, y, math.inf, lower, upper)
        radii = bcp_radii(module, bounds.l2, balls)
        ibp = ibp_radii(module, bounds.l2, balls)
        assert (radii >= ibp * 0.999 - 1e-9).all(), name
        assert verify_bcp(module, bounds.l2, balls.at(radii))[radii > 0].all()
        _check_pgd(module, x, y, radii, math.inf, lower, upper)


def test_bcp_on_logits_after_an_activation(tmp_path_factory):
    """Logits that pass through a final ReLU (as in eran's mnist_relu_9_200): BCP bounds z_y - z_j by the
    tightened logit box; its radii survive PGD and are at least IBP's."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), nn.ReLU())
    path, _, x, y = blob_model(tmp_path_factory.mktemp("relu_logits"), net)
    module = load_onnx(path)
    with torch.no_grad():
        keep = module(x).argmax(1) == y
    x, y = x[keep][:80], y[keep][:80]
    report = compute_bounds(module, 2.0, input_dim=6).l2
    assert report.last_matrix is None
    balls = RadiusProblem(x, y, 2.0)
    radii = bcp_radii(module, report, balls)
    assert (radii >= ibp_radii(module, report, balls) * 0.999 - 1e-9).all()
    _check_pgd(module, x, y, radii, 2.0, None, None)


def test_problem_11_against_brute_force():
    """min c.d over {||d|| <= rho} and the box: the paper's iteration + duality never exceeds the minimum (a
    lower bound) and equals it: against a dense grid (2-D) and a dense search along the KKT path
    d(t) = clip(-t c, lo, hi) (any dimension)."""
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 8):
        c = torch.randn(1, 40, n, generator=gen, dtype=torch.float64)
        lo = -torch.rand(1, 1, n, generator=gen, dtype=torch.float64)
        hi = torch.rand(1, 1, n, generator=gen, dtype=torch.float64)
        rho = torch.tensor([[0.7]], dtype=torch.float64)
        ours = ball_box_min(c, lo, hi, rho)[0]
        # the KKT point by bisection on t for ||clip(-t c)|| = rho (independent of the paper's iteration)
        t_lo, t_hi = torch.zeros(40, dtype=torch.float64), torch.full((40,), 1e6, dtype=torch.float64)
        for _ in range(200):
            mid = (t_lo + t_hi) / 2
            inside = torch.minimum(torch.maximum(-mid[:, None] * c[0], lo[0]), hi[0]).norm(dim=1) <= 0.7
            t_lo, t_hi = torch.where(inside, mid, t_lo), torch.where(inside, t_hi, mid)
        best = (torch.minimum(torch.maximum(-t_lo[:, None] * c[0], lo[0]), hi[0]) * c[0]).sum(1)
        assert (ours <= best + 1e-9).all()
        assert (ours >= best - 1e-7).all()
        if n == 2:
            grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 401, dtype=torch.float64)] * 2,
                                              indexing="ij"), -1).reshape(-1, 2)
            inside = (grid.norm(dim=1) <= 0.7) & (grid >= lo[0, 0]).all(1) & (grid <= hi[0, 0]).all(1)
            brute = (c[0] @ grid[inside].T).min(dim=1).values
            assert (ours <= brute + 1e-9).all() and (ours >= brute - 0.02).all()
        # without the ball: the box minimum, never above the ball-and-box one
        box = ball_box_min(c, lo, hi, None)[0]
        assert (box <= ours + 1e-9).all()


def test_cli_methods(smooth_model, capsys):
    path, data, _, _ = smooth_model
    for method in ("ibp", "bcp"):
        code, out, _ = run_main(capsys, "certify", str(path), "--data", str(data), "--method", method,
                                "--limit", "30", "--json")
        assert code == 0, out
        result = json.loads(out[out.index("{"):])
        assert result["method"] == method and len(result["radii"]) == 30
        assert sum(r > 0 for r in result["radii"]) > 15
    code, out, _ = run_main(capsys, "certify", str(path), "--data", str(data), "--method", "bcp", "--norm", "inf",
                            "--limit", "30", "--json")
    assert code == 0 and sum(r > 0 for r in json.loads(out)["radii"]) > 15


@pytest.mark.slow
def test_mnist_net_medians():
    module, ds, bounds, logits, correct, lower, upper = mnist_net(20)
    prop2 = certified_radii(logits, ds.y, bounds, 2.0, "lmt-pairwise").double()
    balls = RadiusProblem(ds.x, ds.y, 2.0, lower, upper)
    ibp = ibp_radii(module, bounds.l2, balls)
    bcp = bcp_radii(module, bounds.l2, balls, start=prop2)
    med = {k: float(v[correct].median()) for k, v in (("lmt-pairwise", prop2), ("ibp", ibp), ("bcp", bcp))}
    print("median l2 radii, first 20 MNIST images:", med)
    assert med["bcp"] > 10 * med["lmt-pairwise"] and med["bcp"] > med["ibp"]
    assert 0.01 < med["bcp"] < 0.72  # the scale: IBP-like 0.059, PGD 0.72
    for radii in (ibp, bcp):
        ok = radii > 0
        _, success = pgd(module, RadiusProblem(ds.x[ok], ds.y[ok], 2, lower, upper).at(radii[ok].float() * 0.999),
                         steps=100, restarts=10)
        assert not success.any()


def test_best_takes_the_largest_sound_radius_per_input(smooth_model, capsys):
    path, data_path = smooth_model[0], smooth_model[1]
    code, out, _ = run_main(capsys, "certify", str(path), "--data", str(data_path), "--method", "best", "--json",
                            "--limit", "60")
    assert code == 0
    report = json.loads(out)
    by_method = report["radii_by_method"]
    assert set(by_method) == ALL_METHODS and only_network_skips(report["methods_skipped"])
    stacked = np.array([by_method[k] for k in by_method])
    np.testing.assert_allclose(report["radii"], stacked.max(axis=0), rtol=1e-6)
    for i, winner in enumerate(report["winner"]):
        if winner is not None:
            assert by_method[winner][i] == pytest.approx(report["radii"][i], rel=1e-6)
    # l_inf: every method applies too (BCP with the circumscribing l2 ball, BCP §3.1)
    code, out, _ = run_main(capsys, "certify", str(path), "--data", str(data_path), "--method", "best", "--json",
                            "--limit", "20", "--norm", "inf")
    assert code == 0 and set(json.loads(out)["radii_by_method"]) == ALL_METHODS
