"""Kernel expansions: the decision functions of support vector machines (``ai.onnx.ml``'s SVMClassifier and
SVMRegressor, lowered into this op at import by ``frontends.onnx_svm``).

``KernelExpansion(x, S, C, b) = A k(S, x) + b``: P decision functions of one input x (B, d) over n support
vectors S (n, d), coefficients A (P, n), offsets b (P), with k one of ONNX-ML's kernels (``kernel_type``;
``gamma``, ``coef0``, ``degree`` as in the file's ``kernel_params``). A is C itself, or with the attribute
``vectors_per_class`` (K classes) libsvm's one-vs-one layout of the SVMClassifier's coefficients C (K - 1, n) as
the file stores them (``pair_layout``): A gathers each pair's coefficients from C, every entry of C used once.
C and b are the op's trainable weights (kept in that layout, so that training writes them back as they are).

- LINEAR  <x, s>;  POLY (gamma <x, s> + coef0)^degree;  RBF exp(-gamma ||x - s||^2);
  SIGMOID tanh(gamma <x, s> + coef0).

The forward evaluates them directly (the RBF's squared distances as sums of squared differences, as
onnxruntime's kernel does, never by ||x||^2 - 2 <x, s> + ||s||^2), in float64, and rounds the result once to the
input's dtype: a batch and its samples one by one then agree (a float32 sum of n terms that cancel would not),
and onnxruntime's float32 evaluation is one of those the rules cover.

Rules (soundness: each holds for the real function and for a float evaluation of it in the boxes' dtype that
obeys the standard model, with unit roundoff u):

- **Box**: RBF: per support vector the exact range of ||x - s||^2 over the box (nearest and farthest corner per
  coordinate), widened relatively by gamma_{d+8} (the forward's differences, squares and d-term sum), then the
  decreasing exp (widened by ULPS u relatively); LINEAR/POLY/SIGMOID: the interval dot product (Rump's
  centre/radius form with gamma_{d+4}), then the affine map gamma <.,.> + coef0, the power (even powers through
  0 have minimum 0) or tanh, widened by ULPS u. Finally the interval affine map A k + b (gamma_{n+4}).
  All in float64, rounded outward.
- **Lipschitz** (in l2 and l_inf): RBF: ||grad_x k(x, s)||_2 = 2 gamma ||x - s|| e^{-gamma ||x - s||^2} <=
  sqrt(2 gamma / e) (maximum at ||x - s|| = 1 / sqrt(2 gamma)), and its l1 norm at most sqrt(d) times that;
  decision p is then sqrt(2 gamma / e) sum_r |A_pr|-Lipschitz, and the map's l2 constant is at most the l2
  norm of those (Frobenius >= spectral) and at most ||A||_2 sqrt(n 2 gamma / e). LINEAR: the matrix A S
  (spectral norm, or max row l1 norm). SIGMOID: A diag(gamma tanh') S with 0 < tanh' <= 1. POLY of degree 1:
  gamma A S; of higher degree no rule (not Lipschitz on R^d). Computed in torch: where C carries gradients
  (training's estimate, ``verifier.engines.power_iteration``) the RBF and linear bounds are differentiable in it.
- **Linear** (CROWN): two lines per kernel value over the box, ``verifier.ops.kernel_linear``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from verifier.box import Box, is_box, outward
from verifier.errors import NoRuleError
from verifier.jacobian import interval_product, no_gradient_rule
from verifier.ops.base import LIPVERIFY, Lipschitz, Op, RuleArgs, lipschitz_factor, rule
from verifier.ops.kernel_linear import kernel_linear, kernel_lines
from verifier.ops.kernel_ranges import ULPS, power_range, squared_distance_range
from verifier.rounding import REL64, SAFETY, TINY64, gamma, tiny, unit_roundoff

KERNELS = ("LINEAR", "POLY", "RBF", "SIGMOID")


def rbf_lipschitz(gamma_: float) -> float:
    """sup_x ||grad_x exp(-gamma ||x - s||^2)||_2 = sqrt(2 gamma / e) (module docstring)."""
    return math.sqrt(2.0 * gamma_ / math.e)


@rule("KernelExpansion", since=1, domain=LIPVERIFY)
class KernelExpansion(Op):
    weight_inputs = (2, 3)

    def setup(self) -> None:
        kernel = self.attr("kernel_type", b"LINEAR")
        self.kernel = kernel.decode() if isinstance(kernel, bytes) else str(kernel)
        if self.kernel not in KERNELS:
            raise self.no_rule(f"kernel {self.kernel} is not one of {', '.join(KERNELS)}")
        self.gamma = float(self.attr("gamma", 1.0))
        self.coef0 = float(self.attr("coef0", 0.0))
        self.degree = int(self.attr("degree", 1))
        if self.kernel == "RBF" and self.gamma < 0:
            raise self.no_rule(f"an RBF kernel with gamma {self.gamma} < 0")
        per_class = [int(v) for v in self.attr("vectors_per_class", [])]
        self.layout = pair_layout(per_class) if per_class else None

    def matrix(self, c: torch.Tensor) -> torch.Tensor:
        """A (P, n) from the coefficients input C (module docstring); differentiable in C."""
        if self.layout is None:
            return c
        index, mask = self.layout
        return c.reshape(-1)[index.to(c.device)] * mask.to(c.device, c.dtype)

    # --- forward ---------------------------------------------------------------------------------------
    def kernel_values(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """k(s_r, x) for every input and support vector: (B, n)."""
        s = s.to(x.dtype)
        if self.kernel == "RBF":
            return torch.exp(-self.gamma * SquaredDistance.apply(x, s))
        t = x @ s.T
        if self.kernel == "LINEAR":
            return t
        t = self.gamma * t + self.coef0
        return t.pow(self.degree) if self.kernel == "POLY" else torch.tanh(t)

    def forward(self, x, s, a, b):
        """In float64, rounded once to x's dtype (module docstring)."""
        x64 = x.double()
        return (self.kernel_values(x64, s) @ self.matrix(a).double().T + b.double()).to(x.dtype)

    # --- box -------------------------------------------------------------------------------------------
    def interval(self, x, s, a, b):
        if not is_box(x) or is_box(s) or is_box(a) or is_box(b):
            raise self.no_box("only the input may depend on the model input")
        lo, hi = x.lo.double(), x.hi.double()
        s, a, b = s.double().to(lo.device), self.matrix(a).double().to(lo.device), b.double().to(lo.device)
        k_lo, k_hi = self._kernel_range(lo, hi, s, x.dtype)
        kc, kr = (k_lo + k_hi) / 2, (k_hi - k_lo) / 2
        n = s.shape[0]
        g = gamma(n + 4, x.dtype) + gamma(n + 4, torch.float64)
        centre = kc @ a.T + b
        radius = kr @ a.abs().T + g * (torch.maximum(k_lo.abs(), k_hi.abs()) @ a.abs().T + b.abs())
        radius = radius * (1 + 2 * gamma(n + 4, torch.float64)) + tiny(x.dtype)
        return outward(centre - radius, centre + radius, x.dtype)

    def _kernel_range(self, lo: torch.Tensor, hi: torch.Tensor, s: torch.Tensor, dtype: torch.dtype,
                      distances: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[k_lo, k_hi] (B, n) enclosing k(s_r, x) over the box, real and float (module docstring); RBF:
        ``distances`` the box's ``squared_distance_range`` where already known."""
        d = s.shape[1]
        u = unit_roundoff(dtype) + unit_roundoff(torch.float64)
        if self.kernel == "RBF":
            near, far = distances or squared_distance_range(lo, hi, s)
            g = gamma(d + 8, dtype) + gamma(d + 8, torch.float64)
            e_lo = self.gamma * near * (1 - g) * (1 - 4 * u)
            e_hi = self.gamma * far * (1 + g) * (1 + 4 * u)
            k_lo, k_hi = torch.exp(-e_hi), torch.exp(-e_lo)
            return (k_lo * (1 - ULPS * u) - tiny(dtype)).clamp_min(0.0), k_hi * (1 + ULPS * u) + tiny(dtype)
        t_lo, t_hi = self._argument_range(lo, hi, s, dtype)
        if self.kernel == "LINEAR":
            return t_lo, t_hi
        if self.kernel == "SIGMOID":
            f_lo, f_hi = torch.tanh(t_lo), torch.tanh(t_hi)
        else:
            f_lo, f_hi = power_range(t_lo, t_hi, self.degree)
        rel = (ULPS + 2 * self.degree) * u
        return f_lo - rel * f_lo.abs() - tiny(dtype), f_hi + rel * f_hi.abs() + tiny(dtype)

    def _argument_range(self, lo: torch.Tensor, hi: torch.Tensor, s: torch.Tensor, dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The range (B, n) of <x, s_r> (LINEAR) or of gamma <x, s_r> + coef0 (POLY, SIGMOID) over the box, real
        and float: Rump's interval dot product with gamma_{d+4}, then the affine map widened by 4u."""
        d = s.shape[1]
        u = unit_roundoff(dtype) + unit_roundoff(torch.float64)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        g = gamma(d + 4, dtype) + gamma(d + 4, torch.float64)
        t = c @ s.T
        t_r = r @ s.abs().T + g * ((c.abs() + r) @ s.abs().T) + tiny(dtype)
        t_lo, t_hi = t - t_r, t + t_r
        if self.kernel == "LINEAR":
            return t_lo, t_hi
        ends = (self.gamma * t_lo + self.coef0, self.gamma * t_hi + self.coef0)
        t_lo, t_hi = torch.minimum(*ends), torch.maximum(*ends)
        slack = 4 * u * (t_lo.abs().maximum(t_hi.abs()) + abs(self.coef0)) + tiny(dtype)
        return t_lo - slack, t_hi + slack

    # --- linear (CROWN) ---------------------------------------------------------------------------------
    def linear(self, inputs, lams):
        """Two lines per kernel value over the input box, through w = lam A (``verifier.ops.kernel_linear``);
        the lines of the last box are kept."""
        x, s, a, b = inputs
        if not is_box(x) or x.integer or any(is_box(v) for v in inputs[1:]):
            raise NoRuleError(f"no linear rule for {self.op_type} (node '{self.name}'): only the input may depend "
                              f"on the model input")
        dev = x.lo.device
        s64 = s.double().to(dev)
        cached = getattr(self, "_lines", None)
        if cached is None or cached[0] is not x or cached[1] is not s:
            cached = self._lines = (x, s, kernel_lines(self, x, s64))
        coef, bias = kernel_linear(self, x, cached[2], s64, self.matrix(a).double().to(dev), b.double().to(dev),
                                   lams[0])
        return [coef, None, None, None], bias

    # --- gradient box ------------------------------------------------------------------------------------
    def grad_interval(self, inputs, grads):
        """J^T g over the box (``verifier/jacobian.py``), with h = A^T g (interval times constant) per support
        vector: RBF, grad k_r = -2 gamma (x - s_r) k_r, so J^T g = -2 gamma sum_r (h_r k_r) (x - s_r), each factor
        an interval (k_r from the box rule, x - s_r from the box); the others, grad k_r = sigma_r s_r with the
        slope sigma_r in 1 (LINEAR), gamma degree t^(degree-1) or gamma (1 - tanh(t)^2) over the argument's range
        t, so J^T g = sum_r (h_r sigma_r) s_r. Products and sums in centre/radius form (Rump), in float64,
        widened by REL64."""
        x, s, a = inputs[0], inputs[1], inputs[2]
        if not is_box(x) or any(is_box(v) for v in inputs[1:]):
            raise no_gradient_rule(self)
        s, a = s.double().to(x.center.device), self.matrix(a).double().to(x.center.device)
        lo, hi = x.lo.double(), x.hi.double()
        g = grads[0]
        b, q = lo.shape[0], g.shape[0] // lo.shape[0]
        h_c = (g.center.double() @ a).reshape(b, q, -1)
        h_r = (g.radius.double() @ a.abs()).reshape(b, q, -1) * (1 + REL64)
        if self.kernel == "RBF":
            f_lo, f_hi = self._kernel_range(lo, hi, s, torch.float64)
            scale = -2.0 * self.gamma
        else:
            f_lo, f_hi = self._slope_range(lo, hi, s)
            scale = 1.0
        u_c, u_r = _interval_product(h_c, h_r, f_lo[:, None], f_hi[:, None])
        both = u_c.abs() + u_r
        if self.kernel == "RBF":  # sum_r u_r (x - s_r): centre c sum u_c - u_c S, radius over |c - s_r| and r
            c, r = (lo + hi) / 2, (hi - lo) / 2
            away = [(c[i] - s).abs() for i in range(b)]
            spread = torch.stack([u_r[i] @ away[i] for i in range(b)])
            centre = c[:, None] * u_c.sum(-1, keepdim=True) - u_c @ s
            radius = r[:, None] * both.sum(-1, keepdim=True) + spread
            size = torch.stack([both[i] @ away[i] for i in range(b)]) + radius + \
                c.abs()[:, None] * u_c.abs().sum(-1, keepdim=True) + u_c.abs() @ s.abs()
        else:
            centre, radius = u_c @ s, u_r @ s.abs()
            size = both @ s.abs()
        centre, radius = scale * centre, abs(scale) * radius  # (a power of 2, or a slope's factor: exact enough)
        radius = radius + 2 * gamma(s.shape[0] + 8, torch.float64) * abs(scale) * size + TINY64
        shape = (b * q, *x.shape[1:])
        return [Box(centre.reshape(shape), radius.reshape(shape)), None, None, None]

    def _slope_range(self, lo: torch.Tensor, hi: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range of d k / d <x, s_r> over the box (B, n), for LINEAR, POLY and SIGMOID."""
        if self.kernel == "LINEAR":
            one = torch.ones(lo.shape[0], s.shape[0], dtype=torch.float64)
            return one, one
        t_lo, t_hi = self._argument_range(lo, hi, s, torch.float64)
        if self.kernel == "POLY":
            p_lo, p_hi = power_range(t_lo, t_hi, self.degree - 1)
            ends = (self.gamma * self.degree * p_lo, self.gamma * self.degree * p_hi)
        else:  # 1 - tanh^2 peaks where |t| is least, is least where |t| is largest
            near = torch.where((t_lo <= 0) & (t_hi >= 0), torch.zeros_like(t_lo), torch.minimum(t_lo.abs(), t_hi.abs()))
            far = torch.maximum(t_lo.abs(), t_hi.abs())
            ends = (self.gamma * (1 - torch.tanh(far) ** 2), self.gamma * (1 - torch.tanh(near) ** 2))
        lo_, hi_ = torch.minimum(*ends), torch.maximum(*ends)
        return lo_ - 4 * REL64 * lo_.abs(), hi_ + 4 * REL64 * hi_.abs()

    # --- Lipschitz -------------------------------------------------------------------------------------
    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        if args.dynamic[1:] != [False] * (len(args.dynamic) - 1) or not args.dynamic[0]:
            raise self.no_rule("only the input may depend on the model input")
        s, a = args.values[1].double(), self.matrix(args.values[2]).double()
        if self.kernel == "RBF":
            per_row = rbf_lipschitz(self.gamma) * a.abs().sum(1)
            if args.l2:
                spectral = torch.linalg.matrix_norm(a, ord=2) * math.sqrt(s.shape[0]) * rbf_lipschitz(self.gamma)
                value = torch.minimum(per_row.norm(), spectral)
            else:
                value = per_row.max() * math.sqrt(s.shape[1])
            return Lipschitz([lipschitz_factor(value * SAFETY)], "theorem",
                             note="RBF kernel gradients <= sqrt(2 gamma / e)")
        if self.kernel == "POLY" and self.degree != 1:
            raise self.no_rule(f"a polynomial kernel of degree {self.degree} is not Lipschitz on R^d")
        scale = 1.0 if self.kernel == "LINEAR" else abs(self.gamma)
        if self.kernel == "SIGMOID":
            bound = (torch.linalg.matrix_norm(a, ord=2) * torch.linalg.matrix_norm(s, ord=2) if args.l2
                     else (a.abs() @ s.abs().sum(1)).max())
            return Lipschitz([lipschitz_factor(scale * bound * SAFETY)], "theorem", note="tanh' <= 1")
        j = a @ s
        bound = torch.linalg.matrix_norm(j, ord=2) if args.l2 else j.abs().sum(1).max()
        return Lipschitz([lipschitz_factor(scale * bound * SAFETY)], "exact")


def pair_layout(per_class: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """libsvm's one-vs-one layout (``frontends.onnx_svm``): for K classes with ``per_class`` support vectors each
    (n in all), the index (P, n) into the flattened coefficients C (K - 1, n) and the mask (P, n) such that pair
    p = (i, j), i < j (in ``itertools.combinations`` order) has A_pr = C[j - 1, r] for r of class i, C[i, r] for
    r of class j, and 0 elsewhere."""
    k, n = len(per_class), int(sum(per_class))
    start = np.concatenate([[0], np.cumsum(per_class)]).astype(int)
    pairs = list(itertools.combinations(range(k), 2))
    index = torch.zeros(len(pairs), n, dtype=torch.long)
    mask = torch.zeros(len(pairs), n, dtype=torch.bool)
    for p, (i, j) in enumerate(pairs):
        for row, c in ((j - 1, i), (i, j)):
            cols = torch.arange(int(start[c]), int(start[c + 1]))
            index[p, cols], mask[p, cols] = row * n + cols, True
    return index, mask


class SquaredDistance(torch.autograd.Function):
    """||x_b - s_r||^2 (B, n) as sums of squared differences (``torch.cdist`` without the matrix-product form),
    with a backward written in differentiable ops (2 (sum_r g_br x_b - sum_r g_br s_r)), so that training's
    double back-propagation (Cross-Lipschitz's gradient penalty) runs through it: cdist's own backward has no
    derivative."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, s)
        return torch.cdist(x, s, compute_mode="donot_use_mm_for_euclid_dist").square()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, s = ctx.saved_tensors
        gx = 2 * (g.sum(1, keepdim=True) * x - g @ s) if ctx.needs_input_grad[0] else None
        gs = 2 * (g.sum(0)[:, None] * s - g.T @ x) if ctx.needs_input_grad[1] else None
        return gx, gs


def condorcet_weights(classes: int) -> list[np.ndarray]:
    """The K - 1 selection matrices W_j (P, K + 1) of the Condorcet scores of a one-vs-one machine
    (``frontends.onnx_svm``): column c of W_j picks o_cj d_p for the j-th opponent of class c (o = 1 when c is
    the pair's first class, else -1), and the last column is 0, so that min_j (D W_j) = (w_0 .. w_{K-1}, 0)."""
    pairs = {pair: p for p, pair in enumerate(itertools.combinations(range(classes), 2))}
    weights = [np.zeros((len(pairs), classes + 1)) for _ in range(classes - 1)]
    for c in range(classes):
        for j, m in enumerate(m for m in range(classes) if m != c):
            weights[j][pairs[(min(c, m), max(c, m))], c] = 1.0 if c < m else -1.0
    return weights


def _interval_product(a_c: torch.Tensor, a_r: torch.Tensor, b_lo: torch.Tensor, b_hi: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, radius) of {a b : a in a_c +- a_r, b in [b_lo, b_hi]} (the hull of the four corner products),
    widened by 2 REL64 for their rounding."""
    lo, hi = interval_product(a_c - a_r, a_c + a_r, b_lo, b_hi)
    return (lo + hi) / 2, (hi - lo) / 2 + 2 * REL64 * (lo.abs() + hi.abs())
