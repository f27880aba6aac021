"""Deciding a VNN-LIB property (``frontends.vnnlib.VnnlibProperty``) on a model: holds, violated, or unknown.

Per region, in order, until the deadline: (1) falsification (``falsify.pgd_box``, random and per-disjunct
targeted restarts); (2) CROWN, then alpha-CROWN, over the region's box (``bounds.RegionBounds``); (3) branch and
bound (``bab``): input splitting when at most ``INPUT_SPLIT_MAX`` inputs vary in the region, else ReLU splitting. A
candidate counterexample is reported only once ``reference`` (onnxruntime on the original file) gives outputs
that satisfy a disjunct at a point that satisfies the region's input constraints as written: a 'violated'
verdict always carries a confirmed counterexample. 'holds' needs every region proved by a positive margin
(``spec``); anything else is 'unknown' (or 'timeout' when the deadline stopped the search).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from verifier.certificates.methods import ALPHA_CROWN, CROWN, IBP
from verifier.errors import LipverifyError, NoRuleError
from verifier.ir import GraphModule

from .bab import Search, relu_inputs, split_inputs, split_relus
from .bounds import RegionBounds
from .falsify import float32_box, pgd_box
from .spec import RegionSpec

#: input splitting for regions with at most this many inputs that vary (acasxu: 5), ReLU splitting beyond
INPUT_SPLIT_MAX = 16
#: the first falsification pass: PGD steps and restarts per region
ATTACK_STEPS, ATTACK_RESTARTS = 50, 20

HOLDS, VIOLATED, UNKNOWN, TIMEOUT = "holds", "violated", "unknown", "timeout"


@dataclass
class Verdict:
    """A decision: ``status`` (holds / violated / unknown / timeout), what decided it (``method``), the time, and
    for 'violated' the counterexample (flattened x as given to the model, y as onnxruntime computes it)."""

    status: str
    seconds: float
    method: str = ""
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    region: int | None = None
    notes: list[str] = field(default_factory=list)


class _Decider:
    def __init__(self, module: GraphModule, prop: Any, reference: Callable[[np.ndarray], np.ndarray],
                 deadline: float, seed: int, dtype: np.dtype):
        self.module, self.prop, self.reference, self.deadline, self.seed = module, prop, reference, deadline, seed
        self.dtype = dtype
        self.shape = tuple(module.graph.sample_shape)
        self.notes: list[str] = []

    def model(self, x: Tensor) -> Tensor:
        """The float32 model on flat inputs (B, n) -> (B, K)."""
        return self.module(x.reshape(len(x), *self.shape)).reshape(len(x), -1)

    def confirm(self, region: Any, x: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """(x, y) when the point x, as the model's input type, is a counterexample of ``region`` by the reference
        outputs y."""
        xs = x.detach().cpu().numpy().reshape(-1).astype(self.dtype)
        if not region.contains(xs):
            return None
        y = np.asarray(self.reference(xs), dtype=np.float64).reshape(-1)
        return (xs, y) if any(rows.satisfied(y) for rows in region.disjuncts) else None

    def attack(self, region: Any, spec: RegionSpec, lower: Tensor, upper: Tensor) -> tuple | None:
        lo32, hi32 = float32_box(lower[None], upper[None])
        if spec.always:
            return self.confirm(region, (lo32[0] + hi32[0]) / 2)
        x, v = pgd_box(self.model, lo32, hi32, spec, ATTACK_STEPS, ATTACK_RESTARTS, self.seed)
        return self.confirm(region, x[0]) if float(v[0]) >= 0 else None

    def prove(self, region: Any, spec: RegionSpec, lower: Tensor, upper: Tensor) -> tuple[str, Any, Any]:
        """(method, start, counterexample): the registry's name of CROWN, alpha-CROWN or IBP when proved over the
        whole box; else '' and the search's start (the bounds, CROWN's or alpha-CROWN's bounds of the box, the margin
        bound; None when nothing bounds this model), or a counterexample that PGD found from the corner where
        CROWN's line is lowest."""
        try:
            bounds = RegionBounds(self.module, spec)
            if not bounds.linear:
                margin, _ = bounds.interval(lower[None], upper[None])
                return (IBP.name, None, None) if float(margin[0]) > 0 else ("", (bounds, None, float(margin[0])), None)
            margin, found, corner = bounds.crown(lower[None], upper[None])
        except NoRuleError as e:
            self.notes.append(f"no bounds: {e}")
            return "", None, None
        if float(margin[0]) > 0:
            return CROWN.name, None, None
        lo32, hi32 = float32_box(lower[None], upper[None])
        x, v = pgd_box(self.model, lo32, hi32, spec, ATTACK_STEPS, 4, self.seed + 1, start=corner)
        found_ce = self.confirm(region, x[0]) if float(v[0]) >= 0 else None
        if found_ce is not None:
            return "", None, found_ce
        if time.monotonic() < self.deadline and relu_inputs(bounds):
            alpha, found = bounds.alpha(found, deadline=self.deadline)
            if float(alpha[0]) > 0:
                return ALPHA_CROWN.name, None, None
            margin = torch.maximum(margin, alpha)
        return "", (bounds, found, float(margin[0])), None

    def search(self, region: Any, lower: Tensor, upper: Tensor, start: tuple) -> Search:
        bounds, found, margin = start
        confirm = lambda x: self.confirm(region, x)  # noqa: E731
        if int((upper > lower).sum()) <= INPUT_SPLIT_MAX:
            return split_inputs(bounds, self.model, lower, upper, self.deadline, confirm)
        if found is None:
            self.notes.append("too many inputs vary for input splitting, and ReLU splitting needs a model that runs "
                              "whole batches")
            return Search("open", 0)
        return split_relus(bounds, self.model, lower, upper, found, margin, self.deadline, confirm)


def decide(module: GraphModule, prop: Any, reference: Callable[[np.ndarray], np.ndarray], timeout: float,
           seed: int = 0, dtype: np.dtype = np.dtype(np.float32)) -> Verdict:
    """The verdict on ``prop`` for ``module`` within about ``timeout`` seconds (module docstring). ``reference``:
    flattened x of the model's input type ``dtype`` -> the original file's flattened outputs (onnxruntime)."""
    began = time.monotonic()
    n, k = math.prod(module.graph.sample_shape), math.prod(module.graph.output_shape)
    if n != prop.n_inputs or k != prop.n_outputs:
        raise LipverifyError(f"{prop.path}: declares {prop.n_inputs} inputs and {prop.n_outputs} outputs; the model "
                             f"has {n} inputs {tuple(module.graph.sample_shape)} and {k} outputs")
    d = _Decider(module.eval(), prop, reference, began + timeout, seed, np.dtype(dtype))

    def verdict(status: str, method: str = "", ce: Any = None, region: int | None = None) -> Verdict:
        return Verdict(status, time.monotonic() - began, method, ce, region, d.notes)

    boxes = [(torch.as_tensor(r.lower, dtype=torch.float64), torch.as_tensor(r.upper, dtype=torch.float64))
             for r in prop.regions]
    specs = [RegionSpec.of(r) for r in prop.regions]
    for i, (region, spec, (lo, hi)) in enumerate(zip(prop.regions, specs, boxes)):
        found = d.attack(region, spec, lo, hi)
        if found is not None:
            return verdict(VIOLATED, "pgd", found, i)
    open_ = []
    methods = set()
    for i, (region, spec, (lo, hi)) in enumerate(zip(prop.regions, specs, boxes)):
        if time.monotonic() > d.deadline:
            return verdict(TIMEOUT)
        method, start, found = d.prove(region, spec, lo, hi)
        if found is not None:
            return verdict(VIOLATED, "pgd from CROWN's corner", found, i)
        if method:
            methods.add(method)
        elif start is None:
            return verdict(UNKNOWN)
        else:
            open_.append((i, start))
    parts = 0
    for i, start in open_:
        lo, hi = boxes[i]
        result = d.search(prop.regions[i], lo, hi, start)
        parts += result.parts
        if result.status == VIOLATED:
            return verdict(VIOLATED, f"branch and bound ({parts} parts)", result.counterexample, i)
        if result.status != HOLDS:
            return verdict(TIMEOUT if time.monotonic() > d.deadline else UNKNOWN, f"branch and bound ({parts} parts)")
        methods.add("branch and bound")
    label = ", ".join(sorted(methods)) or "no input region (every box is empty)"
    return verdict(HOLDS, label + (f" ({parts} parts)" if parts else ""))
