"""Interval Jacobians: boxes that enclose the gradient of a logit difference over a box of inputs.

The local Cross-Lipschitz certificate (Hein & Andriushchenko 2017, Theorem 2.1; ``verifier/engines/local.py``) needs
max over a ball of ||grad (z_y - z_j)||_q. By the chain rule, grad (z_y - z_j)(x') = J_1^T J_2^T ... J_n^T s with
s = e_y - e_j and J_k the Jacobian of node k at the point x' reaches. Each node's ``Op.grad_interval`` rule
maps a box of output gradients g (the vector-Jacobian product's input) to boxes of input gradients J^T g that
hold for *every* Jacobian the op can have on its input boxes (the forward boxes of IBP/BCP at the same ball):

- ops affine in their input-dependent inputs (Gemm, Conv, BatchNormalization, Add of two branches, Concat,
  reshapes, average pools...): J is constant, so J^T g over g = c +- r is exactly the box J^T c +- |J|^T r
  (``affine_transpose``: J^T c by autograd through the forward, |J|^T r by autograd through the box rule's
  radius |J| v, which is linear in v);
- elementwise activations: J = diag(s) with s in the op's slope range over its input box
  (``Activation.slope_range``), so J^T g is the interval product s * g (``scaled``);
- MaxPool: each window passes g to one of its possible maxima (``MaxPool.grad_interval``).

For piecewise-smooth functions (ReLU, max) the Jacobians are Clarke's generalized ones, which the slope ranges
contain (e.g. [0, 1] for ReLU at a box around 0); the mean-value inequality |g(x') - g(x)| <= sup ||grad g|| ||x' -
x|| holds with them for every Lipschitz g along a segment, which is all Theorem 2.1 uses.

This module is the kit those rules are written in; the walk over the IR is ``verifier/engines/gradients.py``.
Everything runs in float64; every affine step widens the radius by ``REL64`` relative (the rounding of its sums,
fan-in < 1e6) and activations by the float64 rounding of their slopes and products, so the boxes enclose the
real-arithmetic gradients.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.rounding import REL64, TINY64


def scaled(g: Box, s_lo: Tensor, s_hi: Tensor) -> Box:
    """The interval product {s * v : s in [s_lo, s_hi], v in g} (entrywise; s of forward batch B, g of batch
    B * P, broadcast without copies): for s_lo >= 0 (monotone activations) [g_lo * (s_lo or s_hi), g_hi *
    (s_hi or s_lo)] by the signs of g_lo and g_hi, else the hull of the four corner products (a product is
    bilinear); widened for the rounding of the products."""
    shape, b = g.shape, s_lo.shape[0]
    c, r = g.center.reshape(b, -1, *shape[1:]), g.radius.reshape(b, -1, *shape[1:])
    s_lo, s_hi = s_lo.unsqueeze(1), s_hi.unsqueeze(1)
    g_lo, g_hi = c - r, c + r
    if bool((s_lo >= 0).all()):
        lo = g_lo * torch.where(g_lo >= 0, s_lo, s_hi)
        hi = g_hi * torch.where(g_hi >= 0, s_hi, s_lo)
    else:
        corners = torch.stack(torch.broadcast_tensors(s_lo * g_lo, s_lo * g_hi, s_hi * g_lo, s_hi * g_hi))
        lo, hi = corners.amin(0), corners.amax(0)
    center = (lo + hi) / 2
    radius = (hi - lo) / 2 + REL64 * (hi.abs() + lo.abs()) + TINY64
    return Box(center.reshape(shape), radius.reshape(shape))


def interval_product(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> tuple[Tensor, Tensor]:
    """The interval product [a] [b] (entrywise, broadcast): the hull of the four corner products (unrounded:
    callers widen by REL64)."""
    corners = torch.stack(torch.broadcast_tensors(a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi))
    return corners.amin(0), corners.amax(0)


def affine_transpose(op: Any, inputs: Sequence[Any], grads: Sequence[Box | None]) -> list[Box | None]:
    """J^T g for an op that is affine in its input-dependent inputs (the Box entries of ``inputs``), for each
    such input: centre J^T c (autograd through ``op.forward``) and radius |J|^T r (autograd through the radius
    of ``op.interval`` at centre 0, which is |J| v up to its own rounding allowance, a factor 1 + O(1e-15) that
    only enlarges the result), times 1 + REL64 for the float64 sums."""
    batch = next(g for g in grads if g is not None).shape[0]
    if any(is_box(x) and x.integer for x in inputs):
        raise no_gradient_rule(op)  # an integer tensor of the input: a step function, no mean-value bound
    dyn = [k for k, x in enumerate(inputs) if is_box(x)]
    like = next(g for g in grads if g is not None)
    dtype, device = like.dtype, like.device

    def variables() -> list[Tensor]:
        return [torch.zeros((batch, *inputs[k].shape[1:]), dtype=dtype, device=device, requires_grad=True)
                for k in dyn]

    def outputs(result: Any) -> list[Any]:
        return list(result) if isinstance(result, tuple) else [result]

    with torch.enable_grad():
        xs = variables()
        args = list(inputs)
        for k, v in zip(dyn, xs):
            args[k] = v
        outs = outputs(op.forward(*args))
        pairs = [(o, g.center) for o, g in zip(outs, grads) if g is not None]
        centers = torch.autograd.grad([o for o, _ in pairs], xs, [c for _, c in pairs], allow_unused=True)

        vs = [torch.ones((batch, *inputs[k].shape[1:]), dtype=dtype, device=device, requires_grad=True)
              for k in dyn]
        args = list(inputs)
        for k, v in zip(dyn, vs):
            args[k] = Box(torch.zeros_like(v), v)
        boxes = outputs(op.interval(*args))
        pairs = [(b.radius, g.radius + REL64 * g.center.abs()) for b, g in zip(boxes, grads) if g is not None]
        radii = torch.autograd.grad([o for o, _ in pairs], vs, [r for _, r in pairs], allow_unused=True)
    out: list[Box | None] = [None] * len(inputs)
    for k, x, c, r in zip(dyn, xs, centers, radii):
        c = torch.zeros_like(x) if c is None else c.detach()
        r = torch.zeros_like(x) if r is None else r.detach() * (1 + REL64)
        out[k] = Box(c, r)
    return out


def dual_norm_bound(grad: Box, norm: float) -> Tensor:
    """max ||v||_q over the box (q the dual of ``norm``: 2 -> 2, inf -> 1), per batch row: the norm of
    |centre| + radius (each coordinate's largest magnitude), rounded up."""
    mag = (grad.center.abs() + grad.radius).reshape(grad.shape[0], -1)
    value = mag.norm(dim=1) if norm == 2 else mag.sum(dim=1)
    return value * (1 + REL64)


def no_gradient_rule(op: Any) -> NoRuleError:
    """The error of an op (``verifier.ops.base.Op``) without a gradient rule."""
    return NoRuleError(f"no gradient rule for {op.op_type} (node '{op.name}'): local bounds need its Jacobian")
