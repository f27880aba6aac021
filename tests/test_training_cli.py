"""`lipverify train`: the command end to end, its errors, and retraining a third-party zoo graph."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch

from frontends.onnx_import import load_onnx
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import certified_radii

from .conftest import REPO, run_main, shared_dir

pytestmark = pytest.mark.slow  # training


def _images(tmp_path, n=300, seed=0):
    """An .npz of 28x28 images in [0, 1] with labels that a small net can learn (class = brightest quadrant)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.random((n, 1, 28, 28)).astype(np.float32) * 0.3
    for i, c in enumerate(y):
        r, k = divmod(int(c), 2)
        x[i, 0, r * 14:(r + 1) * 14, k * 14:(k + 1) * 14] += 0.7
    path = tmp_path / "quadrants.npz"
    np.savez(path, x=x, y=y)
    return path


def test_train_arch_exports_a_checked_model(capsys, tmp_path):
    data = _images(tmp_path)
    out = tmp_path / "m.onnx"
    code, stdout, stderr = run_main(capsys, "train", "--arch", "2C2F", "--width", "0.25", "--data", str(data),
                                    "--method", "lmt", "--eps", "0.3", "--epochs", "2", "--val", "60",
                                    "--lr", "3e-3", "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["export"] == {**report["export"], "same_nodes": True, "parity": True}
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Conv", "Relu", "Flatten", "Gemm", "Relu",
                                                      "Gemm"]
    assert len(report["history"]) == 2 and 0 <= report["certified_accuracy"] <= 1
    code, stdout, _ = run_main(capsys, "certify", str(out), "--data", str(data), "--limit", "20", "--json")
    assert code == 0 and json.loads(stdout)["n"] == 20


def test_train_output_picks_the_scores_of_a_two_output_model(capsys, tmp_path):
    """A model whose first output is the softmax and second the logits: --output logits trains (and exports)
    through the logits; the exported file keeps both outputs and its nodes."""
    from torch import nn

    data = _images(tmp_path, n=200)
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, x):
            z = self.net(x)
            return torch.softmax(z, dim=1), z

    path = tmp_path / "two.onnx"
    torch.onnx.export(Two(), (torch.rand(1, 1, 28, 28),), path, input_names=["x"], output_names=["probs", "logits"],
                      dynamic_axes={"x": {0: "N"}}, dynamo=False)
    out = tmp_path / "trained.onnx"
    code, stdout, stderr = run_main(capsys, "train", str(path), "--data", str(data), "--output", "logits",
                                    "--epochs", "1", "--val", "40", "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["output"] == "logits" and report["export"]["parity"] and report["export"]["same_nodes"]
    assert [o.name for o in onnx.load(out).graph.output] == ["probs", "logits"]
    code, _, stderr = run_main(capsys, "train", str(path), "--data", str(data), "--output", "nope", "--epochs", "1",
                               "--val", "40", "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and "no output named 'nope'" in stderr


@pytest.mark.parametrize("args, message", [
    ([], "give either MODEL.onnx or --arch"),
    (["--arch", "9Q"], "unknown architecture '9Q'"),
    (["--arch", "2C2F", "--eps", "-1"], "Invalid value for '--eps': must be >= 0"),
    (["--arch", "2C2F", "--val", "0"], "Invalid value for '--val'"),
    (["--arch", "2C2F", "--val", "40"], "--val must be between"),
])
def test_train_bad_input_is_one_line(capsys, tmp_path, args, message):
    data = _images(tmp_path, n=40)
    code, stdout, stderr = run_main(capsys, "train", *args, "--data", str(data), "--out", str(tmp_path / "o.onnx"))
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_train_wrong_data_shape_says_what_was_expected(capsys, tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.zeros((10, 5), np.float32), y=np.zeros(10, np.int64))
    code, _, stderr = run_main(capsys, "train", "--arch", "2C2F", "--data", str(path), "--out",
                               str(tmp_path / "o.onnx"))
    assert code == 2 and "1, 28, 28" in stderr and len(stderr.strip().splitlines()) == 1


def test_bundled_sample_and_models_are_small_and_run():
    sample = REPO / "data" / "fashion-mnist-1k"
    assert sum(f.stat().st_size for f in sample.iterdir()) <= 1_000_000
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    import onnxruntime as ort

    for entry in manifest["models"]:
        path = REPO / "models" / entry["file"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 28, 28), np.float32)})[0]
        assert out.shape == (2, 10)


def test_retrained_zoo_graph_keeps_its_nodes_and_certifies_more(tmp_path):
    """mnist_fc retrained with LMT on MNIST test images 0-3999, certified on 4000-4199 before and after."""
    root = shared_dir()
    if root is None or not (root / "zoo" / "mnist_fc").is_dir() or not (root / "data" / "mnist").is_dir():
        pytest.skip("needs ../shared/zoo/mnist_fc and ../shared/data/mnist (set LIPVERIFY_SHARED)")
    from frontends.data import load_dataset
    from training.loop import TrainConfig
    from training.run import run_train

    model = root / "zoo" / "mnist_fc" / "mnist-net_256x2.onnx"
    out = tmp_path / "retrained.onnx"
    report = run_train(str(model), data_path=str(root / "data" / "mnist"), split="test", limit=4200, val=200,
                       out=str(out), config=TrainConfig(method="lmt", eps=0.5, epochs=3, lr=3e-3, eval_size=200),
                       progress=False)
    assert report["export"]["same_nodes"] and report["export"]["parity"]
    data = load_dataset(root / "data" / "mnist", (1, 28, 28), split="test", limit=4200)
    x, y = data.x[4000:], data.y[4000:]

    def median_radius(path):
        module = load_onnx(path)
        bounds = compute_bounds(module, 2.0, input_dim=784)
        with torch.no_grad():
            z = module(x.reshape(len(x), *module.graph.sample_shape))
        return float(certified_radii(z, y, bounds, 2.0, "lmt-pairwise").median())

    before, after = median_radius(model), median_radius(out)
    assert after > 10 * before and math.isfinite(after), (before, after)


def _zoo_entries():
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    return [e for e in manifest["models"] if "certified_accuracy" in e]


@pytest.mark.parametrize("entry", _zoo_entries(), ids=lambda e: e["method"])
def test_zoo_manifest_is_reproduced_and_its_certificates_survive_pgd(entry):
    """`lipverify certify` on the bundled sample gives the manifest's lmt-pairwise certified accuracies (within
    0.5 points), and PGD (10 restarts x 50 steps) breaks none of the certified points among the first 200."""
    from verifier.commands.certify_run import run_certify
    from verifier.engines.attacks import pgd
    from verifier.problem import RadiusProblem

    path = REPO / "models" / entry["file"]
    result = run_certify(str(path), str(REPO / "data" / "fashion-mnist-1k"), method="lmt-pairwise",
                         eps_list=(0.5, 1.0, 1.58))
    for eps, value in entry["certified_accuracy"]["lmt-pairwise"].items():
        assert abs(result["certified_accuracy"][eps] - value) <= 0.005, (eps, value)
    from frontends.data import load_dataset

    module = load_onnx(path)
    data = load_dataset(REPO / "data" / "fashion-mnist-1k", (1, 28, 28), limit=200)
    radii = torch.tensor(result["radii"][:200])
    ok = radii > 0
    if entry["method"] != "standard":
        assert int(ok.sum()) > 50
    if int(ok.sum()):
        _, success = pgd(module, RadiusProblem(data.x[ok], data.y[ok], 2, 0.0, 1.0).at(radii[ok] * 0.999),
                         steps=50, restarts=10)
        assert not bool(success.any())


def test_train_mlp_on_vectors_with_checkpoint_and_resume(capsys, tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 3
    x = (np.eye(3, 6)[y] * 3 + rng.standard_normal((200, 6)) * 0.5).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=y)
    args = ["train", "--arch", "mlp-16", "--input-shape", "6", "--classes", "3", "--data", str(tmp_path / "v.npz"),
            "--method", "bcp", "--eps", "0.3", "--epochs", "2", "--val", "40", "--lr", "1e-2",
            "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o.onnx"), "--json"]
    code, stdout, stderr = run_main(capsys, *args)
    assert code == 0, stderr
    first = json.loads(stdout)
    code, stdout, stderr = run_main(capsys, *args, "--resume")  # both epochs done: nothing left to train
    assert code == 0, stderr
    assert json.loads(stdout)["history"] == first["history"]
    code, _, stderr = run_main(capsys, "train", "--arch", "mlp-16", "--input-shape", "6,x", "--out", "o.onnx")
    assert code == 2 and "--input-shape" in stderr


def test_stale_value_info_hints_are_inferred_again_on_export():
    """A file whose value_info gives an intermediate tensor a wrong shape (as exporters' stale NHWC hints do):
    serialize drops the hints and re-infers them instead of refusing the graph; a model that is wrong itself
    is still refused in one line."""
    from onnx import TensorProto, helper

    from frontends.onnx_export import serialize
    from verifier.errors import LipverifyError

    from .onnx_graphs import make_model, node, rand

    model = make_model([node("MatMul", ["x", "w"], ["h"]), node("Relu", ["h"])], [4], {"w": rand(4, 3)})
    model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 5, 7]))
    with pytest.raises(Exception):
        onnx.checker.check_model(model, full_check=True)
    out = onnx.load_from_string(serialize(model))
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Relu"]
    bad = onnx.ModelProto.FromString(model.SerializeToString())
    bad.graph.node[1].input[0] = "nowhere"  # a tensor nothing produces: wrong whatever the hints say
    bad.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 3]))
    with pytest.raises(LipverifyError, match="does not pass onnx.checker") as e:
        serialize(bad)
    assert "\n" not in str(e.value)
