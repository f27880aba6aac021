"""``frontends.load_model`` / ``to_onnx``: a framework's model through its own exporter (torch's dynamo exporter,
skl2onnx), then the import; errors are one line naming what to install or to give."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frontends import load_model, to_onnx
from frontends.exporters import framework
from frontends.parity import check_parity
from verifier.errors import LipverifyError

from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


def _silu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.SiLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.GELU(), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 16), nn.Mish(), nn.Linear(16, 10))


@pytest.mark.slow
def test_a_torch_module_in_three_lines():
    """A CNN with SiLU, GELU and Mish, exported by torch's default exporter: the IR computes what the module
    computes at any batch size (SiLU fused to Swish: no product of input-dependent tensors left)."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install lipverify[torch])")
    net = _silu_cnn()
    x = torch.rand(5, 1, 28, 28)
    module = load_model(net, x)
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-5, rtol=1e-4)
    dynamic = module.graph.dependent_tensors()
    assert not any(n.op_type == "Mul" and sum(t in dynamic for t in n.inputs) > 1 for n in module.graph.nodes())
    assert {"Swish", "Gelu", "Mish"} <= set(module.graph.op_counts())
    assert net.training  # left as it was
    assert check_parity(to_onnx(net, x), module)["ok"]


@pytest.mark.slow
def test_a_scikit_learn_estimator():
    pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install lipverify[sklearn])")
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    est = LogisticRegression().fit(x, y)
    module = load_model(est)  # the feature count from the fitted estimator
    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == est.predict(x)).all()
    assert "label" in module.graph.info["notes"][0]


def test_onnx_inputs_pass_through_and_unknown_objects_are_one_line(tmp_path):
    from tests.onnx_graphs import make_model, node

    model = make_model([node("Relu", ["x"])], [3])
    assert to_onnx(model) is model and framework(str(tmp_path / "m.onnx")) == "onnx"
    with pytest.raises(LipverifyError, match="cannot tell which framework"):
        to_onnx(object())
    with pytest.raises(LipverifyError, match="needs an example input"):
        to_onnx(nn.Linear(2, 2))


def test_a_missing_exporter_names_the_extra(monkeypatch):
    import frontends.exporters as exporters

    real = exporters.importlib.import_module

    def without(name, *args):
        if name in ("onnxscript", "skl2onnx"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(exporters.importlib, "import_module", without)
    with pytest.raises(LipverifyError, match=r"needs onnxscript: pip install 'lipverify\[torch\]'"):
        to_onnx(nn.Linear(2, 2), torch.rand(1, 2))
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(LipverifyError, match=r"lipverify\[sklearn\]"):
        to_onnx(LogisticRegression())
