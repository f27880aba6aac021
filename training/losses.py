"""The training objectives on the IR, one per method; each returns (loss, clean logits) for a batch.

- ``standard``: cross-entropy, the baseline.
- ``lmt`` (Tsuzuku et al. 2018, Algorithm 1): cross-entropy after adding the Lipschitz margin to every
  non-target logit: sqrt(2) c L (Prop. 1) or, with the pairwise variant, c L_sub ||w_y - w_j|| (Prop. 2), L
  from power iteration (Algorithm 2). LMT++ (the arXiv version): add it only where the prediction is correct.
- ``crm`` (Fazlyab et al. 2023, eq. 8): cross-entropy (the surrogate of -margin) + lambda 1[margin > 0]
  g(R_soft), with the soft radius of eq. 6, R_soft = -(1/t) log sum_{i != y} exp(-t (z_y - z_i) / L_yi), L_yi
  from LipLT (``estimates.LipLTEstimate``) and g(R) = exp(-R / eps), decreasing.
- ``bcp`` (Lee et al. 2020, eq. 13): (1 - lambda) CE(z) + lambda CE(worst-translated logit), with eps and
  lambda ramped by the loop.
- ``cross-lipschitz`` (Hein & Andriushchenko 2017, eq. 6-7): CE + lambda Omega, Omega = 1/K^2 sum_{l,m}
  ||grad z_l - grad z_m||^2 averaged over the batch, by double back-propagation (any differentiable graph).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.errors import LipverifyError, NoRuleError
from verifier.ir import GraphModule
from verifier.problem import RadiusProblem

from .bcp_bound import worst_translated_logits
from .estimates import GraphEstimate, LipLTEstimate
from .methods import METHODS

#: power-iteration steps run once before training starts
WARMUP = 20


@dataclass
class Step:
    """What a loss sees besides the batch: the eps (model space) and lambda of this step, the data's box."""

    eps: float
    lam: float
    lower: Any = None
    upper: Any = None


@dataclass
class Options:
    """Method hyper-parameters (CLI flags), with the defaults used for the bundled models."""

    lmt_c: float | None = None  # LMT's c, the required radius on training data (default: the target eps)
    lmt_pairwise: bool = True  # Prop. 2 (c L_sub ||w_y - w_j||) instead of Prop. 1 (sqrt(2) c L)
    lmt_plus: bool = False  # LMT++: the margin only where the prediction is correct
    crm_lambda: float = 10.0  # chosen on held-out data: see README (lambda 3 / 10 / 30)
    crm_t: float | None = None  # default 4 / eps
    cross_lambda: float = 1.0


def _logits(module: GraphModule, x: Tensor) -> Tensor:
    return module(x).reshape(len(x), -1)


def _others(z: Tensor, y: Tensor) -> Tensor:
    return torch.ones_like(z).scatter(1, y[:, None], 0.0)


class Loss:
    """``loss = Loss(module, method, options)``; then ``value, logits = loss(x, y, step)`` per batch."""

    def __init__(self, module: GraphModule, method: str, options: Options | None = None, seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        self.module, self.method, self.options = module, method, options or Options()
        self.graph_est = GraphEstimate(module, seed) if method in ("lmt", "bcp") else None
        self.batch_norm = any(n.op.batch_statistics for n in module.graph.nodes())
        self.liplt_est = None
        #: why a method runs with a weaker estimate than its paper's (shown by ``lipverify train``)
        self.note: str | None = None
        if method == "crm":
            try:
                self.liplt_est = LipLTEstimate(module, seed)
            except NoRuleError as e:  # LMT Prop. 2's pairwise estimate instead, as the certificate falls back
                self.graph_est = GraphEstimate(module, seed)
                self.note = f"LipLT cannot map this graph ({e}); CRM uses L_sub ||w_i - w_j|| instead"
        with torch.no_grad():  # converge the persistent vectors before the first step (LMT Alg. 2 warm start)
            for est in (self.graph_est, self.liplt_est):
                for _ in range(WARMUP if est is not None else 0):
                    est.norms() if isinstance(est, LipLTEstimate) else est()
        if method == "bcp" and self.graph_est.last_input is None:
            raise NoRuleError("BCP training needs a model whose logits come from an affine layer")
        self._fn: Callable[[Tensor, Tensor, Step], tuple[Tensor, Tensor]] = {
            "standard": self.standard, "lmt": self.lmt, "crm": self.crm, "bcp": self.bcp,
            "cross-lipschitz": self.cross_lipschitz}[method]

    def __call__(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        return self._fn(x, y, step)

    def state_dict(self) -> dict[str, Any]:
        """The persistent power-iteration vectors (what a checkpoint needs besides the weights)."""
        out: dict[str, Any] = {}
        if self.graph_est is not None:
            out["graph"] = self.graph_est.pi.vectors
        if self.liplt_est is not None:
            out["liplt"] = self.liplt_est.vectors
        return out

    def load_state_dict(self, state: Any, source: str = "checkpoint") -> None:
        """Restore the vectors of ``state_dict``, refusing (``LipverifyError``) any that do not fit: another
        count, shape or dtype, or non-finite entries."""
        if not isinstance(state, dict):
            raise LipverifyError(f"{source}: no power-iteration vectors")
        owners = {"graph": None if self.graph_est is None else self.graph_est.pi, "liplt": self.liplt_est}
        for key, owner in owners.items():  # each keeps its persistent vectors in ``vectors``
            if owner is None or key not in state:
                continue
            current, saved = owner.vectors, state[key]
            if not isinstance(saved, list) or len(saved) != len(current) or not all(
                    isinstance(s, torch.Tensor) and s.shape == c.shape and s.dtype == c.dtype
                    and bool(torch.isfinite(s).all()) for s, c in zip(saved, current)):
                raise LipverifyError(f"{source}: the power-iteration vectors do not fit this model")
            owner.vectors = [s.to(c.device) for s, c in zip(saved, current)]

    def standard(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        z = _logits(self.module, x)
        return F.cross_entropy(z, y), z

    def lmt(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        """LMT Algorithm 1: z_j += sqrt(2) c L (Prop. 1) or c L_sub ||w_y - w_j|| (Prop. 2) for j != y."""
        z = _logits(self.module, x)
        c = step.eps if self.options.lmt_c is None else self.options.lmt_c * (step.eps > 0)
        margin = c * self.graph_est.pairwise(self.options.lmt_pairwise)[y]  # (B, K), 0 at y
        if self.options.lmt_plus:
            margin = margin * (z.argmax(1) == y).to(z.dtype)[:, None]
        return F.cross_entropy(z + margin, y), z

    def crm(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        """CRM eq. 8 with cross-entropy for the margin term and g(R) = exp(-R / eps)."""
        z = _logits(self.module, x)
        ce = F.cross_entropy(z, y)
        if step.eps <= 0 or step.lam <= 0:
            return ce, z
        pairs = self.liplt_est() if self.liplt_est is not None else self.graph_est.pairwise()  # (K, K) L_ij
        t = self.options.crm_t or 4.0 / step.eps
        diff = z.gather(1, y[:, None]) - z  # z_y - z_i
        ratio = diff / pairs[y].clamp_min(1e-12)
        ratio = ratio.masked_fill(_others(z, y) == 0, math.inf)
        r_soft = -torch.logsumexp(-t * ratio, dim=1) / t  # eq. 6
        correct = z.argmax(1) == y  # the indicator of eq. 8; g(R) = exp(-R / eps) only where it is 1
        g = torch.exp(-torch.where(correct, r_soft, torch.zeros_like(r_soft)).clamp_min(-10 * step.eps) / step.eps)
        reg = torch.where(correct, g, torch.zeros_like(g)).mean()
        return ce + step.lam * self.options.crm_lambda * reg, z

    def bcp(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        """BCP eq. 13: (1 - lambda) CE(z, y) + lambda CE(worst-translated logit, y)."""
        if step.eps <= 0 or step.lam <= 0:
            z = _logits(self.module, x)
            return F.cross_entropy(z, y), z
        balls = RadiusProblem(x, y, 2.0, step.lower, step.upper)
        worst, clean = worst_translated_logits(self.graph_est, balls.at(step.eps))
        # the clean logits of the bound's walk are the training forward's unless batch norm normalizes differently
        z = clean if not self.batch_norm else _logits(self.module, x)
        return (1 - step.lam) * F.cross_entropy(z, y) + step.lam * F.cross_entropy(worst, y), z

    def cross_lipschitz(self, x: Tensor, y: Tensor, step: Step) -> tuple[Tensor, Tensor]:
        """Hein eq. 7: CE + lambda Omega, with sum_{l,m} ||g_l - g_m||^2 = 2K sum_l ||g_l||^2 - 2 ||sum_l g_l||^2."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = _logits(self.module, x)
            k = z.shape[1]
            grads = [torch.autograd.grad(z[:, j].sum(), x, create_graph=True)[0].reshape(len(x), -1)
                     for j in range(k)]
        g = torch.stack(grads, 1)  # (B, K, n)
        omega = (2 * k * (g * g).sum((1, 2)) - 2 * (g.sum(1) ** 2).sum(1)) / (k * k)
        return F.cross_entropy(z, y) + self.options.cross_lambda * step.lam * omega.mean(), z
