"""The Python API (``lipverify``, ``verifier.commands.api``): each command on a model as the user holds it, data as
arrays, results with the command's JSON fields; ``train`` hands the weights back to the torch module."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lipverify
from verifier.errors import LipverifyError

from .conftest import run_main
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export's default exporter needs it; "
                                         "pip install lipverify[torch])")


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    centres = torch.tensor([[0.2, 0.2, 0.5, 0.5], [0.8, 0.3, 0.5, 0.5], [0.5, 0.8, 0.5, 0.5]])
    return (centres[y] + 0.08 * torch.randn(n, 4, generator=gen)).clamp(0, 1), y


def trained_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    x, y = blobs()
    opt = torch.optim.Adam(net.parameters(), 0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_certify_a_torch_module_in_three_lines_with_the_commands_fields(tmp_path, capsys):
    net, (x, y) = trained_net(), blobs(40, seed=1)
    result = lipverify.certify(net, (x, y), example=x[:1], method="crown", eps=[0.05])
    assert result.clean_accuracy > 0.9 and result.median_radius > 0.01 and len(result.radii) == 40
    assert str(result).startswith("model      <Sequential>") and "certified at eps 0.05" in str(result)
    # the same fields as the command line's JSON on the exported file, and the same radii
    (tmp_path / "net.onnx").write_bytes(lipverify.to_onnx(net, x[:1]).SerializeToString())
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    code, out, _ = run_main(capsys, "certify", str(tmp_path / "net.onnx"), "--data", str(tmp_path / "d.npz"),
                            "--method", "crown", "--eps", "0.05", "--json")
    cli = json.loads(out)
    assert code == 0 and set(cli) == set(result)
    assert np.allclose(cli["radii"], result.radii, rtol=1e-6)
    with pytest.raises(AttributeError, match="no field 'radius'"):
        result.radius


def test_numpy_data_l_inf_and_bad_arguments_are_one_line_errors():
    net, (x, y) = trained_net(), blobs(20, seed=2)
    result = lipverify.certify(net, (x.numpy(), y.numpy()), example=x[:1], norm="inf")
    assert result.norm == "inf" and result.n == 20
    for bad, match in (({"norm": 3}, "norm must be 2 or inf"), ({"data": (x,)}, "must be \\(x, y\\)")):
        kwargs = {"data": (x, y), "example": x[:1], **bad}
        with pytest.raises(LipverifyError, match=match) as e:
            lipverify.certify(net, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(LipverifyError, match="needs an example input"):
        lipverify.certify(net, (x, y))


def test_lipschitz_attack_and_the_sklearn_path():
    from verifier.engines.lipschitz import graph_lipschitz

    net, (x, y) = trained_net(), blobs(20, seed=3)
    bound = lipverify.lipschitz(net, example=x[:1])
    assert bound.lipschitz == pytest.approx(graph_lipschitz(lipverify.load_model(net, x[:1]), 2.0).lipschitz)
    assert "Lipschitz" in str(bound) or "lipschitz" in str(bound)
    attacked = lipverify.attack(net, (x, y), example=x[:1], steps=20, restarts=2)
    certified = lipverify.certify(net, (x, y), example=x[:1], method="crown")
    found = np.array([np.inf if r is None else r for r in attacked.attack_radii])
    assert (np.array(certified.radii) <= found * (1 + 1e-6)).all()
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install lipverify[sklearn])")
    pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")
    from sklearn.linear_model import LogisticRegression

    assert sklearn
    est = LogisticRegression().fit(x.numpy(), y.numpy())
    result = lipverify.certify(est, (x.numpy(), y.numpy()), method="lmt-pairwise")
    assert result.model == "<LogisticRegression>" and result.median_radius > 0


def test_train_writes_the_onnx_file_and_loads_the_weights_into_the_module(tmp_path):
    from onnx import numpy_helper

    from frontends import read_model

    net, (x, y) = trained_net(), blobs(600, seed=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = lipverify.train(net, (x, y), tmp_path / "out.onnx", example=x[:1], method="lmt", eps=0.1, epochs=1,
                             val=100, batch_size=64)
    assert result.export["parity"] and result.export["same_nodes"]
    assert sorted(result.loaded) == sorted(before)  # every parameter came back
    weights = {t.name: numpy_helper.to_array(t) for t in read_model(tmp_path / "out.onnx").graph.initializer}
    for name, value in net.state_dict().items():
        assert np.array_equal(value.numpy(), weights[name])
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_verify_a_property_of_a_torch_module(tmp_path):
    """y0 = x0 and y1 = -x0: Y_0 <= Y_1 cannot happen for x0 in [0.5, 1] (holds) and happens for x0 in [-1, 1]
    (violated, with a counterexample that has x0 <= 0)."""
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        net.bias.zero_()
    for low, status in ((0.5, "holds"), (-1.0, "violated")):
        prop = tmp_path / f"p{low}.vnnlib"
        prop.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                        f"(declare-const Y_1 Real)\n(assert (>= X_0 {low}))\n(assert (<= X_0 1.0))\n"
                        "(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n(assert (<= Y_0 Y_1))\n")
        result = lipverify.verify(net, prop, example=torch.rand(1, 2), timeout=30)
        assert result.status == status, result
        if status == "violated":
            assert result.counterexample["x"][0] <= 0
