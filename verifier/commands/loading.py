"""Loading what the commands work on: the model (its file and its IR), the device, and data shaped for the
model. Used by certify, attack, lipschitz, inspect and training; strings typed by the user were checked by the
command line already (``verifier/commands/cli_values.py``)."""
from __future__ import annotations

import math
import os
from typing import Sequence

import onnx
import torch

from frontends.data import load_dataset
from frontends.onnx_import import load_onnx
from frontends.onnx_io import read_model
from verifier.errors import LipverifyError, ModelImportError
from verifier.ir import GraphModule


def norm_value(norm: str) -> float:
    """A norm as the command line names it ('2' or 'inf') -> its p."""
    return math.inf if str(norm) == "inf" else 2.0


def norm_label(norm: float) -> str:
    """p -> the norm's name in reports ('2' or 'inf')."""
    return "inf" if norm == math.inf else "2"


def import_model(path: str | os.PathLike, output: str | None = None) -> tuple[onnx.ModelProto, GraphModule]:
    """Read and import, turning any failure into a one-line ``ModelImportError``."""
    model = read_model(path)
    try:
        return model, load_onnx(model, output)
    except LipverifyError:
        raise
    except Exception as e:  # a model our checks let through but an op cannot take: still a one-line error
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelImportError(f"cannot import the model: {text}")


DEFAULT_EPS = {2.0: (0.1, 0.25, 0.5, 1.0), math.inf: (0.01, 0.03, 0.1)}


def parse_values(text: str | None, name: str) -> list[float] | float | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise LipverifyError(f"--{name} takes a number or comma-separated numbers, got '{text}'")
    return values[0] if len(values) == 1 else values


def pick_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise LipverifyError("--device cuda: torch sees no CUDA device here")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_inputs(model_path: str, data_path: str, *, norm: str, eps_list: Sequence[float], split: str,
                limit: int | None, device: str, input_scale: float | None, mean: str | None, std: str | None,
                output: str | None, source=None):
    """What certify and attack both start from: the norm, the eps list, the model (file and IR, on the
    device) and the data shaped for it (``source``: the model already read, else it is read from
    ``model_path``). Returns (p, eps_list, model, module, device, data)."""
    p = norm_value(norm)
    eps_list = tuple(eps_list) or DEFAULT_EPS[p]
    if any(e < 0 or not math.isfinite(e) for e in eps_list):
        raise LipverifyError("--eps values must be finite and >= 0")
    model, module = import_model(model_path if source is None else source, output)
    dev = pick_device(device)
    k = math.prod(module.graph.output_shape)
    data = load_dataset(data_path, module.graph.sample_shape, split=split, limit=limit, input_scale=input_scale,
                        mean=parse_values(mean, "mean"), std=parse_values(std, "std"),
                        num_classes=k if k >= 2 else None)
    return p, eps_list, model, module, dev, data
