"""lipverify from Python: each command as one call that takes the model as the user holds it and the data as
arrays, and returns a ``Result`` with the fields of the command's JSON (re-exported by the top-level
``lipverify`` module).

    import lipverify
    result = lipverify.certify(net, (x, y), example=x[:1], method="best")
    print(result)                      # the command's table
    result.median_radius, result.radii  # its JSON fields

``model``: an ONNX path or ``onnx.ModelProto``, a ``torch.nn.Module`` (with ``example``, an input batch), a
fitted scikit-learn estimator or Pipeline, a Keras model, or a JAX function or Flax module (with ``example``):
exported with the framework's own exporter (``frontends.exporters``; a missing exporter is one
``LipverifyError`` line naming the extra to install). ``data``: what ``--data``
takes (a path) or a tuple ``(x, y)`` of numpy arrays or torch tensors. ``output``, ``norm`` (2 or inf),
``method``, ``eps`` and the rest mean what the command line's options of the same names mean.
``train`` writes the retrained ONNX file (``out``) and, for a ``torch.nn.Module``, loads the new weights into
it (``Result.loaded``: the parameters it set).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import onnx


class Result(dict):
    """A command's report: its JSON fields as keys and as attributes; ``str()`` is the command's text."""

    def __init__(self, fields: dict[str, Any], text: Callable[[dict[str, Any]], str]):
        super().__init__(fields)
        self._text = text

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the result has no field {name!r}; its fields: {', '.join(self)}") from None

    def __str__(self) -> str:
        return self._text(dict(self))


def _model(model: Any, example: Any) -> tuple[str, onnx.ModelProto]:
    """(the name reports give the model, its ONNX model)."""
    from frontends.exporters import to_onnx
    from frontends.onnx_io import read_model

    if isinstance(model, (str, os.PathLike)):
        return str(model), read_model(model)
    if isinstance(model, onnx.ModelProto):
        return f"<ModelProto {model.graph.name or 'graph'}>", model
    return f"<{type(model).__name__}>", to_onnx(model, example)


def _norm(norm: float | str) -> str:
    text = str(norm).lower()
    if text in ("2", "2.0", "l2"):
        return "2"
    if text in ("inf", "linf", "l_inf") or (isinstance(norm, float) and math.isinf(norm)):
        return "inf"
    from verifier.errors import LipverifyError

    raise LipverifyError(f"norm must be 2 or inf, got {norm!r}")


def _values(values: float | Sequence[float] | None) -> str | None:
    """A scalar or per-channel mean/std as the command line's comma-separated text."""
    if values is None:
        return None
    return ",".join(repr(float(v)) for v in (values if isinstance(values, (list, tuple)) else [values]))


def certify(model: Any, data: Any, *, example: Any = None, output: str | None = None, norm: float | str = 2,
            method: str | None = None, eps: Sequence[float] = (), limit: int | None = None, batch_size: int = 256,
            device: str = "auto", input_scale: float | None = None, mean: Any = None, std: Any = None,
            attack: bool = False) -> Result:
    """``lipverify certify``: a certified radius per input (``radii``), certified and clean accuracy."""
    from verifier.commands.certify_run import run_certify
    from verifier.commands.report import format_certify

    name, proto = _model(model, example)
    fields = run_certify(name, data, norm=_norm(norm), eps_list=tuple(eps), method=method, limit=limit,
                         batch_size=batch_size, device=device, input_scale=input_scale, mean=_values(mean),
                         std=_values(std), output=output, attack=attack, source=proto)
    return Result(fields, format_certify)


def attack(model: Any, data: Any, *, example: Any = None, output: str | None = None, norm: float | str = 2,
           eps: Sequence[float] = (), limit: int | None = None, steps: int = 50, restarts: int = 5,
           method: str = "pgd", seed: int = 0, device: str = "auto") -> Result:
    """``lipverify attack``: the smallest adversarial perturbation found per input (``attack_radii``)."""
    from verifier.commands.attack_run import format_attack, run_attack

    name, proto = _model(model, example)
    fields = run_attack(name, data, norm=_norm(norm), eps_list=tuple(eps), limit=limit, output=output,
                        steps=steps, restarts=restarts, method=method, seed=seed, device=device, source=proto)
    return Result(fields, format_attack)


def lipschitz(model: Any, *, example: Any = None, output: str | None = None, norm: float | str = 2) -> Result:
    """``lipverify lipschitz``: guaranteed bounds of the Lipschitz constant (``lipschitz``, ``nodes``...)."""
    from verifier.commands.loading import import_model, norm_value
    from verifier.commands.report import format_lipschitz
    from verifier.engines.lipschitz import graph_lipschitz

    name, proto = _model(model, example)
    report = graph_lipschitz(import_model(proto, output)[1], norm_value(_norm(norm)))
    return Result({"model": name, **report.to_json()}, lambda _: format_lipschitz(report, name))


def verify(model: Any, prop: str | os.PathLike, *, example: Any = None, output: str | None = None,
           timeout: float = 60.0, seed: int = 0) -> Result:
    """``lipverify verify``: whether a VNN-LIB property holds (``status``; ``counterexample`` when violated)."""
    from verifier.commands.verify_run import format_verify, run_verify

    name, proto = _model(model, example)
    return Result(run_verify(name, str(prop), timeout, output=output, seed=seed, source=proto), format_verify)


def train(model: Any, data: Any, out: str | os.PathLike, *, example: Any = None, output: str | None = None,
          method: str = "lmt", eps: float = 1.0, epochs: int = 10, val: int = 5000, limit: int | None = None,
          device: str = "auto", input_scale: float | None = None, mean: Any = None, std: Any = None,
          progress: bool = False, **config: Any) -> Result:
    """``lipverify train``: retrains the model's weights (``config``: ``TrainConfig``'s other fields, e.g.
    ``batch_size``, ``lr``), writes the same ONNX graph with them to ``out``, and for a ``torch.nn.Module``
    loads them into it (``Result.loaded``)."""
    from training.loop import TrainConfig
    from training.run import format_train, run_train

    name, proto = _model(model, example)
    settings = TrainConfig(method=method, eps=eps, epochs=epochs, **config)
    fields = run_train(name, data_path=data, val=val, limit=limit, out=str(out), config=settings, output=output,
                       device=device, input_scale=input_scale, mean=_values(mean), std=_values(std),
                       progress=progress, source=proto)
    if _is_torch_module(model):
        fields["loaded"] = load_weights(model, str(out))
    return Result(fields, format_train)


def _is_torch_module(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)


def load_weights(module: Any, path: str) -> list[str]:
    """Copy the initializers of the ONNX file at ``path`` into the ``torch.nn.Module``'s parameters and buffers
    of the same name and shape (the names torch's exporters keep); returns the names set."""
    import torch
    from onnx import numpy_helper

    from frontends.onnx_io import read_model

    weights = {t.name: numpy_helper.to_array(t) for t in read_model(path).graph.initializer}
    state = module.state_dict()
    loaded = [k for k, v in state.items() if k in weights and tuple(weights[k].shape) == tuple(v.shape)]
    with torch.no_grad():
        for k in loaded:
            state[k].copy_(torch.from_numpy(weights[k].copy()).to(state[k].dtype))
    return loaded
