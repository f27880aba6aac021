"""LipLT (verifier.engines.liplt, CRM §3): sound against brute force, never above the naive bound, exact where the
activations are linear, residual graphs, the CLI, and certificates that PGD does not break."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from frontends import load_onnx
from verifier.certificates.certify import compute_bounds, pairwise_radii
from verifier.certificates.methods import certified_radii
from verifier.engines.attacks import pgd
from verifier.engines.liplt import liplt
from verifier.problem import RadiusProblem

from .cases.models import blob_model, export
from .conftest import run_main, shared_dir
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


class Residual(nn.Module):
    """x -> relu(x + W2 relu(W1 x)) blocks between two linear layers (CRM eq. 17 with H = I)."""

    def __init__(self, d: int = 6, h: int = 5):
        super().__init__()
        self.inp, self.w1, self.w2, self.out = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, 3)

    def forward(self, x):
        a = torch.relu(self.inp(x))
        a = torch.relu(a + self.w2(torch.relu(self.w1(a))))
        return self.out(a)


class Branches(nn.Module):
    """Two activation branches concatenated (a Concat DAG), then a linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 4), nn.Linear(6, 3), nn.Linear(7, 3)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1))


NETS = {
    "relu-mlp": lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)),
    "tanh-sigmoid": lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)),
    "leaky": lambda: nn.Sequential(nn.Linear(6, 6), nn.LeakyReLU(0.2), nn.Linear(6, 3)),
    "residual": Residual,
    "concat": Branches,
}


def _module(tmp_path, name, seed=0):
    torch.manual_seed(seed)
    net = NETS[name]().eval()
    export(net, torch.zeros(1, 6), tmp_path / f"{name}.onnx")
    return load_onnx(tmp_path / f"{name}.onnx"), net


def _slope_patterns(module):
    """Every vertex pattern of the activations' slopes (alpha or beta per unit), when there are few units."""
    from verifier.engines.liplt import loop_units

    units = loop_units(module, module.graph.logits_tensor())
    sizes = [math.prod(module.graph.shapes[u.node.inputs[0]][1:]) for u in units]
    return units, sizes


def _pattern_jacobian(module, units, pattern):
    """The Jacobian of the network with each activation replaced by the diagonal slopes ``pattern`` (a function
    whose slopes lie in [alpha, beta], so LipLT must bound it)."""

    m = module.double()
    g = m.graph
    index = {u.node.name: j for j, u in enumerate(units)}
    out = m.graph.logits_tensor()

    def run(x):
        env = {g.input_name: x}
        for node in g.nodes():
            if node.name in index:
                env[node.outputs[0]] = env[node.inputs[0]] * pattern[index[node.name]]
            else:
                ins = [None if not t else (env[t] if t in env else m.tensor(t)) for t in node.inputs]
                env[node.outputs[0]] = node.op.forward(*ins)
            if out in node.outputs:
                break
        return env[out].reshape(-1)

    return torch.autograd.functional.jacobian(run, torch.zeros((1, 6), dtype=torch.float64)).reshape(-1, 6)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("norm", [2.0, math.inf], ids=["l2", "linf"])
def test_liplt_bounds_every_slope_pattern_and_beats_naive(tmp_path, name, norm):
    """Brute force: LipLT's L_ij >= ||(e_i - e_j)^T J|| for the Jacobian J of every vertex slope pattern (which
    contains every gradient of the network), and L_ij <= the naive pairwise bound."""
    module, _ = _module(tmp_path, name)
    report = liplt(module, norm)
    units, sizes = _slope_patterns(module)
    assert sum(sizes) <= 16
    gen = torch.Generator().manual_seed(0)
    choices = list(itertools.product(*[[u.alpha, u.beta] for u, n in zip(units, sizes) for _ in range(n)]))
    if len(choices) > 4096:
        choices = [choices[int(i)] for i in torch.randint(len(choices), (4096,), generator=gen)]
    worst = torch.zeros_like(report.raw_pairwise)
    worst_global = 0.0
    dual = 2 if norm == 2 else 1
    for flat in choices:
        pattern, at = [], 0
        for n in sizes:
            pattern.append(torch.tensor(flat[at:at + n], dtype=torch.float64).reshape(1, n))
            at += n
        jac = _pattern_jacobian(module, units, pattern)
        diff = jac[:, None, :] - jac[None, :, :]
        worst = torch.maximum(worst, diff.norm(p=dual, dim=2))
        worst_global = max(worst_global, float(torch.linalg.matrix_norm(jac, ord=2 if norm == 2 else math.inf)))
    assert bool((report.raw_pairwise >= worst * (1 - 1e-9)).all()), (report.raw_pairwise, worst)
    assert report.raw_lipschitz >= worst_global * (1 - 1e-9)
    if report.naive_pairwise is not None:
        off = ~torch.eye(len(worst), dtype=torch.bool)
        assert bool((report.raw_pairwise[off] <= report.naive_pairwise[off] * (1 + 1e-9)).all())
    assert report.raw_lipschitz <= report.naive_lipschitz * (1 + 1e-9)
    assert bool((report.pairwise <= report.raw_pairwise + 1e-12).all())


def test_linear_activations_make_liplt_exact(tmp_path):
    """LeakyRelu with slope 1 is the identity: d_j = 0, so LipLT is the exact norm of the product."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(1.0), nn.Linear(5, 3)).eval()
    export(net, torch.zeros(1, 6), tmp_path / "lin.onnx")
    report = liplt(load_onnx(tmp_path / "lin.onnx"), 2.0)
    w = (net[2].weight.double() @ net[0].weight.double()).detach()
    exact = (w[:, None, :] - w[None, :, :]).norm(dim=2)
    assert torch.allclose(report.raw_pairwise, exact, rtol=1e-6, atol=1e-9)
    assert report.raw_lipschitz == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-5)


def test_liplt_radii_survive_pgd(tmp_path_factory):
    torch.manual_seed(0)
    path, _, x, y = blob_model(tmp_path_factory.mktemp("liplt"), nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)))
    module = load_onnx(path)
    bounds = compute_bounds(module, 2.0, input_dim=6)
    with torch.no_grad():
        logits = module(x)
    radii = pairwise_radii(logits, y, liplt(module, 2.0, naive=bounds.l2).pairwise)
    prop2 = certified_radii(logits, y, bounds, 2.0, "lmt-pairwise")
    assert bool((radii >= prop2.double() * (1 - 1e-9)).all()) and float(radii.median()) > float(prop2.median())
    ok = radii > 0
    _, success = pgd(module, RadiusProblem(x[ok], y[ok], 2).at(radii[ok].float() * 0.999), steps=100, restarts=10)
    assert not success.any()


def test_cli_lipschitz_liplt_and_fallback(tmp_path, capsys):
    module, _ = _module(tmp_path, "residual")
    code, out, _ = run_main(capsys, "lipschitz", str(tmp_path / "residual.onnx"), "--method", "liplt", "--pairwise")
    assert code == 0 and "L_i + L_j" in out and "ratio" in out and "row i, column j" in out
    code, out, _ = run_main(capsys, "lipschitz", str(tmp_path / "residual.onnx"), "--method", "liplt", "--json")
    report = json.loads(out)
    assert code == 0 and report["liplt"]["lipschitz"] <= report["lipschitz"] * (1 + 1e-9)
    # a graph LipLT cannot map (MaxPool): the naive bound stands, and the line says why
    from .onnx_graphs import make_model, node, rand

    model = make_model([node("Conv", ["x", "w"], ["c"]), node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2]),
                        node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "v"], ["y"], transB=1)],
                       [1, 4, 4], {"w": rand(2, 1, 2, 2), "v": rand(3, 8, seed=1)})
    import onnx

    onnx.save(model, tmp_path / "pool.onnx")
    code, out, _ = run_main(capsys, "lipschitz", str(tmp_path / "pool.onnx"), "--method", "liplt")
    assert code == 0 and "cannot map MaxPool" in out and "naive bounds stand" in out


def _largest_gradients(module, x: torch.Tensor, ascent_steps: int) -> torch.Tensor:
    """(K, K): the largest ||grad (z_i - z_j)||_2 over the points x and, for each pair, ``ascent_steps`` steps of
    gradient ascent on that norm (double back-propagation; it moves for smooth activations) from them."""
    m64 = module.double()
    k = int(m64(x[:1].double()).shape[1])
    found = torch.zeros((k, k), dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            p = x.double().clone().requires_grad_(True)
            for step in range(ascent_steps + 1):
                with torch.enable_grad():
                    z = m64(p)
                    (gr,) = torch.autograd.grad((z[:, i] - z[:, j]).sum(), p, create_graph=step < ascent_steps)
                    norms = gr.reshape(len(p), -1).norm(dim=1)
                    found[i, j] = found[j, i] = max(float(found[i, j]), float(norms.detach().max()))
                    if step < ascent_steps:
                        (up,) = torch.autograd.grad(norms.sum(), p)
                        p = (p + 0.05 * up / up.reshape(len(p), -1).norm(dim=1).clamp_min(1e-12).reshape(
                            -1, *[1] * (p.dim() - 1))).detach().requires_grad_(True)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("path", ["mnist_fc/mnist-net_256x2.onnx", "eran/ffnnSIGMOID__Point_6x200.onnx",
                                  "cifar10_resnet/resnet_2b.onnx"])
def test_zoo_liplt_below_naive_above_gradients(path):
    """mnist-net_256x2, the deeper eran sigmoid MLP and the residual resnet_2b: LipLT's pairwise bounds are <=
    the naive ones for every pair and >= the largest gradient norm of z_i - z_j found at test images (MNIST models)
    or random points, and by gradient ascent on that norm."""
    root = shared_dir()
    if root is None or not (root / "zoo" / path).exists():
        pytest.skip(f"../shared/zoo/{path} absent (set LIPVERIFY_SHARED)")
    module = load_onnx(root / "zoo" / path)
    report = liplt(module, 2.0)
    k = report.pairwise.shape[0]
    off = ~torch.eye(k, dtype=torch.bool)
    assert bool((report.raw_pairwise[off] <= report.naive_pairwise[off] * (1 + 1e-9)).all()), path
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((8, *module.graph.sample_shape), generator=gen)
    if (root / "data" / "mnist").is_dir() and "cifar" not in path:
        from frontends.data import load_dataset

        x = torch.cat([x, load_dataset(root / "data" / "mnist", module.graph.sample_shape, limit=16).x])
    found = _largest_gradients(module, x, ascent_steps=0 if "resnet" in path else 5)
    assert bool((report.raw_pairwise >= found * (1 - 1e-9)).all()), path
    print(path, "mean L_ij naive / LipLT:", float((report.naive_pairwise[off] / report.raw_pairwise[off]).mean()),
          "LipLT / largest gradient found:", float((report.raw_pairwise[off] / found[off]).mean()))


def test_l2_refinement_only_tightens(tmp_path, monkeypatch):
    """Theorem 3.2 with AOL's T, per term of eq. 19: never above the plain recursion (SN), strictly below on a
    net where it applies, and still above every slope pattern (the brute-force test above runs with it on)."""
    import verifier.engines.liplt as mod

    module, _ = _module(tmp_path, "tanh-sigmoid", seed=4)
    refined = liplt(module, 2.0)
    monkeypatch.setattr(mod, "REFINE_LIMIT", 0)
    monkeypatch.setattr(mod, "REFINE_PAIRS_MAX_UNITS", 0)
    plain = liplt(module, 2.0)
    assert bool((refined.raw_pairwise <= plain.raw_pairwise * (1 + 1e-12)).all())
    assert float(refined.raw_pairwise.sum()) < float(plain.raw_pairwise.sum())
    assert refined.m[-1] <= plain.m[-1] * (1 + 1e-12)
