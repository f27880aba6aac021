"""scikit-learn's ONNX-ML graphs (``frontends.onnx_ml``, ``verifier.ops.ml``): label and ZipMap outputs imported as
their scores (with a note), Scaler / LinearClassifier / LinearRegressor lowered to default-domain ops, Normalizer
kept; onnxruntime parity on graphs built here as skl2onnx writes them, certificates that PGD cannot break, and
the real exporter on real estimators when scikit-learn and skl2onnx are installed."""
from __future__ import annotations

import gzip
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from frontends import load_onnx
from frontends.parity import check_parity
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import METHODS, Task
from verifier.engines.attacks import pgd
from verifier.errors import ModelImportError, NoRuleError
from verifier.problem import RadiusProblem

from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

ML = "ai.onnx.ml"
F, C = 6, 3
RNG = np.random.default_rng(0)
W, B = RNG.normal(size=(C, F)).astype(np.float32), RNG.normal(size=C).astype(np.float32)


def ml_model(nodes: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", F])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(ML, 1)],
                             ir_version=8)


def zipmap_output(name: str) -> onnx.ValueInfoProto:
    value = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
    return helper.make_value_info(name, helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, value)))


def classifier(post: str = "SOFTMAX", normalizer: str | None = "L1", scaler: bool = True, rows: int = C,
               labels: int = C) -> onnx.ModelProto:
    """Scaler -> LinearClassifier -> (Normalizer) -> ZipMap, and the label through Cast, as skl2onnx writes a
    (pipelined) LogisticRegression."""
    x = "X"
    nodes = []
    if scaler:
        nodes.append(helper.make_node("Scaler", ["X"], ["Xs"], domain=ML, offset=list(RNG.normal(size=F)),
                                      scale=list(RNG.uniform(0.5, 2, size=F))))
        x = "Xs"
    nodes.append(helper.make_node("LinearClassifier", [x], ["label", "scores"], domain=ML,
                                  coefficients=list(W[:rows].reshape(-1)), intercepts=list(B[:rows]),
                                  classlabels_ints=list(range(labels)), post_transform=post))
    probs = "scores"
    if normalizer:
        nodes.append(helper.make_node("Normalizer", ["scores"], ["probs"], domain=ML, norm=normalizer))
        probs = "probs"
    nodes += [helper.make_node("Cast", ["label"], ["output_label"], to=TensorProto.INT64),
              helper.make_node("ZipMap", [probs], ["output_probability"], domain=ML,
                               classlabels_int64s=list(range(labels)))]
    return ml_model(nodes, [helper.make_tensor_value_info("output_label", TensorProto.INT64, ["N"]),
                            zipmap_output("output_probability")])


def test_label_output_is_imported_as_the_scores_with_a_note():
    model = classifier()
    module = load_onnx(model)
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Gemm": 1, "Softmax": 1}
    assert module.graph.info["output"] == "scores"
    assert "label" in module.graph.info["notes"][0] and "'scores'" in module.graph.info["notes"][0]
    assert check_parity(model, module)["ok"]


def test_zipmap_output_is_its_probabilities_and_the_normalizer_keeps_the_argmax():
    model = classifier()
    module = load_onnx(model, "output_probability")
    assert module.graph.op_counts() == {"Sub": 1, "Mul": 1, "Gemm": 1, "Softmax": 1, "Normalizer": 1}
    assert "ZipMap" in module.graph.info["notes"][0]
    g = module.graph
    gemm = next(n for n in g.nodes() if n.op_type == "Gemm")
    assert g.logits_tensor() == gemm.outputs[0]  # Softmax, then the L1 Normalizer: both keep the argmax
    assert check_parity(model, module)["ok"]


@pytest.mark.parametrize("post", ["NONE", "SOFTMAX", "LOGISTIC"])
@pytest.mark.parametrize("rows,labels", [(3, 3), (2, 2), (1, 2)], ids=["multiclass", "binary", "binary-one-row"])
def test_linear_classifier_scores_and_labels_match_onnxruntime(post, rows, labels):
    """The scores output as onnxruntime computes it, and for the label output a tensor whose argmax is
    onnxruntime's label on every input (a binary one-row classifier's scores (1 - z, z) are not that tensor)."""
    import onnxruntime as ort

    model = classifier(post, normalizer=None, scaler=False, rows=rows, labels=labels)
    module = load_onnx(model, "output_probability")
    assert module(torch.rand(4, F)).shape == (4, labels)
    report = check_parity(model, module)
    assert report["ok"], report
    x = RNG.normal(size=(2000, F)).astype(np.float32) * 2
    label = ort.InferenceSession(model.SerializeToString()).run(["output_label"], {"X": x})[0]
    with torch.no_grad():
        ours = load_onnx(model)(torch.from_numpy(x)).argmax(1).numpy()
    assert 0 < label.mean() < labels - 1 and (ours == label).all()


@pytest.mark.parametrize("norm", ["L1", "L2", "MAX"])
def test_normalizer_matches_onnxruntime(norm):
    model = classifier("NONE", normalizer=norm)
    module = load_onnx(model, "output_probability")
    assert check_parity(model, module)["ok"]
    node = next(n for n in module.graph.nodes() if n.op_type == "Normalizer")
    assert node.op.keeps_argmax == (norm != "MAX")  # x / max(x) flips the order where max(x) < 0


def test_linear_regressor_matches_onnxruntime():
    nodes = [helper.make_node("LinearRegressor", ["X"], ["y"], domain=ML, coefficients=list(W[:2].reshape(-1)),
                              intercepts=list(B[:2]), targets=2)]
    model = ml_model(nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    module = load_onnx(model)
    assert module.graph.op_counts() == {"Gemm": 1}
    assert check_parity(model, module)["ok"]


def test_unsupported_post_transform_is_one_line():
    with pytest.raises(ModelImportError, match="post_transform PROBIT is not supported"):
        load_onnx(classifier("PROBIT"))


@pytest.mark.parametrize("method", ["crown", "lmt-pairwise"])
def test_certified_radii_of_the_label_survive_pgd(method):
    """The label's certificate is the scores' (Scaler -> linear -> Softmax -> L1 Normalizer): PGD never changes
    the label inside it, and finds changes at 3x."""
    module = load_onnx(classifier())
    x = torch.from_numpy(RNG.normal(size=(64, F)).astype(np.float32))
    with torch.no_grad():
        logits = module(x)
    y = logits.argmax(1)
    task = Task(RadiusProblem(x, y, 2.0), logits=logits, bounds=compute_bounds(module, 2.0, F), module=module)
    radii = METHODS[method].radii(task).float()
    assert float((radii > 0).float().mean()) > 0.9
    _, success = pgd(module, RadiusProblem(x, y, 2.0).at(radii * 0.999), steps=100, restarts=10)
    assert not success.any()
    _, far = pgd(module, RadiusProblem(x, y, 2.0).at(radii * 3), steps=100, restarts=5)
    assert far.any()


# --- the real exporter -------------------------------------------------------------------------------------------
def _fashion(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    from .conftest import REPO

    folder = REPO / "data" / "fashion-mnist-1k"
    images = np.frombuffer(gzip.open(folder / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(folder / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return (images.reshape(-1, 784)[:n] / 255.0).astype(np.float32), labels[:n].astype(np.int64)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "scaler-mlp", "mlp"])
def test_skl2onnx_estimators_import_with_parity_and_certify(kind):
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install lipverify[sklearn])")
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert sklearn and skl2onnx
    x, y = _fashion()
    est = {"logistic": LogisticRegression(max_iter=300),
           "scaler-mlp": make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=60, random_state=0)),
           "mlp": MLPClassifier((32,), max_iter=60, random_state=0)}[kind]
    est.fit(x[:500], y[:500])
    model = skl2onnx.to_onnx(est, x[:1])
    module = load_onnx(model)  # the default output: the label
    assert check_parity(model, module)["ok"]
    xt = torch.from_numpy(x[500:])
    with torch.no_grad():
        logits = module(xt)
    assert (logits.argmax(1).numpy() == est.predict(x[500:])).mean() > 0.98
    yt = torch.from_numpy(y[500:])
    task = Task(RadiusProblem(xt, yt, 2.0), logits=logits, bounds=compute_bounds(module, 2.0, 784), module=module)
    radii = METHODS["crown"].radii(task).float()
    correct = logits.argmax(1) == yt
    assert float((radii[correct] > 0).float().mean()) > 0.5 and math.isfinite(float(radii.max()))
    keep = radii > 0
    _, success = pgd(module, RadiusProblem(xt[keep], yt[keep], 2.0).at(radii[keep] * 0.999), steps=50, restarts=5)
    assert not success.any()


@pytest.mark.parametrize("norm", ["L1", "L2", "MAX"])
def test_normalizer_box_contains_sampled_outputs(norm):
    """Boxes around 0 (the norm's lower bound 0: |y| <= 1, or anything for MAX) and away from it; float32 and
    float64 forwards at the boxes' corners-biased random points all inside."""
    from verifier.box import Box
    from verifier.ops.ml import Normalizer

    op = Normalizer({"norm": norm}, {}, 1, "n")
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(64, 5, generator=gen, dtype=torch.float64) * 3
    centre[:8] = 0.05 * centre[:8]  # boxes that contain 0 in every entry
    widths = torch.tensor([0.01, 0.3, 1.0, 3.0], dtype=torch.float64).repeat(16)[:, None]
    radius = torch.rand(64, 5, generator=gen, dtype=torch.float64) * widths
    if norm == "MAX":  # a row whose maximum may be 0 has no finite box: refused; the others bounded
        with pytest.raises(NoRuleError, match="no finite box"):
            op.interval(Box.from_bounds(centre[:8] - radius[:8], centre[:8] + radius[:8]))
        centre[:, 0] = 10.0
        radius[:, 0] = 1.0
    for dtype in (torch.float32, torch.float64):
        box = Box.from_bounds((centre - radius).to(dtype), (centre + radius).to(dtype))
        out = op.interval(box)
        t = torch.rand(4000, 64, 5, generator=gen, dtype=torch.float64)
        t = torch.where(t < 0.2, 0.0, torch.where(t > 0.8, 1.0, t))  # many ends of the intervals
        points = (box.lo.double() + (box.hi.double() - box.lo.double()) * t).to(dtype)
        y = op.forward(points)
        assert bool(((y >= out.lo) & (y <= out.hi)).all())
        if norm != "MAX":
            assert float(out.hi.max()) <= 1 + 1e-5 and bool(torch.isfinite(out.lo).all())


@pytest.mark.parametrize("rows,labels", [(3, 3), (1, 2)], ids=["multiclass", "binary-one-row"])
def test_train_writes_a_linear_classifiers_coefficients_back(tmp_path, capsys, rows, labels):
    """LinearClassifier's coefficients and intercepts are trainable: train writes them into the same node's
    attributes (nothing else of the file changes) and the written model imports with parity."""
    from onnx import helper as h

    from .conftest import run_main

    model = classifier(rows=rows, labels=labels)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    x = RNG.normal(size=(80, F)).astype(np.float32)
    with torch.no_grad():
        y = load_onnx(model)(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, out, err = run_main(capsys, "train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                              "--method", "lmt", "--epochs", "2", "--val", "20", "--lr", "0.05",
                              "--out", str(tmp_path / "out.onnx"))
    assert code == 0, err
    new = onnx.load(tmp_path / "out.onnx")
    old_attrs, new_attrs = ({a.name: h.get_attribute_value(a) for n in m.graph.node if n.op_type == "LinearClassifier"
                             for a in n.attribute} for m in (model, new))
    assert set(old_attrs) == set(new_attrs) and old_attrs["coefficients"] != new_attrs["coefficients"]
    assert len(old_attrs["coefficients"]) == len(new_attrs["coefficients"]) == rows * F
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]
    assert check_parity(new, load_onnx(new))["ok"]
