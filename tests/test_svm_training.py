"""Retraining support vector machines: the SVMClassifier's / SVMRegressor's dual coefficients and offsets are
trainable weights of the ``KernelExpansion`` in the file's own layout (``verifier.ops.kernels.pair_layout``),
written back into the node's ``coefficients`` and ``rho`` (``frontends.onnx_svm``); LMT's estimate is
differentiable in them, and Cross-Lipschitz's double back-propagation runs through the RBF kernel."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper as h

from frontends import load_onnx
from frontends.parity import check_parity
from training.estimates import GraphEstimate
from verifier.engines.lipschitz import graph_lipschitz
from verifier.ops.kernels import SquaredDistance, pair_layout

from .conftest import run_main
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install lipverify[sklearn])")
skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")

F = 6
RNG = np.random.default_rng(1)
X = RNG.random((240, F)).astype(np.float32)
Y = (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0.6).astype(int) + 2 * (X[:, 2] > 0.7).astype(int)


def svm(classes: int, kernel: str = "rbf"):
    from sklearn.svm import SVC, SVR

    if classes == 0:
        return skl2onnx.to_onnx(SVR(kernel=kernel, gamma=0.7).fit(X, X[:, 0] - X[:, 1]), X[:1])
    est = SVC(kernel=kernel, gamma=0.7).fit(X, np.minimum(Y, classes - 1))
    return skl2onnx.to_onnx(est, X[:1], options={id(est): {"zipmap": False}})


def svm_attributes(model: onnx.ModelProto) -> dict:
    node = next(n for n in model.graph.node if n.op_type.startswith("SVM"))
    return {a.name: h.get_attribute_value(a) for a in node.attribute}


def test_pair_layout_uses_every_coefficient_once():
    """libsvm's layout: pair (i, j) reads row j - 1 for class i's vectors and row i for class j's, nothing else;
    every entry of the (K - 1, n) coefficients lands in exactly one pair."""
    per_class = [2, 3, 1, 2]
    index, mask = pair_layout(per_class)
    n, classes = sum(per_class), np.repeat(np.arange(4), per_class)
    assert sorted(index[mask].tolist()) == list(range(3 * n))
    for p, (i, j) in enumerate((i, j) for i in range(4) for j in range(i + 1, 4)):
        assert mask[p].tolist() == [bool(c in (i, j)) for c in classes]
        rows = (index[p][mask[p]] // n).tolist()
        assert rows == [j - 1 if c == i else i for c in classes if c in (i, j)]


def test_squared_distance_backward_twice_against_finite_differences():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SquaredDistance.apply, (x, s))
    assert torch.autograd.gradgradcheck(SquaredDistance.apply, (x, s))


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_lmt_estimate_is_the_sound_rule_and_differentiable_in_the_coefficients(classes):
    """Training's estimate uses the kernel op's own (sound) rule on the weights themselves: equal to the
    verifier's bound up to the composed chains' power iteration (from below), with a gradient into the dual
    coefficients."""
    module = load_onnx(svm(classes))
    estimate = GraphEstimate(module)
    for _ in range(30):
        value = estimate()
    sound = graph_lipschitz(module).lipschitz
    assert value.requires_grad and 0.9 * sound <= float(value.detach()) <= sound * (1 + 1e-6)
    value.backward()
    grads = {n: p.grad for n, p in module.onnx_weights().items()}
    assert any(n.endswith("_a") and g is not None and float(g.abs().sum()) > 0 for n, g in grads.items())


@pytest.mark.parametrize("classes,method", [(3, "lmt"), (2, "lmt"), (5, "cross-lipschitz")],
                         ids=["ovo-lmt", "binary-lmt", "ovo-cross-lipschitz"])
def test_train_writes_an_svms_coefficients_and_offsets_back(tmp_path, capsys, classes, method):
    """train changes the node's ``coefficients`` and ``rho`` (same counts), nothing else of the file; the written
    file re-imports with onnxruntime parity (labels compared for classifiers) and its weights are the trained
    ones."""
    model = svm(classes)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    with torch.no_grad():
        scores = load_onnx(model)(torch.from_numpy(X))
    np.savez(tmp_path / "d.npz", x=X, y=scores.argmax(1).clamp_max(classes - 1).numpy())
    code, out, err = run_main(capsys, "train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                              "--method", method, "--epochs", "2", "--val", "40", "--eps", "0.05", "--lr", "0.05",
                              "--out", str(tmp_path / "out.onnx"))
    assert code == 0, err
    new = onnx.load(tmp_path / "out.onnx")
    old_attrs, new_attrs = svm_attributes(model), svm_attributes(new)
    assert set(old_attrs) == set(new_attrs)
    changed = {k for k in old_attrs if old_attrs[k] != new_attrs[k]}
    assert "coefficients" in changed and changed <= {"coefficients", "rho"}
    assert len(new_attrs["coefficients"]) == len(old_attrs["coefficients"])
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]
    reloaded = load_onnx(new)
    assert check_parity(new, reloaded)["ok"]
    written = {n: p.detach().reshape(-1) for n, p in reloaded.onnx_weights().items()}
    a = next(v for n, v in written.items() if n.endswith("_a"))
    assert torch.equal(a, torch.tensor(new_attrs["coefficients"], dtype=torch.float32))


def test_an_svrs_new_weights_are_written_into_its_attributes():
    """SVMRegressor: weights changed in the module land in ``coefficients`` and ``rho``, and onnxruntime on the
    written file computes what the module does."""
    import onnxruntime as ort

    from frontends.onnx_export import export_weights

    model = svm(0)
    module = load_onnx(model)
    with torch.no_grad():
        for p in module.onnx_weights().values():
            p.mul_(1.5).add_(0.25)
        expected = module(torch.from_numpy(X)).numpy()
    new = export_weights(module, model)
    session = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {new.graph.input[0].name: X})[0]
    np.testing.assert_allclose(got.reshape(-1), expected.reshape(-1), rtol=1e-5, atol=1e-5)
    assert svm_attributes(new)["rho"] != svm_attributes(model)["rho"]


def test_bcp_training_on_condorcet_scores_is_refused_in_one_line(tmp_path, capsys):
    """BCP's last-layer bound needs affine logits; a one-vs-one machine's are a Min of its decisions."""
    (tmp_path / "m.onnx").write_bytes(svm(3).SerializeToString())
    np.savez(tmp_path / "d.npz", x=X, y=np.minimum(Y, 2))
    code, _, err = run_main(capsys, "train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                            "--method", "bcp", "--epochs", "1", "--val", "40", "--out", str(tmp_path / "out.onnx"))
    assert code == 2 and "BCP training needs a model whose logits come from an affine layer" in err
    assert err.count("\n") == 1 and not (tmp_path / "out.onnx").exists()
