"""LMT certificates: the propositions against independent computations, soundness against PGD, and the
`lipverify certify` / `lipverify lipschitz` commands (report fields, gate exit codes, bad data)."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from frontends import load_onnx
from frontends.data import load_dataset
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import certified_radii
from verifier.commands.logits import batched_logits
from verifier.engines.attacks import pgd
from verifier.engines.lipschitz import graph_lipschitz
from verifier.engines.power_iteration import PowerIteration, estimate
from verifier.problem import RadiusProblem

from .cases.models import BUNDLED, blob_model
from .conftest import run_main, shared_dir
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.fixture(scope="module")
def smooth_model(tmp_path_factory):
    torch.manual_seed(0)
    return blob_model(tmp_path_factory.mktemp("smooth"), nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)))


@pytest.mark.parametrize("method", ["lmt", "lmt-pairwise"])
@pytest.mark.parametrize("norm", [2.0, math.inf], ids=["l2", "linf"])
def test_certified_points_survive_pgd(smooth_model, method, norm):
    path, _, x, y = smooth_model
    module = load_onnx(path)
    bounds = compute_bounds(module, norm, input_dim=6)
    with torch.no_grad():
        logits = module(x)
    radii = certified_radii(logits, y, bounds, norm, method)
    assert (radii > 0.05).float().mean() > 0.8  # the certificate is not vacuous here
    certified = radii > 0
    x_adv, success = pgd(module, RadiusProblem(x[certified], y[certified], norm).at(radii[certified].float() * 0.999),
                         steps=100, restarts=10)
    assert not success.any(), "an attack broke a certified radius"
    # and the attack is real: at 3x the certified radius of the weakest points it finds something
    _, far = pgd(module, RadiusProblem(x[certified], y[certified], norm).at(radii[certified].float() * 20),
                 steps=100, restarts=5)
    assert far.any()


def test_pairwise_is_at_least_proposition_1(smooth_model):
    path, _, x, y = smooth_model
    module = load_onnx(path)
    bounds = compute_bounds(module, 2.0, input_dim=6)
    logits = module(x).detach()
    p1 = certified_radii(logits, y, bounds, 2.0, "lmt")
    p2 = certified_radii(logits, y, bounds, 2.0, "lmt-pairwise")
    assert (p2 >= p1 * (1 - 1e-6)).all() and (p2 > p1).any()


def test_power_iteration_estimates_from_below():
    module = load_onnx(BUNDLED)
    sound = graph_lipschitz(module, 2.0).lipschitz
    est = estimate(module, steps=60)
    assert est <= sound and est >= 0.9 * sound
    value = PowerIteration(module)()
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def mnist_or_skip():
    root = shared_dir()
    if root is None or not (root / "zoo" / "mnist_fc").is_dir() or not (root / "data" / "mnist").is_dir():
        pytest.skip("../shared/zoo/mnist_fc or ../shared/data/mnist absent (set LIPVERIFY_SHARED)")
    return root / "zoo" / "mnist_fc" / "mnist-net_256x2.onnx", root / "data" / "mnist"


@pytest.mark.slow
def test_mnist_net_prop2_equals_exact_spectral_norms():
    model_path, data = mnist_or_skip()
    module = load_onnx(model_path)
    ds = load_dataset(data, module.graph.sample_shape, limit=100)
    bounds = compute_bounds(module, 2.0, input_dim=784)
    logits = batched_logits(module, ds.x, 100, torch.device("cpu"))
    radii = certified_radii(logits, ds.y, bounds, 2.0, "lmt-pairwise").double()
    # independently: the initializers' exact spectral norms (numpy SVD) and the last layer's rows
    model = onnx.load(model_path)
    weights = [onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer if t.dims and
               len(t.dims) == 2]
    l_sub = np.linalg.norm(weights[0], 2) * np.linalg.norm(weights[1], 2)
    w = weights[2]
    z = logits.double().numpy()
    y = ds.y.numpy()
    ref = np.array([min((z[i, y[i]] - z[i, j]) / (l_sub * np.linalg.norm(w[y[i]] - w[j])) for j in range(10)
                        if j != y[i]) if z[i].argmax() == y[i] else 0.0 for i in range(len(y))])
    ours = radii.numpy()
    assert (ours <= ref + 1e-12).all()
    assert np.all(ours >= 0.99 * ref)
    # clean accuracy equals onnxruntime's
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ort_pred = np.array([sess.run(None, {"0": ds.x[i:i + 1].numpy()})[0].argmax() for i in range(len(y))])
    assert (ort_pred == logits.argmax(1).numpy()).all()
    # and PGD never breaks these (tiny) radii
    _, success = pgd(module, RadiusProblem(ds.x, ds.y, 2, 0.0, 1.0).at(radii.float() * 0.999), steps=50, restarts=5)
    assert not success.any()


def synthetic_npz(tmp_path, module, n=40, seed=0):
    """Images and the model's own predictions as labels (so every input is correctly classified)."""
    x = torch.rand((n, *module.graph.sample_shape), generator=torch.Generator().manual_seed(seed))
    y = module(x).argmax(1)
    path = tmp_path / "data.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def test_certify_json_report_and_plot(capsys, tmp_path):
    module = load_onnx(BUNDLED)
    data = synthetic_npz(tmp_path, module)
    plot, report_file = tmp_path / "curve.png", tmp_path / "report.json"
    code, out, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(data), "--json", "--eps", "0.001",
                            "--eps", "0.01", "--plot", str(plot), "--report", str(report_file))
    assert code == 0
    result = json.loads(out)
    for key in ("model", "method", "norm", "n", "clean_accuracy", "certified_accuracy", "radii", "lipschitz",
                "seconds", "median_radius", "space"):
        assert key in result
    assert result["n"] == 40 and len(result["radii"]) == 40 and result["clean_accuracy"] == 1.0
    assert set(result["certified_accuracy"]) == {"0.001", "0.01"}
    assert plot.stat().st_size > 1000 and json.loads(report_file.read_text())["n"] == 40
    code, out, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(data), "--limit", "5")
    assert code == 0 and "clean accuracy" in out and "median radius" in out


def test_certify_gate_exit_codes(capsys, tmp_path):
    module = load_onnx(BUNDLED)
    data = synthetic_npz(tmp_path, module)
    code, _, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(data), "--min-certified-accuracy", "0.99",
                          "--at-eps", "10")
    assert code == 1
    code, _, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(data), "--min-certified-accuracy", "0.0",
                          "--at-eps", "10")
    assert code == 0


def test_certify_bad_data_shape_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 5, 5), np.float32), y=np.zeros(3, np.int64))
    code, out, err = run_main(capsys, "certify", str(BUNDLED), "--data", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "(1, 28, 28)" in err and "784" in err


def test_lipschitz_command_json(capsys):
    code, out, _ = run_main(capsys, "lipschitz", str(BUNDLED), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["lipschitz"] > 0 and report["lipschitz_sub"] > 0
    assert {n["op_type"] for n in report["nodes"]} >= {"Conv", "MaxPool", "Gemm"}
    assert all(n["method"] in ("exact", "dft", "materialized", "theorem", "slope", "holder") for n in report["nodes"])
    code, out, _ = run_main(capsys, "lipschitz", str(BUNDLED), "--norm", "inf")
    assert code == 0 and "lipschitz" in out
