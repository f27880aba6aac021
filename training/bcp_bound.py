"""BCP's training bound (Lee et al. 2020, §3-4): the worst-translated logit over the box-and-ball outer bound.

The same walk as the certificate (``verifier.engines.bcp.walk``: interval images intersected with the Lipschitz ball
of every tensor and, at affine-chain outputs, the row-norm bound of eq. 6), but with differentiable estimates
(``training.estimates.GraphEstimate``: power iteration) in place of the sound bounds, and the autograd graph
kept. The last layer is problem (11), min over the box and the ball of (w_y - w_m).(h - h(x)), by the paper's
iteration (capped at ``ROUNDS``; by weak duality the value stays a lower bound), and eq. (2):

    t_m = (z_y - z_m) - min (zeta_y - zeta_m),     worst-translated logit  z_(m) = z_y - min (zeta_y - zeta_m).
"""
from __future__ import annotations

from torch import Tensor

from verifier.box import Box
from verifier.engines.bcp import BallBounds, walk
from verifier.errors import NoRuleError
from verifier.ir import inference_mode
from verifier.last_layer import ball_box_min
from verifier.problem import LpBall, Problem
from verifier.rounding import training_arithmetic

from .estimates import GraphEstimate

#: rounds of problem (11)'s iteration during training
ROUNDS = 8


def worst_translated_logits(est: GraphEstimate, problem: Problem) -> tuple[Tensor, Tensor]:
    """The worst-translated logits (B, K) of eq. (2) over ``problem``'s input sets (l2 balls within the domain;
    its spec the robustness spec of labels y; entry y is z_y(x)), and the clean logits z(x) (batch norm as at
    inference). Both differentiable in the module's weights."""
    module = est.module
    if est.last_input is None:
        raise NoRuleError("BCP training needs a model whose logits come from an affine layer")
    ball, y = problem.inputs, problem.spec.labels
    if not isinstance(ball, LpBall) or ball.norm != 2 or not problem.spec.is_robustness:
        raise ValueError("BCP training bounds robustness on l2 balls")
    est()  # refresh the power-iteration estimates at every tensor
    bounds = BallBounds(est.bounds, est.row_norms(), est.chain_input)
    x = ball.center
    b = len(x)
    eps_t = ball.eps.to(device=x.device, dtype=x.dtype)
    # boxes need batch normalization as at inference (LMT §4.1 bounds it that way too); no outward rounding
    with inference_mode(list(module.graph.nodes())), training_arithmetic():
        clean = module.run(x, keep=set(est.bounds) | {est.output})
        box = Box.ball(x, eps_t, ball.lower, ball.upper)
        hbox = walk(module, bounds, box, clean, eps_t, est.last_input, grad=True, chains_only=True)[est.last_input]
    h = clean[est.last_input].reshape(b, -1)
    z = clean[est.output].reshape(b, -1)
    lo = (hbox.lo.reshape(b, -1) - h).clamp_max(0.0)
    hi = (hbox.hi.reshape(b, -1) - h).clamp_min(0.0)
    w = est.last_rows()
    c = w[y][:, None, :] - w[None, :, :]  # (B, K, n): w_y - w_m
    rho = (eps_t * est.bounds[est.last_input])[:, None]
    low = (z.gather(1, y[:, None]) - z) + ball_box_min(c, lo[:, None, :], hi[:, None, :], rho, rounds=ROUNDS)
    worst = z.gather(1, y[:, None]) - low
    return worst.scatter(1, y[:, None], z.gather(1, y[:, None])), z
