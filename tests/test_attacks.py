"""verifier.engines.attacks: PGD, DeepFool and the attack radius against exact answers on affine classifiers, box and
ball constraints, a small trained ReLU network, an imported ONNX model, and hygiene (no gradient or parameter
changes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.engines.attacks import attack_radius, deepfool, pgd
from verifier.problem import RadiusProblem

from .conftest import shared_dir
from .onnx_graphs import make_model, node, rand, torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

INF = float("inf")
NORMS = [pytest.param(2.0, id="l2"), pytest.param(INF, id="linf")]


def dist(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    return (a.double() - b.double()).flatten(1).norm(p=p, dim=1)


class Affine:
    """z = W x + b with D inputs and K classes, and its exact minimal adversarial distances."""

    def __init__(self, d: int = 20, k: int = 6, n: int = 64, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.model = nn.Linear(d, k)
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(k, d, generator=gen))
            self.model.bias.copy_(torch.randn(k, generator=gen))
        self.model.requires_grad_(False)
        self.x = torch.randn(n, d, generator=gen)
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)

    def exact(self, p: float) -> torch.Tensor:
        """min_{j != y} (z_y - z_j) / ||w_y - w_j||_q, q the dual norm (2 for l2, 1 for l_inf): the distance to
        the nearest half-space where class j is at least class y."""
        w = self.model.weight.double()
        z = self.model(self.x).double()
        q = 2.0 if p == 2.0 else 1.0
        diff = w[self.y][:, None, :] - w[None, :, :]  # (n, k, d): w_y - w_j
        gap = z.gather(1, self.y[:, None]) - z  # z_y - z_j
        d = gap / diff.norm(p=q, dim=2).clamp_min(1e-30)
        d[torch.arange(len(self.y)), self.y] = INF
        return d.min(1).values


@pytest.fixture(scope="module")
def affine() -> Affine:
    return Affine()


@pytest.mark.parametrize("p", NORMS)
def test_pgd_on_affine_model_brackets_the_exact_distance(affine, p):
    exact = affine.exact(p)
    x_adv, success = pgd(affine.model, RadiusProblem(affine.x, affine.y, p).at((1.02 * exact).float()),
                         steps=50, restarts=5)
    assert success.float().mean().item() >= 0.95
    assert bool((dist(x_adv, affine.x, p) <= 1.02 * exact + 1e-6).all())  # float32 rounding of x + d
    assert torch.equal(affine.model(x_adv).argmax(1) != affine.y, success)
    # below the exact distance nothing is adversarial: PGD must not claim success
    x_adv, success = pgd(affine.model, RadiusProblem(affine.x, affine.y, p).at((0.98 * exact).float()),
                         steps=50, restarts=5)
    assert not bool(success.any())
    assert not bool((affine.model(x_adv).argmax(1) != affine.y).any())


@pytest.mark.parametrize("p", NORMS)
def test_attack_radius_on_affine_model(affine, p):
    exact = affine.exact(p)
    radius, examples = attack_radius(affine.model, RadiusProblem(affine.x, affine.y, p), return_examples=True)
    assert radius.dtype == torch.float64 and radius.shape == exact.shape
    ratio = radius / exact
    assert bool((ratio >= 1 - 1e-5).all()), "an adversarial example closer than the exact distance"
    assert bool((ratio <= 1.03).all()), f"worst ratio {ratio.max().item()}"
    assert bool((affine.model(examples).argmax(1) != affine.y).all())
    torch.testing.assert_close(dist(examples, affine.x, p), radius)


@pytest.mark.parametrize("p", NORMS)
def test_deepfool_on_affine_model(affine, p):
    exact = affine.exact(p)
    x_adv = deepfool(affine.model, RadiusProblem(affine.x, affine.y, p), overshoot=0.02)
    assert bool((affine.model(x_adv).argmax(1) != affine.y).all())
    ratio = dist(x_adv, affine.x, p) / exact
    assert bool((ratio >= 1.02 - 1e-4).all()) and bool((ratio <= 1.02 + 1e-4).all()), ratio


def test_targeted_restarts_reach_a_far_but_steep_boundary():
    """Class 1 has the higher logit but a distant boundary; class 2 a lower logit and the nearest boundary:
    ascending the untargeted margin from x follows class 1, the targeted restart finds class 2."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 10.0]]))
        model.bias.copy_(torch.tensor([0.0, -0.5, -5.0]))
    x = torch.zeros(1, 2)
    y = torch.zeros(1, dtype=torch.long)
    # exact l2 distances: class 1, 0.5 / 0.1 = 5; class 2, 5 / 10 = 0.5
    _, success = pgd(model, RadiusProblem(x, y, 2).at(0.51), steps=50, restarts=3)
    assert bool(success.all())
    radius = attack_radius(model, RadiusProblem(x, y, 2))
    assert radius.item() == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("p", NORMS)
def test_box_and_ball_are_respected(p):
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(40, 12, generator=gen)
    x[:, :3] = 0.0  # on the box's faces
    x[:, 3:5] = 1.0
    y = torch.randint(0, 4, (40,), generator=gen)
    eps = torch.rand(40, generator=gen) * 0.5
    eps[:5] = 0.0
    lower = torch.zeros(12)
    lower[-1] = 0.2  # per-entry bounds
    x[:, -1] = x[:, -1].clamp_min(0.2)
    x_adv, success = pgd(model, RadiusProblem(x, y, p, lower, 1.0).at(eps), steps=20, restarts=3)
    assert bool((x_adv >= lower - 1e-6).all()) and bool((x_adv <= 1 + 1e-6).all())
    assert bool((dist(x_adv, x, p) <= eps.double() + 1e-6).all())
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) != y, success)
        clean_wrong = model(x).argmax(1) != y
    assert torch.equal(x_adv[:5][~clean_wrong[:5]], x[:5][~clean_wrong[:5]])  # eps 0: x itself
    xd = deepfool(model, RadiusProblem(x, y, p, lower, 1.0))
    assert bool((xd >= lower - 1e-6).all()) and bool((xd <= 1 + 1e-6).all())
    radius, examples = attack_radius(model, RadiusProblem(x, y, p, lower, 1.0),
                                     steps=20, restarts=3, return_examples=True)
    assert bool((examples >= lower - 1e-6).all()) and bool((examples <= 1 + 1e-6).all())
    found = torch.isfinite(radius)
    torch.testing.assert_close(dist(examples, x, p)[found], radius[found])
    with pytest.raises(ValueError, match="outside the box"):
        pgd(model, RadiusProblem(x + 2, y, p, 0.0, 1.0).at(0.1))


def test_misclassified_inputs_have_radius_zero(affine):
    y = affine.y.clone()
    y[:4] = (y[:4] + 1) % 6
    radius = attack_radius(affine.model, RadiusProblem(affine.x[:8], y[:8], 2), steps=20, restarts=3)
    assert bool((radius[:4] == 0).all()) and bool((radius[4:] > 0).all())
    x_adv, success = pgd(affine.model, RadiusProblem(affine.x[:8], y[:8], INF).at(0.0))
    assert bool(success[:4].all()) and not bool(success[4:].any())
    assert torch.equal(x_adv, affine.x[:8])


def test_radius_inf_when_the_box_leaves_no_room():
    """A constant-prediction region covering the whole box: no adversarial example up to the cap."""
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.5, 0.0]))  # class 0 wins wherever x_0 > -0.5
    x = torch.rand(4, 3)
    radius = attack_radius(model, RadiusProblem(x, torch.zeros(4, dtype=torch.long), INF, 0.0, 1.0),
                           steps=10, restarts=2)
    assert bool(torch.isinf(radius).all())


@pytest.fixture(scope="module")
def mlp():
    """A small ReLU network fitted for a moment to random data with random labels."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, :4] + 0.3 * torch.randn(256, 4)).argmax(1)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    opt.zero_grad(set_to_none=True)
    return net, x[:48], y[:48]


@pytest.mark.parametrize("p", NORMS)
def test_attack_radius_on_a_trained_mlp(mlp, p):
    net, x, y = mlp
    with torch.no_grad():
        correct = net(x).argmax(1) == y
    radius, examples = attack_radius(net, RadiusProblem(x, y, p), return_examples=True)
    assert bool((radius[~correct] == 0).all())
    found = torch.isfinite(radius) & correct
    assert found.float().sum().item() >= 0.9 * correct.float().sum().item()
    with torch.no_grad():
        assert bool((net(examples[found]).argmax(1) != y[found]).all())
    torch.testing.assert_close(dist(examples, x, p)[found], radius[found])
    # at the radius PGD succeeds again; DeepFool's distance is never smaller than the radius found
    _, success = pgd(net, RadiusProblem(x[found], y[found], p).at((radius[found] * 1.001).float()),
                     steps=50, restarts=5)
    assert success.float().mean().item() >= 0.9
    xd = deepfool(net, RadiusProblem(x[found], y[found], p))
    with torch.no_grad():
        fooled = net(xd).argmax(1) != y[found]
    assert bool((dist(xd, x[found], p)[fooled] >= radius[found][fooled] * (1 - 1e-6)).all())


def test_hygiene(mlp):
    net, x, y = mlp
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x_in = x.clone()
    with torch.no_grad():  # attacks turn gradients on locally
        x_adv, _ = pgd(net, RadiusProblem(x_in, y, INF).at(0.3), steps=10, restarts=3)
        radius = attack_radius(net, RadiusProblem(x_in, y, 2), steps=10, restarts=2)
        xd = deepfool(net, RadiusProblem(x_in, y, 2))
    for t in (x_adv, radius, xd):
        assert not t.requires_grad and t.grad_fn is None
    assert torch.equal(x_in, x)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not net.training
    net.train()
    pgd(net, RadiusProblem(x, y, 2).at(0.1), steps=2, restarts=1)
    assert net.training  # the mode is the caller's
    net.eval()
    a, sa = pgd(net, RadiusProblem(x, y, 2).at(0.3), steps=10, restarts=3, seed=5)
    b, sb = pgd(net, RadiusProblem(x, y, 2).at(0.3), steps=10, restarts=3, seed=5)
    assert torch.equal(a, b) and torch.equal(sa, sb)
    with pytest.raises(ValueError, match="norm"):
        pgd(net, RadiusProblem(x, y, 1).at(0.1))


def test_graph_module_with_channel_first_input():
    """An imported ONNX model (Flatten, Gemm, Relu, Gemm) on (B, 1, 4, 4) inputs."""
    w1, w2 = rand(16, 12, seed=1), rand(12, 3, seed=2)
    model = make_model([node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w1"], ["h"]), node("Relu", ["h"], ["r"]),
                        node("Gemm", ["r", "w2"])], [1, 4, 4], {"w1": w1, "w2": w2})
    module = load_onnx(model)
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = module(x).argmax(1)
    radius, examples = attack_radius(module, RadiusProblem(x, y, INF, 0.0, 1.0),
                                     steps=20, restarts=3, return_examples=True)
    found = torch.isfinite(radius)
    assert found.float().mean().item() >= 0.5
    with torch.no_grad():
        assert bool((module(examples[found]).argmax(1) != y[found]).all())
    assert all(p.grad is None for p in module.parameters())


@pytest.mark.slow
def test_zoo_mnist_fc_linf():
    root = shared_dir()
    model_path = root / "zoo" / "mnist_fc" / "mnist-net_256x2.onnx" if root else None
    if model_path is None or not model_path.is_file() or not (root / "data" / "mnist").is_dir():
        pytest.skip("third-party model or MNIST absent (set LIPVERIFY_SHARED to the shared folder)")
    from frontends.data import load_dataset

    module = load_onnx(model_path)
    ds = load_dataset(root / "data" / "mnist", module.graph.sample_shape, limit=6)
    lo, hi = ds.model_bounds()
    radius, examples = attack_radius(module, RadiusProblem(ds.x, ds.y, INF, lo, hi),
                                     steps=20, restarts=2, tol=1e-2, return_examples=True)
    found = torch.isfinite(radius) & (radius > 0)
    assert found.sum().item() >= 5
    assert float(radius[found].max()) < 0.2  # an undefended MNIST network: small l_inf radii
    with torch.no_grad():
        assert bool((module(examples[found]).argmax(1) != ds.y[found]).all())
    assert float(examples.min()) >= 0.0 and float(examples.max()) <= 1.0
    np.testing.assert_allclose(dist(examples, ds.x, INF)[found].numpy(), radius[found].numpy())
