"""Verification problems as data (``verifier.problem``) and the engines that take them: the input sets enclose
what they say, the robustness spec's rows are z_y - z_j, and IBP/BCP decide any linear spec, any disjunction
and plain input boxes soundly (a projected-gradient attack with restarts on the spec's worst row finds no
violation of a verified problem) and not vacuously."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.certificates.certify import compute_bounds
from verifier.engines.bcp import verify_bcp, verify_ibp
from verifier.problem import Conjunction, Disjunction, InputBox, LpBall, Problem, RadiusProblem

from .cases.models import blob_model, relu_tanh_blobs
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(name, module, x) for an MLP ending in an affine layer and one whose logits pass through a ReLU."""
    path, _, x, _ = relu_tanh_blobs(tmp_path_factory.mktemp("problem_smooth"))
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), nn.ReLU())
    relu_path, _, xr, _ = blob_model(tmp_path_factory.mktemp("problem_relu"), net)
    return [("affine", load_onnx(path), x[:40]), ("relu-logits", load_onnx(relu_path), xr[:40])]


def _random_spec(module, x: torch.Tensor, rows: int, seed: int) -> Conjunction:
    """Random rows C with offsets d that make C z(x) + d between 0.2 and 2 at the centres."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = module(x).double().reshape(len(x), -1)
    c = torch.randn(len(x), rows, z.shape[1], generator=gen, dtype=torch.float64)
    margin = 0.2 + 1.8 * torch.rand(len(x), rows, generator=gen, dtype=torch.float64)
    d = margin - (c @ z[..., None])[..., 0]
    return Conjunction(c, d)


def _worst(module, inputs, spec: Conjunction, restarts: int = 8, steps: int = 40) -> torch.Tensor:
    """The smallest min_r (C z + d)_r a projected-gradient attack finds in each input set (an ``LpBall``
    without domain, or an ``InputBox``), from random starts in the set."""
    gen = torch.Generator().manual_seed(0)
    box = inputs.box(torch.float32)
    lo, hi = box.lo, box.hi

    def project(x: torch.Tensor) -> torch.Tensor:
        x = torch.minimum(torch.maximum(x, lo), hi)
        if isinstance(inputs, LpBall) and inputs.norm == 2:
            c = inputs.center.float()
            d = (x - c).reshape(len(x), -1)
            scale = (inputs.eps.float() / d.norm(dim=1).clamp_min(1e-30)).clamp_max(1.0)
            x = c + (d * scale[:, None]).reshape(x.shape)
        return x

    best = torch.full((len(lo),), math.inf, dtype=torch.float64)
    step = (hi - lo) / 10
    for _ in range(restarts):
        x = project(lo + (hi - lo) * torch.rand(lo.shape, generator=gen)).requires_grad_(True)
        for _ in range(steps):
            value = spec.values(module(x).double()).min(dim=1).values
            best = torch.minimum(best, value.detach())
            (grad,) = torch.autograd.grad(value.sum(), x)
            with torch.no_grad():
                x = project(x - step * grad.sign()).requires_grad_(True)
        with torch.no_grad():
            best = torch.minimum(best, spec.values(module(x).double()).min(dim=1).values)
    return best


def test_input_sets_enclose_their_points():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 4, generator=gen, dtype=torch.float64)
    for norm in (2.0, math.inf):
        ball = LpBall(x, torch.tensor([0.0, 0.01, 0.1, 0.5, 2.0]), norm, 0.0, 1.0)
        box = ball.box()
        centre, rho = ball.l2_ball()
        for _ in range(200):
            d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            if norm == 2:
                d = d / d.reshape(5, -1).norm(dim=1).reshape(5, 1, 1) * ball.eps.reshape(5, 1, 1) * (1 - 1e-12)
            else:
                d = d.sign() * ball.eps.reshape(5, 1, 1)
            p = (x + d).clamp(0, 1)
            assert box.contains(p)
            assert bool(((p - centre).reshape(5, -1).norm(dim=1) <= rho).all())
    lo = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(4, 6, generator=gen, dtype=torch.float64)
    plain = InputBox(lo, hi)
    centre, rho = plain.l2_ball()
    corners = torch.where(torch.rand(300, 4, 6, generator=gen) < 0.5, lo, hi)
    assert bool(((corners - centre).reshape(300, 4, -1).norm(dim=2) <= rho).all())
    assert plain.box().contains(corners[0])
    with pytest.raises(ValueError):
        InputBox(hi, lo)
    with pytest.raises(ValueError):
        LpBall(x, 0.1, 1.0)


def test_robustness_rows():
    y = torch.tensor([0, 2, 1])
    spec = Conjunction.robustness(y, 3)
    c, d = spec.rows()
    assert c.shape == (3, 2, 3) and bool((d == 0).all())
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0], [1.0, 1.0, 0.0]])
    expected = torch.tensor([[2.0, 1.0], [5.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(spec.values(z), expected)
    assert spec.holds_at(z).tolist() == [True, True, False]
    assert RadiusProblem(torch.zeros(3, 2), y, 2).at(0.1).spec.labels.tolist() == [0, 2, 1]
    either = Disjunction((Conjunction.robustness(y, 3), Conjunction.robustness(torch.tensor([0, 0, 0]), 3)))
    assert either.holds_at(z).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        Problem(LpBall(torch.zeros(2, 2), 0.1), spec)
    with pytest.raises(ValueError):
        Conjunction(torch.zeros(3, 2, 3), torch.zeros(3, 3))  # d must be (B, R)
    with pytest.raises(ValueError):
        Disjunction(())


@pytest.mark.parametrize("bcp", [False, True], ids=["ibp", "bcp"])
def test_linear_specs_are_sound_and_not_vacuous(models, bcp):
    """Random linear specs on l2 balls, l_inf balls and plain boxes: nothing verified is violated."""
    verify = verify_bcp if bcp else verify_ibp
    gen = torch.Generator().manual_seed(4)
    for name, module, x in models:
        report = compute_bounds(module, 2.0, input_dim=6).l2
        spec = _random_spec(module, x, rows=3, seed=5)
        proved = refuted = 0
        for eps in (0.02, 0.1, 0.3):
            width = eps * torch.rand(x.shape, generator=gen)
            for inputs in (LpBall(x, eps, 2.0), LpBall(x, eps, math.inf), InputBox(x - width, x + width)):
                ok = verify(module, report, Problem(inputs, spec))
                proved += int(ok.sum())
                refuted += int((~ok).sum())
                if ok.any():
                    idx = ok.nonzero()[:, 0]
                    worst = _worst(module, inputs[idx], spec[idx])
                    assert bool((worst > 0).all()), (name, eps, type(inputs).__name__)
        assert proved > 0 and refuted > 0, f"{name}: {proved} verified, {refuted} not (vacuous test)"


def test_general_rows_agree_with_the_robustness_form(models):
    """The robustness spec written as plain rows C (no labels) goes through the general path; it proves what the
    pairwise form proves, up to the last layer's rounding allowances (and nothing the attack breaks)."""
    for name, module, x in models:
        report = compute_bounds(module, 2.0, input_dim=6).l2
        with torch.no_grad():
            y = module(x).argmax(1)
        robust = Conjunction.robustness(y, 3)
        plain = Conjunction(*robust.rows())
        for verify in (verify_ibp, verify_bcp):
            for eps in (0.05, 0.2):
                ball = LpBall(x, eps, 2.0)
                a = verify(module, report, Problem(ball, robust))
                b = verify(module, report, Problem(ball, plain))
                assert int((a != b).sum()) <= 1, (name, eps)


def test_disjunctions_hold_when_a_part_does(models):
    name, module, x = models[0]
    report = compute_bounds(module, 2.0, input_dim=6).l2
    first, second = _random_spec(module, x, 3, seed=1), _random_spec(module, x, 3, seed=2)
    ball = LpBall(x, 0.1, 2.0)
    a = verify_bcp(module, report, Problem(ball, first))
    b = verify_bcp(module, report, Problem(ball, second))
    either = verify_bcp(module, report, Problem(ball, Disjunction((first, second))))
    assert torch.equal(either, a | b)
