"""Reading ONNX files safely: clear errors for missing, truncated or foreign files, and external data that is
only ever read from inside the model's own folder."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from verifier.errors import ModelImportError


def read_model(src: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto from a path (external data loaded, after checking where it lives) or a ModelProto."""
    if isinstance(src, onnx.ModelProto):
        return src
    path = Path(src)
    if not path.exists():
        raise ModelImportError(f"no such file: {path}")
    if not path.is_file():
        raise ModelImportError(f"not a file: {path}")
    data = path.read_bytes()
    if not data:
        raise ModelImportError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path}: not a valid ONNX file (cannot be parsed; truncated or another format?)")
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelImportError(f"{path}: not a valid ONNX file (no graph or no IR version)")
    _load_external_data(model, path.parent)
    return model


def _external_tensors(model: onnx.ModelProto):
    graph_tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                graph_tensors.append(attr.t)
    return [t for t in graph_tensors if uses_external_data(t)]


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Load external tensors, refusing any location outside ``base`` (never reading it)."""
    tensors = _external_tensors(model)
    if not tensors:
        return
    root = base.resolve()
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        target = (root / location).resolve()
        if os.path.isabs(location) or (target != root and root not in target.parents):
            raise ModelImportError(f"tensor '{tensor.name}': external data location '{location}' is outside "
                                   f"the model's folder; refusing to read it")
        if not target.is_file():
            raise ModelImportError(f"tensor '{tensor.name}': external data file '{location}' not found")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(root))
    except Exception as e:
        raise ModelImportError(f"cannot load external data: {str(e).splitlines()[0]}")
