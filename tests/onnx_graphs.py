"""Small ONNX graphs for the op tests: one float input ``x`` (batch axis ``N`` or fixed 1 in front), one output
``y``, built with ``onnx.helper``; ``check`` imports one into the IR and compares it with onnxruntime."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frontends import load_onnx
from frontends.parity import check_parity

IR_VERSION = 10  # what onnxruntime accepts for every opset used here (<= 21)
INT_MAX = 2**63 - 1
INT_MIN = -(2**63)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op_type, list(inputs), list(outputs), **attrs)


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Standard normal float32 values (deterministic)."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def tensor(name: str, value: Any) -> onnx.TensorProto:
    """An initializer: python floats and float64 arrays become float32, python ints int64 (numpy integer
    arrays keep their dtype)."""
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return numpy_helper.from_array(arr, name)


def make_model(nodes: Sequence[onnx.NodeProto], sample_shape: Sequence[int], inits: dict[str, Any] | None = None,
               opset: int = 13, batch: int | str | None = "N", affine: tuple[float, float] | None = None,
               inits_as_inputs: bool = False) -> onnx.ModelProto:
    """A model whose input ``x`` has shape ``(batch, *sample_shape)`` (no batch axis when ``batch`` is None).

    ``affine=(shift, scale)``: the nodes read ``x = (input - shift) * scale`` instead of the raw input (the
    parity inputs are uniform in [0, 1); this gives them both signs).
    """
    nodes, inits = list(nodes), dict(inits or {})
    in_name = "x"
    if affine is not None:
        in_name = "x_in"
        inits.update(_shift=np.float32(affine[0]), _scale=np.float32(affine[1]))
        nodes = [node("Sub", ["x_in", "_shift"], ["x_shifted"]), node("Mul", ["x_shifted", "_scale"], ["x"]),
                 *nodes]
    shape = list(sample_shape) if batch is None else [batch, *sample_shape]
    inputs = [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, shape)]
    initializers = [tensor(k, v) for k, v in inits.items()]
    if inits_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
    graph = helper.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name="y")], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # the output's declared type
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    out_type = model.graph.output[0].type.tensor_type
    if not out_type.HasField("shape"):  # not inferable (data-dependent): declare the rank onnxruntime computes
        import onnxruntime as ort

        probe = np.zeros([1 if not isinstance(d, int) else d for d in shape], np.float32)
        (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {in_name: probe})
        out_type.elem_type = helper.np_dtype_to_tensor_dtype(y.dtype)
        out_type.shape.SetInParent()
        for i in range(y.ndim):
            out_type.shape.dim.add().dim_param = f"y{i}"
    onnx.checker.check_model(model)
    return model


def check(model: onnx.ModelProto, batched: bool = True, batch_sizes: tuple[int, ...] = (1, 7)):
    """Import ``model``, assert parity with onnxruntime (relative 1e-4) and, if ``batched``, that the IR runs
    whole batches natively. Returns the module."""
    module = load_onnx(model)
    report = check_parity(model, module, batch_sizes=batch_sizes)
    assert report["ok"], f"parity failed: {report}"
    if batched:
        assert module.graph.batched, "the IR should run this graph batched"
    return module


def case(case_id: str, nodes: Sequence[onnx.NodeProto], sample_shape: Sequence[int],
         inits: dict[str, Any] | None = None, opset: int = 13, affine: tuple[float, float] | None = None,
         batched: bool = True, batches: Sequence[int | str] = ("N", 1), marks=()) -> dict[str, Any]:
    """One test case: a model with one op (or a few), run for each batch axis in ``batches`` (symbolic 'N',
    fixed 1) by ``run_case``. ``batched``: whether the IR must run it batched natively."""
    return dict(id=case_id, nodes=list(nodes), sample_shape=list(sample_shape), inits=inits, opset=opset,
                affine=affine, batched=batched, batches=tuple(batches), marks=marks)


def params(cases: Sequence[dict[str, Any]]) -> list:
    """pytest parameters (spec, batch) for every case and each of its batch axes."""
    import pytest

    return [pytest.param(c, b, id=f"{c['id']}-{b}", marks=c["marks"]) for c in cases for b in c["batches"]]


def onnxruntime_runs(op_type: str, opset: int, **attrs: Any) -> bool:
    """Whether onnxruntime has a kernel for ``op_type`` at ``opset`` (a one-node model on a (1, 3) input)."""
    import onnxruntime as ort

    try:
        model = make_model([node(op_type, ["x"], **attrs)], [3], opset=opset)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((1, 3), np.float32)})
        return True
    except Exception:
        return False


def run_case(spec: dict[str, Any], batch: int | str):
    model = make_model(spec["nodes"], spec["sample_shape"], spec["inits"], spec["opset"], batch, spec["affine"])
    return check(model, batched=spec["batched"])


def check_reference(model: onnx.ModelProto, batch: int = 3, tolerance: float = 1e-4):
    """Compare the IR with ONNX's own reference evaluator (for the few variants where onnxruntime departs
    from the spec). Returns the module."""
    import torch
    from onnx.reference import ReferenceEvaluator

    module = load_onnx(model)
    x = np.random.default_rng(0).random((batch, *module.graph.sample_shape)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).double().numpy()
    assert ours.shape == ref.shape, f"IR shape {ours.shape} != reference {ref.shape}"
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err <= tolerance, f"relative difference {err} to the ONNX reference"
    return module


def torch_single_thread():
    """Module-scoped autouse fixture body: the tensors here are tiny, and torch's thread pool only costs time
    (much of it when the CPU is shared); restores the thread count afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def box_points(lo, hi, count: int, seed: int):
    """``count`` points of the box [lo, hi] (float64, shape (count, *lo.shape)), a third of the coordinates at
    the box's ends (where bounds are tight)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(count, *lo.shape, generator=gen, dtype=torch.float64)
    t = torch.where(t < 0.15, 0.0, torch.where(t > 0.85, 1.0, t))
    return lo + (hi - lo) * t


def l2_radii(module, x, y, methods: Sequence[str]) -> dict:
    """Each method's certified l2 radii (float32) of the inputs ``x`` with labels ``y``, through the registry."""
    import math

    import torch

    from verifier.certificates.certify import compute_bounds
    from verifier.certificates.methods import METHODS, Task
    from verifier.problem import RadiusProblem

    with torch.no_grad():
        logits = module(x)
    task = Task(RadiusProblem(x, y, 2.0), logits=logits, bounds=compute_bounds(module, 2.0, math.prod(x.shape[1:])),
                module=module)
    return {m: METHODS[m].radii(task).float() for m in methods}


def pgd_succeeds_inside(module, x, y, radii) -> bool:
    """Whether PGD (100 steps, 20 restarts) changes the prediction of some input within 0.999 of its l2 radius."""
    from verifier.engines.attacks import pgd
    from verifier.problem import RadiusProblem

    _, success = pgd(module, RadiusProblem(x, y, 2.0).at(radii * 0.999), steps=100, restarts=20)
    return bool(success.any())
