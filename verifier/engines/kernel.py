"""The RBF-kernel certificate (Hein & Andriushchenko 2017, Theorem 2.1 with Proposition 2.1) for support vector
machines imported as a ``KernelExpansion`` (``verifier.ops.kernels``; ``frontends.onnx_svm`` writes it).

The machines: decision functions g_p(y) = sum_r beta_pr exp(-gamma ||y - x_r||^2) + b_p of the model input y,
read as logits either (g, -g) (two classes, a MatMul by (1, -1): class 0 where g > 0) or as the Condorcet scores
of a one-vs-one machine (class c is the label wherever o_cj g_p(c, j) > 0 for its K - 1 pairs). Either way the
prediction c is kept on a ball if each of its decision functions o g_p keeps its sign there.

Theorem 2.1 for a function h = o g_p with h(x) > 0: no ||delta||_2 < min(h(x) / U(R), R) changes its sign,
where U(R) >= max_{y in B_2(x, R)} ||grad g_p(y)||_2; the radius of one function is max_R min(h(x) / U(R), R).
Proposition 2.1 gives U(R) in closed form: with u_r = x - x_r, v_rs = 2x - x_r - x_s, S = ||v_rs||,
M = min(S / 2, R), ||grad g||^2 = 4 gamma^2 sum_rs beta_r beta_s <y - x_r, y - x_s> e^{-gamma(||y - x_r||^2 +
||y - x_s||^2)}, and over the ball <y - x_r, y - x_s> lies in [<u_r, u_s> - M S + M^2, <u_r, u_s> + R S + R^2]
and the exponent's distance sum in [|u_r|^2 + |u_s|^2 - 2 M S + 2 M^2, |u_r|^2 + |u_s|^2 + 2 R S + 2 R^2]; each
term takes the end of its product interval that its sign of beta_r beta_s needs (``gradient_bound``). U(R)
grows with R, so the R with h(x) = R U(R) is found by bisection, and every R tested with h(x) >= R U(R) is
itself a proof (the radius returned is the largest such R).

Soundness, including floating point: h(x) is computed in float64 and reduced by its own rounding (REL64) and
by what the model's float forward can be off by on the ball (``forward_error``: the kernel values' relative
error from the d-term distance sums, the exp, and the n-term decision sum, as in the op's box rule; the
Condorcet tail's +-1 selections and Min round nothing), which grows with R, so the search stays a bisection;
U(R) is a float64 sum of m^2 terms of both signs, raised by gamma_{m^2 + 8} of the sum of their magnitudes. An
l_inf ball of radius r lies in the l2 ball of radius sqrt(d) r.

A machine may read the model input through elementwise affine ops (a StandardScaler's Sub and Mul): its
radius R in that space becomes r in the input's with max|scale| r + (the prefix's float error) <= R
(``_through_prefix``, ``prefix_error``).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from verifier.ir import GraphModule
from verifier.ops.kernels import ULPS, KernelExpansion, condorcet_weights
from verifier.problem import RadiusProblem
from verifier.rounding import REL64, gamma, unit_roundoff

#: bisection steps of the radius search (after its sound start, ``_radii``)
STEPS = 16
#: entries of the (job, pairs of support vectors) blocks evaluated at once
BLOCK = 1 << 21


@dataclass
class KernelMachine:
    """An RBF machine as the kernel certificate reads it: the support vectors (n, d), the decision functions'
    coefficients (P, n) and offsets (P,) in float64, gamma, the number of classes, and per class c the
    decision functions it must win: (p, o) with o g_p > 0."""

    sv: Tensor
    beta: Tensor
    offset: Tensor
    gamma: float
    classes: int
    wins: list[list[tuple[int, int]]]
    dtype: torch.dtype
    #: the elementwise affine ops between the model input and the machine (a Scaler): (op type, constant)
    prefix: list[tuple[str, Tensor]] = field(default_factory=list)


def find_machine(module: GraphModule) -> KernelMachine | str:
    """The RBF machine the model is (module docstring), or why the kernel certificate does not apply."""
    g = module.graph
    nodes = list(g.nodes())
    kernels = [n for n in nodes if isinstance(n.op, KernelExpansion)]
    if len(kernels) != 1:
        return "applies to support vector machines (one kernel expansion, from an SVMClassifier)"
    node = kernels[0]
    if node.op.kernel != "RBF":
        return f"applies to RBF kernels (Hein & Andriushchenko Prop. 2.1); this one is {node.op.kernel}"
    prefix = _prefix(module, node.inputs[0], nodes)
    if isinstance(prefix, str):
        return prefix
    sv, c, b = (module.tensor(t).detach().double().cpu() for t in node.inputs[1:4])
    a = node.op.matrix(c)
    logits, out = g.logits_tensor(), node.outputs[0]
    machine = KernelMachine(sv, a, b, node.op.gamma, 2, [], module.float_dtype, prefix)
    readers = [n for n in nodes if out in n.inputs]
    tail = [n for n in nodes if n.outputs[0] == logits]
    if len(a) == 1 and [n.name for n in readers] == [n.name for n in tail] and tail[0].op_type == "MatMul" and \
            tail[0].inputs[0] == out and tail[0].inputs[1] in g.constants and torch.equal(
            module.tensor(tail[0].inputs[1]).detach().double().cpu(), torch.tensor([[1.0, -1.0]], dtype=torch.float64)):
        machine.wins = [[(0, 1)], [(0, -1)]]  # the logits (g, -g)
        return machine
    k = next((k for k in range(3, 200) if k * (k - 1) // 2 == len(a)), None)
    if k is None or not tail or tail[0].op_type != "Min" or len(readers) != k - 1:
        return "needs the logits to be a two-class decision or one-vs-one Condorcet scores of the kernel machine"
    weights = {n.outputs[0]: module.tensor(n.inputs[1]).detach().double().cpu() for n in readers
               if n.op_type == "MatMul" and n.inputs[0] == out and n.inputs[1] in g.constants}
    expected = [torch.from_numpy(w) for w in condorcet_weights(k)]
    if len(weights) != k - 1 or [weights.get(t) is not None for t in tail[0].inputs] != [True] * (k - 1) or not all(
            torch.equal(weights[t], w) for t, w in zip(tail[0].inputs, expected)):
        return "needs the logits to be the one-vs-one Condorcet scores that lipverify's import writes"
    pairs = {pair: p for p, pair in enumerate(itertools.combinations(range(k), 2))}
    machine.classes = k
    machine.wins = [[(pairs[(min(c, m), max(c, m))], 1 if c < m else -1) for m in range(k) if m != c]
                    for c in range(k)]
    return machine


def _prefix(module: GraphModule, tensor: str, nodes: list) -> list[tuple[str, Tensor]] | str:
    """The chain of elementwise affine ops (Add, Sub, Mul, Div by a constant scalar or per-feature vector) from
    the model input to ``tensor``, in order; or why the machine's input is not such a map of the model input."""
    g, steps = module.graph, []
    producer = {o: n for n in nodes for o in n.outputs}
    width = math.prod(g.sample_shape)
    while tensor != g.input_name:
        node = producer.get(tensor)
        if node is None or node.op_type not in ("Add", "Sub", "Mul", "Div") or len(g.sample_shape) != 1:
            return "needs the kernel machine to read the model input through elementwise affine ops at most"
        ins = [t for t in node.inputs if t]
        const = [t for t in ins if t in g.constants]
        if len(ins) != 2 or len(const) != 1 or ins[0] in g.constants:  # only (x op constant)
            return "needs the kernel machine to read the model input through elementwise affine ops at most"
        k = module.tensor(const[0]).detach().double().cpu().reshape(-1)
        if k.numel() not in (1, width) or (node.op_type == "Div" and bool((k == 0).any())):
            return "needs the kernel machine to read the model input through elementwise affine ops at most"
        steps.append((node.op_type, k))
        tensor = ins[0]
    return steps[::-1]


def _apply(prefix: list[tuple[str, Tensor]], x: Tensor) -> Tensor:
    """The prefix's real map at x (float64)."""
    for op, k in prefix:
        x = {"Add": x + k, "Sub": x - k, "Mul": x * k, "Div": x / k}[op]
    return x


def prefix_error(prefix: list[tuple[str, Tensor]], x: Tensor, r: Tensor, dtype: torch.dtype) -> Tensor:
    """Per input, a bound on the l2 distance between the prefix's float evaluation at any y with ||y - x||_2 <= r
    (each coordinate within r) and its real value there: each op rounds once (u relative), and an earlier error e
    passes through scaled by |k| (Mul), 1 / |k| (Div) or 1; the values' magnitudes are bounded over the ball by
    |v(x)| + |scale so far| r. (x: (B, d) float64, r: (B,).)"""
    u = unit_roundoff(dtype)
    v, scale, e = x, torch.ones_like(x), torch.zeros_like(x)
    for op, k in prefix:
        v, factor = _apply([(op, k)], v), {"Mul": k.abs(), "Div": 1 / k.abs()}.get(op, torch.ones_like(k))
        scale, e = scale * factor, e * factor * (1 + u)
        e = e + u * (v.abs() + scale * r[:, None] + e) * (1 + 4 * u)
    return e.norm(dim=1) * (1 + REL64)


def forward_error(norms: Tensor, beta: Tensor, offset: Tensor, gamma_: float, r: Tensor, d: int, n: int,
                  dtype: torch.dtype) -> Tensor:
    """Per job, a bound on |float forward - real value| of its decision function anywhere in the ball of radius
    ``r`` (J,) around x (module docstring): ``norms`` ||x - x_r|| (J, m), ``beta`` (J, m), ``offset`` |b| (J,).
    Each kernel value k = e^{-t} (t = gamma ||y - x_r||^2 between t_lo and t_hi over the ball) is off by at
    most k t (g_{d+8} + 4u) + ULPS u k, with k t <= max of t e^{-t} over [t_lo, t_hi] (1/e where 1 lies in it),
    and the decision sum by g_{n+4} (sum |beta| k + |b|)."""
    u, r = unit_roundoff(dtype), r[:, None]
    t_lo, t_hi = gamma_ * (norms - r).clamp_min(0).square(), gamma_ * (norms + r).square()
    k_max = torch.exp(-t_lo)
    kt = torch.where((t_lo <= 1) & (t_hi >= 1), torch.full_like(t_lo, 1 / math.e),
                     torch.maximum(t_lo * k_max, t_hi * torch.exp(-t_hi)))
    a = beta.abs()
    per_kernel = (a * (kt * (gamma(d + 8, dtype) + 4 * u) + ULPS * u * k_max)).sum(1)
    return (per_kernel + gamma(n + 4, dtype) * ((a * k_max).sum(1) * (1 + ULPS * u) + offset)) * (1 + REL64)


def pair_terms(u: Tensor, beta: Tensor) -> dict[str, Tensor]:
    """What Proposition 2.1 sums over, per job, for u_r = x - x_r (J, m, d) and beta (J, m): the pairs r <= s
    only (every term is symmetric in r and s), each off-diagonal pair counted twice through ``outer``:
    ``gram`` <u_r, u_s>, ``dist`` |u_r|^2 + |u_s|^2, ``spread`` S = ||u_r + u_s||, ``outer`` beta_r beta_s
    (times 2 off the diagonal), all (J, m (m + 1) / 2)."""
    m = u.shape[1]
    gram = u @ u.transpose(1, 2)
    sq = gram.diagonal(dim1=1, dim2=2)
    r, s = torch.triu_indices(m, m)
    twice = torch.where(r == s, 1.0, 2.0).to(torch.float64)
    pair_gram = gram[:, r, s]
    dist = sq[:, r] + sq[:, s]
    return {"gram": pair_gram, "dist": dist, "spread": (dist + 2 * pair_gram).clamp_min(0).sqrt(),
            "outer": beta[:, r] * beta[:, s] * twice, "terms": torch.tensor(m * m)}


def gradient_bound(terms: dict[str, Tensor], gamma_: float, r: Tensor) -> Tensor:
    """Proposition 2.1's U(R) per job from ``pair_terms``, for the radii ``r`` (J,)."""
    gram, dist, spread, outer = terms["gram"], terms["dist"], terms["spread"], terms["outer"]
    r = r[:, None]
    m = torch.minimum(spread / 2, r)
    e_hi = torch.exp(-gamma_ * (dist - 2 * m * spread + 2 * m * m))
    e_lo = torch.exp(-gamma_ * (dist + 2 * r * spread + 2 * r * r))
    p_hi, p_lo = gram + r * spread + r * r, gram - m * spread + m * m
    upper = p_hi.clamp_min(0) * e_hi + p_hi.clamp_max(0) * e_lo
    lower = p_lo.clamp_min(0) * e_lo + p_lo.clamp_max(0) * e_hi
    summands = torch.where(outer >= 0, outer * upper, outer * lower)
    total = summands.sum(1) + gamma(int(terms["terms"]) + 8, torch.float64) * summands.abs().sum(1)
    return 2 * gamma_ * total.clamp_min(0).sqrt() * (1 + REL64)


def _radii(parts: dict[str, Tensor], margin: Tensor, gamma_: float, sizes: tuple[int, int],
           dtype: torch.dtype) -> Tensor:
    """max_R min(h / U(R), R) per job by bisection (module docstring) with h the ``margin`` less the forward's
    error on the ball (``forward_error``); 0 where none passes. The search runs between hi = h(0) / U(0) (no R
    above it passes: U(R) >= U(0), h(R) <= h(0)) and lo = h(hi) / U(hi) (which passes: lo <= hi)."""
    def bound(r: Tensor) -> Tensor:
        return gradient_bound(parts, gamma_, r)

    def h(r: Tensor) -> Tensor:
        return margin - forward_error(parts["norms"], parts["beta"], parts["offset"], gamma_, r, *sizes, dtype)

    zero = torch.zeros_like(margin)
    cap = torch.full_like(margin, 1e6 / math.sqrt(gamma_))
    h0, u0 = h(zero).clamp_min(0), bound(zero)
    hi = torch.where(u0 > 0, h0 / u0.clamp_min(1e-300), cap).clamp_max(cap[0]) * (1 + REL64)
    u_hi = bound(hi)
    lo = torch.where(u_hi > 0, h(hi).clamp_min(0) / u_hi.clamp_min(1e-300), hi) * (1 - REL64)
    lo = torch.where(h(lo) >= lo * bound(lo), lo, zero)
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        ok = h(mid) >= mid * bound(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(h0 > 0, lo, zero)


def _jobs(machine: KernelMachine, x: Tensor, jobs: list[tuple[int, int, int]], margins: Tensor) -> Tensor:
    """The radii of the jobs (input index, decision function, orientation) with their margins o g_p(x)."""
    used = [machine.beta[p].nonzero().reshape(-1) for _, p, _ in jobs]
    width = max(len(i) for i in used)
    per_block = max(1, BLOCK // max(1, width * (width + 1) // 2))
    sizes = (x.shape[1], machine.sv.shape[0])
    out = []
    for start in range(0, len(jobs), per_block):
        block = range(start, min(start + per_block, len(jobs)))
        u = torch.zeros(len(block), width, x.shape[1], dtype=torch.float64)
        beta = torch.zeros(len(block), width, dtype=torch.float64)
        for row, j in enumerate(block):
            i, p, _ = jobs[j]
            u[row, :len(used[j])] = x[i] - machine.sv[used[j]]
            beta[row, :len(used[j])] = machine.beta[p, used[j]]
        parts = {**pair_terms(u, beta), "norms": u.norm(dim=2), "beta": beta,
                 "offset": torch.stack([machine.offset[jobs[j][1]].abs() for j in block])}
        out.append(_radii(parts, margins[list(block)], machine.gamma, sizes, machine.dtype))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def kernel_radii(machine: KernelMachine, problem: RadiusProblem) -> Tensor:
    """Certified radii (model space, ``problem.norm``) of the labels of ``problem``: 0 where the label is not
    the prediction (module docstring)."""
    x_in = problem.center.double().reshape(len(problem), -1).cpu()
    x, d = _apply(machine.prefix, x_in), x_in.shape[1]
    dist = torch.cdist(x, machine.sv, compute_mode="donot_use_mm_for_euclid_dist").square()
    values = torch.exp(-machine.gamma * dist) @ machine.beta.T + machine.offset  # (B, P)
    slack = REL64 * (machine.beta.abs().sum(1) + machine.offset.abs())  # the float64 evaluation's own rounding
    jobs, margins = [], []
    for i, c in enumerate(problem.labels.tolist()):
        for p, o in machine.wins[c] if 0 <= c < machine.classes else []:
            jobs.append((i, p, o))
            margins.append(o * values[i, p] - slack[p])
    radii = torch.full((len(x),), math.inf, dtype=torch.float64)
    if jobs:
        found = _jobs(machine, x, jobs, torch.stack(margins))
        index = torch.tensor([i for i, _, _ in jobs])
        radii = radii.scatter_reduce(0, index, found, reduce="amin")
    radii = torch.where(torch.isinf(radii), torch.zeros_like(radii), radii)
    radii = _through_prefix(machine, x_in, radii)
    return radii if problem.norm == 2 else radii / math.sqrt(d) * (1 - REL64)


def _through_prefix(machine: KernelMachine, x: Tensor, radii: Tensor) -> Tensor:
    """Input-space l2 radii from the machine's: the prefix's real map is max |scale|-Lipschitz, and its float
    evaluation is within ``prefix_error`` of it, so an input radius r with max|scale| r + error(r) <= R keeps
    every point the machine sees within its certified R (error(r) <= error(R / max|scale|) for such r)."""
    if not machine.prefix:
        return radii
    ones = torch.ones(x.shape[1], dtype=torch.float64)
    lip = float(_apply([(op, k) for op, k in machine.prefix if op in ("Mul", "Div")], ones).abs().max())
    lip = lip * (1 + REL64)
    error = prefix_error(machine.prefix, x, radii / lip, machine.dtype)
    return ((radii - error) / lip).clamp_min(0.0) * (1 - REL64)
