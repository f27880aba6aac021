"""Frontends: framework models -> ONNX -> the lipverify IR.

``load_model(model, example)`` takes an ONNX path or ModelProto, a torch.nn.Module or a scikit-learn estimator
(``exporters``); ``load_onnx`` an ONNX path or ModelProto. They and ``read_model`` are imported on first use,
so that light modules of this package (output paths, data files) do not pull in torch and onnx for a command
line that only checks its arguments."""
from __future__ import annotations

from typing import Any

__all__ = ["load_model", "load_onnx", "read_model", "to_onnx"]


def __getattr__(name: str) -> Any:
    if name == "load_onnx":
        from .onnx_import import load_onnx

        return load_onnx
    if name == "read_model":
        from .onnx_io import read_model

        return read_model
    if name in ("load_model", "to_onnx"):
        from . import exporters

        return getattr(exporters, name)
    raise AttributeError(f"module 'frontends' has no attribute {name!r}")
