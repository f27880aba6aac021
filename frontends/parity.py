"""Parity of the IR with onnxruntime: the same random inputs through both, max absolute and relative error.

The relative difference is scaled by the output magnitude: max |IR - ORT| / max |ORT|. Models that fix batch 1
in the file are run by onnxruntime one sample at a time and compared with one batched IR run. Where
onnxruntime cannot run a valid model (its CPU build has no float64 Conv, for one), ONNX's reference evaluator
stands in, and the report says so.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch

from verifier.ir import GraphModule

TOLERANCE = 1e-4
#: the extra batch of a label parity check (labels are compared one by one: more inputs than for values)
LABEL_BATCH = 256
#: files that compute in half precision cannot match a float32 IR to 1e-4: 16 half-precision epsilons
HALF_TOLERANCE = 16 * float(np.finfo(np.float16).eps)

Runner = Callable[[str, str, np.ndarray], np.ndarray]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reference_runner(model: onnx.ModelProto, output: str | None = None) -> tuple[str, Runner]:
    """onnxruntime on the CPU, or ONNX's reference evaluator when onnxruntime cannot load the model. ``output``:
    a tensor to read that is not a graph output (the scores that the IR imports for a label output,
    ``frontends.onnx_ml``): it is added to a copy of the model's outputs."""
    if output is not None and output not in {o.name for o in model.graph.output}:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # no busy-waiting between runs: torch works on the same cores in between (spinning threads starve it)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return "onnxruntime", lambda out, inp, x: session.run([out], {inp: x})[0]
    except Exception as ort_error:
        try:
            from onnx.reference import ReferenceEvaluator

            evaluator = ReferenceEvaluator(model)
        except Exception:
            raise ort_error
        return "onnx.reference", lambda out, inp, x: np.asarray(evaluator.run([out], {inp: x})[0])


def input_dtype(model: onnx.ModelProto, input_name: str) -> np.dtype:
    for vi in model.graph.input:
        if vi.name == input_name:
            return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.dtype(np.float32)


def _half_precision(model: onnx.ModelProto) -> bool:
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return any(t.data_type in half for t in model.graph.initializer) or any(
        vi.type.tensor_type.elem_type in half for vi in list(model.graph.input) + list(model.graph.output))


def reference_forward(run: Runner, module: GraphModule, x: np.ndarray, dtype: np.dtype, output: str | None = None,
                      sample_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The file's ``output`` (default: the tensor the IR imports) for a batch ``x`` in the IR's layout
    ``(B, *sample_shape)``; ``sample_shape``: that output's per-sample shape (default: the IR output's)."""
    g = module.graph
    output = output or g.info.get("output", g.output_name)  # the file's name (the IR's may be an Identity's input)
    sample_shape = tuple(g.output_shape) if sample_shape is None else sample_shape
    x = x.astype(dtype)
    if g.leading_batch and x.shape[0] != 1:
        try:
            y = run(output, g.input_name, x)
            if y.shape[:1] == (x.shape[0],) and tuple(y.shape[1:]) == sample_shape:
                return y
        except Exception:
            pass  # the file fixes batch 1 somewhere: one sample at a time
    outs = []
    for i in range(x.shape[0]):
        y = run(output, g.input_name, x[i:i + 1] if g.leading_batch else x[i])
        outs.append(y[0] if g.output_leading_batch else y)
    return np.stack(outs)


def check_parity(model: onnx.ModelProto, module: GraphModule, batch_sizes: tuple[int, ...] = (1, 7),
                 seed: int = 0, tolerance: float | None = None) -> dict[str, Any]:
    """Compare ``module`` with onnxruntime on uniform [0, 1) inputs of each batch size.

    The tolerance is 1e-4 of the output magnitude (``HALF_TOLERANCE`` for half-precision files) unless given.
    """
    if module.graph.info.get("label_classes") is not None:
        return label_parity(model, module, batch_sizes + (LABEL_BATCH,), seed)
    if tolerance is None:
        tolerance = HALF_TOLERANCE if _half_precision(model) else TOLERANCE
    report: dict[str, Any] = {"ok": False, "max_abs_diff": None, "max_rel_diff": None, "tolerance": tolerance,
                              "batch_sizes": list(batch_sizes), "per_batch": [], "reference": None}
    try:
        report["reference"], run = reference_runner(model, module.graph.info.get("output"))
    except Exception as e:
        return {**report, "error": f"onnxruntime cannot run the model: {_first_line(e)}"}
    dtype = input_dtype(model, module.graph.input_name)
    rng = np.random.default_rng(seed)
    max_abs, max_rel = 0.0, 0.0
    for b in batch_sizes:
        x = rng.random((b, *module.graph.sample_shape), dtype=np.float64)
        try:
            ref = reference_forward(run, module, x, dtype).astype(np.float64)
        except Exception as e:
            return {**report, "error": f"{report['reference']} fails on batch {b}: {_first_line(e)}"}
        with torch.no_grad():
            ours = module(torch.from_numpy(x)).double().cpu().numpy()
        if ours.shape != ref.shape:
            return {**report, "error": f"IR output shape {ours.shape} != {report['reference']} {ref.shape}"}
        nan_mismatch = bool((np.isnan(ours) != np.isnan(ref)).any())
        diff = np.abs(np.nan_to_num(ours - ref, nan=0.0))
        abs_diff = float(diff.max()) if diff.size else 0.0
        scale = float(np.nanmax(np.abs(ref))) if ref.size and not np.isnan(ref).all() else 0.0
        rel_diff = abs_diff / max(scale, 1e-6)
        if nan_mismatch:
            abs_diff = rel_diff = float("inf")
        report["per_batch"].append({"batch": b, "max_abs_diff": abs_diff, "max_rel_diff": rel_diff,
                                    "output_scale": scale})
        max_abs, max_rel = max(max_abs, abs_diff), max(max_rel, rel_diff)
    return {**report, "ok": max_rel <= tolerance, "max_abs_diff": max_abs, "max_rel_diff": max_rel}


def label_parity(model: onnx.ModelProto, module: GraphModule, batch_sizes: tuple[int, ...], seed: int = 0
                 ) -> dict[str, Any]:
    """Parity of a label imported as the argmax of decision scores the file does not hold (an ONNX-ML
    classifier's, ``frontends.onnx_labels``): the file's label against the IR's argmax, as class indices, on
    uniform [0, 1) inputs of each batch size. Every input whose argmax names a class must agree; an argmax past
    the classes (a one-vs-one SVM's "no class wins every vote", ``frontends.onnx_svm``) decides nothing, and is
    counted as ``undecided``."""
    g = module.graph
    classes = g.info["label_classes"]
    report: dict[str, Any] = {"ok": False, "labels": 0, "agree": 0, "undecided": 0, "batch_sizes": list(batch_sizes),
                              "reference": None, "max_abs_diff": None, "max_rel_diff": None}
    try:
        report["reference"], run = reference_runner(model)
        dtype, rng = input_dtype(model, g.input_name), np.random.default_rng(seed)
        for b in batch_sizes:
            x = rng.random((b, *g.sample_shape), dtype=np.float64)
            ref = reference_forward(run, module, x, dtype, g.info["requested_output"], ()).reshape(-1)
            with torch.no_grad():
                ours = module(torch.from_numpy(x)).reshape(b, -1).argmax(dim=1).cpu().numpy()
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in ref.tolist()]
            decided = ours < len(classes)
            report["labels"] += b
            report["undecided"] += int((~decided).sum())
            report["agree"] += sum(classes[i] == v for i, v, d in zip(ours, text, decided) if d)
    except Exception as e:
        return {**report, "error": f"{report['reference'] or 'onnxruntime'} fails: {_first_line(e)}"}
    decided = report["labels"] - report["undecided"]
    return {**report, "ok": decided > 0 and report["agree"] == decided}
