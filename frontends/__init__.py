"""Frontends: framework models -> ONNX -> the lipverify IR.

``load_onnx`` and ``read_model`` are imported on first use, so that light modules of this package (output
paths, data files) do not pull in torch and onnx for a command line that only checks its arguments."""
from __future__ import annotations

from typing import Any

__all__ = ["load_onnx", "read_model"]


def __getattr__(name: str) -> Any:
    if name == "load_onnx":
        from .onnx_import import load_onnx

        return load_onnx
    if name == "read_model":
        from .onnx_io import read_model

        return read_model
    raise AttributeError(f"module 'frontends' has no attribute {name!r}")
