"""Robust training (issue 6): the losses, the loop (resume), the training-time estimates, export back to ONNX."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from frontends.onnx_export import export_weights
from frontends.onnx_import import load_onnx
from frontends.parity import check_parity
from training.arch import build, to_onnx
from training.estimates import GraphEstimate, LipLTEstimate
from training.evaluate import evaluate
from training.loop import TrainConfig, train
from training.losses import METHODS, Loss, Step
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import certified_radii
from verifier.engines.attacks import pgd
from verifier.engines.bcp import bcp_radii
from verifier.engines.liplt import liplt
from verifier.engines.lipschitz import graph_lipschitz
from verifier.problem import RadiusProblem

pytestmark = pytest.mark.slow  # training


def blobs(n: int = 600, dim: int = 6, classes: int = 3, seed: int = 0, spread: float = 0.8):
    """Gaussian blobs with centres ~3 apart: separable, so certified radii of ~1 are reachable."""
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 2
    gen = torch.Generator().manual_seed(seed + 1)
    y = torch.arange(n) % classes
    x = centers[y] + spread * torch.randn(n, dim, generator=gen)
    return x, y


def mlp_module(seed: int = 0, hidden: str = "mlp-32-32", dim: int = 6, classes: int = 3):
    torch.manual_seed(seed)
    return load_onnx(to_onnx(build(hidden, (dim,), classes), (dim,)))


def test_every_loss_decreases_on_a_small_problem():
    x, y = blobs(128)
    for method in METHODS:
        module = mlp_module()
        loss = Loss(module, method)
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        step = Step(eps=0.3, lam=0.5)
        module.train()
        first = float(loss(x, y, step)[0].detach())
        for _ in range(40):
            value, _ = loss(x, y, step)
            opt.zero_grad()
            value.backward()
            opt.step()
        last = float(loss(x, y, step)[0].detach())
        assert last < 0.7 * first, (method, first, last)


def _fit(method: str, epochs: int = 8, eps: float = 1.5, seed: int = 0):
    x, y = blobs(600, seed=1)
    xv, yv = blobs(300, seed=2)
    module = mlp_module(seed)
    config = TrainConfig(method=method, eps=eps, epochs=epochs, batch_size=64, lr=1e-2, seed=seed, eval_size=300)
    result = train(module, x, y, xv, yv, config, eps_model=eps, progress=False)
    return module, result, xv, yv


@pytest.fixture(scope="module")
def trained():
    return {m: _fit(m) for m in ("standard", "lmt", "crm", "bcp")}


def test_robust_methods_certify_more_than_standard(trained):
    base = trained["standard"][1].history[-1]["certified_accuracy"]
    for method in ("lmt", "crm", "bcp"):
        module, result, xv, yv = trained[method]
        cert = result.history[-1]["certified_accuracy"]
        assert cert > base + 0.1, (method, cert, base)
        assert result.history[-1]["clean_accuracy"] > 0.8


def test_certified_points_of_trained_models_survive_pgd(trained):
    for method in ("lmt", "crm", "bcp"):
        module, _, xv, yv = trained[method]
        x, y = xv[:100], yv[:100]
        bounds = compute_bounds(module, 2.0, input_dim=6)
        with torch.no_grad():
            z = module(x)
        prop2 = certified_radii(z, y, bounds, 2.0, "lmt-pairwise")
        radii = torch.maximum(prop2.double(), bcp_radii(module, bounds.l2, RadiusProblem(x, y), start=prop2))
        pairs = liplt(module, 2.0, naive=bounds.l2).pairwise
        from verifier.certificates.certify import pairwise_radii

        radii = torch.maximum(radii, pairwise_radii(z, y, pairs).double())
        ok = radii > 0
        assert int(ok.sum()) > 50, method
        adv, success = pgd(module, RadiusProblem(x[ok], y[ok], 2).at(radii[ok].float() * 0.999), steps=100, restarts=10)
        with torch.no_grad():
            flipped = module(adv).argmax(1) != y[ok]
        assert not bool(flipped.any()) and not bool(success.any()), method


def test_resume_equals_an_uninterrupted_run(tmp_path):
    x, y = blobs(256)
    xv, yv = blobs(64, seed=3)
    for method in ("bcp", "crm"):
        config = TrainConfig(method=method, eps=0.3, epochs=3, batch_size=64, lr=1e-2, seed=1, eval_size=64)
        whole = mlp_module(1)
        train(whole, x, y, xv, yv, config, eps_model=0.3, progress=False)
        part = mlp_module(1)
        ckpt = tmp_path / f"{method}.pt"

        def interrupt(record):
            if record["epoch"] == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # killed after epoch 2 (its checkpoint is written)
            train(part, x, y, xv, yv, config, eps_model=0.3, progress=False, checkpoint=ckpt, on_epoch=interrupt)
        resumed = mlp_module(1)
        train(resumed, x, y, xv, yv, config, eps_model=0.3, progress=False, checkpoint=ckpt, resume=True)
        for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), (method, k)


def test_graph_estimate_is_below_the_sound_bound_and_close():
    module = mlp_module(2, "mlp-20-20")
    est = GraphEstimate(module)
    with torch.no_grad():
        for _ in range(200):
            value = float(est())
    sound = graph_lipschitz(module, 2.0)
    assert value <= sound.lipschitz * (1 + 1e-5)
    assert value >= 0.99 * sound.lipschitz  # chains are single matrices here: power iteration converges to them
    rows = est.last_rows().detach().double()
    assert torch.allclose(rows, sound.last_matrix, atol=1e-6)


def test_row_norms_match_the_materialized_chains():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(),
                        nn.Linear(5, 3))
    net[3].running_var.uniform_(0.5, 2.0)
    module = load_onnx(to_onnx(net, (2, 8, 8)))
    est = GraphEstimate(module)
    sound = graph_lipschitz(module, 2.0)
    rows = est.row_norms()
    g = module.graph
    from verifier.engines.lipschitz import chain_matrix

    dynamic = {g.input_name} | {o for n in g.nodes() for o in n.outputs}
    module64 = load_onnx(to_onnx(net, (2, 8, 8))).double()
    for seg in sound.segments:
        if seg.output not in rows:
            continue
        _, matrix = chain_matrix(module64, [g.node(n) for n in seg.nodes], dynamic)
        exact = matrix.norm(dim=1).reshape(rows[seg.output].shape)
        ours = rows[seg.output].detach().double()
        assert bool((ours >= exact * (1 - 1e-5)).all()), seg.nodes
        if len(seg.nodes) == 1 or [g.node(n).op_type for n in seg.nodes] == ["Flatten", "Gemm"]:
            assert torch.allclose(ours, exact, rtol=1e-5), seg.nodes


def test_liplt_estimate_approaches_the_sound_liplt_bounds(monkeypatch):
    """Against Theorem 3.3's recursion with exact norms (the sound LipLT without its AOL refinement, which the
    training estimate does not use): from below, and close once the power iteration has converged."""
    import verifier.engines.liplt as sound_liplt

    monkeypatch.setattr(sound_liplt, "REFINE_PAIRS_MAX_UNITS", -1)
    monkeypatch.setattr(sound_liplt._Refiner, "weighted", lambda self, j, sq, m: math.inf)
    module = mlp_module(3, "mlp-16-16")
    est = LipLTEstimate(module)
    with torch.no_grad():
        for _ in range(300):
            est.norms()
    pairs = est().detach().double()
    sound = liplt(module, 2.0).raw_pairwise
    off = ~torch.eye(3, dtype=torch.bool)
    assert bool((pairs[off] <= sound[off] * (1 + 1e-4)).all())
    assert bool((pairs[off] >= sound[off] * 0.98).all())


def test_export_round_trip_with_batchnorm_and_transposed_weights(tmp_path):
    """A graph whose MatMul weight is a Transpose of an initializer and whose BatchNormalization statistics change
    in training: the export keeps the node list, passes the checker, and onnxruntime equals the IR."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)  # stored (out, in); the graph transposes it
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Unsqueeze", ["hb", "axes"], ["h3"]),
             helper.make_node("BatchNormalization", ["h3", "s", "beta", "mean", "var"], ["n3"]),
             helper.make_node("Squeeze", ["n3", "axes"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], transB=1)]
    inits = [numpy_helper.from_array(a, k) for k, a in [
        ("w", w), ("b", np.zeros(4, np.float32)), ("axes", np.array([2], np.int64)),
        ("s", np.ones(4, np.float32)), ("beta", np.zeros(4, np.float32)), ("mean", np.zeros(4, np.float32)),
        ("var", np.ones(4, np.float32)), ("w2", rng.standard_normal((3, 4)).astype(np.float32)),
        ("b2", np.zeros(3, np.float32))]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    module = load_onnx(model)
    assert module.graph.weight_sources  # the MatMul weight is derived through the Transpose
    x, y = blobs(200)
    train(module, x, y, x[:50], y[:50], TrainConfig(method="lmt", eps=0.2, epochs=2, batch_size=32, lr=1e-2,
                                                    eval_size=50), eps_model=0.2, progress=False)
    exported = export_weights(module, model)
    onnx.checker.check_model(exported, full_check=True)
    assert [(n.op_type, list(n.input), list(n.output)) for n in exported.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    new = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    assert not np.allclose(new["w"], w) and not np.allclose(new["mean"], 0)  # weights and statistics moved
    assert check_parity(exported, module)["ok"]
    with torch.no_grad():
        assert torch.allclose(load_onnx(exported)(x), module(x), atol=1e-5)


def test_arch_families_build_and_run():
    for name, params in (("2C2F", None), ("4C3F", None), ("6C2F", None)):
        net = build(name, (1, 28, 28), 10, width=0.25)
        module = load_onnx(to_onnx(net, (1, 28, 28)))
        assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        convs = sum(isinstance(m, nn.Conv2d) for m in net)
        dense = sum(isinstance(m, nn.Linear) for m in net)
        assert f"{convs}C{dense}F" == name
    assert module.graph.logits_tensor() == module.graph.output_name


def test_evaluate_reports_sound_certificates(trained):
    module, _, xv, yv = trained["bcp"]
    metrics = evaluate(module, xv[:100], yv[:100], 0.5, "bcp")
    bounds = compute_bounds(module, 2.0, input_dim=6)
    with torch.no_grad():
        z = module(xv[:100])
    prop2 = certified_radii(z, yv[:100], bounds, 2.0, "lmt-pairwise")
    radii = torch.maximum(prop2.double(), bcp_radii(module, bounds.l2, RadiusProblem(xv[:100], yv[:100]), start=prop2))
    assert metrics["certified_accuracy"] <= float((radii >= 0.5).float().mean()) + 1e-9
    assert math.isclose(metrics["clean_accuracy"], float((z.argmax(1) == yv[:100]).float().mean()))


def test_training_arithmetic_is_scoped():
    """Certificates never see the unrounded box arithmetic of training: not after an error inside it, and not in
    another thread while it is on."""
    import threading

    from verifier import box, rounding

    seen = []
    with pytest.raises(RuntimeError):
        with rounding.training_arithmetic():
            assert rounding.outward_rounding() is False
            other = threading.Thread(target=lambda: seen.append(rounding.outward_rounding()))
            other.start()
            other.join()
            raise RuntimeError("inside")
    assert seen == [True] and rounding.outward_rounding() is True
    up = box._add_rounded(torch.tensor([1.0]), torch.tensor([1e-9]), up=True)
    assert float(up) > 1.0  # outward rounding is back
