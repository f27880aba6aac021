"""alpha-CROWN (Xu et al. 2021, "Fast and Complete", §3.1): CROWN whose ReLU lower slopes are variables.

CROWN bounds an unstable ReLU (l < 0 < u) from below by a z with one adaptive a (``verifier.linear.relu_backward``),
but every a in [0, 1] gives a sound lower line, so every choice gives a sound bound. Here the lower slopes of
every op with ``slope_variable`` are variables, one set per bound computed: for the spec's rows, (B, R, *shape)
per such op, and for every intermediate tensor that CROWN tightens (``intermediate.boxes``), (B, 2, entries, *shape)
per such op before it (rows +e_i and -e_i). They start at CROWN's choice and move by projected gradient ascent
(Adam, then a clamp to [0, 1]) on the sum of the spec rows' lower bounds not yet positive, the intermediate boxes
recomputed from them at every step, each intersected with CROWN's and those of every step before (so never
looser; the gradient passes straight through those intersections, ``intermediate._through``, else a slope whose bound
ties with an older one would never move). Every iterate is a sound bound, so the result is the largest value
any iterate gave, per row: never below CROWN's (the first iterate is CROWN). Where the intermediate variables
would exceed ``SLOPE_ENTRIES`` per input, only the spec's rows get variables and the boxes stay CROWN's.
Measured against auto_LiRPA's alpha-CROWN on mnist-net_256x2 (benchmarks/crown.py): the same radii to 1e-4.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from verifier.ir import GraphModule
from verifier.linear import adaptive_slope
from verifier.problem import Problem, RadiusProblem

from .bcp import BallBounds
from .crown import SpecBounds, context, crown_radii, over_parts, prepare, spec_bounds
from .lipschitz import LipschitzReport
from .search import largest_positive

#: projected gradient steps and the step size of Adam (alpha-CROWN's usual 20 steps)
STEPS = 20
LEARNING_RATE = 0.5
#: most float64 entries of the intermediate bounds' slope variables per input (beyond, the spec's rows alone get
#: variables: every step would recompute CROWN's intermediate bounds of a large layer, e.g. a convolution's)
SLOPE_ENTRIES = 2 ** 18
#: most guesses of the radius search and its relative precision (each guess costs STEPS bounds)
SEARCH_STEPS = 16
SEARCH_RTOL = 1e-4
#: the key of the spec's rows among the bound targets
SPEC = ""


def _unstable_nodes(module64: GraphModule, env: dict[str, Any], target: str) -> list[Any]:
    """The ``slope_variable`` nodes before ``target`` with an unstable entry in their input box."""
    out = []
    for node in module64.graph.nodes_up_to(target):
        box = env.get(node.inputs[0]) if node.inputs else None
        if node.op.slope_variable and box is not None and bool(node.op.unstable(box).any()):
            out.append(node)
    return out


def _crown_choice(box: Any) -> Tensor:
    """CROWN's adaptive lower slope, detached, (B, *shape)."""
    return adaptive_slope(box).detach()


class Slopes:
    """alpha-CROWN's variables, created at CROWN's choice when first asked for (``intermediate._tightened`` and
    ``intermediate.boxes`` ask for them). The entries tightened per tensor are fixed at the first step: the boxes only
    shrink after it (each is intersected with CROWN's), so the unstable entries stay among them."""

    def __init__(self, module64: GraphModule, intermediate: bool = True, limit: int | None = None):
        self.module64 = module64
        self.intermediate = intermediate
        self.limit = SLOPE_ENTRIES if limit is None else limit
        self.values: dict[tuple[str, str], Tensor] = {}
        self.fixed: dict[str, tuple[Tensor, Tensor]] = {}
        self.nodes: dict[str, list[Any]] = {}
        self.overflow = False

    def entries(self, target: str, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        return self.fixed.setdefault(target, (index, valid))

    def chunk(self, target: str, env: dict[str, Any], j: int, r: int) -> dict[str, Tensor]:
        """Per node before ``target``: the slopes of rows +e_i, -e_i for the tightened entries j .. j + r."""
        if not self.intermediate:
            return {}
        index = self.fixed[target][0]
        out = {}
        for node in self._nodes(target, env):
            box = env[node.inputs[0]]
            key = (target, node.name)
            if key not in self.values:
                shape = (box.shape[0], 2, index.shape[1], *box.shape[1:])
                if self.size() + math.prod(shape) > self.limit * shape[0]:
                    self.overflow = True
                    return {}
                self.values[key] = _crown_choice(box)[:, None, None].expand(shape).clone().requires_grad_(True)
            v = self.values[key][:, :, j:j + r]
            out[node.name] = v.reshape(v.shape[0], 2 * v.shape[2], *v.shape[3:])
        return out

    def spec(self, bounds: SpecBounds) -> dict[str, Tensor]:
        """Per node: the slopes of the spec's rows, (B, R, *shape)."""
        rows = bounds.c.shape[1]
        for node in self._nodes(SPEC, bounds.env):
            key = (SPEC, node.name)
            if key not in self.values:
                start = _crown_choice(bounds.env[node.inputs[0]])[:, None]
                self.values[key] = start.expand(-1, rows, *start.shape[2:]).clone().requires_grad_(True)
        return {name: v for (target, name), v in self.values.items() if target == SPEC}

    def size(self) -> int:
        return sum(v.numel() for v in self.values.values())

    def _nodes(self, target: str, env: dict[str, Any]) -> list[Any]:
        if target not in self.nodes:
            end = target if target != SPEC else self.module64.graph.logits_tensor()
            self.nodes[target] = _unstable_nodes(self.module64, env, end)
        return self.nodes[target]


def optimized_low(crown: SpecBounds, steps: int = STEPS, lr: float = LEARNING_RATE, intermediate: bool = True
                  ) -> Tensor:
    """``optimized``'s bounds alone."""
    return optimized(crown, steps, lr, intermediate)[0]


def optimized(crown: SpecBounds, steps: int = STEPS, lr: float = LEARNING_RATE, intermediate: bool = True,
              deadline: float | None = None, slope_entries: int | None = None) -> tuple[Tensor, SpecBounds]:
    """(B, R) lower bounds of the spec's rows: the best over ``steps`` iterates of projected gradient ascent on
    the lower slopes (module docstring), starting from CROWN's bounds ``crown``; stops once every row is
    positive, or once no input can be proved at its current pace (``_hopeless``). ``intermediate`` False: only
    the spec's rows get slopes (the boxes stay ``crown``'s; cheaper, as in branch and bound). Also returns the
    bounds over the intersection of every step's boxes (detached; what branch and bound starts from). Stops at
    ``deadline`` (``time.monotonic()``) when given: every iterate is sound, so any prefix of the steps is.
    ``slope_entries``: the intermediate variables' limit per input (default ``SLOPE_ENTRIES``)."""
    with torch.no_grad():
        best = crown.low()
    if bool((best > 0).all()) or not _unstable_nodes(crown.module64, crown.env, crown.module64.graph.logits_tensor()):
        return best, crown
    slopes = Slopes(crown.module64, intermediate, slope_entries)
    bounds = crown.rebound(slopes) if intermediate else crown
    if slopes.overflow:  # the intermediate variables would be too many: the spec's rows alone, over CROWN's boxes
        slopes, bounds = Slopes(crown.module64, intermediate=False), crown
    optimizer = None
    history = []
    for step in range(steps + 1):
        low = bounds.low(slopes.spec(bounds))
        best = torch.maximum(best, low.detach())
        history.append(best.amin(dim=1))
        late = deadline is not None and time.monotonic() > deadline
        if step == steps or late or bool((best > 0).all()) or _hopeless(history, steps - step):
            break
        optimizer = optimizer or torch.optim.Adam(list(slopes.values.values()), lr=lr)
        optimizer.zero_grad()
        (-torch.where(best > 0, 0.0, low).sum()).backward()  # rows already proved no longer pull
        optimizer.step()
        with torch.no_grad():
            for v in slopes.values.values():
                v.clamp_(0.0, 1.0)
        if slopes.intermediate:  # every step's boxes are sound: the next is intersected with all before
            crown = crown.tightened(bounds)
            bounds = crown.rebound(slopes)
    return best, crown.tightened(bounds) if slopes.intermediate else crown


def alpha_crown_margin(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                       ball: BallBounds | None = None, budget: int | None = None, steps: int = STEPS) -> Tensor:
    """Per input, alpha-CROWN's lower bound of the problem's margin (positive: proved; any input set, any linear
    spec or disjunction); arguments as ``verifier.engines.crown.crown_margin``."""
    module64 = module64 or prepare(module)

    def conjunction(part: Problem) -> Tensor:
        with torch.no_grad():
            crown = spec_bounds(module64, part, ball, budget)
        return optimized_low(crown, steps).amin(dim=1)
    return over_parts(problem, conjunction)


def _hopeless(history: list[Tensor], left: int, window: int = 4) -> bool:
    """Whether every input is either proved or so far from it that its progress over the last ``window``
    steps, kept up for the ``left`` steps to go, would not prove it (the search then has its answer)."""
    if len(history) <= window:
        return False
    now, before = history[-1], history[-1 - window]
    reach = now + (now - before) * (left / window)
    return bool(((now > 0) | (reach < 0)).all())


def verify_alpha_crown(module: GraphModule, problem: Problem, module64: GraphModule | None = None,
                       ball: BallBounds | None = None, budget: int | None = None, steps: int = STEPS) -> Tensor:
    """Per input: whether alpha-CROWN proves ``problem``; arguments as ``alpha_crown_margin``."""
    return alpha_crown_margin(module, problem, module64, ball, budget, steps) > 0


def alpha_crown_radii(module: GraphModule, balls: RadiusProblem, report: LipschitzReport | None = None,
                      start: Tensor | None = None, steps: int = SEARCH_STEPS, batch_size: int = 256,
                      budget: int | None = None) -> Tensor:
    """The largest eps at which alpha-CROWN proves ``balls.at(eps)``, per input, by the margin-guided search
    from ``start`` (radii already proved; CROWN's when not given, so that the result is never below CROWN's), at
    most ``steps`` guesses to a relative width of ``SEARCH_RTOL``; the result is max(search, start).
    ``report``: the l2 Lipschitz report, as in ``crown_radii``."""
    if start is None:
        start = crown_radii(module, balls, report, None, batch_size=batch_size, budget=budget)
    module64, ball = context(module, report)

    def margin(part: RadiusProblem, eps: Tensor) -> Tensor:
        return alpha_crown_margin(module, part.at(eps), module64, ball, budget)

    r = largest_positive(balls, margin, start, steps, batch_size, rtol=SEARCH_RTOL)
    return torch.maximum(r, start.double().cpu())
