"""LayerNormalization (ONNX opset 17; ``frontends.onnx_patterns`` also folds the decomposed forms that exporters
write into it) and InstanceNormalization (the same over the spatial axes, with per-channel scale and bias).

y = (x - mu) / sigma * scale + bias over the axes from ``axis`` on (ONNX's op), or over the attribute ``axes``,
any set (the rewrite of decomposed layer and group norms, in lipverify's domain): n entries per row, the rows
made the last axis by a permutation; mu the row's mean, sigma = sqrt(var + epsilon) with var the row's biased
variance; scale and bias broadcast to the sample. Write z = x - mu and y_hat = z / sigma.

Rules (soundness: each holds for the real function and for the forward's float evaluation in the boxes' dtype,
unit roundoff u, gamma_k = k u / (1 - k u)):

- **Lipschitz** (l2): J = (P - y_hat y_hat^T / n) / sigma with P the centring projection; y_hat lies in P's
  range with ||y_hat||^2 = n var / sigma^2 <= n, so the bracket is a projection minus a PSD part of norm <= 1
  inside it: ||J||_2 <= 1 / sigma <= 1 / sqrt(epsilon), times max |scale|. l_inf: sqrt(n) times that. Written
  in torch, so training's estimate is differentiable in the scale.
- **Box**: z_i = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j has an exact range over the box; var lies between the
  means of the z_i^2 ranges; y_hat in the interval quotient, and |y_hat_i| < sqrt(n - 1) (z_i^2 <= (n - 1) var
  since the z sum to 0). The float forward is within e_y of the real y_hat anywhere on the box
  (``_forward_error``: the mean's n-term sum, the subtraction, the variance's sums (two-pass or one-pass), the
  square root and the division, each error carried through, for each evaluation order exporters and
  onnxruntime use), then the scale and bias round twice more.
- **Gradient box**: J^T g = ((g' - mean(g')) - y_hat (y_hat . g') / n) / sigma with g' = scale g, in interval
  arithmetic (the centring term's range exact as for z).
- **Linear** (CROWN): the mean-value form over the gradient boxes (``verifier.linear.mean_value_backward``),
  less the forward's float error.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.box import Box, is_box, outward
from verifier.errors import NoRuleError
from verifier.jacobian import no_gradient_rule
from verifier.linear import mean_value_backward
from verifier.ops.base import LIPVERIFY, Lipschitz, Op, RuleArgs, lipschitz_factor, rule
from verifier.rounding import REL64, SAFETY, TINY64, gamma, tiny, unit_roundoff


@rule("LayerNormalization", since=1, domain=LIPVERIFY)  # (the importer's rewrite of the decomposed form)
@rule("LayerNormalization", since=17)
class LayerNormalization(Op):
    weight_inputs = (1, 2)

    def setup(self) -> None:
        self.axis = int(self.attr("axis", -1))
        self.epsilon = float(self.attr("epsilon", 1e-5))
        #: lipverify's rewrite of a decomposed form: the normalized axes, any set (else ``axis`` and all after it)
        self.axes = [int(a) for a in self.attr("axes", [])]
        if self.epsilon <= 0:
            raise self.no_rule(f"epsilon {self.epsilon} <= 0 (x / ||x|| is not Lipschitz near 0)")

    def _normalized(self, rank: int) -> list[int]:
        """The normalized axes of an input of ``rank`` (batch axis 0 included), ascending."""
        axes = sorted({a % rank for a in self.axes}) if self.axes else list(range(self.axis % rank, rank))
        if not axes or axes[0] == 0:
            raise self.no_rule("it normalizes over the batch axis")
        return axes

    def _layout(self, shape: torch.Size) -> tuple[list[int], list[int], int]:
        """(perm, its inverse, n): ``perm`` moves the normalized axes to the end (the others keep their order, the
        batch axis first), so that the rows of n normalized entries are the last axis."""
        axes = self._normalized(len(shape))
        perm = [i for i in range(len(shape)) if i not in axes] + axes
        inverse = sorted(range(len(perm)), key=perm.__getitem__)
        return perm, inverse, math.prod(shape[a] for a in axes)

    def _to_rows(self, t: Tensor, shape: torch.Size) -> Tensor:
        """A tensor of the input's layout (``shape``, or a batch of P times as many) as rows (..., n)."""
        perm, _, n = self._layout(shape)
        moved = t.permute(perm)
        return moved.reshape(*moved.shape[:len(perm) - len(self._normalized(len(shape)))], n)

    def _from_rows(self, rows: Tensor, shape: torch.Size) -> Tensor:
        """Rows (..., n) back to the input's layout (``shape``, its first axis as the rows have it)."""
        perm, inverse, _ = self._layout(shape)
        moved = [rows.shape[0]] + [shape[i] for i in perm[1:]]
        return rows.reshape(moved).permute(inverse)

    def _full(self, t: Tensor, shape: torch.Size) -> Tensor:
        """A scale or bias broadcast to one sample of the input (``shape`` with its batch axis): its leading axes
        of size 1 beyond the sample's rank dropped, then numpy broadcasting (ONNX's op: the normalized axes)."""
        extra = t.dim() - (len(shape) - 1)
        if extra > 0:
            if any(k != 1 for k in t.shape[:extra]):
                raise self.no_rule(f"a scale or bias of shape {tuple(t.shape)} for an input of shape {tuple(shape)}")
            t = t.reshape(t.shape[extra:])
        try:
            return torch.broadcast_to(t, shape[1:])
        except RuntimeError:
            raise self.no_rule(f"a scale or bias of shape {tuple(t.shape)} for an input of shape {tuple(shape)}")

    def _affine(self, y: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        """y * scale + bias, scale and bias broadcast to the input (``_full``)."""
        out = y * self._full(scale.to(y.dtype), y.shape)
        return out if bias is None else out + self._full(bias.to(y.dtype), y.shape)

    # --- forward ---------------------------------------------------------------------------------------
    def forward(self, x, scale, bias=None):
        rows = self._to_rows(x, x.shape)
        z = rows - rows.mean(-1, keepdim=True)
        y = z / torch.sqrt((z * z).mean(-1, keepdim=True) + self.epsilon)
        return self._affine(self._from_rows(y, x.shape), scale, bias)

    # --- Lipschitz -------------------------------------------------------------------------------------
    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        if not args.dynamic[0] or any(args.dynamic[1:]):
            raise self.no_rule("only its input may depend on the model input")
        _, _, n = self._layout(torch.Size(args.in_shapes[0]))
        value = args.values[1].double().abs().max() / math.sqrt(self.epsilon)
        if not args.l2:
            value = value * math.sqrt(n)
        return Lipschitz([lipschitz_factor(value * SAFETY)], "theorem", note="||J||_2 <= max|scale| / sqrt(eps)")

    # --- box -------------------------------------------------------------------------------------------
    def _ranges(self, lo: Tensor, hi: Tensor) -> dict[str, Tensor]:
        """Over the box of rows (..., n), float64: the ranges of z, of y_hat (clamped to sqrt(n - 1)) and of
        sigma (module docstring)."""
        n = lo.shape[-1]
        s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
        z_lo = (1 - 1 / n) * lo - (s_hi - hi) / n
        z_hi = (1 - 1 / n) * hi - (s_lo - lo) / n
        slack = REL64 * (lo.abs() + hi.abs() + (lo.abs() + hi.abs()).mean(-1, keepdim=True))
        z_lo, z_hi = z_lo - slack, z_hi + slack
        near = torch.where((z_lo <= 0) & (z_hi >= 0), torch.zeros_like(z_lo), torch.minimum(z_lo.abs(), z_hi.abs()))
        far = torch.maximum(z_lo.abs(), z_hi.abs())
        sigma_lo = ((near * near).mean(-1, keepdim=True) * (1 - REL64) + self.epsilon).sqrt() * (1 - REL64)
        sigma_hi = ((far * far).mean(-1, keepdim=True) * (1 + REL64) + self.epsilon).sqrt() * (1 + REL64)
        quotients = torch.stack([z_lo / sigma_lo, z_lo / sigma_hi, z_hi / sigma_lo, z_hi / sigma_hi])
        cap = math.sqrt(max(n - 1, 0)) * (1 + REL64)
        y_lo = (quotients.amin(0) * (1 + REL64)).clamp(-cap, cap)
        y_hi = (quotients.amax(0) * (1 + REL64)).clamp(-cap, cap)
        y_lo, y_hi = torch.minimum(y_lo, y_hi), torch.maximum(y_lo, y_hi)
        return {"z_far": far, "sigma_lo": sigma_lo, "sigma_hi": sigma_hi, "y_lo": y_lo, "y_hi": y_hi}

    def _forward_error(self, lo: Tensor, hi: Tensor, r: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
        """e_y (..., n): |float y_hat - real y_hat| anywhere on the box, for a forward in ``dtype`` in any of the
        evaluation orders in use: the two-pass one (this op's forward, PyTorch's decomposition), the one-pass
        var = mean(x^2) - m^2 (onnxruntime's kernel, jax2onnx's decomposition; its cancellation included) and the
        distributed x (r g) - m (r g) (tf2onnx's). The mean is off by e_mu <= gamma_{n+1} mean|x|; each z (or
        its distributed products) by e_z = e_mu + 2u (|x| + |m| + |z| + e_mu); the variance by the sum of both
        forms' errors, e_v = mean(e_z (2|z| + e_z)) + gamma_{n+2} mean((|z| + e_z)^2) + gamma_{n+2} mean(x^2) +
        e_mu (2|m| + e_mu) + 3u (m^2 + mean(x^2)); sigma^2 then by e_v + 3u (var + eps + e_v), so sigma by
        that over sigma_lo; the quotient (or reciprocal and product) by e_z / sigma~ + |z| e_sigma / (sigma
        sigma~) + 4u (|z| + e_z) / sigma~, sigma~ >= max(sigma_lo - e_sigma, sqrt(eps) (1 - 4u)) (the second for
        evaluations whose variance stays >= 0, as every form above does but onnxruntime's own one-pass kernel,
        which turns a variance below -eps into NaN: no bound holds for that). For float64 boxes (the engines' float64 copies) this is the error of a
        float32 evaluation: the division by sigma can amplify the model's own float32 rounding far beyond the
        margins' float allowance (``FLOAT_SLACK``) where the mean is large against the spread."""
        dtype = torch.float32 if dtype == torch.float64 else dtype
        n, u = lo.shape[-1], unit_roundoff(dtype)
        big = torch.maximum(lo.abs(), hi.abs())
        mean_abs = big.mean(-1, keepdim=True)
        mean_sq = (big * big).mean(-1, keepdim=True)
        e_mu = gamma(n + 1, dtype) * mean_abs
        z = r["z_far"]
        e_z = e_mu + 2 * u * (big + mean_abs + z + e_mu)
        g2 = gamma(n + 2, dtype)
        e_v = (e_z * (2 * z + e_z)).mean(-1, keepdim=True) + g2 * ((z + e_z) ** 2).mean(-1, keepdim=True) + \
            g2 * mean_sq + e_mu * (2 * mean_abs + e_mu) + 3 * u * (mean_abs ** 2 + mean_sq)
        var_hi = r["sigma_hi"] ** 2
        e_sigma = (e_v + 3 * u * (var_hi + e_v)) / r["sigma_lo"]
        # (every evaluation seen keeps its variance >= 0: two-pass sums of squares, or jax2onnx's Max(., 0); so
        # its sigma is at least sqrt(eps) up to rounding where the error bound cannot keep it from 0)
        sigma_float = torch.maximum(r["sigma_lo"] - e_sigma,
                                    torch.full_like(e_sigma, math.sqrt(self.epsilon) * (1 - 4 * u)))
        e_y = e_z / sigma_float + z * e_sigma / (r["sigma_lo"] * sigma_float) + 4 * u * (z + e_z) / sigma_float
        return e_y * (1 + REL64) + tiny(dtype)

    def _rows(self, x: Box) -> tuple[Tensor, Tensor]:
        """The box's bounds as rows (..., n) of the normalized entries, float64."""
        return self._to_rows(x.lo.double(), x.shape), self._to_rows(x.hi.double(), x.shape)

    def interval(self, x, scale, bias=None):
        if not is_box(x) or is_box(scale) or is_box(bias):
            raise self.no_box("only its input may depend on the model input")
        lo, hi = self._rows(x)
        r = self._ranges(lo, hi)
        e_y = self._forward_error(lo, hi, r, x.dtype)
        y_lo, y_hi = self._from_rows(r["y_lo"] - e_y, x.shape), self._from_rows(r["y_hi"] + e_y, x.shape)
        s = self._full(scale.double().to(y_lo.device), x.shape)
        b = torch.zeros_like(s) if bias is None else self._full(bias.double().to(y_lo.device), x.shape)
        ends = torch.stack([y_lo * s, y_hi * s])
        out_lo, out_hi = ends.amin(0) + b, ends.amax(0) + b
        size = torch.maximum(out_lo.abs(), out_hi.abs()) + b.abs()
        widen = (2 * unit_roundoff(x.dtype) + REL64) * size + tiny(x.dtype)
        return outward(out_lo - widen, out_hi + widen, x.dtype)

    # --- gradient box ------------------------------------------------------------------------------------
    def grad_interval(self, inputs, grads):
        """J^T g over the box (module docstring), in interval arithmetic, float64, widened by REL64: the sum
        y_hat . g' in centre/radius form (Rump's products, [a][b] within a_c b_c +- (|a_c| b_r + a_r |b_c| + a_r
        b_r)), the product y_hat_j t as the exact hull of its corners, the positive 1 / sigma by the signs. The
        gradient rows (B * P, ...) are viewed as (B, P, m, n) against the forward rows (B, 1, m, n): nothing is
        copied per P."""
        x, scale = inputs[0], inputs[1]
        if not is_box(x) or any(is_box(v) for v in inputs[1:]):
            raise no_gradient_rule(self)
        lo, hi = self._rows(x)
        r = self._ranges(lo, hi)
        g = grads[0]
        b, n = x.shape[0], lo.shape[-1]
        m = lo[0].numel() // n  # normalized rows per sample
        s = self._full(scale.double().to(lo.device), x.shape)
        g_c = self._to_rows(g.center.double() * s, x.shape).reshape(b, -1, m, n)  # g' = scale g: (B, P, m, n)
        g_r = self._to_rows(g.radius.double() * s.abs(), x.shape).reshape(b, -1, m, n)

        def rows(t: Tensor) -> Tensor:
            return t.reshape(b, 1, m, t.shape[-1])

        y_c, y_r = rows((r["y_lo"] + r["y_hi"]) / 2), rows((r["y_hi"] - r["y_lo"]) / 2)
        inv_lo, inv_hi = rows(1 / r["sigma_hi"]), rows(1 / r["sigma_lo"])
        c_c = g_c - g_c.mean(-1, keepdim=True)  # g'_j - mean(g'), its range exact as for z
        c_r = g_r * (1 - 2 / n) + g_r.sum(-1, keepdim=True) / n
        t_c = (y_c * g_c).sum(-1, keepdim=True) / n  # y_hat . g' / n
        t_r = (y_c.abs() * g_r + y_r * (g_c.abs() + g_r)).sum(-1, keepdim=True) / n
        y_lo, y_hi, t_lo, t_hi = y_c - y_r, y_c + y_r, t_c - t_r, t_c + t_r  # q = y_hat_j t: the exact hull
        q_lo = torch.minimum(torch.minimum(y_lo * t_lo, y_lo * t_hi), torch.minimum(y_hi * t_lo, y_hi * t_hi))
        q_hi = torch.maximum(torch.maximum(y_lo * t_lo, y_lo * t_hi), torch.maximum(y_hi * t_lo, y_hi * t_hi))
        v_lo, v_hi = c_c - c_r - q_hi, c_c + c_r - q_lo  # (g'_j - mean(g')) - y_hat_j t
        w_lo = torch.where(v_lo >= 0, v_lo * inv_lo, v_lo * inv_hi)  # times 1 / sigma in [inv_lo, inv_hi], > 0
        w_hi = torch.where(v_hi >= 0, v_hi * inv_hi, v_hi * inv_lo)
        w_c, w_r = (w_lo + w_hi) / 2, (w_hi - w_lo) / 2
        w_r = w_r + 4 * REL64 * (w_c.abs() + w_r + (g_c.abs() + g_r + t_c.abs() + t_r) * inv_hi) + TINY64
        back = [self._from_rows(t.reshape(g.shape[0], -1, n), x.shape) for t in (w_c, w_r)]
        return [Box(*back)] + [None] * (len(inputs) - 1)

    # --- linear (CROWN) ---------------------------------------------------------------------------------
    def linear(self, inputs, lams):
        x, scale = inputs[0], inputs[1]
        if not is_box(x) or x.integer or any(is_box(v) for v in inputs[1:]):
            raise NoRuleError(f"no linear rule for {self.op_type} (node '{self.name}'): only its input may "
                              f"depend on the model input")
        lo, hi = self._rows(x)
        e_y = self._from_rows(self._forward_error(lo, hi, self._ranges(lo, hi), x.dtype), x.shape)
        s = self._full(scale.double().to(e_y.device), x.shape)
        error = e_y * s.abs() * (1 + 4 * unit_roundoff(x.dtype)) + 2 * unit_roundoff(x.dtype) * self._magnitude(
            inputs) + tiny(x.dtype)
        lam, bias = mean_value_backward(self, inputs, lams[0], error)
        return [lam] + [None] * (len(inputs) - 1), bias

    def _magnitude(self, inputs) -> Tensor:
        """The largest |output| over the box (the scale and bias's roundings are relative to it)."""
        box = self.interval(*inputs)
        return torch.maximum(box.lo.abs(), box.hi.abs()).double()



@rule("InstanceNormalization", since=(1, 6))
class InstanceNormalization(LayerNormalization):
    """y = (x - mu) / sigma * scale_c + bias_c over the spatial axes (2 on) of each sample and channel c: the
    layer normalization of those axes with per-channel scale and bias, so every rule above holds as it is.
    PyTorch exports ``nn.InstanceNorm`` as this op and ``nn.GroupNorm`` as Reshape -> this op (scale 1, bias 0
    per group) -> Reshape -> per-channel Mul and Add."""

    def _normalized(self, rank: int) -> list[int]:
        if rank < 3:
            raise self.no_rule(f"an input of rank {rank} (it needs (N, C, spatial axes...))")
        return list(range(2, rank))

    def _full(self, t: Tensor, shape: torch.Size) -> Tensor:
        if t.numel() != shape[1]:
            raise self.no_rule(f"{t.numel()} scale or bias entries for {shape[1]} channels")
        return t.reshape(shape[1], *[1] * (len(shape) - 2))
