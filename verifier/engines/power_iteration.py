"""A differentiable estimate of the Lipschitz constant for training (LMT Algorithm 2).

One power-iteration step per call on every affine chain (the same chains the sound engine fuses), with
persistent vectors carried from call to call (one step per minibatch, as LMT and spectral normalization do):
each call's estimate is ||J u|| at the chain's current vector u, and the same forward pass yields the next
vector J^T J u / ||J^T J u||;
the chains' estimates are composed over the graph like the sound bounds (``lipschitz.compose``), with the other
nodes' sound rules (on the weights themselves where a node reads trainable weights: a rule written in torch is
then differentiable in them).
Power iteration converges to the largest singular value from below: this is an under-estimate, fine for a
training loss and never used for certificates.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from verifier.engines.lipschitz import affine_chains, chain_function, compose, rule_args
from verifier.ir import GraphModule, inference_mode


class PowerIteration:
    """``estimate = PowerIteration(module)``; then ``L = estimate()`` each training step (a torch scalar that
    back-propagates into the module's weights)."""

    def __init__(self, module: GraphModule, seed: int = 0):
        self.module = module
        g = module.graph
        self.output = module.graph.logits_tensor()
        self.nodes = module.graph.nodes_up_to(self.output)
        self.dynamic = g.dependent_tensors()
        with inference_mode(self.nodes):  # a module in training mode is bounded as at inference
            self.chains = affine_chains(module, self._args(), self.output)
        #: the affine chain that produces the logits (LMT Prop. 2's last layer), if any
        self.last_chain = next((c for c in self.chains if c[-1].outputs[0] == self.output), None)
        #: after each call: the estimate of input -> every tensor (differentiable torch scalars or floats)
        self.bounds: dict[str, object] = {}
        gen = torch.Generator().manual_seed(seed)
        self.vectors: list[torch.Tensor] = []
        for chain in self.chains:
            first_input, _ = chain_function(module, chain, self.dynamic)
            u = torch.randn((1, *g.shapes[first_input][1:]), generator=gen)
            self.vectors.append(u / u.norm())

    def _args(self):
        return {n.name: rule_args(self.module, n, self.dynamic, 2.0) for n in self.nodes}

    def _rule(self, node, args):
        """The node's sound rule; for a node that reads trainable weights, on those weights themselves (not
        detached), so that a rule written in torch (``KernelExpansion``'s) is differentiable in them."""
        weights = self.module.graph.weights
        if not any(t in weights for t in node.inputs if t):
            with torch.no_grad():
                return node.op.lipschitz(args)
        values = [self.module.tensor(t).double() if t in weights else v for t, v in zip(node.inputs, args.values)]
        with torch.enable_grad():
            return node.op.lipschitz(dataclasses.replace(args, values=values))

    def __call__(self) -> torch.Tensor:
        """The composed estimate, each chain's sigma = ||J u|| at its current unit vector u (one forward serves
        both the estimate and the power step u <- J^T J u / ||J^T J u|| for the next call). The whole graph is
        bounded as at inference (batch normalization with its running statistics, LMT §4.1), whatever the
        module's mode."""
        with inference_mode(self.nodes):
            return self._step()

    def _step(self) -> torch.Tensor:
        module = self.module
        device, dtype = module.device, module.float_dtype
        args = self._args()
        in_chain = {n.name for chain in self.chains for n in chain}
        rules = {n.name: self._rule(n, args[n.name]) for n in self.nodes if n.name not in in_chain}
        chain_values, xs, vs = {}, [], []
        with torch.enable_grad():
            for i, chain in enumerate(self.chains):
                first_input, run = chain_function(module, chain, self.dynamic)
                x = self.vectors[i].to(device=device, dtype=dtype).requires_grad_(True)
                v = run(x) - run(torch.zeros_like(x))  # J u, differentiable in the weights: sigma = ||J u||
                xs.append(x)
                vs.append(v)
                chain_values[chain[-1].name] = (first_input, chain[-1].outputs[0], v.norm())
            # J^T J u for every chain in one backward pass (weights untouched), the vectors of the next call
            ws = torch.autograd.grad(vs, xs, [v.detach() for v in vs], retain_graph=True, allow_unused=True)
        self.vectors = [u if w is None else (w / w.norm().clamp_min(1e-12)).detach().cpu()
                        for u, w in zip(self.vectors, ws)]
        bounds = compose(module.graph.input_name, self.nodes, args, rules, chain_values, in_chain, 2.0)
        self.bounds = bounds
        value = bounds[self.output]
        return value if torch.is_tensor(value) else torch.tensor(float(value), device=device)


def estimate(module: GraphModule, steps: int = 50) -> float:
    """The power-iteration estimate after ``steps`` steps (an under-estimate of the true constant)."""
    pi = PowerIteration(module)
    value = math.nan
    with torch.no_grad():
        for _ in range(steps):
            value = float(pi())
    return value
