"""The IR: a networkx DiGraph of op nodes (``Graph``) and the torch module that runs it (``GraphModule``).

One IR node per ONNX node that depends on the model input (everything else is folded into constants at
import). Edges go from the node producing a tensor to each node consuming it and carry the tensor names.
``GraphModule`` runs the nodes in topological order on batches; trainable weights are ``nn.Parameter``s,
every other constant is a buffer, so ``.to(device)``, ``.double()``, ``state_dict`` and optimizers just work.
"""
from __future__ import annotations

import contextlib
import copy
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import networkx as nx
import torch
from torch import nn

from verifier.errors import InputShapeError
from verifier.ops.base import Op, Shape


@dataclass
class Node:
    """One IR node: its op, and the tensor names it reads ('' for absent or static inputs) and writes."""

    name: str
    op: Op
    inputs: list[str]
    outputs: list[str]

    @property
    def op_type(self) -> str:
        return self.op.op_type


@dataclass
class Graph:
    """A model's computation: ``dag`` (networkx) of ``Node``s between one input and one output tensor.

    Batch convention: the IR takes inputs of shape ``(B, *sample_shape)`` and returns ``(B, *output_shape)``.
    ``leading_batch`` says whether the file's input has a batch axis (size 1 or symbolic) in front of
    ``sample_shape``; ``output_leading_batch`` the same for the output. ``batched`` is True when the graph runs
    a whole batch at once (checked against per-sample runs at import); otherwise the module runs sample by
    sample, which is always exactly the file's semantics.
    """

    dag: nx.DiGraph
    input_name: str
    output_name: str
    constants: dict[str, torch.Tensor]
    weights: set[str]
    sample_shape: Shape
    output_shape: Shape
    leading_batch: bool = True
    output_leading_batch: bool = True
    batched: bool = True
    shapes: dict[str, Shape] = field(default_factory=dict)  # every tensor's shape in a batch-1 run of the file
    info: dict[str, Any] = field(default_factory=dict)  # opset, producer, file op counts, ...
    #: weights that the file derives from an initializer through layout ops (Transpose, Reshape...):
    #: weight name -> (initializer name, the ONNX nodes applied to it); other weights are initializers
    weight_sources: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.order: list[str] = list(nx.topological_sort(self.dag))

    def nodes(self) -> Iterator[Node]:
        """Nodes in topological order."""
        for name in self.order:
            yield self.dag.nodes[name]["node"]

    def node(self, name: str) -> Node:
        return self.dag.nodes[name]["node"]

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(n.op_type for n in self.nodes()))

    def logits_tensor(self) -> str:
        """The tensor whose argmax is the prediction: the input of the trailing chain of ops that keep the argmax
        (Softmax, LogSoftmax, an L1/L2 Normalizer: ``Op.keeps_argmax``), each the only reader of the one before
        it; else the graph output."""
        t, k = self.output_name, len(self.order) - 1
        while k >= 0:
            last = self.node(self.order[k])
            if not (last.op.keeps_argmax and last.outputs[0] == t) or (t != self.output_name and self._read_twice(t)):
                break
            t, k = last.inputs[0], k - 1
        return t

    def _read_twice(self, t: str) -> bool:
        return sum(t in n.inputs for n in self.nodes()) > 1

    def dependent_tensors(self) -> set[str]:
        """The tensors that depend on the model input: the input and every IR node's outputs (everything else was
        folded into constants at import)."""
        return {self.input_name} | {o for n in self.nodes() for o in n.outputs if o}

    @property
    def whole_batches(self) -> bool:
        """Whether the graph runs a whole batch at once with the batch axis in front (what the box, BCP and CROWN
        engines need; other graphs run sample by sample)."""
        return self.batched and self.leading_batch

    def largest_sample(self) -> int:
        """The most entries one sample has in any tensor (the memory budgets of batched engines)."""
        return max((math.prod(s[1:]) for s in self.shapes.values() if len(s) > 0), default=1)

    def keeps_batch_in_front(self, tensor: str) -> bool:
        """Whether the tensor's axis 0 is the batch axis (its import-time shape has batch size 1 in front)."""
        shape = self.shapes.get(tensor)
        return shape is not None and len(shape) >= 1 and shape[0] == 1

    def nodes_up_to(self, tensor: str) -> list[Node]:
        """The nodes in topological order up to the one producing ``tensor`` (what a bound on it depends on)."""
        nodes = []
        for node in self.nodes():
            nodes.append(node)
            if tensor in node.outputs:
                break
        return nodes


@contextlib.contextmanager
def inference_mode(nodes: list[Node]) -> Iterator[None]:
    """Run ``nodes`` as at inference (batch normalization with its running statistics), then restore each
    node's mode: what training-time bounds use (LMT §4.1 bounds batch normalization as at inference)."""
    saved = [(n, n.op.training) for n in nodes]
    for n, _ in saved:
        n.op.training = False
    try:
        yield
    finally:
        for n, mode in saved:
            n.op.training = mode


def build_dag(nodes: list[Node]) -> nx.DiGraph:
    """The DiGraph of ``nodes``: one edge producer -> consumer per tensor they share."""
    dag = nx.DiGraph()
    producer: dict[str, str] = {}
    for node in nodes:
        dag.add_node(node.name, node=node)
        for t in node.outputs:
            producer[t] = node.name
    for node in nodes:
        for t in node.inputs:
            if t in producer:
                src = producer[t]
                if dag.has_edge(src, node.name):
                    dag.edges[src, node.name]["tensors"].append(t)
                else:
                    dag.add_edge(src, node.name, tensors=[t])
    return dag


def _key(i: int, name: str) -> str:
    return f"c{i}_" + re.sub(r"\W", "_", name)[:40]


class GraphModule(nn.Module):
    """Runs a ``Graph`` on batches: ``module(x)`` with ``x`` of shape ``(B, *graph.sample_shape)``."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        self._keys: dict[str, str] = {}
        for i, (name, value) in enumerate(graph.constants.items()):
            key = _key(i, name)
            self._keys[name] = key
            if name in graph.weights:
                self.register_parameter(key, nn.Parameter(value.clone()))
            else:
                self.register_buffer(key, value.clone())
        # a float scalar that follows .double() / .to(device), so that dtype and device are known without weights
        self.register_buffer("_float_probe", torch.zeros(()))
        self._last_use = self._compute_last_use()
        self.eval()

    def _compute_last_use(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for step, node in enumerate(self.graph.nodes()):
            for t in node.inputs:
                last[t] = step
        last[self.graph.output_name] = len(self.graph.order)
        return last

    def tensor(self, name: str) -> torch.Tensor:
        """The current value of the constant or weight ``name`` (its ONNX tensor name)."""
        return getattr(self, self._keys[name])

    def node_args(self, node: Node, env: dict[str, Any]) -> list[Any]:
        """``node``'s inputs for any walk: the walk's value of each input-dependent tensor (``env``: a tensor, a
        box...), the module's constant otherwise, None for absent or static inputs."""
        return [None if not t else (env[t] if t in env else self.tensor(t)) for t in node.inputs]

    def onnx_weights(self) -> dict[str, nn.Parameter]:
        """Trainable weights keyed by their ONNX tensor names (for export): initializers, or tensors the file
        derives from one by layout ops (``graph.weight_sources`` says how)."""
        return {name: self.tensor(name) for name in self.graph.weights}

    @property
    def float_dtype(self) -> torch.dtype:
        return self._float_probe.dtype

    @property
    def device(self) -> torch.device:
        return self._float_probe.device

    def train(self, mode: bool = True) -> "GraphModule":
        super().train(mode)
        for node in self.graph.nodes():
            node.op.training = mode
        return self

    def float64(self) -> "GraphModule":
        """This module when it computes in float64, else a float64 copy; in eval mode (the engines' copy)."""
        return (self if self.float_dtype == torch.float64 else copy.deepcopy(self).double()).eval()

    def check_input(self, x: torch.Tensor) -> None:
        expected = tuple(self.graph.sample_shape)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(["B", *map(str, expected)])
            raise InputShapeError(f"expected input of shape ({shape}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x.to(device=self.device, dtype=self.float_dtype)
        if self.graph.batched:
            return self.run(x)
        return self.run_per_sample(x)

    def walk(self, start: dict[str, Any], rule: Callable[[Node, list[Any]], Any], upto: str | None = None,
             keep: set[str] | None = None, nodes: list[Node] | None = None) -> dict[str, Any]:
        """The walk engines share: ``rule(node, args)`` (the node's forward, its box rule...) on every node in
        topological order (or on ``nodes``, a part of that order such as an affine chain), ``args`` from
        ``node_args`` over the values so far (``start``: tensor name -> value, the input's at least), stopping
        once ``upto`` is computed. ``rule`` returns the node's output value, or a tuple of one value per output
        (absent outputs skipped). Returns the values computed. With ``keep`` (whole-graph walks), each value is
        released after its last use (a forward pass's memory) except the tensors in ``keep`` and the graph
        output."""
        env = dict(start)
        kept: dict[str, Any] = {}
        if upto is not None and upto in env:
            return env
        for step, node in enumerate(self.graph.nodes() if nodes is None else nodes):
            out = rule(node, self.node_args(node, env))
            if isinstance(out, tuple):
                env.update((o, v) for o, v in zip(node.outputs, out) if o)
            else:
                env[node.outputs[0]] = out
            if keep is not None:
                for t in node.inputs:
                    if t in env and self._last_use.get(t) == step:
                        if t in keep:
                            kept[t] = env[t]
                        del env[t]
            if upto is not None and upto in node.outputs:
                break
        env.update(kept)
        return env

    def run(self, x: torch.Tensor, keep: set[str] | None = None) -> torch.Tensor:
        """One pass over the nodes with ``x`` bound to the graph input (the file's layout, batch in front).

        ``keep``: tensor names to return as well (then a dict name -> tensor including the output).
        """
        out = self.graph.output_name
        env = self.walk({self.graph.input_name: x}, lambda node, args: node.op.forward(*args), keep=keep or set())
        if keep is not None:
            return {t: env[t] for t in keep | {out} if t in env}  # type: ignore[return-value]
        return env[out]

    def run_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """The file's exact semantics, one sample at a time (for graphs that mix the batch axis)."""
        outs = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1] if self.graph.leading_batch else x[i]
            y = self.run(xi)
            outs.append(y[0] if self.graph.output_leading_batch else y)
        return torch.stack(outs)
