"""Parity of the IR with onnxruntime: the same random inputs through both, max absolute and relative error.

The relative difference is scaled by the output magnitude: max |IR - ORT| / max |ORT|. Models that fix batch 1
in the file are run by onnxruntime one sample at a time and compared with one batched IR run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from .ir import GraphModule

TOLERANCE = 1e-4


def onnxruntime_session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _numpy_dtype(model: onnx.ModelProto, input_name: str) -> np.dtype:
    for vi in model.graph.input:
        if vi.name == input_name:
            return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.dtype(np.float32)


def onnxruntime_forward(session: Any, module: GraphModule, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The file's output for a batch ``x`` in the IR's layout ``(B, *sample_shape)``, via onnxruntime."""
    g = module.graph
    output = g.info.get("output", g.output_name)  # the file's name (the IR's may be an Identity's input)
    x = x.astype(dtype)
    if g.leading_batch and x.shape[0] != 1:
        try:
            (y,) = session.run([output], {g.input_name: x})
            if y.shape[:1] == (x.shape[0],) and tuple(y.shape[1:]) == tuple(g.output_shape):
                return y
        except Exception:
            pass  # the file fixes batch 1 somewhere: one sample at a time
    outs = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1] if g.leading_batch else x[i]
        (y,) = session.run([output], {g.input_name: xi})
        outs.append(y[0] if g.output_leading_batch else y)
    return np.stack(outs)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_parity(model: onnx.ModelProto, module: GraphModule, batch_sizes: tuple[int, ...] = (1, 7),
                 seed: int = 0, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Compare ``module`` with onnxruntime on uniform [0, 1) inputs of each batch size."""
    try:
        session = onnxruntime_session(model)
    except Exception as e:
        return {"ok": False, "error": f"onnxruntime cannot run the model: {_first_line(e)}",
                "max_abs_diff": None, "max_rel_diff": None, "tolerance": tolerance,
                "batch_sizes": list(batch_sizes), "per_batch": []}
    dtype = _numpy_dtype(model, module.graph.input_name)
    rng = np.random.default_rng(seed)
    max_abs, max_rel, per_batch = 0.0, 0.0, []
    for b in batch_sizes:
        x = rng.random((b, *module.graph.sample_shape), dtype=np.float64)
        ref = onnxruntime_forward(session, module, x, dtype).astype(np.float64)
        with torch.no_grad():
            ours = module(torch.from_numpy(x)).double().cpu().numpy()
        if ours.shape != ref.shape:
            raise AssertionError(f"IR output shape {ours.shape} != onnxruntime {ref.shape}")
        nan_mismatch = bool((np.isnan(ours) != np.isnan(ref)).any())
        diff = np.abs(np.nan_to_num(ours - ref, nan=0.0))
        abs_diff = float(diff.max()) if diff.size else 0.0
        scale = float(np.nanmax(np.abs(ref))) if ref.size and not np.isnan(ref).all() else 0.0
        rel_diff = abs_diff / max(scale, 1e-6)
        if nan_mismatch:
            abs_diff = rel_diff = float("inf")
        per_batch.append({"batch": b, "max_abs_diff": abs_diff, "max_rel_diff": rel_diff,
                          "output_scale": scale})
        max_abs, max_rel = max(max_abs, abs_diff), max(max_rel, rel_diff)
    return {"ok": max_rel <= tolerance, "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "tolerance": tolerance, "batch_sizes": list(batch_sizes), "per_batch": per_batch}
