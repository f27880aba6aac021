"""``lipverify verify``: decide a VNN-LIB property on an ONNX model, and the VNN-COMP result file.

The model is imported once; the property is read (``frontends.vnnlib``), then decided within the time left of
``--timeout`` (``verifier.decisions.verify.decide``), with onnxruntime on the original file as the reference that
confirms a counterexample. Statuses and exit codes: holds 0, violated 1, unknown or timeout 4 (bad input 2).
The result file follows VNN-COMP (2022 on): ``unsat`` (holds), ``sat`` (violated) followed by the counterexample
``((X_0 v) ... (Y_0 v) ...)``, ``unknown`` or ``timeout``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from frontends.parity import input_dtype, reference_forward, reference_runner
from frontends.vnnlib import read_vnnlib
from verifier.commands.loading import import_model
from verifier.decisions.verify import HOLDS, TIMEOUT, UNKNOWN, VIOLATED, decide
from verifier.errors import LipverifyError

#: exit codes per status (bad input: 2, as for every command)
EXIT_CODES = {HOLDS: 0, VIOLATED: 1, UNKNOWN: 4, TIMEOUT: 4}
#: the word VNN-COMP's scorer reads per status
VNNCOMP = {HOLDS: "unsat", VIOLATED: "sat", UNKNOWN: "unknown", TIMEOUT: "timeout"}


def run_verify(model_path: str, prop_path: str, timeout: float, output: str | None = None, seed: int = 0,
               source: Any = None) -> dict[str, Any]:
    """The verdict as a JSON-ready dict (``status``, ``vnncomp``, ``seconds``, ``method``, and for 'violated' the
    ``counterexample`` with flattened ``x`` and ``y``)."""
    began = time.monotonic()
    proto, module = import_model(model_path if source is None else source, output)
    prop = read_vnnlib(Path(prop_path))
    try:
        name, run = reference_runner(proto, module.graph.info.get("output"))
    except Exception as e:
        raise LipverifyError(f"{model_path}: onnxruntime cannot run the model, so no counterexample could be "
                             f"confirmed ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
    dtype = input_dtype(proto, module.graph.input_name)
    shape = tuple(module.graph.sample_shape)

    def reference(x: np.ndarray) -> np.ndarray:
        return reference_forward(run, module, x.reshape(1, *shape), dtype)[0].reshape(-1)

    verdict = decide(module.cpu(), prop, reference, max(0.0, timeout - (time.monotonic() - began)), seed, dtype)
    result: dict[str, Any] = {"model": model_path, "property": prop_path, "status": verdict.status,
                              "vnncomp": VNNCOMP[verdict.status], "seconds": time.monotonic() - began,
                              "method": verdict.method, "regions": len(prop.regions), "reference": name}
    if verdict.counterexample is not None:
        x, y = verdict.counterexample
        result["counterexample"] = {"region": verdict.region, "x": x.tolist(), "y": y.tolist()}
    if verdict.notes:
        result["notes"] = verdict.notes
    return result


def vnncomp_result(result: dict[str, Any]) -> str:
    """The result file's text (module docstring)."""
    lines = [result["vnncomp"]]
    ce = result.get("counterexample")
    if ce is not None:
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(ce["x"])]
        pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(ce["y"])]
        lines.append("(" + "\n ".join(pairs) + ")")
    return "\n".join(lines) + "\n"


def format_verify(result: dict[str, Any]) -> str:
    """The verdict for a person: status, how, time; the counterexample's first entries."""
    how = f" by {result['method']}" if result.get("method") else ""
    lines = [f"{result['property']}: {result['status']}{how} ({result['seconds']:.1f} s)"]
    ce = result.get("counterexample")
    if ce is not None:
        x, y = ce["x"], ce["y"]
        shown = ", ".join(f"{v:.6g}" for v in x[:8]) + (f", ... ({len(x)} inputs)" if len(x) > 8 else "")
        lines.append(f"  counterexample x = [{shown}]")
        lines.append("  outputs (onnxruntime) y = [" + ", ".join(f"{v:.6g}" for v in y[:10])
                     + (", ..." if len(y) > 10 else "") + "]")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
