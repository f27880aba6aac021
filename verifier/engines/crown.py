"""CROWN (Zhang et al. 2018): linear bounds propagated backward through the graph, concretized over the input set.

For the spec's rows C (``verifier.problem``), the backward walk (``verifier.engines.backward``) goes from the
logits with lam = C to the input, over the forward boxes of ``verifier.engines.intermediate`` (interval images
met with BCP's boxes in l2 and tightened by CROWN itself), and gives C z(x') >= A x' + b on the input set,
concretized there exactly.

Arithmetic as in ``verifier.engines.bcp``: a float64 copy of the module, the rules' rounding allowances, and
the final lower bounds reduced by ``FLOAT_SLACK`` x max(1, max |z|) per unit of a row's l1 norm over 2, for the
float32 forward. Needs a model that runs whole batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.ir import GraphModule
from verifier.margins import spec_allowance
from verifier.problem import Conjunction, Disjunction, Problem, RadiusProblem
from verifier.rounding import REL64

from . import bcp
from .backward import backward, concretize
from .bcp import BallBounds, walk
from .intermediate import boxes, meet, settled
from .lipschitz import LipschitzReport
from .search import largest_positive

#: most guesses of the radius search (it usually stops after 6 to 10, at a relative width of 1e-4)
SEARCH_STEPS = 40


def prepare(module: GraphModule) -> GraphModule:
    """The float64 copy CROWN runs on; NoRuleError for models that do not run whole batches."""
    if not module.graph.whole_batches:
        raise NoRuleError("CROWN needs a model that runs whole batches")
    return module.float64()


@dataclass
class SpecBounds:
    """What the final bound of a ``Conjunction`` spec needs: the forward boxes ``env``, the spec's rows C
    (B, R, *logits) and offsets d (B, R), and the float32 forward's allowance (B, R) (``spec_allowance``)."""

    module64: GraphModule
    problem: Problem
    env: dict[str, Any]
    c: Tensor
    d: Tensor
    allowance: Tensor
    budget: int | None = None
    done: dict[str, Tensor] | None = None

    def select(self, index: Tensor, rows: Tensor | None = None) -> "SpecBounds":
        """The bounds of some inputs only (``index``: their positions), of some rows only when ``rows`` (B', R')
        names them per input."""
        env = {k: v[index] if is_box(v) else v for k, v in self.env.items()}
        done = None if self.done is None else {k: v[index] for k, v in self.done.items()}
        c, d, allowance = self.c[index], self.d[index], self.allowance[index]
        if rows is not None:
            c = c.gather(1, rows[..., None].expand(-1, -1, c.shape[2]))
            d, allowance = d.gather(1, rows), allowance.gather(1, rows)
        return SpecBounds(self.module64, self.problem[index], env, c, d, allowance, self.budget, done)

    def tightened(self, other: "SpecBounds") -> "SpecBounds":
        """These bounds over the intersection of both boxes of every tensor (both are sound), detached."""
        env = {}
        for name, box in self.env.items():
            new = other.env.get(name)
            if is_box(new) and not new.integer:
                new = Box(new.center.detach(), new.radius.detach())
            env[name] = meet(box, new)
        return SpecBounds(self.module64, self.problem, env, self.c, self.d, self.allowance, self.budget, self.done)

    def rebound(self, slopes: Any) -> "SpecBounds":
        """The same bounds over boxes recomputed with alpha-CROWN's ``slopes`` (as in ``boxes``), each
        intersected with this one's: differentiable in the slopes, never looser than these."""
        env = boxes(self.module64, self.problem.inputs, self.env, self.budget, slopes, self.done)
        return SpecBounds(self.module64, self.problem, env, self.c, self.d, self.allowance, self.budget, self.done)

    def low(self, slopes: dict[str, Tensor] | None = None) -> Tensor:
        """(B, R) lower bounds of C z + d over the input set, less the allowance; ``slopes`` as in ``backward``
        (differentiable in them)."""
        return self.lines(slopes)[0]

    def lines(self, slopes: dict[str, Tensor] | None = None, extra: dict[str, Tensor] | None = None,
              record: dict[str, Any] | None = None) -> tuple[Tensor, Tensor | None]:
        """``low``'s bounds and the coefficients A (B * R, *sample) of the lines C z + d >= A x + b they
        concretize (None where the rows do not depend on the input); ``extra`` and ``record`` as in
        ``backward``."""
        g = self.module64.graph
        out = g.logits_tensor()
        b, r = self.c.shape[:2]
        coeffs, bias = backward(self.module64, self.env, out, self.c.reshape(b * r, *g.shapes[out][1:]), slopes,
                                extra, record)
        low = concretize(self.problem.inputs, self.env[g.input_name], coeffs, r) + bias.reshape(b, r) + self.d
        return low - REL64 * self.d.abs() - self.allowance, coeffs


def spec_low(module64: GraphModule, problem: Problem, ball: BallBounds | None = None,
             budget: int | None = None) -> Tensor:
    """(B, R) lower bounds of C z + d over the input set (a ``Conjunction`` spec), less the float32 forward's
    allowance. ``ball``: BCP's ball bounds (``verifier.engines.bcp.prepare(...).ball``), whose boxes then start
    the forward pass."""
    with torch.no_grad():
        return spec_bounds(module64, problem, ball, budget).low()


def spec_bounds(module64: GraphModule, problem: Problem, ball: BallBounds | None = None,
                budget: int | None = None, prior: dict[str, Any] | None = None) -> SpecBounds:
    """The forward boxes and rows of ``spec_low`` (arguments as there). ``prior``: sound boxes of some tensors
    over the input set (B, *shape) that every forward box is met with (branch and bound's split constraints; not
    with ``ball``)."""
    spec = problem.spec
    g = module64.graph
    out = g.logits_tensor()
    centre, rho = problem.inputs.l2_ball()
    with torch.no_grad():
        keep = {out} | (set(ball.tensor_bounds) if ball is not None else set())
        clean = module64.run(centre.to(torch.float64), keep=keep)
        if ball is not None:
            prior = walk(module64, ball, problem.inputs.box(torch.float64), clean, rho.to(torch.float64), out)
    z = clean[out].reshape(len(problem), -1)
    if spec.is_robustness:
        spec = Conjunction.robustness(spec.labels, z.shape[1])
    c, d = spec.rows()
    done = settled(module64, problem.inputs, ball)
    env = boxes(module64, problem.inputs, prior, budget, done=done)
    return SpecBounds(module64, problem, env, c, d, spec_allowance(z, c), budget, done)


def crown_margin(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                 ball: BallBounds | None = None, budget: int | None = None) -> Tensor:
    """Per input, a lower bound of the problem's margin (the smallest row of a conjunction, the largest such over
    a disjunction's parts): positive where CROWN proves ``problem``. With BCP's ``ball`` bounds (and its
    ``module64``), its boxes start the forward pass; ``budget`` as in ``boxes``."""
    module64 = module64 or prepare(module)
    return over_parts(problem, lambda part: spec_low(module64, part, ball, budget).amin(dim=1))


def over_parts(problem: Problem, margin: Any) -> Tensor:
    """A margin bound of any spec from one of conjunctions (``margin(conjunctive problem)``, per input): the
    largest over a disjunction's parts."""
    if isinstance(problem.spec, Disjunction):
        return torch.stack([margin(part) for part in problem.conjunctions()]).amax(0)
    return margin(problem)


def context(module: GraphModule, report: LipschitzReport | None) -> tuple[GraphModule, BallBounds | None]:
    """The float64 module and, with the l2 Lipschitz ``report``, BCP's ball bounds that start every forward pass
    (the arguments ``crown_margin`` and alpha-CROWN take)."""
    if report is None:
        return prepare(module), None
    ctx = bcp.prepare(module, report)
    return ctx.module64, ctx.ball


def verify_crown(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                 ball: BallBounds | None = None, budget: int | None = None) -> Tensor:
    """Per input: whether CROWN proves ``problem`` (any input set, any linear spec or disjunction); arguments as
    ``crown_margin``."""
    return crown_margin(module, problem, module64, ball, budget) > 0


def crown_radii(module: GraphModule, balls: RadiusProblem, report: LipschitzReport | None = None,
                start: Tensor | None = None, steps: int = SEARCH_STEPS, batch_size: int = 256,
                budget: int | None = None) -> Tensor:
    """The largest eps (model space) at which CROWN proves ``balls.at(eps)``, per input, by the margin-guided
    search (``verifier.engines.search.largest_positive``, at most ``steps`` guesses) from ``start`` (radii
    already proved) when given; the result is max(search, start). With the l2 Lipschitz ``report``, BCP's boxes
    start every forward pass; ``budget`` as in ``boxes`` (0: CROWN only for the spec's rows)."""
    module64, ball = context(module, report)
    r = largest_positive(balls, lambda part, eps: crown_margin(module, part.at(eps), module64, ball, budget),
                         start, steps, batch_size)
    return r if start is None else torch.maximum(r, start.double().cpu())
