"""Global Lipschitz bounds of a graph (LMT §4-5): per-node rules composed over the DAG.

- Each node's rule (``Op.lipschitz``) bounds its output change per unit input change; composition multiplies,
  an Add of two branches adds, a Concat stacks (sqrt of the sum of squares in l2).
- Chains of affine ops (input normalization -> Flatten -> Gemm, Conv -> BatchNormalization, MatMul -> Add...)
  are bounded as one map, because the norm of a product is far below the product of norms (LMT §5.2): by the
  exact largest singular value of the materialized chain when it is small enough, else by the product.
- All bounds are guaranteed upper bounds, computed in float64 with a safety factor; nothing here uses power
  iteration (that is ``verifier.power_iteration``, for training only).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .conv_norms import l2_norm_exact, linf_norm_exact, materialized_matrix
from .errors import NoRuleError
from .ir import GraphModule, Node
from .ops.base import Lipschitz, RuleArgs

#: chains whose matrix has at most this many entries are materialized (float64: 128 MiB)
MATERIALIZE_LIMIT = 2 ** 24
TRAILING_NORMALIZERS = ("Softmax", "LogSoftmax")


@dataclass
class NodeBound:
    name: str
    op_type: str
    bound: float
    method: str
    segment: int | None = None


@dataclass
class Segment:
    """A chain of affine nodes bounded as one map from ``input`` to ``output``."""

    nodes: list[str]
    input: str
    output: str
    bound: float
    method: str
    product: float  # the product of the members' own bounds, for comparison


@dataclass
class LipschitzReport:
    norm: float
    lipschitz: float  # input -> logits (``output``)
    output: str  # the tensor bounded: the graph output, or the logits before a trailing Softmax
    lipschitz_sub: float | None  # input -> input of the last affine chain (LMT Prop. 2's L_sub)
    last_input: str | None
    last_matrix: torch.Tensor | None  # the last affine chain's matrix (n_out x n_in), float64
    nodes: list[NodeBound]
    segments: list[Segment]
    tensor_bounds: dict[str, float] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "norm": "inf" if self.norm == math.inf else int(self.norm),
            "lipschitz": self.lipschitz,
            "lipschitz_sub": self.lipschitz_sub,
            "output": self.output,
            "nodes": [vars(n) for n in self.nodes],
            "segments": [vars(s) for s in self.segments],
        }


def logits_tensor(module: GraphModule) -> str:
    """The tensor whose argmax is the prediction: the input of a trailing Softmax/LogSoftmax (they preserve
    the argmax), else the graph output."""
    g = module.graph
    last = g.node(g.order[-1]) if g.order else None
    if last is not None and last.op_type in TRAILING_NORMALIZERS and last.outputs[0] == g.output_name:
        return last.inputs[0]
    return g.output_name


def _nodes_up_to(module: GraphModule, tensor: str) -> list[Node]:
    """The nodes in topological order up to the one producing ``tensor`` (what the bound depends on)."""
    nodes = []
    for node in module.graph.nodes():
        nodes.append(node)
        if tensor in node.outputs:
            break
    return nodes


def _rule_args(module: GraphModule, node: Node, dynamic_tensors: set[str], norm: float) -> RuleArgs:
    g = module.graph
    dynamic = [bool(t) and t in dynamic_tensors for t in node.inputs]
    values = [module.tensor(t).detach().double() if t and not d else None for t, d in zip(node.inputs, dynamic)]
    in_shapes = [g.shapes.get(t) if d else (tuple(v.shape) if v is not None else None)
                 for t, d, v in zip(node.inputs, dynamic, values)]
    return RuleArgs(values, dynamic, in_shapes, [g.shapes[o] for o in node.outputs if o], norm)


def _chains(module: GraphModule, args: dict[str, RuleArgs], up_to: str) -> list[list[Node]]:
    """Maximal chains of single-output affine nodes linked by tensors that nothing else reads."""
    g = module.graph
    readers: dict[str, int] = {}
    for node in g.nodes():
        for t in node.inputs:
            readers[t] = readers.get(t, 0) + 1
    chain_of: dict[str, list[Node]] = {}
    chains: list[list[Node]] = []
    for node in _nodes_up_to(module, up_to):
        a = args[node.name]
        if len(node.outputs) != 1 or not node.op.is_affine(a.dynamic):
            continue
        src = node.inputs[a.dynamic.index(True)]
        prev = chain_of.get(src)
        if prev is not None and readers.get(src, 0) == 1 and src != up_to:
            prev.append(node)
        else:
            prev = [node]
            chains.append(prev)
        chain_of[node.outputs[0]] = prev
        if node.outputs[0] == up_to:
            break
    return chains


def chain_function(module64: GraphModule, chain: list[Node], dynamic_tensors: set[str]):
    """The chain as a function of its input tensor (batch in front, the file's layout)."""
    first_input = next(t for t in chain[0].inputs if t in dynamic_tensors)

    def run(x: torch.Tensor) -> torch.Tensor:
        env = {first_input: x}
        for node in chain:
            ins = [None if not t else (env[t] if t in env else module64.tensor(t)) for t in node.inputs]
            env[node.outputs[0]] = node.op.forward(*ins)
        return env[chain[-1].outputs[0]]

    return first_input, run


def chain_matrix(module64: GraphModule, chain: list[Node], dynamic_tensors: set[str]) -> tuple[str, torch.Tensor]:
    """The linear part of an affine chain as a matrix (n_out x n_in): f(e_i) - f(0) for the basis e_i."""
    first_input, run = chain_function(module64, chain, dynamic_tensors)
    in_shape = module64.graph.shapes[first_input][1:]
    zero = run(torch.zeros((1, *in_shape), dtype=torch.float64))
    matrix = materialized_matrix(lambda x: run(x) - zero, in_shape)
    return first_input, matrix


def graph_lipschitz(module: GraphModule, norm: float = 2.0, fuse: bool = True,
                    materialize_limit: int = MATERIALIZE_LIMIT) -> LipschitzReport:
    """Guaranteed upper bounds of the Lipschitz constant of input -> logits in ``norm`` (2 or inf)."""
    g = module.graph
    if not g.batched:
        raise NoRuleError("the graph mixes its batch axis; Lipschitz bounds need a graph that runs batched")
    module64 = copy.deepcopy(module).double().eval()
    out = logits_tensor(module)
    dynamic_tensors = {g.input_name} | {o for n in g.nodes() for o in n.outputs}
    nodes = _nodes_up_to(module, out)
    args = {n.name: _rule_args(module64, n, dynamic_tensors, norm) for n in nodes}
    with torch.no_grad():
        rules: dict[str, Lipschitz] = {n.name: n.op.lipschitz(args[n.name]) for n in nodes}
    node_bounds = {n.name: NodeBound(n.name, n.op_type, rules[n.name].value, rules[n.name].method) for n in nodes}

    segments: list[Segment] = []
    chain_end: dict[str, tuple[int, list[Node]]] = {}
    in_chain: set[str] = set()
    for chain in (_chains(module, args, out) if fuse else []):
        product = math.prod(rules[n.name].value for n in chain)
        bound, method, first_input = product, "product", next(
            t for t in chain[0].inputs if t in dynamic_tensors)
        n_in = math.prod(g.shapes[first_input][1:])
        n_out = math.prod(g.shapes[chain[-1].outputs[0]][1:])
        if n_in * n_out <= materialize_limit:
            with torch.no_grad():
                _, matrix = chain_matrix(module64, chain, dynamic_tensors)
            exact = l2_norm_exact(matrix) if norm == 2 else linf_norm_exact(matrix)
            if exact <= bound:
                bound, method = exact, "materialized"
        if len(chain) == 1 and method == "product":
            method = rules[chain[0].name].method
        index = len(segments)
        segments.append(Segment([n.name for n in chain], first_input, chain[-1].outputs[0], bound, method, product))
        chain_end[chain[-1].name] = (index, chain)
        for n in chain:
            in_chain.add(n.name)
            node_bounds[n.name].segment = index

    bounds: dict[str, float] = {g.input_name: 1.0}
    for node in nodes:
        if node.name in chain_end:
            seg = segments[chain_end[node.name][0]]
            bounds[seg.output] = seg.bound * bounds[seg.input]
            continue
        if node.name in in_chain:
            continue
        rule, a = rules[node.name], args[node.name]
        terms = [f * bounds[t] for f, t in zip(rule.factors, [t for t, d in zip(node.inputs, a.dynamic) if d])]
        if rule.combine == "stack":
            value = math.sqrt(sum(v * v for v in terms)) if norm == 2 else max(terms)
        else:
            value = sum(terms)
        for o in node.outputs:
            if o:
                bounds[o] = value

    last = next((s for s in segments if s.output == out), None)
    last_matrix = None
    if last is not None:
        chain = chain_end[last.nodes[-1]][1]
        with torch.no_grad():
            last_matrix = _last_matrix(module64, chain, dynamic_tensors, materialize_limit)
    return LipschitzReport(
        norm=norm, lipschitz=bounds[out], output=out,
        lipschitz_sub=bounds[last.input] if last else None, last_input=last.input if last else None,
        last_matrix=last_matrix, nodes=[node_bounds[n.name] for n in nodes], segments=segments,
        tensor_bounds=bounds)


def _last_matrix(module64: GraphModule, chain: list[Node], dynamic_tensors: set[str], limit: int) -> torch.Tensor:
    """The last affine chain's matrix; row by row through autograd when it is too large to push a basis."""
    first_input, run = chain_function(module64, chain, dynamic_tensors)
    g = module64.graph
    in_shape = g.shapes[first_input][1:]
    n_in, n_out = math.prod(in_shape), math.prod(g.shapes[chain[-1].outputs[0]][1:])
    if n_in * n_out <= limit or n_out > n_in:
        return chain_matrix(module64, chain, dynamic_tensors)[1]
    x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = run(x).reshape(-1)
        rows = [torch.autograd.grad(y[j], x, retain_graph=True)[0].reshape(-1) for j in range(n_out)]
    return torch.stack(rows)
