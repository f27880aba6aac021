"""A region's output conditions as tensors, and the two margins every decision reads.

A region (``frontends.vnnlib.Region``) is violated where the outputs z satisfy every row of one of its disjuncts
(a z + c >= 0). Stacked, its rows are A (R, K), c (R,), and ``group`` (R,) the disjunct of each row.

- ``violation(z)``: max over disjuncts of the smallest row, per input: >= 0 where z satisfies a disjunct (up to
  strict rows, which the final check reads as written). What falsification maximizes.
- ``margin(low)``: from lower bounds ``low`` (B, R) of the negated rows -(a z + c) over a set, min over
  disjuncts of the largest such bound. Positive: in every disjunct some row is negative everywhere on the set,
  so no point of the set is a counterexample (each disjunct is a conjunction: one row that fails everywhere
  rules it out). What the bounds prove.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from verifier.problem import Conjunction


@dataclass
class RegionSpec:
    """The stacked rows of a region's disjuncts (module docstring), float64; ``disjuncts``: their count."""

    a: Tensor
    c: Tensor
    group: Tensor
    disjuncts: int

    @classmethod
    def of(cls, region: Any) -> "RegionSpec":
        a = np.concatenate([rows.a for rows in region.disjuncts]) if region.disjuncts else np.zeros((0, 1))
        c = np.concatenate([rows.c for rows in region.disjuncts]) if region.disjuncts else np.zeros(0)
        group = np.concatenate([np.full(len(rows.c), k) for k, rows in enumerate(region.disjuncts)]) \
            if region.disjuncts else np.zeros(0, dtype=np.int64)
        return cls(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(c, dtype=torch.float64),
                   torch.as_tensor(group, dtype=torch.long), len(region.disjuncts))

    @property
    def always(self) -> bool:
        """Whether some disjunct has no rows (every point of the box is then a counterexample)."""
        counts = torch.bincount(self.group, minlength=self.disjuncts)
        return bool((counts == 0).any())

    def compares_outputs(self) -> bool:
        """Whether every row is a (Y_i - Y_j) + 0 with a != 0: its sign is that of z_i - z_j for any strictly
        increasing map of the outputs applied alike to all (a trailing Softmax or LogSoftmax), so the rows may be
        bounded on the logits."""
        nonzero = self.a != 0
        pairs = nonzero.sum(1) == 2
        sums = self.a.sum(1)
        return bool((pairs & (sums == 0) & (self.c == 0)).all())

    def negated(self, b: int) -> Conjunction:
        """The rows -(a z + c) > 0 for ``b`` inputs: what the bound engines bound from below."""
        return Conjunction(-self.a.expand(b, *self.a.shape), -self.c.expand(b, *self.c.shape))

    def _reduce(self, values: Tensor, inner: str, outer: str) -> Tensor:
        """``outer`` over disjuncts of ``inner`` over their rows, per input ((B, R) -> (B,))."""
        return getattr(self._per_disjunct(values, inner), outer)(dim=1)

    def violation(self, z: Tensor) -> Tensor:
        """max_k min_{i in k} (a z + c)_i per input, z (B, K) (differentiable)."""
        values = z.reshape(len(z), -1).to(self.a.dtype) @ self.a.T.to(z.device) + self.c.to(z.device)
        return self._reduce(values, "amin", "amax")

    def disjunct_values(self, z: Tensor) -> Tensor:
        """min_{i in k} (a z + c)_i per input and disjunct, (B, D) (differentiable)."""
        values = z.reshape(len(z), -1).to(self.a.dtype) @ self.a.T.to(z.device) + self.c.to(z.device)
        return self._per_disjunct(values, "amin")

    def _per_disjunct(self, values: Tensor, reduce: str) -> Tensor:
        """``reduce`` ('amin' or 'amax') over each disjunct's rows, (B, R) -> (B, D)."""
        b = values.shape[0]
        fill = torch.inf if reduce == "amin" else -torch.inf
        per = torch.full((b, self.disjuncts), fill, dtype=values.dtype, device=values.device)
        return per.scatter_reduce(1, self.group.to(values.device).expand(b, -1), values, reduce=reduce,
                                  include_self=True)

    def deciding_row(self, low: Tensor) -> Tensor:
        """Per input, the row that gives ``margin(low)``: the best row of the worst disjunct (B,)."""
        b = low.shape[0]
        index = self.group.to(low.device).expand(b, -1)
        best = torch.full((b, self.disjuncts), -torch.inf, dtype=low.dtype, device=low.device)
        best = best.scatter_reduce(1, index, low, reduce="amax", include_self=True)
        worst = best.argmin(1)
        hit = (index == worst[:, None]) & (low == best.gather(1, index))
        return hit.to(torch.int8).argmax(1)

    def margin(self, low: Tensor) -> Tensor:
        """min_k max_{i in k} low_i per input ((B, R) lower bounds of the negated rows -> (B,))."""
        return self._reduce(low, "amax", "amin")
