"""ONNX -> IR: read, check, fold everything that does not depend on the input, build ops, make it batched.

The steps (each one exact):
1. read the file (``onnx_io``), pick the one input and the chosen output, prune to what the output needs; lower
   the ONNX-ML ops there and import a label or ZipMap output as its scores (``onnx_ml``);
2. name every unsupported op on the input-dependent path at once (before ``onnx.checker``, whose message would
   name only the first);
3. ``onnx.checker`` and ``onnx.shape_inference`` (the latter for reporting declared shapes);
4. walk the nodes in topological order running the model at batch 1 on a probe input: nodes whose inputs are
   all constants are folded with ONNX's reference evaluator (so folding has the spec's semantics for any op),
   ``Shape``/``Size`` of input-dependent tensors become constants (the shapes are static), ``Identity`` and
   ``Dropout`` disappear, every other node becomes an op of the registry (``verifier.ops``);
5. rewrite patterns into single ops (``onnx_patterns`` before step 2: thresholded Softplus;
   ``verifier.rewrite`` on the IR: Erf-form GELU, SiLU / Swish, Mish, HardSwish, ReLU6-form HardSigmoid);
6. let ops rewrite batch-1 constants (``Reshape`` to ``[1, -1]``...), then check that a batched run equals
   per-sample runs; if it does not, the module runs sample by sample (always exact).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from verifier.errors import ModelImportError, UnsupportedOpsError
from verifier.ir import Graph, GraphModule, Node, build_dag
from verifier.ops import lookup
from verifier.rewrite import fuse_patterns

from .onnx_graph import constant_tensor, sparse_to_dense, topological_nodes, value_shape
from .onnx_io import read_model
from .onnx_labels import resolve_output
from .onnx_ml import lower_ml
from .onnx_patterns import rewrite_patterns

DEFAULT_DOMAINS = ("", "ai.onnx")
#: the most values one input sample may have (1 GiB in float32): larger declared inputs are refused at import
MAX_INPUT_VALUES = 2**28
REMOVED_OPS = ("Identity", "Dropout")
#: ONNX ops that pass a constant through unchanged in value (besides those whose IR op ``permutes_entries``):
#: a weight seen through them (Keras-on-JAX writes Transpose(kernel)) stays a trainable weight, with the chain back
#: to its initializer recorded for export
PASS_THROUGH_OPS = ("Identity", "Cast")


def load_onnx(src: str | os.PathLike | onnx.ModelProto, output: str | None = None) -> GraphModule:
    """Import an ONNX model (path or ModelProto) as a ``GraphModule`` computing ``output`` (default: first)."""
    model = read_model(src)
    return Importer(model, output).module()


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    raise ModelImportError("model imports no default ONNX opset")


def _to_torch(value: np.ndarray) -> torch.Tensor:
    value = np.array(value)  # a writable copy
    if value.dtype.kind == "f":
        return torch.from_numpy(value).to(torch.get_default_dtype())
    if value.dtype.kind in "iub":
        return torch.from_numpy(value if value.dtype.kind == "b" else value.astype(np.int64))
    raise ModelImportError(f"constant of unsupported dtype {value.dtype}")


class Importer:
    """One ONNX model's translation into the IR (see the module docstring for the steps)."""

    def __init__(self, model: onnx.ModelProto, output: str | None = None):
        if len(model.functions):  # model-local functions (torch's export_modules_as_functions): inline them
            try:
                model = onnx.inliner.inline_local_functions(model)
            except Exception as e:
                raise ModelImportError(f"cannot inline the model's local functions: {str(e).strip()[:200]}")
        self.model = model
        self.opset = default_opset(model)
        self.opsets = {("" if imp.domain in DEFAULT_DOMAINS else imp.domain): int(imp.version)
                       for imp in model.opset_import}
        g = model.graph
        self.const: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for sp in g.sparse_initializer:
            self.const[sp.values.name] = sparse_to_dense(sp)
        self.initializers = set(self.const)
        # constant name -> (initializer, layout nodes applied to it): where each trainable weight comes from
        self.sources: dict[str, tuple[str, list[onnx.NodeProto]]] = {
            name: (name, []) for name, v in self.const.items() if np.asarray(v).dtype.kind == "f"}
        inputs = [i for i in g.input if i.name not in self.const]
        if not inputs:
            raise ModelImportError("model has no inputs (every graph input is an initializer)")
        if len(inputs) > 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelImportError(f"model has {len(inputs)} inputs ({names}); lipverify handles one-input models")
        self.input = inputs[0]
        outputs = [o.name for o in g.output]
        if not outputs:
            raise ModelImportError("model has no outputs")
        if output is not None and output not in outputs:
            raise ModelImportError(f"no output named '{output}'; the model's outputs: {', '.join(outputs)}")
        self.requested = self.output = output or outputs[0]
        # (pruned first: only what is used is lowered)
        self.attributes: dict[str, tuple[str, str]] = {}  # weights kept in ONNX-ML attributes (lower_ml)
        nodes = lower_ml(self._prune(topological_nodes(g)), self.const, self.output, self.attributes)
        self.sources.update({name: (name, []) for name in self.attributes})
        self.output, note, self.label_classes = resolve_output(nodes, self.const, self.requested)
        if any(self.output in n.output for n in g.node):  # the file holds the scores: parity compares them
            self.label_classes = None
        self.notes = [note] if note else []
        self._read: set[str] | None = None  # every tensor some node reads (built when first needed)
        self.nodes = rewrite_patterns(self._prune(nodes), self.const, {self.output})
        try:
            self._check_supported()
        except UnsupportedOpsError as e:
            others = [o for o in outputs if o != self.output]
            if others:  # e.g. scikit-learn's label output (ArgMax, ZipMap) beside the probabilities
                e.args = (f"{e.args[0]} (for output '{self.output}'; other outputs: {', '.join(others)}; "
                          f"choose one with --output)",)
            raise
        try:
            onnx.checker.check_model(model)
        except Exception as e:  # ValidationError, or C++ errors for broken files
            raise ModelImportError(f"invalid ONNX model: {str(e).strip().splitlines()[0]}")

    # --- structure ---------------------------------------------------------------------------------------
    def _prune(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        needed, kept = {self.output}, []
        for node in reversed(nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(t for t in node.input if t)
        return kept[::-1]

    def _check_supported(self) -> None:
        dependent, bad = {self.input.name}, []
        for i, node in enumerate(self.nodes):
            if not any(t in dependent for t in node.input):
                continue
            static = node.op_type in ("Shape", "Size") or (node.op_type == "CastLike"
                                                            and node.input[0] not in dependent)
            if static:  # their values are known at import (shapes are static per sample): folded
                continue
            dependent.update(node.output)
            if node.domain in DEFAULT_DOMAINS and node.op_type in REMOVED_OPS + ("Constant",):
                continue
            if self._op_class(node) is None:
                label = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
                bad.append((label, node.name or f"#{i}"))
        if bad:
            raise UnsupportedOpsError(bad)

    # --- the batch-1 walk --------------------------------------------------------------------------------
    def _probe_input(self) -> tuple[torch.Tensor, tuple[int, ...], bool]:
        shape = value_shape(self.input)
        elem = self.input.type.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            name = onnx.TensorProto.DataType.Name(elem) if elem else "unknown"
            raise ModelImportError(f"input '{self.input.name}' has type {name}; lipverify needs a float input")
        if shape is None:
            raise ModelImportError(f"input '{self.input.name}' declares no shape")
        leading = bool(shape) and (shape[0] == 1 or not isinstance(shape[0], int) or shape[0] == 0)
        fixed = [1 if (i == 0 and leading) else d for i, d in enumerate(shape)]
        symbolic = [i for i, d in enumerate(fixed) if not isinstance(d, int) or d <= 0]
        if symbolic:
            raise ModelImportError(f"input '{self.input.name}' has symbolic dimensions at axes {symbolic} "
                                   f"(shape {shape}); only the batch axis may be symbolic")
        if math.prod(fixed) > MAX_INPUT_VALUES:
            raise ModelImportError(f"input '{self.input.name}' has shape {shape}: {math.prod(fixed)} values per "
                                   f"sample, more than the {MAX_INPUT_VALUES} lipverify takes")
        gen = torch.Generator().manual_seed(0)
        return torch.rand(fixed, generator=gen), tuple(fixed), leading

    def _fold(self, node: onnx.NodeProto) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants with ONNX's reference implementation."""
        if node.op_type == "Constant":
            return [numpy_helper.to_array(constant_tensor(node))]
        feeds = {t: self.const[t] for t in node.input if t}
        inputs = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for t, v in feeds.items()]
        graph = helper.make_graph([node], "fold", inputs, [onnx.ValueInfoProto(name=o) for o in node.output if o])
        opsets = [helper.make_opsetid(i.domain, i.version) for i in self.model.opset_import]
        sub = helper.make_model(graph, opset_imports=opsets, ir_version=self.model.ir_version)
        try:
            return [np.asarray(v) for v in ReferenceEvaluator(sub).run(None, feeds)]
        except Exception as e:
            raise ModelImportError(f"cannot fold constant node {node.op_type} '{node.name}': "
                                   f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")

    def module(self) -> GraphModule:
        probe, probe_shape, leading = self._probe_input()
        dyn: dict[str, torch.Tensor] = {self.input.name: probe}
        alias: dict[str, str] = {}
        ir_nodes: list[Node] = []
        shapes: dict[str, tuple[int, ...]] = {self.input.name: probe_shape}
        used_names: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            ins = [alias.get(t, t) for t in node.input]
            if all(not t or t in self.const for t in ins):
                for o, v in zip([o for o in node.output if o], self._fold(node)):
                    self.const[o] = v
                if self._layout(node) and ins and ins[0] in self.sources:
                    root, chain = self.sources[ins[0]]
                    if self.const[node.output[0]].dtype.kind == "f":
                        self.sources[node.output[0]] = (root, chain + [node])
                continue
            if node.op_type in REMOVED_OPS:
                alias[node.output[0]] = ins[0]
                self._refuse_used(node, node.output[1:])
                continue
            if node.op_type == "CastLike" and ins[0] in self.const:  # a constant cast to the input's float type
                self.const[node.output[0]] = self._cast_like(ins[0], dyn[ins[1]])
                continue
            if node.op_type in ("Shape", "Size"):
                self.const[node.output[0]] = _shape_value(node, tuple(dyn[ins[0]].shape))
                continue
            name = _unique(node.name or f"{node.op_type}_{i}", used_names)
            ir_nodes.append(self._make_node(node, name, ins, dyn, shapes))
        out = alias.get(self.output, self.output)
        uses = self._consumers(ir_nodes)
        uses[out] += 1
        ir_nodes = fuse_patterns(ir_nodes, self.const, self.opset, uses)
        if out in self.const or out not in dyn:
            raise ModelImportError(f"output '{self.output}' does not depend on the model input")
        return self._finish(ir_nodes, out, shapes, probe_shape, leading)

    def _layout(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` only re-lays out its first input (``Op.permutes_entries``) or passes it through."""
        cls = lookup(node.op_type, self.opset) if node.domain in DEFAULT_DOMAINS else None
        return node.op_type in PASS_THROUGH_OPS or (cls is not None and cls.permutes_entries)

    def _cast_like(self, name: str, like: torch.Tensor) -> np.ndarray:
        value = self.const[name]
        if like.is_floating_point():
            return value.astype(np.float32)  # the IR computes in one float precision (see Cast)
        return value.astype(str(like.dtype).replace("torch.", ""))

    def _domain_opset(self, node: onnx.NodeProto) -> int:
        return self.opsets.get("" if node.domain in DEFAULT_DOMAINS else node.domain, 1)

    def _op_class(self, node: onnx.NodeProto) -> Any:
        return lookup(node.op_type, self._domain_opset(node), node.domain)

    def _make_node(self, node: onnx.NodeProto, name: str, ins: list[str], dyn: dict[str, torch.Tensor],
                   shapes: dict[str, tuple[int, ...]]) -> Node:
        cls = self._op_class(node)
        assert cls is not None  # _check_supported named every missing one
        static: dict[int, Any] = {}
        for k in cls.static_inputs:
            if k < len(ins) and ins[k]:
                if ins[k] not in self.const:
                    raise ModelImportError(f"{node.op_type} node '{name}': input {k} ('{ins[k]}') must be a "
                                           f"constant, but it depends on the model input")
                static[k] = self.const[ins[k]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = cls(attrs, static, self._domain_opset(node), name, n_outputs=len([o for o in node.output if o]))
        inputs = ["" if k in static else t for k, t in enumerate(ins)]
        args = [None if not t else (dyn[t] if t in dyn else _to_torch(self.const[t])) for t in inputs]
        try:
            with torch.no_grad():
                out = op.forward(*args)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelImportError(f"{node.op_type} node '{name}' fails on the model's input shape: {msg}")
        outs = list(out) if isinstance(out, tuple) else [out]
        if len(outs) < len([o for o in node.output if o]):
            self._refuse_used(node, node.output[len(outs):])
        outputs = list(node.output[:len(outs)])
        for o, v in zip(outputs, outs):
            dyn[o] = v
            shapes[o] = tuple(v.shape)
        op.adapt_batch([shapes.get(t) if t else None for t in inputs], [tuple(v.shape) for v in outs])
        return Node(name, op, inputs, outputs)

    def _refuse_used(self, node: onnx.NodeProto, extra_outputs) -> None:
        """Secondary outputs we do not compute (Dropout mask, MaxPool indices) must not be read."""
        extra = {o for o in extra_outputs if o}
        if not extra:
            return
        if self._read is None:
            self._read = {t for n in self.nodes for t in n.input}
        if extra & self._read or self.output in extra:
            raise UnsupportedOpsError([(f"{node.op_type} (secondary output)", node.name or node.output[0])])

    @staticmethod
    def _consumers(nodes: list[Node]) -> Counter:
        return Counter(t for n in nodes for t in n.inputs if t)

    def _finish(self, ir_nodes: list[Node], out: str, shapes: dict[str, tuple[int, ...]],
                probe_shape: tuple[int, ...], leading: bool) -> GraphModule:
        used = {t for n in ir_nodes for t in n.inputs if t}
        weights = {t for n in ir_nodes for k, t in enumerate(n.inputs)
                   if t and k in n.op.weight_inputs and t in self.sources}
        constants = {t: _to_torch(self.const[t]) for t in sorted(used) if t in self.const}
        out_shape = shapes[out]
        out_leading = leading and len(out_shape) > 0 and out_shape[0] == 1
        graph = Graph(
            dag=build_dag(ir_nodes), input_name=self.input.name, output_name=out, constants=constants,
            weights={w for w in weights if constants[w].is_floating_point()},
            sample_shape=probe_shape[1:] if leading else probe_shape,
            output_shape=out_shape[1:] if out_leading else out_shape,
            leading_batch=leading, output_leading_batch=out_leading, shapes=dict(shapes),
            info=self._info(), weight_sources={w: self.sources[w] for w in weights if self.sources[w][1]},
        )
        graph.info["attribute_weights"] = {w: list(self.attributes[w]) for w in sorted(graph.weights)
                                           if w in self.attributes}
        module = GraphModule(graph)
        graph.batched = batches_exactly(module)
        return module

    def _info(self) -> dict[str, Any]:
        m = self.model
        g = m.graph
        return {
            "opset": self.opset,
            "producer": f"{m.producer_name} {m.producer_version}".strip(),
            "ir_version": m.ir_version,
            "file_op_counts": dict(Counter(n.op_type for n in g.node)),
            "input": {"name": self.input.name, "shape": value_shape(self.input)},
            "outputs": [{"name": o.name, "shape": value_shape(o)} for o in _inferred_outputs(m)],
            "output": self.output,
            "requested_output": self.requested,
            "notes": list(self.notes),
            "label_classes": self.label_classes,
        }


def batches_exactly(module: GraphModule, batches: tuple[int, ...] = (1, 3)) -> bool:
    """Whether running a batch at once equals running its samples one by one (shapes, and values up to float
    tolerance), for each batch size in ``batches``."""
    graph = module.graph
    gen = torch.Generator().manual_seed(1)
    for batch in batches:
        x = torch.rand((batch, *graph.sample_shape), generator=gen)
        with torch.no_grad():
            reference = module.run_per_sample(x)
            try:
                batched = module.run(x)
            except Exception:
                return False
        if tuple(batched.shape) != tuple(reference.shape):
            return False
        scale = max(float(reference.abs().max()), 1e-6) if reference.numel() else 1.0
        if not bool(((batched - reference).abs() <= 1e-5 * scale + 1e-6).all()):
            return False
    return True


def _inferred_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    try:
        return list(onnx.shape_inference.infer_shapes(model).graph.output)
    except Exception:
        return list(model.graph.output)


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return np.array(shape[start:end], dtype=np.int64)


def _unique(name: str, used: dict[str, int]) -> str:
    """``name``, or ``name_2``, ``name_3``... when taken (``used``: name -> the last suffix tried for it, so that
    many equal names cost linear time)."""
    candidate, k = name, used.get(name, 1)
    if candidate in used:
        while candidate in used:
            k += 1
            candidate = f"{name}_{k}"
        used[name] = k
    used.setdefault(candidate, 1)
    return candidate
