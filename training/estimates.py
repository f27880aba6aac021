"""Differentiable Lipschitz estimates for training: what the robust losses need, recomputed every step.

Everything here is an *estimate* (power iteration converges from below): fine for a training loss, never used
for certificates (those come from ``verifier``, which re-bounds the trained weights soundly).

- ``GraphEstimate``: LMT Algorithm 2 over the whole graph (``verifier.engines.power_iteration``: one power step per
  call on every affine chain, persistent vectors, batch normalization bounded as at inference, LMT §4.1), plus
  LMT Prop. 2's pieces: L_sub (input -> the last affine layer's input) and that layer's rows w_k, and for BCP
  the estimate at every tensor and the row norms ||A_i|| of every other affine chain (BCP eq. 6).
- ``LipLTEstimate``: CRM §3's loop-transformed recursion (Theorem 3.3, eq. 19) with every matrix norm ||A_k||,
  ||B_kj|| estimated by one power step per call, and the pairwise L_ij from the exact rows (e_i - e_j)^T A_z,
  (e_i - e_j)^T B_zj (double back-propagation, so L_ij is differentiable in the weights), as CRM trains.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.box import Box
from verifier.engines.liplt import linear_graph, loop_units
from verifier.engines.lipschitz import chain_function
from verifier.engines.power_iteration import PowerIteration
from verifier.ir import GraphModule, inference_mode


def _rows(run, leaves: list[Tensor], k: int) -> list[Tensor | None]:
    """The rows (K, n_leaf) of a linear map ``run(*leaves)`` with K outputs, per leaf (None where the output does
    not depend on it), differentiable in the weights: each leaf holds K zero samples, and sample i
    back-propagates output i (double back-propagation, ``create_graph``)."""
    leaves = [leaf.requires_grad_(True) for leaf in leaves]
    with torch.enable_grad():
        z = run(*leaves).reshape(k, k)
        eye = torch.eye(k, device=z.device, dtype=z.dtype)
        grads = torch.autograd.grad((z * eye).sum(), leaves, create_graph=True, allow_unused=True)
    return [None if g is None else g.reshape(k, -1) for g in grads]


def pair_distances(rows: Tensor) -> Tensor:
    """||r_i - r_j||_2 for every pair of rows (K, K), differentiable (0 on the diagonal)."""
    sq = (rows * rows).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * rows @ rows.T
    return d2.clamp_min(1e-12).sqrt() * (1 - torch.eye(len(rows), device=rows.device, dtype=rows.dtype))


class GraphEstimate:
    """Call once per step: ``L = est()``; then ``est.bounds``, ``est.l_sub``, ``est.last_rows()``."""

    def __init__(self, module: GraphModule, seed: int = 0):
        self.module = module
        self.pi = PowerIteration(module, seed)
        self.output = self.pi.output
        g = module.graph
        last = self.pi.last_chain
        self.last_input = None if last is None else next(t for t in last[0].inputs if t in self.pi.dynamic)
        self.k = math.prod(g.shapes[self.output][1:])
        self.chain_input = {c[-1].outputs[0]: next(t for t in c[0].inputs if t in self.pi.dynamic)
                            for c in self.pi.chains if c is not last}

    def __call__(self) -> Tensor:
        return self.pi()

    @property
    def bounds(self) -> dict[str, Tensor]:
        return self.pi.bounds

    @property
    def l_sub(self) -> Tensor | None:
        return None if self.last_input is None else self.bounds[self.last_input]

    def last_rows(self) -> Tensor | None:
        """The last affine layer's rows w_k (K, n) (LMT Prop. 2), differentiable; None without one."""
        chain = self.pi.last_chain
        if chain is None:
            return None
        m = self.module
        first, run = chain_function(m, chain, self.pi.dynamic)
        x = torch.zeros((self.k, *m.graph.shapes[first][1:]), device=m.device, dtype=m.float_dtype)
        with inference_mode(chain):
            return _rows(run, [x], self.k)[0]

    def pairwise(self, prop2: bool = True) -> Tensor:
        """The estimate of L_ij (K, K) that LMT's margin uses: L_sub ||w_i - w_j|| (Prop. 2) when the logits come
        from an affine layer and ``prop2``, else sqrt(2) L (Prop. 1) off the diagonal. Refreshes the estimate."""
        lip = self()
        rows = self.last_rows() if prop2 else None
        if rows is None:
            return math.sqrt(2) * lip * (1 - torch.eye(self.k, device=lip.device, dtype=lip.dtype))
        return self.l_sub * pair_distances(rows)

    def row_norms(self) -> dict[str, Tensor]:
        """chain output -> ||A_i||_2 per output entry (sample shape) for every affine chain but the last (BCP
        eq. 6), differentiable. The first node's rows come from its squared weights when it is a Gemm, MatMul or
        Conv (exact, borders included: padding contributes zeros), else from its l1 row norms |A| 1 (>= l2);
        each further node of the chain maps them by |A| (||(BA)_i|| <= sum_k |B_ik| ||A_k||)."""
        m, g = self.module, self.module.graph
        out: dict[str, Tensor] = {}
        for chain in self.pi.chains:
            if chain is self.pi.last_chain:
                continue
            first = self.chain_input[chain[-1].outputs[0]]
            with inference_mode(chain):
                r = None  # None: the rows so far are those of a pure data movement (norm 1 each)
                prev_out = first
                for node in chain:
                    ins = [None if not t else (t if t in self.pi.dynamic else m.tensor(t)) for t in node.inputs]
                    in_shape = (1, *g.shapes[prev_out][1:])
                    if r is None and node.op.permutes_entries:  # rows stay unit vectors
                        prev_out = node.outputs[0]
                        continue
                    squares = None
                    if r is None and ins[0] == prev_out:  # exact rows of a weight op (Op.squared_row_norms)
                        ones = torch.ones(in_shape, device=m.device, dtype=m.float_dtype)
                        squares = node.op.squared_row_norms(ones, ins)
                    if squares is not None:
                        r = squares.clamp_min(0).sqrt()
                    else:
                        prev = torch.ones(in_shape, device=m.device, dtype=m.float_dtype) if r is None else r
                        args = [Box(torch.zeros_like(prev), prev) if t == prev_out else v
                                for t, v in zip(node.inputs, ins)]
                        res = node.op.interval(*args)
                        r = (res[0] if isinstance(res, tuple) else res).radius
                    prev_out = node.outputs[0]
                if r is None:
                    r = torch.ones((1, *g.shapes[prev_out][1:]), device=m.device, dtype=m.float_dtype)
            out[chain[-1].outputs[0]] = r[0]
        return out


class LipLTEstimate:
    """CRM's training-time LipLT (Theorem 3.3 with power-iteration norms); ``est()`` -> L_ij (K, K).

    Every map M = A_k (x_0 -> y_k) or B_kj (u_j -> y_k) of the loop-transformed linear graph
    (``verifier.engines.liplt``) keeps a persistent vector v; each call runs the linear graph once on a batch holding
    every v in its own sample (plus a zero sample that removes the constants), so that sigma = ||M v|| for all
    maps comes from one forward pass, and one backward pass gives M^T M v for the next call. Raises
    ``NoRuleError`` for graphs LipLT cannot map (MaxPool, ...)."""

    def __init__(self, module: GraphModule, seed: int = 0):
        self.module = module
        g = module.graph
        self.out = module.graph.logits_tensor()
        with inference_mode(list(g.nodes())):
            self.units = loop_units(module, self.out)
        self.nodes = module.graph.nodes_up_to(self.out)
        self.run = linear_graph(module, self.units, self.out)
        self.k = math.prod(g.shapes[self.out][1:])
        self.x_shape = tuple(g.sample_shape)
        self.u_shapes = [tuple(g.shapes[u.node.outputs[0]][1:]) for u in self.units]
        self.maps = [(k, s) for k in range(len(self.units)) for s in range(-1, k)]  # y_k <- source s
        gen = torch.Generator().manual_seed(seed)
        self.vectors = []
        for _, s in self.maps:
            v = torch.randn(self.x_shape if s < 0 else self.u_shapes[s], generator=gen)
            self.vectors.append(v / v.norm())

    def _inputs(self, n: int) -> tuple[Tensor, list[Tensor]]:
        m = self.module
        kw = dict(device=m.device, dtype=m.float_dtype)
        x = torch.zeros((n, *self.x_shape), **kw)
        us = [torch.zeros((n, *s), **kw) for s in self.u_shapes]
        return x, us

    def norms(self) -> list[Tensor]:
        """sigma of every map (one power step), differentiable in the weights."""
        x, us = self._inputs(len(self.maps) + 1)
        for b, ((_, s), v) in enumerate(zip(self.maps, self.vectors), start=1):
            target = x if s < 0 else us[s]
            target[b] = v.to(target)
        leaves = [x.requires_grad_(True)] + [u.requires_grad_(True) for u in us]
        with torch.enable_grad(), inference_mode(self.nodes):
            ys, _ = self.run(leaves[0], leaves[1:])
            images = [(ys[k][b] - ys[k][0]) for b, (k, _) in enumerate(self.maps, start=1)]
            total = sum((im * im.detach()).sum() for im in images)
            grads = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
        for b, (_, s) in enumerate(self.maps, start=1):
            gr = grads[0 if s < 0 else s + 1]
            w = gr[b].detach() if gr is not None else self.vectors[b - 1].to(x)
            self.vectors[b - 1] = (w / w.norm().clamp_min(1e-12)).cpu()
        return [im.norm() for im in images]

    def __call__(self) -> Tensor:
        sigma = dict(zip(self.maps, self.norms()))
        m: list[Tensor] = []
        for k in range(len(self.units)):
            total = sigma[(k, -1)]
            for s in range(k):
                total = total + self.units[s].spread * sigma[(k, s)] * m[s]
            m.append(total)
        x, us = self._inputs(self.k)
        with inference_mode(self.nodes):
            grads = _rows(lambda x, *us: self.run(x, list(us))[1], [x, *us], self.k)
        pairs = pair_distances(grads[0])
        for s, gr in enumerate(grads[1:]):
            if gr is not None and self.units[s].spread > 0:
                pairs = pairs + self.units[s].spread * m[s] * pair_distances(gr)
        return pairs
