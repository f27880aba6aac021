"""Reading ONNX files safely: clear errors for missing, truncated or foreign files, and external data that is
only ever read from inside the model's own folder."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from verifier.errors import ModelImportError

from .outputs import OutputPaths, check_path_text


#: protobuf cannot hold one message of 2 GiB or more: a larger ONNX model keeps its weights as external data
MAX_MODEL_BYTES = 2**31 - 1
#: ModelProto's fields (number -> protobuf wire type): a serialized model starts with the tag of one of them
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def read_model(src: str | os.PathLike | onnx.ModelProto, protect: OutputPaths | None = None) -> onnx.ModelProto:
    """A ModelProto from a path (external data loaded, after checking where it lives) or a ModelProto.

    A file is refused from its size and first bytes before it is read whole: empty, 2 GiB or larger (no
    protobuf message can be), or not starting with the tag of a ModelProto field. ``protect``: a command's
    output paths, checked against every file read (the model and its external data files), which are inputs
    no output may overwrite."""
    if isinstance(src, onnx.ModelProto):
        return src
    path = check_path_text(src, "model")
    if not path.exists():
        raise ModelImportError(f"no such file: {path}")
    if not path.is_file():
        raise ModelImportError(f"not a file: {path}")
    data = _read_checked(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path}: not a valid ONNX file (cannot be parsed; truncated or another format?)")
    del data
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelImportError(f"{path}: not a valid ONNX file (no graph or no IR version)")
    external = _load_external_data(model, path.parent)
    if protect is not None:
        protect.protect([path, *external])
    return model


def _read_checked(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelImportError(f"{path}: empty file, not an ONNX model")
            if size > MAX_MODEL_BYTES:
                raise ModelImportError(f"{path}: {size / 2**30:.1f} GiB, larger than any ONNX file can be (2 GiB; "
                                       "larger models keep their weights as external data); not an ONNX model")
            if not _starts_like_a_model(f.read(16)):
                raise ModelImportError(f"{path}: not an ONNX file (its first bytes are not those of an ONNX "
                                       "model)")
            f.seek(0)
            return f.read()
    except OSError as e:
        raise ModelImportError(f"{path}: cannot read ({e.strerror or type(e).__name__})")


def _starts_like_a_model(head: bytes) -> bool:
    """Whether ``head`` starts with a protobuf tag (a varint: field number, wire type) of a ModelProto field."""
    tag, shift = 0, 0
    for byte in head[:5]:
        tag |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return _MODEL_FIELDS.get(tag >> 3) == (tag & 7)
    return False


def _external_tensors(model: onnx.ModelProto):
    graph_tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                graph_tensors.append(attr.t)
    return [t for t in graph_tensors if uses_external_data(t)]


def _load_external_data(model: onnx.ModelProto, base: Path) -> list[Path]:
    """Load external tensors, refusing any location outside ``base`` (never reading it) and any offset or
    length that is not a non-negative integer or reaches past the end of its file. Returns the files read."""
    tensors = _external_tensors(model)
    if not tensors:
        return []
    root = base.resolve()
    files: list[Path] = []
    for tensor in tensors:
        try:
            info = ExternalDataInfo(tensor)
        except (ValueError, TypeError) as e:  # e.g. a length that is not an integer
            raise ModelImportError(f"tensor '{tensor.name}': invalid external data entry ({str(e).splitlines()[0]})")
        location = info.location
        if "\0" in location:
            raise ModelImportError(f"tensor '{tensor.name}': external data location contains a NUL byte")
        target = (root / location).resolve()
        if os.path.isabs(location) or (target != root and root not in target.parents):
            raise ModelImportError(f"tensor '{tensor.name}': external data location '{location}' is outside "
                                   f"the model's folder; refusing to read it")
        if not target.is_file():
            raise ModelImportError(f"tensor '{tensor.name}': external data file '{location}' not found")
        offset = info.offset or 0
        length = info.length
        if offset < 0 or (length is not None and length < 0):
            raise ModelImportError(f"tensor '{tensor.name}': external data offset or length is negative")
        if offset + (length or 0) > target.stat().st_size:
            raise ModelImportError(f"tensor '{tensor.name}': external data reaches past the end of '{location}'")
        files.append(target)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(root))
    except Exception as e:
        raise ModelImportError(f"cannot load external data: {str(e).splitlines()[0]}")
    return sorted(set(files))
