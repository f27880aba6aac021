"""The soundness harness on the third-party zoo: every image classifier, every certificate method.

For each model, ``certify --method best --attack`` runs (exit 3 would mean an attack broke a certificate), radii
are > 0 for most correctly classified inputs, and the attack radius stands beside each. Then every method's
certified radius is attacked separately with strong PGD (20 restarts, 100 steps, inside the data's domain):
no attack may succeed. A failure is a bug in a rule, never a flaky test. MNIST models read the MNIST test set;
the CIFAR-10 models the centres of their VNN-LIB properties (no CIFAR images ship with the zoo).
"""
from __future__ import annotations

import json

import pytest
import torch

from frontends.data import load_dataset
from verifier.commands.loading import import_model
from verifier.engines.attacks import pgd
from verifier.problem import RadiusProblem

from .conftest import run_main, shared_dir
from .onnx_graphs import torch_single_thread

pytestmark = pytest.mark.slow  # zoo

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

#: (model, data): data "mnist" is ../shared/data/mnist, otherwise a VNN-LIB folder of the zoo
CLASSIFIERS = [
    ("mnist_fc/mnist-net_256x2.onnx", "mnist"),
    ("eran/mnist_relu_9_200.onnx", "mnist"),
    ("eran/ffnnSIGMOID__Point_6x200.onnx", "mnist"),
    ("verivital/Convnet_maxpool.onnx", "mnist"),
    ("verivital/Convnet_avgpool.onnx", "mnist"),
    ("oval21/cifar_base_kw.onnx", "oval21/vnnlib"),
    ("cifar10_resnet/resnet_2b.onnx", "cifar10_resnet/vnnlib"),
    ("marabou-cifar10/cifar10_small.onnx", "marabou-cifar10/vnnlib"),
]
LIMIT = 6
#: fewer inputs on the CNNs, where CROWN's intermediate bounds (and alpha-CROWN's search) cost tens of seconds per
#: input with dense rows
CNN_LIMIT = 2


def _paths(model: str, data: str):
    root = shared_dir()
    if root is None or not (root / "zoo").is_dir():
        pytest.skip("third-party models absent: no ../shared/zoo (set LIPVERIFY_SHARED to the shared folder)")
    data_path = root / "data" / "mnist" if data == "mnist" else root / "zoo" / data
    if not data_path.exists():
        pytest.skip(f"{data_path} absent")
    return root / "zoo" / model, data_path


@pytest.mark.parametrize("model,data", CLASSIFIERS, ids=[m.split("/")[1][:-5] for m, _ in CLASSIFIERS])
def test_best_certificate_with_attack_and_every_method_survives_pgd(model, data, capsys):
    model_path, data_path = _paths(model, data)
    limit = LIMIT if "mnist_" in model or "eran/" in model else CNN_LIMIT
    code, out, err = run_main(capsys, "certify", str(model_path), "--data", str(data_path), "--method", "best",
                              "--attack", "--limit", str(limit), "--json")
    assert code == 0, (out + err)[-2000:]  # 3 would be a soundness violation
    report = json.loads(out)
    assert report["soundness_violations"] == []
    skipped = report["methods_skipped"]  # only Prop. 2, where the logits do not come from an affine layer
    skipped = {k: v for k, v in skipped.items() if not (k == "kernel" and "support vector machines" in v)}
    assert set(skipped) <= {"lmt-pairwise"} and all("affine layer" in why for why in skipped.values()), skipped
    assert set(report["radii_by_method"]) >= {"lmt", "ibp", "bcp", "crown", "alpha-crown", "local"}
    radii = torch.tensor(report["radii"], dtype=torch.float64)
    attack = report["attack_radii"]
    assert len(attack) == len(radii) == min(limit, report["n"])

    _, module = import_model(str(model_path), None)
    ds = load_dataset(data_path, module.graph.sample_shape, limit=limit)
    with torch.no_grad():
        correct = module(ds.x).argmax(1) == ds.y
    assert (radii[correct] > 0).float().mean() >= 0.8, "radii > 0 for most correctly classified inputs"
    for i in correct.nonzero()[:, 0].tolist():  # the attack radius beside every certified one
        assert attack[i] is not None and attack[i] >= float(radii[i]) * (1 - 1e-6)
    lower, upper = (None, None) if ds.bounds is None else ds.bounds
    user_model = ds.user_model(module)
    for method, values in report["radii_by_method"].items():
        r = torch.tensor(values, dtype=torch.float64)
        ok = r > 0
        if not ok.any():
            continue
        _, success = pgd(user_model, RadiusProblem(ds.x_user[ok], ds.y[ok], 2, lower, upper).at(r[ok].float() * 0.999),
                         steps=100, restarts=20)
        assert not success.any(), f"{method}: PGD broke a certified radius of {model}"
