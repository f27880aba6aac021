"""Global Lipschitz-margin certificates (LMT, Tsuzuku et al. 2018).

- Proposition 1: no perturbation with ||delta||_2 < margin / (sqrt(2) L) changes the prediction, where
  margin = z_y - max_{j != y} z_j and L bounds the Lipschitz constant of input -> logits.
- Proposition 2: with a last affine layer z = W h + b and L_sub bounding input -> h,
  radius = min_{j != y} (z_y - z_j) / (L_sub ||w_y - w_j||_2).
- l_inf radii: ||delta||_inf <= eps gives ||dz||_inf <= L_inf eps (so 2 L_inf eps on a logit difference) and
  ||dh||_2 <= L_2 sqrt(d) eps; each certificate takes the larger of the two radii (both are sound).

Misclassified inputs get radius 0. Margins are reduced by ``margins.FLOAT_SLACK`` x max |z| before dividing, for the
rounding of the float32 forward pass.
"""
from __future__ import annotations

import copy
import math
import torch

from verifier.engines.lipschitz import LipschitzReport, graph_lipschitz
from verifier.ir import GraphModule
from verifier.margins import margin_ratios, margins, pair_norms


class Bounds:
    """The Lipschitz facts a certificate needs, in both norms where l_inf radii are wanted: given, or computed
    from ``module`` when a method first asks (``compute_bounds``), so that a method that needs none of them
    (``kernel``) costs no Lipschitz report. Both partial: an op without a Lipschitz rule leaves the bounds after
    it inf and is named in ``missing``, and only the methods that need those bounds refuse
    (``verifier.certificates.methods``)."""

    def __init__(self, l2: LipschitzReport | None = None, linf: LipschitzReport | None = None, input_dim: int = 1,
                 module: GraphModule | None = None, norm: float = 2.0):
        self._l2, self._linf, self.input_dim = l2, linf, input_dim
        self._module, self._norm = module, norm

    @property
    def l2(self) -> LipschitzReport:
        """The l2 report (BCP and the local bounds use its tensor bounds, IBP and CROWN its structure)."""
        if self._l2 is None:
            self._l2 = graph_lipschitz(_on_cpu(self._module), 2.0, partial=True)
        return self._l2

    @property
    def linf(self) -> LipschitzReport | None:
        """The l_inf report, for l_inf radii (None for l2 ones)."""
        if self._linf is None and self._module is not None and self._norm == math.inf:
            self._linf = graph_lipschitz(_on_cpu(self._module), math.inf, partial=True)
        return self._linf

    @property
    def computed(self) -> bool:
        """Whether some method asked for the l2 report (or it was given)."""
        return self._l2 is not None


def prop1_radii(logits: torch.Tensor, y: torch.Tensor, bounds: Bounds, norm: float) -> torch.Tensor:
    """LMT Proposition 1: margin / (sqrt(2) L) (l2); l_inf as in the module docstring."""
    diff, correct = margins(logits, y)
    margin = diff.min(dim=1).values.clamp_min(0.0)
    if norm == 2:
        radius = margin / (math.sqrt(2.0) * bounds.l2.lipschitz)
    else:
        via_l2 = margin / (math.sqrt(2.0) * bounds.l2.lipschitz * math.sqrt(bounds.input_dim))
        via_linf = margin / (2.0 * bounds.linf.lipschitz) if bounds.linf else torch.zeros_like(margin)
        radius = torch.maximum(via_l2, via_linf)
    return torch.where(correct, radius, torch.zeros_like(radius))


def pairwise_radii(logits: torch.Tensor, y: torch.Tensor, pair_bounds: torch.Tensor) -> torch.Tensor:
    """min_{j != y} (z_y - z_j) / L_yj with ``pair_bounds`` (K, K) bounds of the Lipschitz constants of
    x -> z_i - z_j: LMT Prop. 2's L_sub ||w_i - w_j|| or LipLT's (CRM eq. 5, ``verifier.engines.liplt``)."""
    diff, correct = margins(logits, y)
    r = margin_ratios(diff, pair_bounds.double()[y]).min(dim=1).values
    return torch.where(correct, r, torch.zeros_like(r))


def prop2_radii(logits: torch.Tensor, y: torch.Tensor, bounds: Bounds, norm: float) -> torch.Tensor:
    """LMT Proposition 2: min_j (z_y - z_j) / (L_sub ||w_y - w_j||)."""
    report = bounds.l2
    if report.last_matrix is None or report.lipschitz_sub is None:
        raise ValueError("the model does not end with an affine layer: Proposition 2 does not apply")
    l2_pairs = pair_norms(report.last_matrix, 2)
    if norm == 2:
        return pairwise_radii(logits, y, l2_pairs * report.lipschitz_sub)
    r = pairwise_radii(logits, y, l2_pairs * (report.lipschitz_sub * math.sqrt(bounds.input_dim)))
    if bounds.linf is not None and bounds.linf.lipschitz_sub is not None:
        r = torch.maximum(r, pairwise_radii(logits, y, pair_norms(bounds.linf.last_matrix, 1)
                                            * bounds.linf.lipschitz_sub))
    return r


def certified_at(radii: torch.Tensor, eps: float) -> torch.Tensor:
    """Per input, whether it is certified at ``eps``: the one definition every report and the training
    evaluation use. The certificates prove that no perturbation with ||delta|| < radius changes the prediction,
    so a radius strictly above eps is needed for every ||delta|| <= eps (radius > 0 at eps = 0, which also
    leaves out misclassified inputs, whose radius is 0)."""
    return radii > eps


def certified_accuracy(radii: torch.Tensor, eps: float) -> float:
    """Fraction of inputs certified at eps (``certified_at``)."""
    if len(radii) == 0:
        return 0.0
    return float(certified_at(radii, eps).double().mean())


def _on_cpu(module: GraphModule) -> GraphModule:
    """``module``, or a CPU copy of it where it has moved to an accelerator since (reports are computed on CPU)."""
    return module if module.device.type == "cpu" else copy.deepcopy(module).cpu()


def compute_bounds(module: GraphModule, norm: float, input_dim: int) -> Bounds:
    """The Lipschitz facts of ``module`` for radii in ``norm``, each report computed when a method first asks
    (``Bounds``)."""
    return Bounds(input_dim=input_dim, module=module, norm=norm)
