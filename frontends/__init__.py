"""Frontends: framework models -> ONNX -> the lipverify IR."""
from .onnx_import import load_onnx
from .onnx_io import read_model

__all__ = ["load_onnx", "read_model"]
