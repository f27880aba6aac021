"""A framework's model as an ONNX ModelProto, through that framework's own exporter (the first step of the Python
API): an ONNX path or ModelProto as it is; a ``torch.nn.Module`` with an example input through
``torch.onnx.export`` (its default, dynamo-based exporter: the ``torch`` extra brings onnxscript); a
scikit-learn estimator or Pipeline through skl2onnx (the ``sklearn`` extra); a Keras model through tf2onnx
(``keras``); a JAX function or Flax module with an example input through jax2onnx (``jax``). Exporters are
imported only when such a model comes, and a missing one is one line naming the extra to install.

The model is exported at batch 1 (the first sample of the example; the importer makes a batch-1 graph run on
any batch, ``frontends.onnx_import``).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from typing import Any, Iterator

import numpy as np
import onnx

from verifier.errors import LipverifyError

from .onnx_io import read_model

#: the pip extra that brings each exporter
EXTRAS = {"onnxscript": "torch", "skl2onnx": "sklearn", "sklearn": "sklearn", "tf2onnx": "keras",
          "jax2onnx": "jax"}


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LipverifyError(f"exporting this model needs {module}: pip install 'lipverify[{EXTRAS[module]}]' "
                             f"(or .venv/bin/pip install -e '.[{EXTRAS[module]}]' in a checkout)") from None


def framework(model: Any, example: Any = None) -> str:
    """'onnx', 'torch', 'sklearn', 'keras' or 'jax', from the model's type (its module's top-level name), or for a
    plain function, 'jax' when the example is a jax array."""
    if isinstance(model, (onnx.ModelProto, str, os.PathLike)):
        return "onnx"
    top = type(model).__module__.split(".")[0]
    if top == "torch":
        return "torch"
    if top in ("sklearn", "imblearn", "xgboost", "lightgbm"):
        return "sklearn"
    if top in ("keras", "tensorflow", "tf_keras"):
        return "keras"
    if top in ("jax", "jaxlib", "flax", "equinox"):
        return "jax"
    for base in type(model).__mro__:  # a user's subclass of torch.nn.Module or of an sklearn estimator
        owner = base.__module__.split(".")[0]
        if owner in ("torch", "sklearn", "keras", "flax"):
            return {"flax": "jax"}.get(owner, owner)
    if callable(model) and type(example).__module__.split(".")[0] in ("jax", "jaxlib"):
        return "jax"  # a plain function of jax arrays
    raise LipverifyError(f"cannot tell which framework a {type(model).__name__} comes from: give an ONNX file or "
                         "ModelProto, a torch.nn.Module, a scikit-learn estimator, a Keras model or a JAX callable")


def to_onnx(model: Any, example: Any = None) -> onnx.ModelProto:
    """``model`` as a ModelProto (module docstring). ``example``: an input batch (a tensor or array; torch needs
    it, scikit-learn takes the feature count from the estimator when it is absent)."""
    kind = framework(model, example)
    if kind == "onnx":
        return read_model(model)
    if kind == "torch":
        return _from_torch(model, example)
    if kind == "sklearn":
        return _from_sklearn(model, example)
    if kind == "jax":
        return _from_jax(model, example)
    return _from_keras(model, example)


def _first(example: Any) -> np.ndarray:
    x = example.detach().cpu().numpy() if hasattr(example, "detach") else np.asarray(example)
    if x.ndim == 0:
        raise LipverifyError("the example input is a scalar; give a batch of inputs")
    return x[:1]


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The logger (and its children) at ERROR level, and warnings off, inside the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _failed(tool: str, e: Exception, what: str = "failed") -> LipverifyError:
    """One line: the tool, what it did, and the first line of its error (300 characters at most)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return LipverifyError(f"{tool} {what}: {text[:300]}")


def _from_torch(module: Any, example: Any) -> onnx.ModelProto:
    import torch

    if example is None:
        raise LipverifyError("a torch.nn.Module needs an example input (a batch, e.g. torch.rand(1, 1, 28, 28))")
    _require("onnxscript")
    x = torch.as_tensor(_first(example), dtype=torch.float32)
    was_training = module.training
    module.eval()
    try:
        with _quiet("torch.onnx"):  # its registration warnings (torchvision ops) say nothing about this model
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    except Exception as e:
        raise _failed("torch.onnx.export", e)
    finally:
        module.train(was_training)
    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    return onnx.load_from_string(buffer.getvalue())


def _from_jax(fn: Any, example: Any) -> onnx.ModelProto:
    """jax2onnx's ``to_onnx`` of a JAX function or Flax module, with a symbolic batch axis."""
    if example is None:
        raise LipverifyError("a JAX function or Flax module needs an example input (a batch, e.g. jnp.zeros((1, 784)))")
    jax2onnx = _require("jax2onnx")
    shape = tuple(int(d) for d in np.shape(example)[1:])
    try:
        with _quiet("jax2onnx"):
            return jax2onnx.to_onnx(fn, [("B", *shape)], model_name="lipverify_export")
    except Exception as e:
        raise _failed("jax2onnx", e)


def _from_keras(model: Any, example: Any) -> onnx.ModelProto:
    """Keras 3's own ``model.export(path, format="onnx")`` (which runs tf2onnx), else tf2onnx's
    ``from_function`` of the model with a symbolic batch axis (the input shape from the model, else from the
    example)."""
    tf2onnx = _require("tf2onnx")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            with _quiet("tensorflow"), contextlib.redirect_stdout(io.StringIO()):
                model.export(path, format="onnx", verbose=False)
            return read_model(path)
        except (AttributeError, TypeError, ValueError, NotImplementedError):
            pass  # a Keras without the ONNX format: tf2onnx below
        except Exception as e:
            raise _failed("Keras' model.export(format='onnx')", e)
    import tensorflow as tf

    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or any(d is None for d in shape[1:]):
        if example is None:
            raise LipverifyError("this Keras model declares no input shape: give an example input batch")
        shape = (None, *np.shape(example)[1:])
    spec = (tf.TensorSpec((None, *shape[1:]), tf.float32, name="input"),)
    try:
        with _quiet("tf2onnx"):
            proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x)), input_signature=spec)
    except Exception as e:
        raise _failed("tf2onnx", e)
    return proto


def _from_sklearn(estimator: Any, example: Any) -> onnx.ModelProto:
    skl2onnx = _require("skl2onnx")
    if example is None:
        n = getattr(estimator, "n_features_in_", None)
        if n is None:
            raise LipverifyError("the estimator is not fitted (no n_features_in_); fit it or give an example input")
        example = np.zeros((1, int(n)), dtype=np.float32)
    try:
        return skl2onnx.to_onnx(estimator, _first(example).astype(np.float32))
    except Exception as e:
        raise _failed("skl2onnx", e, f"could not convert the {type(estimator).__name__}")


def load_model(model: Any, example: Any = None, output: str | None = None) -> Any:
    """The lipverify model (``verifier.ir.GraphModule``) of ``model``: ``to_onnx``, then the import
    (``frontends.onnx_import.load_onnx``; ``output`` as there)."""
    from .onnx_import import load_onnx

    return load_onnx(to_onnx(model, example), output)
