"""Global Lipschitz bounds of a graph (LMT §4-5): per-node rules composed over the DAG.

- Each node's rule (``Op.lipschitz``) bounds its output change per unit input change; composition multiplies,
  an Add of two branches adds, a Concat stacks (sqrt of the sum of squares in l2).
- Chains of affine ops (input normalization -> Flatten -> Gemm, Conv -> BatchNormalization, MatMul -> Add...)
  are bounded as one map, because the norm of a product is far below the product of norms (LMT §5.2): by the
  exact largest singular value of the materialized chain when it is small enough, else by the product.
- All bounds are guaranteed upper bounds, computed in float64 with a safety factor; nothing here uses power
  iteration (that is ``verifier.engines.power_iteration``, for training only).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from verifier.conv_norms import l2_norm_exact, linf_norm_exact, materialized_matrix
from verifier.errors import NoRuleError
from verifier.ir import GraphModule, Node
from verifier.ops.base import Lipschitz, RuleArgs

#: chains whose matrix has at most this many entries are materialized (float64: 32 MiB)
MATERIALIZE_LIMIT = 2 ** 22


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
    #: a partial report's first missing rule (``graph_lipschitz(partial=True)``): the bounds after it are inf
    missing: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "norm": "inf" if self.norm == math.inf else int(self.norm),
            "lipschitz": self.lipschitz,
            "lipschitz_sub": self.lipschitz_sub,
            "output": self.output,
            "nodes": [vars(n) for n in self.nodes],
            "segments": [vars(s) for s in self.segments],
        }


def rule_args(module: GraphModule, node: Node, dynamic_tensors: set[str], norm: float) -> RuleArgs:
    g = module.graph
    dynamic = [bool(t) and t in dynamic_tensors for t in node.inputs]
    values = [module.tensor(t).detach().double() if t and not d else None for t, d in zip(node.inputs, dynamic)]
    in_shapes = [g.shapes.get(t) if d else (tuple(v.shape) if v is not None else None)
                 for t, d, v in zip(node.inputs, dynamic, values)]
    return RuleArgs(values, dynamic, in_shapes, [g.shapes[o] for o in node.outputs if o], norm)


def combine(rule: Lipschitz, terms: list[Any], norm: float) -> Any:
    """A node's bound from its rule's factors times its inputs' bounds (``terms``): 'sum' adds the branches (a
    sum of maps), 'stack' takes the root of the sum of squares (l2) or the max (l_inf) of maps to disjoint
    outputs. Floats or torch scalars (the training-time estimate is differentiable); 0 with no terms."""
    if rule.combine == "stack":
        if norm != 2:
            return max(terms, default=0.0)
        square = sum(v * v for v in terms)
        return math.sqrt(square) if isinstance(square, (int, float)) else square ** 0.5
    return sum(terms)


def compose(input_name: str, nodes: list[Node], args: dict[str, RuleArgs], rules: dict[str, Lipschitz],
            chain_values: dict[str, tuple[str, str, Any]], in_chain: set[str], norm: float) -> dict[str, Any]:
    """Lipschitz bounds of input -> every tensor over the DAG (LMT §5): a chain multiplies by its value
    (``chain_values``: last node -> (input, output, value)), other nodes combine their rule's factors: 'sum'
    adds the branches, 'stack' takes sqrt of the sum of squares (l2) or the max (l_inf). Values may be floats
    or torch scalars (the training-time estimate is differentiable)."""
    bounds: dict[str, Any] = {input_name: 1.0}
    for node in nodes:
        if node.name in chain_values:
            src, dst, value = chain_values[node.name]
            bounds[dst] = value * bounds[src]
            continue
        if node.name in in_chain:
            continue
        rule, a = rules[node.name], args[node.name]
        terms = [f * bounds[t] for f, t in zip(rule.factors, [t for t, d in zip(node.inputs, a.dynamic) if d])]
        value = combine(rule, terms, norm)
        for o in node.outputs:
            if o:
                bounds[o] = value
    return bounds


def affine_chains(module: GraphModule, args: dict[str, RuleArgs], up_to: str) -> list[list[Node]]:
    """Maximal chains of single-output affine nodes linked by tensors that nothing else reads."""
    g = module.graph
    readers: dict[str, int] = {}
    for node in g.nodes():
        for t in node.inputs:
            readers[t] = readers.get(t, 0) + 1
    chain_of: dict[str, list[Node]] = {}
    chains: list[list[Node]] = []
    for node in module.graph.nodes_up_to(up_to):
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
        last = chain[-1].outputs[0]
        return module64.walk({first_input: x}, lambda node, args: node.op.forward(*args), upto=last,
                             nodes=chain)[last]

    return first_input, run


def chain_matrix(module64: GraphModule, chain: list[Node], dynamic_tensors: set[str],
                 chunk: int = 256) -> tuple[str, torch.Tensor]:
    """The linear part of an affine chain as a matrix (n_out x n_in): columns f(e_i) - f(0) pushed through
    for the basis e_i, or, for a few outputs (fewer than inputs), rows e_j^T J by batched back-propagation."""
    first_input, run = chain_function(module64, chain, dynamic_tensors)
    in_shape = module64.graph.shapes[first_input][1:]
    zero = run(torch.zeros((1, *in_shape), dtype=torch.float64))
    n_in, n_out = math.prod(in_shape), zero.numel()
    if n_in <= n_out or n_out > chunk:  # batched back-propagation pays off for few outputs only
        return first_input, materialized_matrix(lambda x: run(x) - zero, in_shape)
    x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
    rows = []
    with torch.enable_grad():
        y = run(x).reshape(-1)
        eye = torch.eye(n_out, dtype=torch.float64)
        for start in range(0, n_out, chunk):
            (g,) = torch.autograd.grad(y, x, eye[start:start + chunk], retain_graph=True, is_grads_batched=True)
            rows.append(g.reshape(len(g), -1))
    return first_input, torch.cat(rows).detach()


def graph_lipschitz(module: GraphModule, norm: float = 2.0, fuse: bool = True,
                    materialize_limit: int = MATERIALIZE_LIMIT, partial: bool = False) -> LipschitzReport:
    """Guaranteed upper bounds of the Lipschitz constant of input -> logits in ``norm`` (2 or inf). An op without
    a Lipschitz rule raises its ``NoRuleError``, or with ``partial`` is taken as inf-Lipschitz (every bound
    after it is inf) and named in the report's ``missing``: the structure (segments, the last affine layer)
    stays, for the engines that need only it (IBP, CROWN)."""
    g = module.graph
    if not g.whole_batches:
        raise NoRuleError("the graph has no batch axis in front (or mixes it into others); Lipschitz bounds "
                          "need a model that runs whole batches")
    module64 = copy.deepcopy(module).double().eval()
    out = module.graph.logits_tensor()
    dynamic_tensors = g.dependent_tensors()
    nodes = module.graph.nodes_up_to(out)
    args = {n.name: rule_args(module64, n, dynamic_tensors, norm) for n in nodes}
    missing: list[str] = []
    with torch.no_grad():
        rules: dict[str, Lipschitz] = {n.name: _rule(n, args[n.name], missing if partial else None) for n in nodes}
    node_bounds = {n.name: NodeBound(n.name, n.op_type, rules[n.name].value, rules[n.name].method) for n in nodes}

    segments: list[Segment] = []
    chain_end: dict[str, tuple[int, list[Node]]] = {}
    in_chain: set[str] = set()
    for chain in (affine_chains(module, args, out) if fuse else []):
        product = math.prod(rules[n.name].value for n in chain)
        bound, method, first_input = product, "product", next(
            t for t in chain[0].inputs if t in dynamic_tensors)
        n_in = math.prod(g.shapes[first_input][1:])
        n_out = math.prod(g.shapes[chain[-1].outputs[0]][1:])
        fused = _fused_conv_bound(chain, args) if norm == 2 else None
        if fused is not None and fused < bound:
            bound, method = fused, "dft"
        if n_in * n_out <= materialize_limit:
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

    chain_values = {name: (segments[i].input, segments[i].output, segments[i].bound)
                    for name, (i, _) in chain_end.items()}
    bounds = compose(g.input_name, nodes, args, rules, chain_values, in_chain, norm)
    if missing:  # 0 x inf after a missing rule: still unbounded
        bounds = {t: math.inf if isinstance(v, float) and math.isnan(v) else v for t, v in bounds.items()}
    last = next((s for s in segments if s.output == out), None)
    last_matrix = None
    if last is not None:
        chain = chain_end[last.nodes[-1]][1]
        last_matrix = chain_matrix(module64, chain, dynamic_tensors)[1]
    return LipschitzReport(
        norm=norm, lipschitz=bounds[out], output=out,
        lipschitz_sub=bounds[last.input] if last else None, last_input=last.input if last else None,
        last_matrix=last_matrix, nodes=[node_bounds[n.name] for n in nodes], segments=segments,
        tensor_bounds=bounds, missing=missing[0] if missing else None)


def _rule(node: Node, args: RuleArgs, missing: list[str] | None) -> Lipschitz:
    """The node's Lipschitz rule; where it has none and ``missing`` is a list, inf (the reason appended)."""
    try:
        return node.op.lipschitz(args)
    except NoRuleError as e:
        if missing is None:
            raise
        missing.append(str(e))
        return Lipschitz([math.inf] * max(1, sum(args.dynamic)), "none", note=str(e))


def _fused_conv_bound(chain: list[Node], args: dict[str, RuleArgs]) -> float | None:
    """A chain [channel ops..., Conv, channel ops...] is one convolution with a rescaled kernel
    W'[o, c] = s_out[o] W[o, c] s_in[c] (biases do not matter): its DFT bound (Sedghi et al. 2019)."""
    from verifier.conv_norms import conv_l2_bound
    from verifier.ops.conv import Conv

    convs = [i for i, n in enumerate(chain) if isinstance(n.op, Conv)]
    if len(convs) != 1:
        return None
    conv = chain[convs[0]]
    ca = args[conv.name]
    w = ca.values[1]
    c_out, c_in_g = w.shape[0], w.shape[1]
    group = conv.op.group
    s_in = torch.ones(c_in_g * group, dtype=torch.float64)
    s_out = torch.ones(c_out, dtype=torch.float64)
    for i, n in enumerate(chain):
        if i == convs[0]:
            continue
        scale = n.op.channel_scale(args[n.name], c_in_g * group if i < convs[0] else c_out)
        if scale is None:
            return None
        if i < convs[0]:
            s_in = s_in * scale
        else:
            s_out = s_out * scale
    # input channel of kernel column c_local for output o: group(o) * c_in_g + c_local
    groups_of_out = torch.arange(c_out) // (c_out // group)
    in_index = groups_of_out[:, None] * c_in_g + torch.arange(c_in_g)[None, :]
    shape = (c_out, c_in_g) + (1,) * (w.dim() - 2)
    scaled = w * s_out.reshape(-1, *([1] * (w.dim() - 1))) * s_in[in_index].reshape(shape)
    strides, dilations, pads = conv.op.geometry(ca)
    return conv_l2_bound(scaled, tuple(ca.in_shapes[0][2:]), strides, dilations, pads, group)
