"""Guaranteed operator-norm bounds for convolutions (l2 by the DFT, l_inf by absolute sums) and brute force.

Certification needs *upper* bounds (power iteration under-estimates and is never used here). The l2 bound
follows Sedghi, Gupta, Long, "The singular values of convolutional layers" (ICLR 2019): a circular
convolution on a grid of size N is block-diagonalised by the DFT, so its singular values are those of the
c_out x c_in matrices of the kernel's DFT at the N frequencies. A zero-padded (strided, dilated) convolution
is, up to an isometric embedding of its input and a restriction of its output, such a circular convolution
on any grid large enough that nothing the real operator reads wraps onto the input; its norm is therefore
at most the max over the frequencies. Strides use the polyphase (space-to-depth) rewrite: the circular
stride-s convolution on an N-grid (s | N) equals a stride-1 circular convolution on the N/s grid with
c_in * prod(s) input channels and kernel K'[o, (c, p), a] = K[o, c, s a + p].

Conventions (ONNX / torch): cross-correlation, weight (c_out, c_in/groups, k1[, k2[, k3]]), zero padding as
per-axis (begin, end) pairs. Everything is computed in float64 on the CPU (memory ~ 2 x 16 bytes x c_out x
c_in * prod(s) / groups x the number of frequencies); results are multiplied by ``SAFETY`` (1 + 1e-6): the
float64 FFT, Gram, eigvalsh and Cholesky-certificate errors are <~ n^2 1e-16 relative (n the Gram size, so
< 1e-8 up to a few thousand channels), and the factor covers them with a wide margin at no visible cost.
Pass ``safety=1.0`` to get the raw value (tests do, to check the mathematics rather than the margin).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from verifier.rounding import SAFETY

#: multiplicative safety factor on every float64 bound (see the module docstring)
_CHUNK_BYTES = 64 << 20  # complex matrices per eigenvalue batch


def _axis_plan(m: int, lo: int, hi: int, stride: int, taps: Sequence[int]) -> tuple[list[int], int] | None:
    """One axis of the circular embedding: (live taps, grid N), or None if the map is 0.

    Frame: output i in [0, m) reads frame positions s i + t for the kernel taps t in ``taps`` (dilated
    offsets); the input lives at [lo, hi), the rest is zero padding. Outputs reading no input are zero rows,
    inputs read by no output are zero columns, taps never meeting the input multiply zeros: all are dropped.
    Shifting the live outputs to start at 0 and the live taps to [0, span) (shifts only relabel), live outputs
    0..c-1 read the window W = [0, s (c - 1) + span) and the live input is [j0, j1] inside it. The circular
    conv on Z_N reproduces the real one when no read position aliases (mod N) onto another live input
    position, N > j1 and N > |W| - 1 - j0, and the live outputs stay distinct mod N/s, N >= s c. Taps beyond
    N alias (the kernel is folded), which is a valid circular operator too.
    """
    ranges = {t: (max(0, -((t - lo) // stride)), min(m, -((t - hi) // stride)) - 1) for t in taps}
    hits = {t: r for t, r in ranges.items() if r[0] <= r[1]}  # tap t meets the input for outputs r[0]..r[1]
    if not hits:
        return None
    i0, i1 = min(a for a, _ in hits.values()), max(b for _, b in hits.values())
    t0, t1 = min(hits), max(hits)
    j0 = min(stride * a + t for t, (a, _) in hits.items()) - stride * i0 - t0
    j1 = max(stride * b + t for t, (_, b) in hits.items()) - stride * i0 - t0
    count, span = i1 - i0 + 1, t1 - t0 + 1
    n = max(j1 + 1, stride * (count - 1) + span - j0, stride * count)
    return sorted(hits), -(-n // stride) * stride


def _dft_bound(w: torch.Tensor, groups: int, strides: Sequence[int], grid: Sequence[int]) -> float:
    """max over frequencies of the largest singular value of the stride-s circular cross-correlation with the
    float64 kernel ``w`` (dilation already embedded) on ``grid`` (entries divisible by their stride), by the
    polyphase rewrite and the DFT (Sedghi, Gupta & Long 2019). No safety factor."""
    nd = w.dim() - 2
    c_out, c_in_g = w.shape[:2]
    # polyphase: pad each axis to a multiple of s, split t = s a + p, then fold a modulo M = N / s
    ms = [n // s for n, s in zip(grid, strides)]
    pad = []
    for ax in range(nd):
        span, s, m = w.shape[2 + ax], strides[ax], ms[ax]
        a_len = -(-span // s)
        pad.append(-(-a_len // m) * m * s - span)
    w = torch.nn.functional.pad(w, [p for q in reversed(pad) for p in (0, q)])
    shape = [c_out, c_in_g]
    for ax in range(nd):
        r = w.shape[2 + ax] // (ms[ax] * strides[ax])
        shape += [r, ms[ax], strides[ax]]  # t = (r_idx * M + a) * s + p
    w = w.reshape(shape)
    w = w.sum(dim=[2 + 3 * ax for ax in range(nd)])  # fold the aliased taps (N smaller than the kernel span)
    # now (c_out, c_in_g, M1, s1, M2, s2, ...) -> (groups, c_out_g, c_in_g * prod(s), M1, M2, ...)
    perm = [0, 1] + [3 + 2 * ax for ax in range(nd)] + [2 + 2 * ax for ax in range(nd)]
    w = w.permute(perm).reshape(groups, c_out // groups, c_in_g * math.prod(strides), *ms)
    spec = torch.fft.rfftn(w, dim=list(range(3, 3 + nd)))  # real kernel: f and -f share singular values
    rows, cols = spec.shape[1:3]
    mats = spec.reshape(groups, rows, cols, -1).permute(0, 3, 1, 2).reshape(-1, rows, cols)
    if rows == 1 or cols == 1:
        return float(mats.abs().square().sum(dim=(1, 2)).max().sqrt())
    return math.sqrt(_max_gram_eig(mats))


def _max_gram_eig(mats: torch.Tensor, exact_top: int = 4, power_steps: int = 20) -> float:
    """Upper bound of max_b lambda_max(G_b), G_b the smaller Gram matrix of ``mats[b]`` (complex128).

    Exact eigvalsh on every matrix is the slow part for wide layers, so: Rayleigh quotients after a few power
    steps (lower estimates) pick the ``exact_top`` likeliest maxima, which get eigvalsh; mu = (1 + 1e-10) times
    their max is then certified for all the others by a Cholesky factorisation of mu I - G_b (it succeeds only
    if mu I - G_b + E is positive definite, with ||E|| <= ~n^2 eps mu from rounding); matrices where it fails get
    eigvalsh too. Every matrix is thus either computed or certified, whatever the estimates were.
    """
    rows, cols = mats.shape[1:]
    per = max(1, _CHUNK_BYTES // (16 * rows * cols))
    grams = [c @ c.mH if rows <= cols else c.mH @ c for c in mats.split(per)]
    gram = torch.cat(grams) if len(grams) > 1 else grams[0]
    size = gram.shape[-1]
    if gram.shape[0] <= exact_top:
        return float(torch.linalg.eigvalsh(gram)[:, -1].max())
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(gram.shape[0], size, 1, generator=gen, dtype=torch.float64).to(gram.dtype)
    for _ in range(power_steps):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    rayleigh = (v.mH @ gram @ v).real.flatten()
    top = rayleigh.topk(exact_top).indices
    best = float(torch.linalg.eigvalsh(gram[top])[:, -1].max())
    mu = best * (1 + 1e-10) + 1e-300
    rest = torch.ones(gram.shape[0], dtype=torch.bool)
    rest[top] = False
    others = gram[rest]
    eye = torch.eye(size, dtype=gram.dtype)
    failed = []
    for chunk in others.split(per):
        info = torch.linalg.cholesky_ex(mu * eye - chunk).info
        failed.append(chunk[info != 0])
    failed = torch.cat(failed)
    if failed.shape[0]:
        mu = max(mu, float(torch.linalg.eigvalsh(failed)[:, -1].max()))
    return mu


def _frame_bound(weight: torch.Tensor, groups: int, strides: Sequence[int], dilations: Sequence[int],
                 axes: Sequence[tuple[int, int, int]], safety: float) -> float:
    """DFT bound for a conv whose per-axis frame is (m outputs, live input [lo, hi)), see ``_axis_plan``."""
    w = weight.detach().to(dtype=torch.float64, device="cpu")
    if w.numel() == 0:
        return 0.0
    grid, index = [], []
    for (m, lo, hi), s, d, k in zip(axes, strides, dilations, w.shape[2:]):
        plan = _axis_plan(m, lo, hi, s, [d * a for a in range(k)])
        if plan is None:
            return 0.0
        live, n = plan
        grid.append(n)
        index.append((live, d))
    # dilate, keep the live taps only (dead ones always multiply zeros) and crop to the live span
    for ax, (live, d) in enumerate(index):
        taps = torch.tensor([t // d for t in live])
        kept = w.index_select(2 + ax, taps)
        shape = list(w.shape)
        shape[2 + ax] = live[-1] - live[0] + 1
        w = w.new_zeros(shape).index_copy_(2 + ax, torch.tensor(live) - live[0], kept)
    return _dft_bound(w, groups, strides, grid) * safety


def _defaults(nd: int, strides, dilations, pads) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    strides = [int(s) for s in strides] if strides else [1] * nd
    dilations = [int(d) for d in dilations] if dilations else [1] * nd
    pads = [(int(b), int(e)) for b, e in pads] if pads else [(0, 0)] * nd
    if not (len(strides) == len(dilations) == len(pads) == nd) or min(strides + dilations) < 1:
        raise ValueError(f"bad conv geometry for a {nd}-D kernel: strides={strides} dilations={dilations} "
                         f"pads={pads}")
    return strides, dilations, pads


def conv_l2_bound(weight: torch.Tensor, in_spatial: tuple[int, ...], strides: Sequence[int] | None = None,
                  dilations: Sequence[int] | None = None, pads: Sequence[tuple[int, int]] | None = None,
                  groups: int = 1, safety: float = SAFETY) -> float:
    """Guaranteed upper bound of the l2 operator norm of x -> conv(x, weight) (no bias) on inputs of spatial
    size ``in_spatial`` (ONNX Conv: zero pads (begin, end) per axis, strides, dilations, groups).

    The DFT bound of Sedghi, Gupta & Long (2019) on the smallest valid circular grid per axis (see
    ``_axis_plan``), with the polyphase rewrite for strides; groups are block-diagonal (max over groups).
    Negative pads (crops) are accepted: a crop only removes input columns.
    """
    nd = weight.dim() - 2
    strides, dilations, pads = _defaults(nd, strides, dilations, pads)
    axes = []
    for n, (pb, pe), s, d, k in zip(in_spatial, pads, strides, dilations, weight.shape[2:]):
        length, span = n + pb + pe, d * (k - 1) + 1
        m = (length - span) // s + 1 if length >= span else 0
        axes.append((m, max(pb, 0), min(pb + n, length)))
    return _frame_bound(weight, groups, strides, dilations, axes, safety)


def conv_transpose_l2_bound(weight: torch.Tensor, in_spatial: tuple[int, ...],
                            strides: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
                            pads: Sequence[tuple[int, int]] | None = None,
                            output_padding: Sequence[int] | None = None, groups: int = 1,
                            safety: float = SAFETY) -> float:
    """Guaranteed upper bound of the l2 operator norm of ONNX ConvTranspose (no bias; weight (c_in, c_out/groups,
    k...)) on inputs of spatial size ``in_spatial``.

    ConvTranspose = crop(pads) o append(output_padding zeros) o T, with T the full transposed conv of output
    length F = s (n - 1) + d (k - 1) + 1. T is the adjoint of the forward conv C (same weight read as
    (c_out', c_in'/g, k) = (c_in, c_out/g, k)) from the F-frame to n outputs. Appended zeros are zero rows
    and the crop keeps frame positions [pb, F + op - pe) ∩ [0, F); so the operator is the adjoint of C
    restricted to inputs living there, and ||op|| = ||adjoint|| is bounded by the DFT bound of that C
    (frame: m = n outputs, live input [pb, min(F, F + op - pe))). Negative pads (an ``output_shape`` larger
    than F) only add zero rows. ``output_shape`` / ``auto_pad`` must be resolved into ``pads`` by the caller.
    """
    nd = weight.dim() - 2
    strides, dilations, pads = _defaults(nd, strides, dilations, pads)
    out_pad = [int(p) for p in output_padding] if output_padding else [0] * nd
    axes = []
    for n, (pb, pe), op, s, d, k in zip(in_spatial, pads, out_pad, strides, dilations, weight.shape[2:]):
        full = s * (n - 1) + d * (k - 1) + 1 if n > 0 else 0
        axes.append((n, max(pb, 0), min(full, full + op - pe)))
    return _frame_bound(weight, groups, strides, dilations, axes, safety)


def conv_linf_bound(weight: torch.Tensor, groups: int = 1) -> float:
    """l_inf operator norm bound of a (zero-padded, any stride/dilation) convolution: max over output channels
    of sum |w| over (c_in/groups, kernel). A row of the conv matrix holds each tap at most once, so this is an
    upper bound, exact whenever some output's window lies fully inside the input. Groups need no special
    care: output channel o reads only its own (c_in/groups) slice, which is exactly ``weight[o]``."""
    w = weight.detach().to(torch.float64)
    return float(w.abs().reshape(w.shape[0], -1).sum(dim=1).max()) if w.numel() else 0.0


def conv_transpose_linf_bound(weight: torch.Tensor, strides: Sequence[int] | None = None,
                              dilations: Sequence[int] | None = None, groups: int = 1) -> float:
    """l_inf operator norm bound of ConvTranspose (weight (c_in, c_out/groups, k...)), any pads/output_padding.

    Output (o, q) sums x[c, i] w[c, o, a] over c in o's group and taps a with s i + d a = q (per axis); distinct
    taps give distinct i, so the row sum is at most the sum of |w[c, o, a]| over c and the taps of phase
    q mod s, i.e. over a with d a = q (mod s). The bound is the max over output channel and phase of that sum
    (exact-or-upper: exact when some output of that phase has all its taps' inputs in range, e.g. inputs at
    least as large as the kernel and crops not removing the interior)."""
    nd = weight.dim() - 2
    strides, dilations, _ = _defaults(nd, strides, dilations, None)
    if weight.numel() == 0:
        return 0.0
    w = weight.detach().to(torch.float64).abs()
    c_in, c_out_g = w.shape[:2]
    a = w.reshape(groups, c_in // groups, c_out_g, *w.shape[2:]).sum(dim=1)  # (g, c_out_g, k...)
    for ax, (s, d) in enumerate(zip(strides, dilations)):
        dim = 2 + ax
        phase = (torch.arange(a.shape[dim]) * d) % s
        shape = list(a.shape)
        shape[dim] = s
        a = a.new_zeros(shape).index_add_(dim, phase, a)
    return float(a.max())


def materialized_matrix(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int],
                        dtype: torch.dtype = torch.float64, chunk: int = 1024,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The (n_out x n_in) matrix of a *linear* map ``fn`` on tensors of shape (B, *in_shape), column j being
    fn(e_j) flattened; the identity basis is pushed through in chunks of ``chunk`` (an affine map would need
    fn(0) subtracted first). Column-major over C-order flattening: ``y.flatten() = M @ x.flatten()``."""
    n_in = math.prod(in_shape)
    cols = []
    with torch.no_grad():
        for start in range(0, n_in, chunk):
            b = min(chunk, n_in - start)
            x = torch.zeros(b, n_in, dtype=dtype, device=device)
            x[torch.arange(b), torch.arange(start, start + b)] = 1.0
            cols.append(fn(x.reshape(b, *in_shape)).reshape(b, -1).to(dtype))
    if not cols:
        raise ValueError("materialized_matrix: empty input shape")
    return torch.cat(cols).T.contiguous()


def l2_norm_exact(matrix: torch.Tensor, safety: float = SAFETY) -> float:
    """Largest singular value of ``matrix`` in float64 (eigvalsh of the smaller Gram matrix), times ``safety``.
    Gram rounding is <= ~min(m, n) * n * 1e-16 relative in sigma^2, far below the 1e-6 factor for the sizes
    this is used on (up to ~1e4 per side)."""
    a = matrix.detach().to(torch.float64)
    if a.numel() == 0:
        return 0.0
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)) * safety


def linf_norm_exact(matrix: torch.Tensor) -> float:
    """l_inf operator norm of ``matrix``: the max row absolute sum (float64)."""
    a = matrix.detach().to(torch.float64)
    return float(a.abs().sum(dim=1).max()) if a.numel() else 0.0
