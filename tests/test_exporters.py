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


def _without(monkeypatch, *modules: str) -> None:
    """The exporters' lazy imports of ``modules`` fail, as where those packages are not installed."""
    import frontends.exporters as exporters

    real = exporters.importlib.import_module

    def without(name, *args):
        if name in modules:
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(exporters.importlib, "import_module", without)


def test_a_missing_exporter_names_the_extra(monkeypatch):
    _without(monkeypatch, "onnxscript", "skl2onnx")
    with pytest.raises(LipverifyError, match=r"needs onnxscript: pip install 'lipverify\[torch\]'"):
        to_onnx(nn.Linear(2, 2), torch.rand(1, 2))
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(LipverifyError, match=r"lipverify\[sklearn\]"):
        to_onnx(LogisticRegression())


def test_missing_keras_and_jax_exporters_name_their_extras(monkeypatch):
    """Models that say they come from Keras or Flax (their type's module), without tf2onnx / jax2onnx installed."""
    _without(monkeypatch, "tf2onnx", "jax2onnx")
    keras_like = type("Sequential", (), {"__module__": "keras.src.models.sequential"})()
    flax_like = type("CNN", (), {"__module__": "flax.nnx.module", "__call__": lambda self, x: x})()
    with pytest.raises(LipverifyError, match=r"needs tf2onnx: pip install 'lipverify\[keras\]'"):
        to_onnx(keras_like)
    with pytest.raises(LipverifyError, match="needs an example input"):
        to_onnx(flax_like)
    with pytest.raises(LipverifyError, match=r"needs jax2onnx: pip install 'lipverify\[jax\]'"):
        to_onnx(flax_like, np.zeros((1, 3), np.float32))


def _certify_and_attack(model, x: np.ndarray, y: np.ndarray, example=None) -> None:
    """The API certifies with CROWN, and PGD cannot change a prediction inside a certified radius."""
    import lipverify
    from verifier.engines.attacks import pgd
    from verifier.problem import RadiusProblem

    result = lipverify.certify(model, (x, y), example=example, method="crown")
    radii = torch.tensor(result.radii, dtype=torch.float32)
    keep = radii > 0
    assert keep.float().mean() > 0.5
    module = load_model(model, example)
    xt, yt = torch.from_numpy(x)[keep], torch.from_numpy(y)[keep]
    _, success = pgd(module, RadiusProblem(xt, yt, 2.0).at(radii[keep] * 0.999), steps=50, restarts=5)
    assert not success.any()


@pytest.mark.slow
def test_a_keras_model_through_its_own_export_and_through_tf2onnx():
    keras = pytest.importorskip("keras", reason="Keras is not installed (pip install lipverify[keras])")
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install lipverify[keras])")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="swish"),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    x = np.random.default_rng(0).random((30, 12, 12, 1)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    for how in ("export", "tf2onnx"):
        if how == "tf2onnx":  # as a Keras without the ONNX export format
            model.export = lambda *args, **kwargs: (_ for _ in ()).throw(NotImplementedError("no onnx"))
        module = load_model(model)
        assert module.graph.sample_shape == (12, 12, 1)
        assert np.abs(module(torch.from_numpy(x)).detach().numpy() - expected).max() < 1e-4
    _certify_and_attack(model, x, expected.argmax(1))


@pytest.mark.slow
def test_a_keras_model_with_layer_norm_and_tanh_gelu():
    """tf2onnx decomposes LayerNormalization and gelu(approximate=True): both fold into one node each."""
    keras = pytest.importorskip("keras", reason="Keras is not installed (pip install lipverify[keras])")
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install lipverify[keras])")
    keras.utils.set_random_seed(0)
    gelu = keras.layers.Activation(lambda v: keras.activations.gelu(v, approximate=True))
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16), keras.layers.LayerNormalization(), gelu,
                              keras.layers.Dense(5)])
    x = np.random.default_rng(1).random((30, 20)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    module = load_model(model)
    assert {"LayerNormalization", "Gelu"} <= set(module.graph.op_counts())
    assert np.abs(module(torch.from_numpy(x)).detach().numpy() - expected).max() < 1e-4
    _certify_and_attack(model, x, expected.argmax(1))
    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.GroupNormalization(2),
                            keras.layers.Activation("relu"), keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(2).random((30, 8, 8, 1)).astype(np.float32)
    expected = cnn.predict(x, verbose=0)
    module = load_model(cnn)  # GroupNormalization: a layer norm over (H, W, C / G) of a reshape, folded
    assert "LayerNormalization" in module.graph.op_counts()
    assert np.abs(module(torch.from_numpy(x)).detach().numpy() - expected).max() < 1e-4
    _certify_and_attack(cnn, x, expected.argmax(1))


@pytest.mark.slow
def test_a_jax_function_and_a_flax_module():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (pip install lipverify[jax])")
    pytest.importorskip("jax2onnx", reason="jax2onnx is not installed (pip install lipverify[jax])")
    nnx = pytest.importorskip("flax.nnx", reason="Flax is not installed (pip install lipverify[jax])")
    rng = np.random.default_rng(0)
    w1, w2 = jnp.asarray(rng.normal(size=(20, 16)) * 0.3), jnp.asarray(rng.normal(size=(16, 4)) * 0.3)

    def mlp(x):
        return jnp.tanh(x @ w1) @ w2

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv, self.dense = nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.Linear(4 * 8 * 8, 4, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.conv(x))
            return self.dense(h.reshape(h.shape[0], -1))

    class Normed(nnx.Module):  # jax2onnx decomposes nnx.LayerNorm (one-pass variance): folded into one node
        def __init__(self, rngs):
            self.l1, self.norm = nnx.Linear(20, 16, rngs=rngs), nnx.LayerNorm(16, rngs=rngs)
            self.l2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.gelu(self.norm(self.l1(x))))

    class Grouped(nnx.Module):  # nnx.GroupNorm: jax2onnx's layer norm over (H, W, C / G), folded as well
        def __init__(self, rngs):
            self.conv, self.norm = nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.GroupNorm(4, num_groups=2, rngs=rngs)
            self.dense = nnx.Linear(4 * 8 * 8, 4, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.norm(self.conv(x)))
            return self.dense(h.reshape(h.shape[0], -1))

    for fn, x in ((mlp, rng.random((30, 20)).astype(np.float32)),
                  (CNN(nnx.Rngs(0)), rng.random((30, 8, 8, 1)).astype(np.float32)),
                  (Normed(nnx.Rngs(0)), rng.random((30, 20)).astype(np.float32)),
                  (Grouped(nnx.Rngs(0)), rng.random((30, 8, 8, 1)).astype(np.float32))):
        example = jnp.asarray(x[:1])
        module = load_model(fn, example)
        expected = np.asarray(fn(jnp.asarray(x)))
        assert np.abs(module(torch.from_numpy(x)).detach().numpy() - expected).max() < 1e-4
        _certify_and_attack(fn, x, expected.argmax(1), example)
