"""A framework's model as an ONNX ModelProto, through that framework's own exporter (the first step of the Python
API): an ONNX path or ModelProto as it is; a ``torch.nn.Module`` with an example input through
``torch.onnx.export`` (its default, dynamo-based exporter: the ``torch`` extra brings onnxscript); a
scikit-learn estimator or Pipeline through skl2onnx (the ``sklearn`` extra). Exporters are imported only when
such a model comes, and a missing one is one line naming the extra to install. Keras and JAX models are not
exported here yet: they get a line saying how to export them by hand.

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


def framework(model: Any) -> str:
    """'onnx', 'torch', 'sklearn', 'keras' or 'jax', from the model's type (its module's top-level name)."""
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
    raise LipverifyError(f"cannot tell which framework a {type(model).__name__} comes from: give an ONNX file or "
                         "ModelProto, a torch.nn.Module, a scikit-learn estimator, a Keras model or a JAX callable")


def to_onnx(model: Any, example: Any = None) -> onnx.ModelProto:
    """``model`` as a ModelProto (module docstring). ``example``: an input batch (a tensor or array; torch needs
    it, scikit-learn takes the feature count from the estimator when it is absent)."""
    kind = framework(model)
    if kind == "onnx":
        return read_model(model)
    if kind == "torch":
        return _from_torch(model, example)
    if kind == "sklearn":
        return _from_sklearn(model, example)
    tool = {"keras": "tf2onnx (or Keras 3's model.export(path, format='onnx'))", "jax": "jax2onnx"}[kind]
    raise LipverifyError(f"{kind} models are not exported by lipverify yet: export it with {tool} and give the "
                         "ONNX file")


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
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LipverifyError(f"torch.onnx.export failed: {text[:300]}")
    finally:
        module.train(was_training)
    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    return onnx.load_from_string(buffer.getvalue())


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
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LipverifyError(f"skl2onnx could not convert the {type(estimator).__name__}: {text[:300]}")


def load_model(model: Any, example: Any = None, output: str | None = None) -> Any:
    """The lipverify model (``verifier.ir.GraphModule``) of ``model``: ``to_onnx``, then the import
    (``frontends.onnx_import.load_onnx``; ``output`` as there)."""
    from .onnx_import import load_onnx

    return load_onnx(to_onnx(model, example), output)
