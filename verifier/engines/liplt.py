"""LipLT: loop-transformed Lipschitz bounds (Fazlyab et al. 2023, CRM §3, Lemma 3.1 and Theorem 3.3), pairwise.

Loop transformation. Every slope-restricted activation phi_j (slope in [alpha_j, beta_j], from the op's rule) is
written phi_j(y) = s_j y + psi_j(y) with s_j = (alpha_j + beta_j) / 2, where psi_j is d_j = (beta_j - alpha_j) / 2
Lipschitz (CRM eq. 14). Replacing every activation of the IR by "s_j y + u_j" with a free input u_j gives a
*linear* graph (all other ops must be affine in their input-dependent inputs). By linearity, every
pre-activation y_k and the logits z are

    y_k = A_k x_0 + sum_{j < k} B_kj psi_j(y_j) (+ constants),        (Lemma 3.1, eq. 18, for any DAG)

with A_k = dy_k/dx_0 and B_kj = dy_k/du_j of the linear graph. For plain chains (H_k = 0, G_k = I) this is
eq. 18 itself (A_k = W_k H^_{k-1} ... H^_0 with H^_i = s_i W_i); residual blocks x_{k+1} = H_k x_k + G_k phi(W_k x_k)
and Concat are the same statement on their DAG, so no block pattern needs to be matched. Then (Theorem 3.3)

    m_k = ||A_k|| + sum_{j < k} d_j ||B_kj|| m_j            (a Lipschitz bound of x_0 -> y_k, eq. 19)
    L   = ||A_z|| + sum_j d_j ||B_zj|| m_j                  (x_0 -> z)
    L_ij = ||(e_i - e_j)^T A_z|| + sum_j d_j ||(e_i - e_j)^T B_zj|| m_j   (x_0 -> z_i - z_j; L_i with e_i)

Soundness: the rows (e_i - e_j)^T A_z, (e_i - e_j)^T B_zj are vectors (back-propagation of e_i through the linear
graph, in float64), so their norms are exact (the dual norm: l2 -> l2, l_inf -> l1). The matrix norms ||A_k||,
||B_kj|| are exact (float64 SVD of the materialized Jacobian, times SAFETY) when the Jacobian has at most
``MATERIALIZE_LIMIT`` entries; otherwise the product of the ops' sound rules along the linear graph (LMT
composition, ``_composed``). No power iteration. In l2, each term d_j ||B|| m_j may be replaced by Theorem 3.2's
refinement with AOL's diagonal T (``_Refiner``), where the Jacobians it needs were materialized. Every final
bound is also capped by the naive one (``verifier.engines.lipschitz``: L, and LMT Prop. 2's L_sub ||w_i - w_j|| for
pairs), both being sound.

Graphs it cannot map (an op that is neither affine nor an elementwise slope-restricted activation: MaxPool,
Softmax inside the graph, products of two input-dependent tensors...) raise NoRuleError naming the node; callers
fall back to the naive bound.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from verifier.conv_norms import l2_norm_exact, linf_norm_exact
from verifier.engines.lipschitz import MATERIALIZE_LIMIT, LipschitzReport, combine, graph_lipschitz, rule_args
from verifier.errors import NoRuleError
from verifier.ir import GraphModule, Node
from verifier.ops.activations import Activation
from verifier.rounding import REL64, SAFETY

#: relative slack on the exact vector norms (float64 back-propagation)
#: the l2 refinement keeps materialized Jacobians up to this many entries in all
REFINE_LIMIT = 2 ** 25
#: it refines the pairwise rows (one SVD per pair and layer) when no activation layer has more units than this
REFINE_PAIRS_MAX_UNITS = 1024


class _Refiner:
    """CRM Theorem 3.2's l2 refinement with AOL's diagonal T, applied to each term of eq. 19.

    For a term ||B dpsi_j|| (B = B_kj, or the row (e_i - e_j)^T B_zj) and any diagonal T with B^T B <= T:
    ||B dpsi_j||^2 <= sum_r T_rr dpsi_j,r^2 <= d_j^2 ||T^(1/2) dy_j||^2, because psi_j acts entrywise with slope
    in [-d_j, d_j]. And x -> T^(1/2) y_j is bounded like y_j itself (eq. 19 with the rows scaled):
    M_j(T) = ||T^(1/2) A_j|| + sum_i d_i ||T^(1/2) B_ji|| m_i. So the term is at most d_j min(||B|| m_j, M_j(T));
    T = ||B||^2 I (SN) gives the first, AOL's T_rr = sum_l |B^T B|_rl (diagonally dominant, hence >= B^T B; for a
    row b: |b_r| ||b||_1) the second. T is rounded up for the float64 sums that form it."""

    def __init__(self, spreads: list[float]):
        self.spread = spreads
        self.a: dict[int, Tensor] = {}
        self.b: dict[int, dict[int, Tensor | None]] = {}
        self.entries = 0

    def keep(self, j: int, rows: dict[int, Tensor | None], sources: list[int]) -> None:
        """Keep unit j's Jacobians when all were materialized and the budget allows."""
        if any(s not in rows for s in sources):
            return
        size = sum(r.numel() for r in rows.values() if r is not None)
        if self.entries + size > REFINE_LIMIT:
            return
        self.entries += size
        self.a[j] = rows[-1]
        self.b[j] = {s: r for s, r in rows.items() if s >= 0}

    def weighted(self, j: int, sq: Tensor, m: list[float]) -> float:
        """M_j(T) with T^(1/2) = diag(sq); inf when unit j's Jacobians were not kept."""
        if j not in self.a:
            return math.inf
        sq = sq.to(self.a[j].device)
        value = l2_norm_exact(sq[:, None] * self.a[j])
        for i, r in self.b[j].items():
            if r is not None:
                value += self.spread[i] * l2_norm_exact(sq[:, None] * r) * m[i]
        return value

    @staticmethod
    def aol(b: Tensor) -> Tensor:
        """sqrt of AOL's T for a matrix B (rows: outputs): T_rr = sum_l |B^T B|_rl, rounded up."""
        gram = b.T @ b
        bound = b.abs().T @ (b.abs() @ torch.ones(b.shape[1], dtype=b.dtype))
        return ((gram.abs().sum(dim=1) + 1e-12 * bound) * (1 + 1e-12)).sqrt()

    @staticmethod
    def aol_row(b: Tensor) -> Tensor:
        """sqrt of AOL's T for a row vector b: |b_r| ||b||_1, rounded up."""
        return (b.abs() * b.abs().sum() * (1 + 1e-12)).sqrt()


@dataclass
class Unit:
    """One activation node: its input y_j (pre-activation), output, slopes and the loop-transformation's d_j."""

    node: Node
    alpha: float
    beta: float

    @property
    def center(self) -> float:
        return (self.alpha + self.beta) / 2

    @property
    def spread(self) -> float:
        return (self.beta - self.alpha) / 2


@dataclass
class LipLTReport:
    norm: float
    lipschitz: float  # x_0 -> z, min(LipLT, naive)
    pairwise: Tensor  # (K, K) L_ij, min(LipLT, naive); 0 on the diagonal
    per_class: Tensor  # (K,) L_i
    raw_lipschitz: float  # LipLT alone
    raw_pairwise: Tensor
    raw_per_class: Tensor
    naive_lipschitz: float
    naive_pairwise: Tensor | None  # L_sub ||w_i - w_j|| (LMT Prop. 2), when the logits come from an affine layer
    naive_per_class: Tensor | None
    units: list[str]
    m: list[float]  # eq. 19 per unit
    norms: dict[str, int] = field(default_factory=dict)  # how the matrix norms were obtained: counts
    fallback: str | None = None  # why LipLT could not map the graph (the naive bounds are reported instead)

    def to_json(self) -> dict[str, Any]:
        def mat(t: Tensor | None) -> list | None:
            return None if t is None else [[float(v) for v in row] for row in t]

        return {"norm": "inf" if self.norm == math.inf else int(self.norm), "lipschitz": self.lipschitz,
                "raw_lipschitz": self.raw_lipschitz, "naive_lipschitz": self.naive_lipschitz,
                "pairwise": mat(self.pairwise), "naive_pairwise": mat(self.naive_pairwise),
                "per_class": [float(v) for v in self.per_class], "units": self.units, "m": self.m,
                "norms": self.norms, "fallback": self.fallback}


def loop_units(module: GraphModule, out: str) -> list[Unit]:
    """The activation nodes up to ``out``, in topological order; NoRuleError for a node LipLT cannot map."""
    g = module.graph
    dynamic = g.dependent_tensors()
    units = []
    for node in module.graph.nodes_up_to(out):
        dyn = [bool(t) and t in dynamic for t in node.inputs]
        if not any(dyn):
            continue
        if isinstance(node.op, Activation):
            if any(dyn[1:]):
                raise NoRuleError(f"LipLT cannot map {node.op_type} (node '{node.name}'): a second input-dependent "
                                  "input")
            args = rule_args(module, node, dynamic, 2.0)
            alpha, beta = node.op.slopes(args)
            units.append(Unit(node, float(alpha), float(beta)))
        elif not node.op.linear_in_inputs(dyn):
            raise NoRuleError(f"LipLT cannot map {node.op_type} (node '{node.name}'): neither affine nor an "
                              "elementwise slope-restricted activation")
    return units


def linear_graph(module64: GraphModule, units: list[Unit], out: str):
    """The loop-transformed linear graph as a function (x_0, [u_j]) -> ([y_j], z)."""
    nodes = module64.graph.nodes_up_to(out)
    index = {u.node.name: j for j, u in enumerate(units)}
    g = module64.graph

    def run(x: Tensor, us: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        ys: list[Tensor] = [None] * len(units)  # type: ignore[list-item]

        def rule(node, args: list[Any]) -> Any:
            if node.name not in index:
                return node.op.forward(*args)
            j = index[node.name]
            ys[j] = args[0]
            return units[j].center * ys[j] + us[j]

        return ys, module64.walk({g.input_name: x}, rule, upto=out, nodes=nodes)[out]

    return run


def _jacobian_rows(run, x: Tensor, us: list[Tensor], target: int | None, n_rows: int, sources: list[int],
                   chunk: int = 256) -> list[Tensor | None]:
    """Rows of d(target)/d(source) for each source (-1: x_0, j: u_j) as matrices (n_rows, n_source), by batched
    back-propagation of identity rows; None where the target does not depend on the source."""
    leaves = [x] + us
    out: list[list[Tensor] | None] = [[] for _ in sources]
    with torch.enable_grad():
        ys, z = run(x, us)
        t = (z if target is None else ys[target]).reshape(-1)
        eye = torch.eye(n_rows, dtype=torch.float64, device=t.device)
        for start in range(0, n_rows, chunk):
            grads = torch.autograd.grad(t, [leaves[s + 1] for s in sources], eye[start:start + chunk],
                                        retain_graph=True, is_grads_batched=True, allow_unused=True)
            for k, gk in enumerate(grads):
                if gk is None or out[k] is None:
                    out[k] = None
                else:
                    out[k].append(gk.reshape(len(gk), -1))
    return [None if rows is None else torch.cat(rows) for rows in out]


def _matrix_norm(m: Tensor, norm: float) -> float:
    return l2_norm_exact(m) if norm == 2 else linf_norm_exact(m) * SAFETY


def _composed(module64: GraphModule, units: list[Unit], source: int, target: str, norm: float,
              rules: dict[str, Any], args: dict[str, Any]) -> float:
    """A sound bound of the linear graph's map source -> target (source -1: x_0, j: u_j) as the product of the
    ops' rules (LMT composition; unit i contributes s_i from its input)."""
    g = module64.graph
    index = {u.node.name: j for j, u in enumerate(units)}
    bounds: dict[str, float] = {}
    if source < 0:
        bounds[g.input_name] = 1.0
    for node in module64.graph.nodes_up_to(target):
        if node.name in index:
            j = index[node.name]
            value = abs(units[j].center) * bounds.get(node.inputs[0], 0.0) + (1.0 if j == source else 0.0)
            bounds[node.outputs[0]] = value
            continue
        rule, a = rules[node.name], args[node.name]
        ins = [t for t, d in zip(node.inputs, a.dynamic) if d]
        value = combine(rule, [f * bounds.get(t, 0.0) for f, t in zip(rule.factors, ins)], norm)
        for o in node.outputs:
            if o:
                bounds[o] = value
    return bounds.get(target, 0.0)


def _naive_pairs(naive: LipschitzReport, norm: float) -> tuple[Tensor | None, Tensor | None]:
    """LMT Prop. 2's pairwise and per-class bounds L_sub ||w_i - w_j||, L_sub ||w_i|| (dual norms), or None."""
    if naive.last_matrix is None or naive.lipschitz_sub is None:
        return None, None
    from verifier.margins import pair_norms

    w = naive.last_matrix.double()
    pairs = pair_norms(w, 2 if norm == 2 else math.inf) * naive.lipschitz_sub
    classes = (w.norm(dim=1) if norm == 2 else w.abs().sum(dim=1)) * naive.lipschitz_sub * (1 + REL64)
    return pairs, classes


def _refine_rows(refiner: _Refiner, units: list[Unit], m: list[float], sources: list[int], rows_z: list,
                 pair: Tensor, eye: Tensor, raw_pair: Tensor, raw_class: Tensor) -> tuple[Tensor, Tensor]:
    """The pairwise and per-class bounds with each unit's term min(SN, AOL) (``_Refiner``): recomputed from the
    exact rows, pairs with i < j only (L_ij = L_ji)."""
    k = eye.shape[0]

    def bound(seed: Tensor) -> float:
        total = 0.0
        for s, r in zip(sources, rows_z):
            if r is None:
                continue
            b = seed @ r
            exact = float(b.norm()) * (1 + REL64) + REL64 * float((seed.abs() @ r.abs()).norm())
            if s < 0:
                total += exact
                continue
            sn = units[s].spread * exact * m[s]
            total += min(sn, units[s].spread * refiner.weighted(s, _Refiner.aol_row(b), m))
        return total

    pair_out, class_out = raw_pair.clone().reshape(k, k), raw_class.clone()
    for i in range(k):
        class_out[i] = min(float(class_out[i]), bound(eye[i]))
        for j in range(i + 1, k):
            value = min(float(pair_out[i, j]), bound(pair[i * k + j]))
            pair_out[i, j] = pair_out[j, i] = value
    return pair_out.reshape(-1), class_out


def _fallback(naive: LipschitzReport, norm: float, k: int, naive_pair: Tensor | None, naive_class: Tensor | None,
              reason: str) -> LipLTReport:
    """The report when LipLT cannot map the graph: the naive bounds, and why."""
    pairs = naive_pair if naive_pair is not None else torch.full((k, k), math.sqrt(2) * naive.lipschitz,
                                                                 dtype=torch.float64).fill_diagonal_(0.0)
    classes = naive_class if naive_class is not None else torch.full((k,), naive.lipschitz, dtype=torch.float64)
    return LipLTReport(norm, naive.lipschitz, pairs, classes, naive.lipschitz, pairs, classes, naive.lipschitz,
                       naive_pair, naive_class, [], [], {}, fallback=reason)


def _output_bounds(run, x: Tensor, us: list[Tensor], units: list[Unit], m: list[float], k_out: int, norm: float,
                   refiner: _Refiner | None) -> tuple[Tensor, Tensor, float]:
    """CRM eq. 5 at the logits: the raw (K*K,) pair bounds, (K,) class bounds and the global bound, from the
    Jacobian rows of z with respect to x_0 and every u_j, weighted by spread_j m_j (refined by AOL where small)."""
    sizes = [u.numel() for u in us]
    sources = [-1] + list(range(len(units)))
    rows_z = [None if r is None else r.cpu() for r in _jacobian_rows(run, x, us, None, k_out, sources)]  # (K, n)
    dual = 2 if norm == 2 else 1
    eye = torch.eye(k_out, dtype=torch.float64)
    pair = (eye[:, None, :] - eye[None, :, :]).reshape(k_out * k_out, k_out)  # row i * K + j: e_i - e_j

    def vector_norms(r: Tensor, seeds: Tensor) -> Tensor:
        v = seeds @ r
        slack = REL64 * (seeds.abs() @ r.abs()).norm(p=dual, dim=1)
        return v.norm(p=dual, dim=1) * (1 + REL64) + slack

    raw_pair = torch.zeros(k_out * k_out, dtype=torch.float64)
    raw_class = torch.zeros(k_out, dtype=torch.float64)
    raw_global = 0.0
    for s, r in zip(sources, rows_z):
        if r is None:
            continue
        weight = 1.0 if s < 0 else units[s].spread * m[s]
        raw_pair += weight * vector_norms(r, pair)
        raw_class += weight * vector_norms(r, eye)
        raw_global += weight * _matrix_norm(r, norm)
    if refiner is not None and max(sizes, default=0) <= REFINE_PAIRS_MAX_UNITS:
        raw_pair, raw_class = _refine_rows(refiner, units, m, sources, rows_z, pair, eye, raw_pair, raw_class)
    return raw_pair.reshape(k_out, k_out).fill_diagonal_(0.0), raw_class, raw_global


def liplt(module: GraphModule, norm: float = 2.0, naive: LipschitzReport | None = None) -> LipLTReport:
    """LipLT bounds of x_0 -> z (the logits): global, per class and per class pair (module docstring).

    Long because CRM's recursion over the activation layers (m_k from every earlier layer, eq. 5) shares the
    Jacobian rows, the lazily built Lipschitz rules and the AOL refiner between its steps; the bounds at the
    logits are ``_output_bounds``."""
    g = module.graph
    if not g.whole_batches:
        raise NoRuleError("LipLT needs a model that runs whole batches")
    out = module.graph.logits_tensor()
    module64 = copy.deepcopy(module).double().eval()
    naive = naive or graph_lipschitz(module, norm)
    naive_pair, naive_class = _naive_pairs(naive, norm)
    try:
        units = loop_units(module64, out)
    except NoRuleError as e:  # fall back to the naive bounds, saying why
        return _fallback(naive, norm, math.prod(g.shapes[out][1:]), naive_pair, naive_class, str(e))
    run = linear_graph(module64, units, out)
    dynamic = g.dependent_tensors()
    nodes = module64.graph.nodes_up_to(out)
    args = {n.name: rule_args(module64, n, dynamic, norm) for n in nodes if n.name not in
            {u.node.name for u in units}}
    rules: dict[str, Any] | None = None

    dev = module64.device  # the Jacobians and SVDs run where the module is (a GPU when given one)
    x = torch.zeros((1, *g.sample_shape), dtype=torch.float64, device=dev, requires_grad=True)
    us = [torch.zeros((1, *g.shapes[u.node.outputs[0]][1:]), dtype=torch.float64, device=dev, requires_grad=True)
          for u in units]
    n_in = x.numel()
    sizes = [u.numel() for u in us]
    counts = {"materialized": 0, "composed": 0}

    def norm_of(rows: Tensor | None, n_rows: int, n_src: int, source: int, target: str) -> float:
        nonlocal rules
        if rows is not None:
            counts["materialized"] += 1
            return _matrix_norm(rows, norm)
        if rules is None:
            with torch.no_grad():
                rules = {n.name: n.op.lipschitz(args[n.name]) for n in nodes if n.name in args}
        counts["composed"] += 1
        return _composed(module64, units, source, target, norm, rules, args)

    refiner = _Refiner([u.spread for u in units]) if norm == 2 else None
    m: list[float] = []
    for k, unit in enumerate(units):
        n_k = math.prod(g.shapes[unit.node.inputs[0]][1:])
        sources = [-1] + list(range(k))
        small = [s for s in sources if n_k * (n_in if s < 0 else sizes[s]) <= MATERIALIZE_LIMIT]
        rows = dict(zip(small, _jacobian_rows(run, x, us, k, n_k, small))) if small else {}
        total = 0.0
        for s in sources:
            n_src = n_in if s < 0 else sizes[s]
            if s in rows and rows[s] is None:
                continue  # y_k does not depend on u_s
            value = norm_of(rows.get(s), n_k, n_src, s, unit.node.inputs[0])
            if s < 0:
                total += value
                continue
            term = units[s].spread * value * m[s]
            if refiner is not None and rows.get(s) is not None and s in refiner.a:
                refined = units[s].spread * refiner.weighted(s, _Refiner.aol(rows[s]), m)
                counts["refined (AOL)"] = counts.get("refined (AOL)", 0) + int(refined < term)
                term = min(term, refined)
            total += term
        m.append(total)
        if refiner is not None:
            refiner.keep(k, rows, sources)

    k_out = math.prod(g.shapes[out][1:])
    raw_pair, raw_class, raw_global = _output_bounds(run, x, us, units, m, k_out, norm, refiner)

    pairwise, per_class = raw_pair.clone(), raw_class.clone()
    if naive_pair is not None:
        pairwise, per_class = torch.minimum(pairwise, naive_pair), torch.minimum(per_class, naive_class)
    return LipLTReport(norm, min(raw_global, naive.lipschitz), pairwise, per_class, raw_global, raw_pair,
                       raw_class, naive.lipschitz, naive_pair, naive_class, [u.node.name for u in units], m, counts)
