"""Held-out evaluation during training: clean accuracy and *sound* certified accuracy at the target eps.

The certificate matches the method (and is always at least LMT Prop. 2's where the model ends with an affine
layer): ``lmt``, ``standard``, ``cross-lipschitz`` -> lmt-pairwise (Prop. 1 without a last affine layer);
``crm`` -> LipLT's pairwise bounds (CRM eq. 5) after the last epoch; ``bcp`` -> BCP at the target eps. All come from
``verifier`` on the current weights, so the numbers shown while training are real certificates. "Certified at
eps" is ``verifier.certificates.certify.certified_at`` (a radius strictly above eps), as in every report.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from verifier.certificates.certify import Bounds
from verifier.certificates.methods import BCP, LIPLT, Task, default_method
from verifier.engines.lipschitz import graph_lipschitz
from verifier.errors import LipverifyError
from verifier.ir import GraphModule
from verifier.problem import RadiusProblem

#: chains up to this many entries are materialized for the held-out bound (the certificate's default is 2^22)
MATERIALIZE_LIMIT = 2 ** 16


def evaluate(module: GraphModule, x: Tensor, y: Tensor, eps: float, method: str, lower: Any = None,
             upper: Any = None, final: bool = True) -> dict[str, Any]:
    """{'clean_accuracy', 'certified_accuracy', 'certificate'} on (x, y) at the l2 radius ``eps`` (model space).
    LipLT (for crm) runs only when ``final`` (it materializes Jacobians: tens of seconds on a CNN)."""
    mod = copy.deepcopy(module).cpu().eval()
    x, y = x.cpu(), y.cpu()
    with torch.no_grad():
        z = mod(x).reshape(len(x), -1).double()
    clean = float((z.argmax(1) == y).float().mean())
    bounds = Bounds(l2=graph_lipschitz(mod, 2.0, materialize_limit=MATERIALIZE_LIMIT), linf=None,
                    input_dim=math.prod(mod.graph.sample_shape))
    chosen = default_method(bounds)
    name = chosen.name
    lo = None if lower is None else lower.cpu()
    hi = None if upper is None else upper.cpu()
    task = Task(RadiusProblem(x, y, 2.0, lo, hi), logits=z.float(), bounds=bounds, module=mod)
    certified = chosen.verified(task, eps)
    if method == "crm" and final:
        try:
            certified |= LIPLT.verified(task, eps)
            name = LIPLT.name
        except LipverifyError:  # LipLT has no rule for some op: the default certificate stands
            pass
    if method == "bcp" and bounds.l2.last_matrix is not None:
        certified |= BCP.verified(task, eps)  # proves the closed ball of radius eps
        name = BCP.name
    return {"clean_accuracy": clean, "certified_accuracy": float(certified.float().mean()), "certificate": name}
