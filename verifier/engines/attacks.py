"""Adversarial attacks: upper bounds on the robust radius, to check certificates against (soundness tests).

A certified radius r for input x claims that no perturbation d with ||d|| <= r changes the prediction; an
adversarial example found at distance d_adv proves the robust radius is at most d_adv, so every sound
certificate satisfies r <= d_adv. The attacks take verification problems (``verifier.problem``) like the bound
engines:

- ``pgd(model, problem)``: projected gradient ascent on the margin max_{j != y} z_j - z_y (Carlini-Wagner's
  margin loss) over a robustness ``Problem`` on l2 or l_inf balls within the domain box, with random restarts and
  per-class targeted restarts;
- ``deepfool(model, balls)``: DeepFool (Moosavi-Dezfooli et al. 2016), l2 and l_inf, batched, from the centres
  of a ``RadiusProblem``;
- ``attack_radius(model, balls)``: per input the smallest radius at which PGD finds an adversarial example, by
  batched bisection: an upper bound on the radius the ``RadiusProblem`` asks for.

"Adversarial" means ``argmax(model(x_adv)) != y`` with torch's argmax (ties go to the first index). ``model`` is
any callable on batches ``(B, *sample_shape) -> (B, K)`` (a ``GraphModule`` or any ``nn.Module``); the attacks
run on the model's device, take gradients with respect to the input only (``torch.autograd.grad``: parameters'
``.grad`` are never touched), never change the model's parameters or its train/eval mode, and return detached
tensors.

Long because the three attacks share their ball projections, margins, class gradients and target order; split
into modules, those helpers would be imported across them.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from verifier.problem import Conjunction, LpBall, Problem, RadiusProblem

INF = float("inf")
#: PGD's first step as a fraction of eps (it decays to 0 along a cosine)
_INITIAL_STEP = {INF: 0.25, 2.0: 0.5}

Model = Callable[[torch.Tensor], torch.Tensor]


# -------------------------------------------------------------------------------------------------- helpers
def _device(model: Any, x: torch.Tensor) -> torch.device:
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return x.device


def _prepare(model: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """The model's device, and detached float inputs and long labels on it."""
    device = _device(model, x)
    x = x.detach().to(device)
    if not x.is_floating_point():
        x = x.float()
    return device, x, y.detach().to(device=device, dtype=torch.long).reshape(-1)


def _norm_kind(norm: Any) -> float:
    n = float(norm)
    if n not in (2.0, INF):
        raise ValueError(f"norm must be 2 or inf, got {norm!r}")
    return n


def _view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) tensor viewed to broadcast against a batch shaped like ``x``."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def flat_norm(d: torch.Tensor, p: float) -> torch.Tensor:
    flat = d.flatten(1)
    if p == INF:
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=p, dim=1)


def _dual(p: float) -> float:
    return 1.0 if p == INF else 2.0


def _per_sample(value: Any, b: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(b)
    t = t.reshape(-1)
    if t.shape[0] != b:
        raise ValueError(f"expected a scalar or {b} per-sample values, got {tuple(t.shape)}")
    return t.detach().clone()


def _bound(value: Any, x: torch.Tensor) -> torch.Tensor | None:
    """``lower``/``upper``: None, a scalar, or a tensor broadcastable to ``x`` (e.g. per entry of a sample)."""
    if value is None:
        return None
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(x.shape)


def _robustness_ball(problem: Problem) -> tuple[Any, ...]:
    """(x, y, eps, norm, lower, upper) of a robustness problem on l_p balls, the question the attacks answer."""
    ball, spec = problem.inputs, problem.spec
    if not isinstance(ball, LpBall) or not isinstance(spec, Conjunction) or not spec.is_robustness:
        raise ValueError("the attacks look for a changed prediction in l_p balls (a robustness problem)")
    return ball.center, spec.labels, ball.eps, ball.norm, ball.lower, ball.upper


def _logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    z = model(x)
    return z.reshape(z.shape[0], -1)


def _check_classes(z: torch.Tensor) -> None:
    if z.shape[1] < 2:
        raise ValueError(f"attacks need a model with at least 2 outputs (class scores), got {z.shape[1]}")


def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per sample (positive: misclassified)."""
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], -INF)
    return other.amax(1) - zy


def _project(xa: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, p: float,
             lo: torch.Tensor | None, hi: torch.Tensor | None) -> torch.Tensor:
    """Into the ball of radius ``eps`` (per sample) around ``x``, then into the box. For l_inf this is the exact
    projection onto the intersection; for l2, clamping after the ball projection stays in the ball because
    ``x`` is in the box and clamping is coordinatewise non-expansive with ``x`` as a fixed point."""
    d = xa - x
    if p == INF:
        e = _view(eps, x)
        d = torch.maximum(torch.minimum(d, e), -e)
    else:
        n = flat_norm(d, 2.0)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
        d = d * _view(factor, x)
    xa = x + d
    if lo is not None:
        xa = torch.maximum(xa, lo)
    if hi is not None:
        xa = torch.minimum(xa, hi)
    return xa


def _random_in_ball(x: torch.Tensor, eps: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    if p == INF:
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return x + u * _view(eps, x)
    g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    g = g / _view(flat_norm(g, 2.0).clamp_min(1e-30), x)
    dim = x[0].numel()
    r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / max(dim, 1))
    return x + g * _view(r * eps, x)


def _class_gradients(model: Model, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample and each candidate class k in ``classes`` (B, C): f_k = z_k - z_y and its input gradient
    w_k (B, C, *sample_shape), plus the logits z."""
    xg = x.detach().clone().requires_grad_(True)
    z = _logits(model, xg)
    zy = z.gather(1, y[:, None])
    f = z.gather(1, classes) - zy  # (B, C)
    grads = []
    for c in range(classes.shape[1]):
        (g,) = torch.autograd.grad(f[:, c].sum(), xg, retain_graph=c + 1 < classes.shape[1])
        grads.append(g)
    w = torch.stack(grads, 1) if grads else x.new_zeros((x.shape[0], 0, *x.shape[1:]))
    return f.detach(), w.detach(), z.detach()


def _wrong_classes(z: torch.Tensor, y: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` wrong classes with the highest logits, per sample (B, count)."""
    other = z.scatter(1, y[:, None], -INF)
    count = min(count, z.shape[1] - 1)
    return other.topk(count, dim=1).indices


# ------------------------------------------------------------------------------------------------------ PGD
def pgd(model: Model, problem: Problem, steps: int = 100, restarts: int = 10, step_size: float | None = None,
        seed: int = 0, targeted_margin: bool = True, candidates: int = 9,
        max_batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on the margin max_{j != y} z_j - z_y for ``problem``: labels y (its
    robustness spec) on the l_p balls of radius eps around x (``LpBall``) within the domain [lower, upper]
    (x must lie in it).

    Restart 0 starts at ``x``, the others at uniform random points of the ball (``seed`` fixes them). With
    ``targeted_margin``, restarts from the third on are targeted: each maximizes z_t - z_y for one wrong class
    t, taking the classes in the order of their linearized distance (z_y - z_t) / ||grad(z_y - z_t)||_dual at
    ``x`` (among the ``candidates`` highest wrong logits), cycling when there are more restarts than classes;
    this escapes the local optima of the untargeted margin, which follows whichever wrong class is currently
    highest. Steps: l_inf ``a_t * sign(grad)``, l2 ``a_t * grad / ||grad||_2``; ``a_t`` decays from
    ``step_size`` (default eps / 4 for l_inf, eps / 2 for l2) to 0 along a cosine. Restarts run side by side
    as one batch (at most ``max_batch`` rows at a time), only for samples not yet fooled, and stop early once
    every sample is. Every iterate is scored and the best one per sample kept over all steps and restarts:
    adversarial points first, then the larger margin.

    Returns ``(x_adv, success)``: ``x_adv`` in the ball and the box (up to float rounding), ``success[i]`` =
    ``argmax(model(x_adv[i])) != y[i]``. Samples already misclassified return ``x`` itself with success.

    Long because its checks of the arguments, the targeted order and the batched restarts read one another's
    state; the inner loop is ``_pgd_run``.
    """
    x, y, eps, norm, lower, upper = _robustness_ball(problem)
    p = _norm_kind(norm)
    device, x, y = _prepare(model, x, y)
    b = x.shape[0]
    eps_t = _per_sample(eps, b, device, x.dtype)
    if (eps_t < 0).any() or not torch.isfinite(eps_t).all():
        raise ValueError("eps must be finite and >= 0")
    lo, hi = _bound(lower, x), _bound(upper, x)
    if (lo is not None and bool((x < lo - 1e-6).any())) or (hi is not None and bool((x > hi + 1e-6).any())):
        raise ValueError("x lies outside the box [lower, upper]")
    if lo is not None:
        x = torch.maximum(x, lo)
    if hi is not None:
        x = torch.minimum(x, hi)
    if b == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    with torch.enable_grad():
        with torch.no_grad():
            z0 = _logits(model, x)
        _check_classes(z0)
        best_x = x.clone()
        best_succ = z0.argmax(1) != y
        best_margin = _margin(z0, y)
        idx = (~best_succ).nonzero()[:, 0]
        targets = None
        if targeted_margin and restarts > 2 and z0.shape[1] > 2 and idx.numel():
            ranked = _ranked_targets(model, x[idx], y[idx], z0[idx], p, candidates)
            targets = torch.full((b, ranked.shape[1]), -1, dtype=torch.long, device=device)
            targets[idx] = ranked
        r = 0
        while r < restarts:
            idx = (~best_succ).nonzero()[:, 0]
            n = idx.numel()
            if n == 0:
                break
            g = max(1, min(restarts - r, max_batch // n))
            group = list(range(r, r + g))
            r += g
            xs, es = x[idx], eps_t[idx]
            rep = lambda t: None if t is None else t[idx].repeat(g, *([1] * (t.dim() - 1)))  # noqa: E731
            xr, yr, er, lor, hir = rep(x), rep(y), rep(eps_t), rep(lo), rep(hi)
            starts = []
            tgt = []
            for k in group:
                starts.append(xs if k == 0 else _random_in_ball(xs, es, p, gen))
                if targets is None or k < 2:
                    tgt.append(torch.full((n,), -1, dtype=torch.long, device=device))
                else:
                    tgt.append(targets[idx, (k - 2) % targets.shape[1]])
            x0 = _project(torch.cat(starts), xr, er, p, lor, hir)
            rows_x, rows_succ, rows_margin = _pgd_run(model, xr, yr, x0, er, p, steps, step_size, lor, hir,
                                                      torch.cat(tgt), g, best_succ[idx])
            # the best row per sample over the group, then against the best so far
            rows_succ = rows_succ.view(g, n)
            rows_margin = rows_margin.view(g, n)
            any_succ = rows_succ.any(0)
            key = torch.where(rows_succ | ~any_succ[None], rows_margin, torch.full_like(rows_margin, -INF))
            pick = key.argmax(0)
            ar = torch.arange(n, device=device)
            cand_x = rows_x.view(g, n, *x.shape[1:])[pick, ar]
            cand_succ, cand_margin = rows_succ[pick, ar], rows_margin[pick, ar]
            old_succ, old_margin = best_succ[idx], best_margin[idx]
            better = (cand_succ & ~old_succ) | ((cand_succ == old_succ) & (cand_margin > old_margin))
            sel = idx[better]
            best_x[sel] = cand_x[better]
            best_succ[sel] = cand_succ[better]
            best_margin[sel] = cand_margin[better]
    return best_x.detach(), best_succ.detach()


def _ranked_targets(model: Model, x: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, p: float,
                    candidates: int) -> torch.Tensor:
    classes = _wrong_classes(z0, y, max(1, candidates))
    f, w, _ = _class_gradients(model, x, y, classes)
    dist = (-f) / w.flatten(2).norm(p=_dual(p), dim=2).clamp_min(1e-30)
    order = dist.argsort(dim=1)
    return classes.gather(1, order)


def _pgd_run(model: Model, x: torch.Tensor, y: torch.Tensor, xa: torch.Tensor, eps: torch.Tensor, p: float,
             steps: int, step_size: float | None, lo: torch.Tensor | None, hi: torch.Tensor | None,
             target: torch.Tensor, copies: int, prior_succ: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD from ``xa`` on rows that are ``copies`` stacked copies of a batch (``target`` -1: untargeted margin,
    else z_target - z_y); returns each row's best point, its success and margin."""
    rows = x.shape[0]
    n = rows // copies
    best_x = xa.clone()
    best_succ = torch.zeros(rows, dtype=torch.bool, device=x.device)
    best_margin = torch.full((rows,), -INF, dtype=x.dtype, device=x.device)
    if step_size is None:
        a0 = eps * _INITIAL_STEP[p]
    else:
        a0 = torch.full_like(eps, float(step_size))
    a0 = _view(a0, x)
    targeted = target >= 0
    safe_target = target.clamp_min(0)

    for t in range(steps + 1):
        xg = xa.detach().requires_grad_(True)
        z = _logits(model, xg)
        zd = z.detach()
        succ = zd.argmax(1) != y
        margin = _margin(zd, y)
        better = (succ & ~best_succ) | ((succ == best_succ) & (margin > best_margin))
        if bool(better.any()):
            best_x = torch.where(_view(better, x), xa.detach(), best_x)
            best_succ = best_succ | succ
            best_margin = torch.where(better, margin, best_margin)
        if t == steps or bool((best_succ.view(copies, n).any(0) | prior_succ).all()):
            break
        zy = z.gather(1, y[:, None])[:, 0]
        loss = torch.where(targeted, z.gather(1, safe_target[:, None])[:, 0] - zy, _margin(z, y))
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        a = a0 * (0.5 * (1.0 + math.cos(math.pi * t / steps)))
        if p == INF:
            d = grad.sign()
        else:
            d = grad / _view(flat_norm(grad, 2.0).clamp_min(1e-30), x)
        xa = _project(xa.detach() + a * d, x, eps, p, lo, hi)
    return best_x, best_succ, best_margin


# ------------------------------------------------------------------------------------------------- DeepFool
def deepfool(model: Model, balls: RadiusProblem, steps: int = 50, overshoot: float = 0.02, candidates: int = 10
             ) -> torch.Tensor:
    """DeepFool, batched: repeatedly step to the nearest linearized decision boundary from each centre x of
    ``balls`` (labels y, norm, domain [lower, upper]).

    At each step, for the ``candidates`` wrong classes with the highest logits, f_k = z_k - z_y and w_k its
    input gradient; the step for sample i goes to the boundary of k* = argmin |f_k| / ||w_k||_dual: for l2
    ``|f| / ||w||_2^2 * w``, for l_inf ``|f| / ||w||_1 * sign(w)`` (dual norms 2 and 1). Steps accumulate into
    r_total and ``x_adv = x + (1 + overshoot) * r_total``, clamped into [lower, upper]; a sample stops as soon
    as ``x_adv`` is misclassified (those already misclassified return ``x``). On an affine model one step
    lands (1 + overshoot) times the exact minimal distance away. Samples that never flip return the last
    iterate; check ``argmax(model(x_adv)) != y`` before using the distance.
    """
    x, y, lower, upper = balls.center, balls.labels, balls.lower, balls.upper
    p = _norm_kind(balls.norm)
    device = _device(model, x)
    x = x.detach().to(device)
    if not x.is_floating_point():
        x = x.float()
    y = y.detach().to(device=device, dtype=torch.long).reshape(-1)
    lo, hi = _bound(lower, x), _bound(upper, x)
    r_total = torch.zeros_like(x)
    x_adv = x.clone()
    with torch.enable_grad():
        active = torch.ones(x.shape[0], dtype=torch.bool, device=device)
        for it in range(steps + 1):
            idx = active.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            xi, yi = x_adv[idx], y[idx]
            with torch.no_grad():
                z = _logits(model, xi)
            _check_classes(z)
            flipped = z.argmax(1) != yi
            active[idx[flipped]] = False
            if it == steps or bool(flipped.all()):
                break
            idx, xi, yi, z = idx[~flipped], xi[~flipped], yi[~flipped], z[~flipped]
            classes = _wrong_classes(z, yi, candidates)
            f, w, _ = _class_gradients(model, xi, yi, classes)
            wn = w.flatten(2).norm(p=_dual(p), dim=2)
            dist = torch.where(wn > 0, f.abs() / wn.clamp_min(1e-30), torch.full_like(wn, INF))
            k = dist.argmin(1)
            dk = dist.gather(1, k[:, None])[:, 0]
            stuck = ~torch.isfinite(dk)  # no gradient towards any candidate class: give up on the sample
            active[idx[stuck]] = False
            keep = ~stuck
            if not bool(keep.any()):
                break
            idx, xi, k, dk = idx[keep], xi[keep], k[keep], dk[keep]
            wk = w[keep][torch.arange(len(k), device=device), k]
            nk = wn[keep].gather(1, k[:, None])[:, 0]
            if p == INF:
                direction = wk.sign()  # ||sign(w)||_inf = 1 and <w, sign(w)> = ||w||_1
            else:
                direction = wk / _view(nk, xi)  # unit l2 vector along w
            # the linearized boundary is dk away along ``direction``; 1e-6 more so a point lands across it
            r_total[idx] = r_total[idx] + _view(dk * (1 + 1e-6), xi) * direction
            xn = x[idx] + (1.0 + overshoot) * r_total[idx]
            if lo is not None:
                xn = torch.maximum(xn, lo[idx])
            if hi is not None:
                xn = torch.minimum(xn, hi[idx])
            x_adv[idx] = xn
    return x_adv.detach()


# ------------------------------------------------------------------------------------------- attack radius
def _ball(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: torch.Tensor, p: float,
          lower: torch.Tensor | None, upper: torch.Tensor | None) -> Problem:
    """The robustness problem of the samples ``idx`` at radii ``eps`` (the bounds are per sample here)."""
    return Problem(LpBall(x[idx], eps, p, None if lower is None else lower[idx],
                          None if upper is None else upper[idx]), Conjunction.robustness(y[idx]))


def attack_radius(model: Model, balls: RadiusProblem, hi: float | torch.Tensor | None = None, steps: int = 50,
                  restarts: int = 5, tol: float = 1e-3, cap: float | None = None, seed: int = 0,
                  return_examples: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per centre x of ``balls`` (labels y, norm, domain [lower, upper]), the distance of the closest
    adversarial example found: an upper bound on the robust radius ``balls`` asks for.

    Batched bisection on eps with ``pgd(steps, restarts)`` at every probe, all unresolved samples at once. The
    upper end starts at ``hi`` (scalar or per sample) or, by default, at the DeepFool distance when DeepFool
    succeeds (else ``cap / 64``) and doubles until PGD succeeds or exceeds ``cap`` (default: the diameter of
    the box in this norm when both bounds are given, else 1e4). Whenever PGD succeeds, ``hi`` drops to the
    actual distance ``||x_adv - x||`` (float64), so the value returned is always the distance of an example
    that was verified to change the argmax; bisection stops when ``hi - lo <= tol * hi`` (``tol`` is relative).

    Returns float64 radii (B,) on the model's device: 0 for inputs already misclassified, inf when no
    adversarial example was found up to ``cap``. With ``return_examples``, also the adversarial examples
    (``x`` itself where the radius is inf).

    Long because the bracket's growth, the bisection and the bookkeeping of verified examples update the same
    per-sample state.
    """
    p = _norm_kind(balls.norm)
    device, x, y = _prepare(model, balls.center, balls.labels)
    b = x.shape[0]
    lo_b, hi_b = _bound(balls.lower, x), _bound(balls.upper, x)
    if cap is None:
        if lo_b is not None and hi_b is not None:
            cap = float(flat_norm(hi_b - lo_b, p).max()) if b else 1.0
            cap = cap if cap > 0 else 1.0
        else:
            cap = 1e4
    best = torch.full((b,), INF, dtype=torch.float64, device=device)
    examples = x.clone()
    if b == 0:
        return (best, examples) if return_examples else best

    def record(idx: torch.Tensor, xa: torch.Tensor, succ: torch.Tensor) -> None:
        if not bool(succ.any()):
            return
        dist = flat_norm(xa.double() - x[idx].double(), p)
        better = succ & (dist < best[idx])
        sel = idx[better]
        best[sel] = dist[better]
        examples[sel] = xa[better]

    with torch.no_grad():
        z0 = _logits(model, x)
    wrong = z0.argmax(1) != y
    best[wrong] = 0.0

    # the upper end
    lo_e = torch.zeros(b, dtype=torch.float64, device=device)
    if hi is not None:
        hi_e = _per_sample(hi, b, device, torch.float64)
    else:
        xd = deepfool(model, RadiusProblem(x, y, p, lo_b, hi_b))
        with torch.no_grad():
            succ_df = _logits(model, xd).argmax(1) != y
        record(torch.arange(b, device=device), xd, succ_df & ~wrong)
        hi_e = torch.where(torch.isfinite(best) & (best > 0), best, torch.full_like(best, cap / 64))
    hi_e = hi_e.clamp(max=cap)
    # make sure PGD succeeds at hi (doubling); samples with a DeepFool example are probed too, PGD may do better
    pending = (~wrong).clone()
    while bool(pending.any()):
        idx = pending.nonzero()[:, 0]
        xa, succ = pgd(model, _ball(x, y, idx, hi_e[idx], p, lo_b, hi_b), steps=steps, restarts=restarts,
                       seed=seed)
        record(idx, xa, succ)
        found = torch.isfinite(best[idx])
        done = succ | found
        pending[idx[done]] = False
        grow = idx[~done]
        at_cap = hi_e[grow] >= cap
        pending[grow[at_cap]] = False
        hi_e[grow] = (hi_e[grow] * 2).clamp(max=cap)
    # bisection between lo_e and the best distance found
    active = torch.isfinite(best) & (best > 0)
    rounds = 0
    while True:
        gap_open = active & (best - lo_e > tol * best)
        if not bool(gap_open.any()) or rounds > 60:
            break
        rounds += 1
        idx = gap_open.nonzero()[:, 0]
        mid = (lo_e[idx] + best[idx]) / 2
        xa, succ = pgd(model, _ball(x, y, idx, mid, p, lo_b, hi_b), steps=steps, restarts=restarts,
                       seed=seed + rounds)
        record(idx, xa, succ)
        fail = idx[~succ]
        lo_e[fail] = torch.maximum(lo_e[fail], mid[~succ])
    return (best, examples) if return_examples else best


__all__ = ["pgd", "deepfool", "attack_radius"]
