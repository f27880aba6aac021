"""`lipverify attack` and `certify --attack`: report fields, radii in input order, misclassified inputs at 0,
the [0, 1] box of IDX pixels, certified <= attack per input, the soundness-violation exit code, bad input; and
on mnist-net_256x2 (when ../shared is there) plausible attack radii above every certified one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frontends import load_onnx
from frontends.data import load_dataset
from verifier.commands import attack_run
from verifier.commands.attack_run import LogitsModule, attack_dataset

from .cases.models import NORMS_L2_FAST
from .conftest import REPO, run_main, shared_dir
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
BUNDLED = REPO / "models" / "fmnist_cnn_small.onnx"
FAST = ("--steps", "10", "--restarts", "2")
FAST_CERTIFY = ("--attack", "--attack-steps", "10", "--attack-restarts", "2")
WRONG = [1, 6, 10]  # inputs given a wrong label (in different chunks of --batch-size 4)


@pytest.fixture(scope="module")
def bundled():
    return load_onnx(BUNDLED)


def images_and_labels(module, n=12, seed=0, binary=False):
    """Images (uint8-valued when ``binary``: only 0 and 255, so that the [0, 1] box binds everywhere), labelled
    with the model's own predictions except at ``WRONG``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *module.graph.sample_shape), generator=gen)
    if binary:
        x = (x > 0.7).float()
    with torch.no_grad():
        y = module(x).argmax(1)
    y[WRONG] = (y[WRONG] + 1) % 10
    return x, y


@pytest.fixture(scope="module")
def npz(bundled, tmp_path_factory):
    x, y = images_and_labels(bundled)
    path = tmp_path_factory.mktemp("attack") / "data.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def write_idx(path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture(scope="module", params=[True, False], ids=["binary", "graded"])
def idx_folder(bundled, tmp_path_factory, request):
    """An MNIST-format folder (pixels in [0, 1] after loading): binary images, where the box binds on every
    pixel, or graded ones."""
    x, y = images_and_labels(bundled, binary=request.param)
    folder = tmp_path_factory.mktemp("idx")
    write_idx(folder / "t10k-images-idx3-ubyte", np.round(x[:, 0].numpy() * 255).astype(np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", y.numpy().astype(np.uint8))
    return folder, request.param


def test_attack_json_fields_order_and_misclassified(capsys, npz, tmp_path):
    report = tmp_path / "attack.json"
    code, out, err = run_main(capsys, "attack", str(BUNDLED), "--data", str(npz), "--json", *FAST,
                              "--batch-size", "4", "--eps", "0.05", "--eps", "0.5", "--report", str(report))
    assert code == 0, err
    result = json.loads(out)
    for key in ("model", "norm", "n", "clean_accuracy", "attack_radii", "median_attack_radius", "robust_accuracy",
                "attack_success", "seconds", "method", "box", "space", "not_found"):
        assert key in result
    assert result["n"] == 12 and result["norm"] == "2" and result["method"] == "pgd" and result["box"] is None
    radii = result["attack_radii"]
    assert len(radii) == 12 and result["clean_accuracy"] == pytest.approx(9 / 12)
    # in input order: exactly the wrongly labelled inputs get 0, wherever their chunk
    assert [i for i, r in enumerate(radii) if r == 0] == WRONG
    assert all(r is None or r > 0 for i, r in enumerate(radii) if i not in WRONG)
    finite = sorted(r for i, r in enumerate(radii) if i not in WRONG and r is not None)
    assert result["median_attack_radius"] == pytest.approx(finite[(len(finite) - 1) // 2])
    # robust accuracy at eps = inputs whose attack radius exceeds eps (misclassified ones never do)
    for eps in ("0.05", "0.5"):
        expected = sum(r is None or r > float(eps) for r in radii) / 12
        assert result["robust_accuracy"][eps] == pytest.approx(expected)
        assert result["attack_success"][eps] == pytest.approx(1 - expected)
    assert result["robust_accuracy"]["0.5"] <= result["robust_accuracy"]["0.05"] <= 0.75
    assert json.loads(report.read_text())["attack_radii"] == radii
    assert "attacking" in err  # the progress bar (3 chunks)


def test_attack_table_linf_and_deepfool(capsys, npz):
    code, out, _ = run_main(capsys, "attack", str(BUNDLED), "--data", str(npz), "--norm", "inf", *FAST)
    assert code == 0
    for needle in ("clean accuracy", "75.00%", "robust at eps 0.01", "median attack radius", "attack     pgd  (linf",
                   "seconds"):
        assert needle in out
    code, out, _ = run_main(capsys, "attack", str(BUNDLED), "--data", str(npz), "--method", "deepfool", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["method"] == "deepfool" and result["restarts"] is None
    assert [i for i, r in enumerate(result["attack_radii"]) if r == 0] == WRONG


@pytest.mark.parametrize("norm", NORMS_L2_FAST)
@pytest.mark.parametrize("method", ["pgd", "deepfool"])
def test_examples_are_adversarial_at_their_radius_inside_the_box(bundled, idx_folder, norm, method):
    """What the command reports, checked independently: each finite radius is the distance of an example in
    [0, 1] that the model (the IR's own forward, not the attack's wrapper) misclassifies. DeepFool, which
    clamps its linearized steps into the box, mostly fails where the box binds on every pixel (binary
    images); PGD does not."""
    folder, binary = idx_folder
    ds = load_dataset(folder, bundled.graph.sample_shape)
    assert ds.bounds == (0.0, 1.0)
    att = attack_dataset(bundled, ds, norm, method=method, steps=10, restarts=2, batch_size=5)
    assert (att.radii[WRONG] == 0).all() and (att.radii[[i for i in range(12) if i not in WRONG]] > 0).all()
    found = torch.isfinite(att.radii) & (att.radii > 0)
    assert found.sum() >= (0 if binary and method == "deepfool" else 6)
    ex, x = att.examples[found], ds.x_user[found]
    assert att.examples.min() >= 0.0 and att.examples.max() <= 1.0
    if binary and len(ex):  # the box binds: pixels the gradient pushes outwards stay at 0 or 1
        assert (ex[x == 0] == 0).any() and (ex[x == 1] == 1).any() and (ex != x).any()
    if not found.any():
        return
    with torch.no_grad():
        pred = bundled(ex).argmax(1)
    assert (pred != ds.y[found]).all()
    dist = (ex.double() - x.double()).flatten(1).norm(p=norm, dim=1)
    assert torch.allclose(dist, att.radii[found], rtol=1e-5)


def test_attack_radius_in_user_space_with_preprocessing(capsys, npz):
    """With --input-scale/--mean/--std the attack runs on the user's values: scaling the data by 10 and
    --input-scale 0.1 gives the model the same inputs, and radii 10 times larger."""
    with np.load(npz) as z:
        x, y = z["x"], z["y"]
    scaled = npz.parent / "scaled.npz"
    np.savez(scaled, x=x * 10, y=y)
    code, out, _ = run_main(capsys, "attack", str(BUNDLED), "--data", str(npz), "--json", *FAST, "--limit", "4")
    base = json.loads(out)["attack_radii"]
    code2, out, _ = run_main(capsys, "attack", str(BUNDLED), "--data", str(scaled), "--json", *FAST, "--limit", "4",
                             "--input-scale", "0.1")
    assert code == code2 == 0
    ten = json.loads(out)["attack_radii"]
    assert ten[1] == 0 and base[1] == 0
    for a, b in zip(base, ten):
        if a:
            assert b == pytest.approx(10 * a, rel=0.05)


def test_certify_attack_ratio_and_table(capsys, npz, tmp_path):
    plot = tmp_path / "curve.png"
    code, out, err = run_main(capsys, "certify", str(BUNDLED), "--data", str(npz), "--json", *FAST_CERTIFY,
                              "--plot", str(plot))
    assert code == 0, err
    result = json.loads(out)
    cert, att = result["radii"], result["attack_radii"]
    assert len(att) == len(cert) == 12 and result["soundness_violations"] == []
    ratios = []
    for i, (c, a) in enumerate(zip(cert, att)):
        if i in WRONG:
            assert c == 0 and a == 0
            continue
        assert a is None or c <= a
        if a:
            ratios.append(c / a)
    assert all(r <= 1 for r in ratios) and 0 < result["attack_median_ratio"] <= 1
    assert result["attack_median_ratio"] == pytest.approx(float(torch.tensor(ratios).median()))
    assert result["attack_method"] == "pgd" and result["attack_seconds"] > 0 and result["attack_median_radius"] > 0
    assert plot.stat().st_size > 1000
    code, out, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(npz), "--limit", "5", *FAST_CERTIFY)
    assert code == 0 and "certified / attack" in out and "median attack radius" in out
    code, out, _ = run_main(capsys, "certify", str(BUNDLED), "--data", str(npz), "--limit", "5")
    assert code == 0 and "certified / attack" not in out


def test_certify_attack_reports_a_disproved_certificate(capsys, npz, monkeypatch):
    """A certificate that an attack disproves is a soundness bug: one SOUNDNESS VIOLATION line, exit 3. Faked
    here by an attack that reports its (real, adversarial) examples at a hundredth of their distance."""
    real = attack_run.attack_dataset

    def shrunk(*args, **kwargs):
        result = real(*args, **kwargs)
        result.radii = result.radii / 100
        return result

    monkeypatch.setattr(attack_run, "attack_dataset", shrunk)
    code, out, err = run_main(capsys, "certify", str(BUNDLED), "--data", str(npz), "--json", *FAST_CERTIFY)
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SOUNDNESS VIOLATION: ")
    result = json.loads(out)
    bad = [v["input"] for v in result["soundness_violations"]]
    assert bad and not set(bad) & set(WRONG)
    assert all(v["certified"] > v["attack"] for v in result["soundness_violations"])


def test_certify_attack_unconfirmed_examples_warn(capsys, npz, monkeypatch):
    """A radius below the certified one whose example does not change the certifying engine's prediction is a
    warning (float disagreement), not a violation."""
    real = attack_run.attack_dataset

    def unflipped(module, data, *args, **kwargs):
        result = real(module, data, *args, **kwargs)
        result.radii = torch.where(result.radii > 0, torch.full_like(result.radii, 1e-9), result.radii)
        result.examples = data.x_user.clone()
        return result

    monkeypatch.setattr(attack_run, "attack_dataset", unflipped)
    code, out, err = run_main(capsys, "certify", str(BUNDLED), "--data", str(npz), "--json", *FAST_CERTIFY)
    assert code == 0
    result = json.loads(out)
    assert result["soundness_violations"] == [] and len(result["attack_unconfirmed"]) == 9
    assert "warning" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (("--steps", "0"), "--steps"),
    (("--batch-size", "0"), "--batch-size"),
    (("--norm", "3"), "--norm"),
])
def test_attack_bad_options_exit_2(capsys, npz, args, needle):
    code, _, err = run_main(capsys, "attack", str(BUNDLED), "--data", str(npz), *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err


def test_attack_bad_data_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 5, 5), np.float32), y=np.zeros(3, np.int64))
    code, out, err = run_main(capsys, "attack", str(BUNDLED), "--data", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "(1, 28, 28)" in err and out == ""
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((3, 784), np.float32), y=np.array([0, 1, 12]))
    code, _, err = run_main(capsys, "attack", str(BUNDLED), "--data", str(labels))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "12" in err
    code, _, err = run_main(capsys, "attack", str(BUNDLED), "--data", str(tmp_path / "missing.npz"))
    assert code == 2 and "no such file" in err
    code, _, err = run_main(capsys, "certify", str(BUNDLED), "--data", str(path), "--attack")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_logits_module_skips_a_trailing_softmax(tmp_path):
    """The attack differentiates the logits, not the probabilities of a trailing Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]], np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    module = load_onnx(path)
    x = torch.tensor([[3.0, 1.0], [0.5, -2.0]])
    z = LogitsModule(module)(x)
    assert torch.allclose(z, x @ torch.tensor(numpy_helper.to_array(w)), atol=1e-6)


def mnist_or_skip():
    root = shared_dir()
    if root is None or not (root / "zoo" / "mnist_fc").is_dir() or not (root / "data" / "mnist").is_dir():
        pytest.skip("../shared/zoo/mnist_fc or ../shared/data/mnist absent (set LIPVERIFY_SHARED)")
    return root / "zoo" / "mnist_fc" / "mnist-net_256x2.onnx", root / "data" / "mnist"


@pytest.mark.slow
def test_mnist_net_attack_radius_and_certified_below_it(capsys):
    model, data = mnist_or_skip()
    code, out, err = run_main(capsys, "certify", str(model), "--data", str(data), "--limit", "20", "--json",
                              "--attack")
    assert code == 0, err
    result = json.loads(out)
    # PGD finds adversarial examples at a median ~0.7 (l2, pixels in [0, 1]) on this network
    assert 0.3 <= result["attack_median_radius"] <= 1.2
    assert result["soundness_violations"] == []
    for c, a in zip(result["radii"], result["attack_radii"]):
        assert a is not None and c <= a
    assert result["attack_median_ratio"] < 0.05  # global Lipschitz certificates are loose on it
    code, out, _ = run_main(capsys, "attack", str(model), "--data", str(data), "--limit", "20", "--json",
                            "--norm", "inf")
    assert code == 0
    linf = json.loads(out)
    assert linf["box"] == [0.0, 1.0] and 0.01 <= linf["median_attack_radius"] <= 0.1
