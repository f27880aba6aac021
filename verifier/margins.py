"""Margins and margin ratios: the arithmetic every margin certificate shares (LMT Propositions 1 and 2, LipLT's
CRM eq. 5, the local Cross-Lipschitz Theorem 2.1): z_y - z_j with an allowance for the float32 forward, the
row-difference norms ||w_i - w_j||, and margin / Lipschitz bound with its limit cases."""
from __future__ import annotations

import math

import torch

from verifier.rounding import FLOAT_SLACK, REL64


def margins(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input: z_y - z_j for every j (inf at j = y), and whether the prediction is y."""
    z = logits.double().reshape(len(logits), -1)
    slack = FLOAT_SLACK * z.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    diff = z.gather(1, y[:, None]) - z - slack
    diff.scatter_(1, y[:, None], math.inf)
    correct = z.argmax(dim=1) == y
    return diff, correct


def spec_allowance(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """What lower bounds of linear rows C z + d lose for the rounding of the float32 forward: ``FLOAT_SLACK`` x
    max(1, max |z|) per unit of a row's l1 norm over 2 (a robustness row e_y - e_j: exactly the allowance of
    ``margins``). z: (B, K) clean outputs, c: (B, R, K); returns (B, R)."""
    return FLOAT_SLACK * z.abs().amax(dim=1, keepdim=True).clamp_min(1.0) * (c.abs().sum(-1) / 2).clamp_min(1.0)


def pair_norms(matrix: torch.Tensor, p: float) -> torch.Tensor:
    """||w_i - w_j||_p for all pairs of rows (float64)."""
    w = matrix.double()
    if p == 2:
        gram = w @ w.T
        sq = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2.0 * gram
        return sq.clamp_min(0.0).sqrt() * (1.0 + REL64)
    return (w[:, None, :] - w[None, :, :]).abs().sum(-1) * (1.0 + 1e-12)


def margin_ratios(diff: torch.Tensor, denominators: torch.Tensor) -> torch.Tensor:
    """diff / denominators entrywise for margins ``diff`` (z_y - z_j, inf at j = y) and Lipschitz bounds of
    z_y - z_j: a nonpositive margin gives 0, a positive one over a zero bound inf."""
    return torch.where(denominators > 0, diff.clamp_min(0.0) / denominators.clamp_min(1e-300),
                       torch.where(diff > 0, torch.full_like(diff, math.inf), torch.zeros_like(diff)))
