"""Sound convolution norms (verifier/conv_norms.py) against brute force on materialized matrices.

Every l2 / l_inf bound must be >= the exact norm of the materialized operator (checked *without* the safety
factor, up to 1e-9 relative float slack), over random 1-D/2-D/3-D configurations: kernels 1..5, strides 1..3,
dilations 1..2, groups 1/2/depthwise, symmetric/asymmetric/zero pads, odd sizes, c_in != c_out, and for
ConvTranspose output_padding too. Tightness (bound / exact) is asserted only where it is stated: 2-D 3x3 pad 1,
stride 1 or 2 (observed <= 1.076 for n in 8..12, <= 1.02 for n >= 16); adversarial shapes (inputs barely larger
than the kernel, big pads) can be loose (observed up to ~1.8) and are only checked to be upper bounds.
"""
from __future__ import annotations

import math
import random
import time

import pytest
import torch
import torch.nn.functional as F

from verifier.conv_norms import (SAFETY, _dft_bound, conv_l2_bound, conv_linf_bound, conv_transpose_l2_bound,
                                 conv_transpose_linf_bound, l2_norm_exact, linf_norm_exact, materialized_matrix)

from .conftest import shared_dir

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
SLACK = 1e-9


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small LAPACK calls: threads only add contention
    yield
    torch.set_num_threads(threads)


def torch_pads(pads):
    return [v for b, e in reversed(pads) for v in (b, e)]


def conv_map(w, strides, dilations, pads, groups):
    """ONNX Conv without bias: zero pads (begin, end), then the cross-correlation."""
    return lambda x: CONV[w.dim() - 2](F.pad(x, torch_pads(pads)), w, None, strides, 0, dilations, groups)


def conv_t_map(w, strides, dilations, pads, out_pad, groups):
    """ONNX ConvTranspose without bias: the full result, output_padding zeros appended, pads cropped."""
    crop = [(-b, op - e) for (b, e), op in zip(pads, out_pad)]
    return lambda x: F.pad(CONV_T[w.dim() - 2](x, w, None, strides, 0, 0, groups, dilations), torch_pads(crop))


def svd_norm(matrix: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(matrix)[0]) if matrix.numel() else 0.0


def random_config(rng: random.Random, transpose: bool):
    nd = rng.choice([1, 2, 2, 3])
    kind = rng.choice(["1", "1", "2", "dw"])
    if kind == "dw":
        c_in = rng.randint(1, 4)
        groups, c_out = c_in, c_in * rng.choice([1, 2])
    else:
        groups = int(kind)
        c_in, c_out = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = [rng.randint(1, 5 if nd < 3 else 3) for _ in range(nd)]
    strides = [rng.randint(1, 3) for _ in range(nd)]
    dilations = [rng.randint(1, 2) for _ in range(nd)]
    pad_kind = rng.choice(["zero", "sym", "asym"])
    pads = []
    for _ in range(nd):
        b = 0 if pad_kind == "zero" else rng.randint(0, 3)
        pads.append((b, b if pad_kind == "sym" else rng.randint(0, 3)))
    top = {1: 17, 2: 9, 3: 5}[nd]  # odd: half of the sizes are forced odd
    sizes = [rng.randint(1, top) | (rng.random() < 0.5) for _ in range(nd)]
    out_pad = [rng.randint(0, max(s, d) - 1) for s, d in zip(strides, dilations)] if transpose else None
    return nd, c_in, c_out, groups, kernel, strides, dilations, pads, sizes, out_pad


def check_case(cfg, transpose: bool, gen: torch.Generator):
    """(bound / exact l2, bound l_inf, exact l_inf, cfg) after asserting both bounds are upper bounds;
    None when the configuration is invalid (output empty) or too large to materialize quickly."""
    nd, c_in, c_out, groups, kernel, strides, dilations, pads, sizes, out_pad = cfg
    if c_in * math.prod(sizes) > 900:
        return None
    if transpose:
        w = torch.randn(c_in, c_out // groups, *kernel, generator=gen, dtype=torch.float64)
        fn = conv_t_map(w, strides, dilations, pads, out_pad, groups)
    else:
        w = torch.randn(c_out, c_in // groups, *kernel, generator=gen, dtype=torch.float64)
        fn = conv_map(w, strides, dilations, pads, groups)
    try:
        if fn(torch.zeros(1, c_in, *sizes, dtype=torch.float64)).numel() == 0:
            return None
    except RuntimeError:  # output size < 1
        return None
    matrix = materialized_matrix(fn, (c_in, *sizes))
    exact = svd_norm(matrix)
    if transpose:
        bound = conv_transpose_l2_bound(w, tuple(sizes), strides, dilations, pads, out_pad, groups, safety=1.0)
        linf = conv_transpose_linf_bound(w, strides, dilations, groups)
    else:
        bound = conv_l2_bound(w, tuple(sizes), strides, dilations, pads, groups, safety=1.0)
        linf = conv_linf_bound(w, groups)
    assert bound >= exact * (1 - SLACK), (cfg, bound, exact)
    exact_inf = linf_norm_exact(matrix)
    assert linf >= exact_inf * (1 - SLACK), (cfg, linf, exact_inf)
    ratio = bound / exact if exact > 0 else (1.0 if bound == 0 else math.inf)
    return ratio, linf, exact_inf, cfg


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "conv_transpose"])
def test_random_configurations_are_upper_bounds(transpose):
    rng, gen = random.Random(7 + transpose), torch.Generator().manual_seed(11 + transpose)
    results = []
    while len(results) < 200:
        out = check_case(random_config(rng, transpose), transpose, gen)
        if out is not None:
            results.append(out)
    ratios = sorted(r for r, *_ in results if math.isfinite(r))
    # loose in the adversarial corners, but not absurd on the bulk of the configurations
    assert ratios[len(ratios) // 2] < 1.15, ratios
    # l_inf: exact as soon as some output sees all of its taps (inputs large compared with the kernel)
    for _, linf, exact_inf, cfg in results:
        nd, _, _, _, kernel, strides, dilations, pads, sizes, _ = cfg
        spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
        if all(n >= 2 * sp + s + max(p) for n, sp, s, p in zip(sizes, spans, strides, pads)):
            assert linf == pytest.approx(exact_inf, rel=1e-12), cfg


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("sizes,limit,count", [((8, 12), 1.10, 24), ((16, 16), 1.05, 4)], ids=["n8-12", "n16"])
def test_typical_shapes_are_tight(transpose, sizes, limit, count):
    """2-D, 3x3, pad 1, stride 1 or 2 (output_padding 0/1 for ConvTranspose): bound <= limit x exact."""
    rng, gen = random.Random(sizes[0] + transpose), torch.Generator().manual_seed(3)
    worst = 1.0
    for _ in range(count):
        s, n = rng.choice([1, 2]), rng.randint(*sizes)
        c_in, c_out = (rng.randint(1, 6), rng.randint(1, 6)) if n < 16 else (rng.randint(1, 3), rng.randint(1, 3))
        w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
        geometry = ([s, s], [1, 1], [(1, 1), (1, 1)])
        if transpose:  # w read as (c_in, c_out, 3, 3): maps c_out channels to c_in channels
            op = [rng.randint(0, s - 1)] * 2
            matrix = materialized_matrix(conv_t_map(w, *geometry, op, 1), (c_out, n, n))
            bound = conv_transpose_l2_bound(w, (n, n), *geometry, op, 1, safety=1.0)
        else:
            matrix = materialized_matrix(conv_map(w, *geometry, 1), (c_in, n, n))
            bound = conv_l2_bound(w, (n, n), *geometry, 1, safety=1.0)
        exact = l2_norm_exact(matrix, safety=1.0)
        assert exact * (1 - SLACK) <= bound <= limit * exact, (s, n, c_in, c_out, bound / exact)
        worst = max(worst, bound / exact)
    print(f"worst bound/exact {worst:.4f}")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pointwise_kernels_are_exact(nd):
    """A 1x1 conv (any stride, pad-free) is the channel matrix on every kept pixel: the bound is exact."""
    gen = torch.Generator().manual_seed(nd)
    for stride in (1, 2, 3):
        w = torch.randn(5, 3, *([1] * nd), generator=gen, dtype=torch.float64)
        sizes = (7,) * nd if nd < 3 else (4, 5, 3)
        exact = svd_norm(materialized_matrix(conv_map(w, [stride] * nd, [1] * nd, [(0, 0)] * nd, 1), (3, *sizes)))
        bound = conv_l2_bound(w, sizes, [stride] * nd, [1] * nd, [(0, 0)] * nd, 1, safety=1.0)
        assert bound == pytest.approx(exact, rel=1e-9)
        assert bound == pytest.approx(svd_norm(w.reshape(5, 3)), rel=1e-9)


def test_dft_core_equals_circular_convolution():
    """The polyphase/DFT core is the exact norm of the strided circular convolution (Sedghi et al. 2019),
    including dilation (embedded in the kernel), groups and kernels folded onto a small grid."""
    rng, gen = random.Random(5), torch.Generator().manual_seed(5)
    for _ in range(30):
        nd = rng.choice([1, 2, 3])
        groups = rng.choice([1, 2])
        c_in, c_out = groups * rng.randint(1, 2), groups * rng.randint(1, 3)
        strides = [rng.randint(1, 3) for _ in range(nd)]
        grid = [s * rng.randint(1, {1: 6, 2: 3, 3: 2}[nd]) for s in strides]
        kernel = [rng.randint(1, 2 * n) for n in grid]  # may exceed the grid: taps alias
        w = torch.randn(c_out, c_in // groups, *kernel, generator=gen, dtype=torch.float64)

        def circular(x):  # output i reads positions s i + t (mod N); repeat the input to wrap far enough
            reps = [1 + -(-(k - 1) // n) for k, n in zip(kernel, grid)]
            tiled = x.repeat(1, 1, *reps)
            return CONV[nd](tiled, w, None, strides, 0, 1, groups)[(..., *[slice(0, n // s) for n, s in
                                                                          zip(grid, strides)])]

        exact = svd_norm(materialized_matrix(circular, (c_in, *grid)))
        assert _dft_bound(w, groups, strides, grid) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_conv_transpose_matches_torch_padding_semantics():
    """The reference ConvTranspose (full, append output_padding, crop) agrees with torch's own padding."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, 3, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    for s, d, p, op in [((2, 3), (1, 1), (1, 2), (1, 2)), ((2, 2), (2, 1), (2, 0), (1, 1)),
                        ((1, 1), (1, 2), (1, 1), (0, 1))]:
        ours = conv_t_map(w, list(s), list(d), [(v, v) for v in p], list(op), 1)(x)
        ref = F.conv_transpose2d(x, w, None, s, p, op, 1, d)
        torch.testing.assert_close(ours, ref)
        bound = conv_transpose_l2_bound(w, (5, 6), s, d, [(v, v) for v in p], op, 1, safety=1.0)
        exact = svd_norm(materialized_matrix(lambda z: F.conv_transpose2d(z, w, None, s, p, op, 1, d), (3, 5, 6)))
        assert exact * (1 - SLACK) <= bound <= 1.3 * exact


def test_conv_transpose_large_crops_and_output_padding():
    """Asymmetric crops bigger than the kernel span, and output_padding alone (a zero row): upper bounds.
    (The bound is not monotone under cropping: a different grid samples different frequencies.)"""
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    for pads, op in [((5, 0), 0), ((0, 7), 1), ((6, 6), 1), ((0, 0), 1), ((12, 0), 0), ((0, 14), 1), ((0, 17), 0)]:
        matrix = materialized_matrix(conv_t_map(w, [2], [2], [pads], [op], 1), (2, 9))
        bound = conv_transpose_l2_bound(w, (9,), [2], [2], [pads], [op], 1, safety=1.0)
        exact = svd_norm(matrix)
        assert exact * (1 - SLACK) <= bound <= 1.5 * exact, (pads, op, bound, exact)


def test_zero_maps_and_defaults():
    w = torch.randn(2, 1, 3, dtype=torch.float64)
    # every output reads only padding: the map is zero
    assert conv_l2_bound(w, (1,), [5], [1], [(4, 0)], 1) == 0.0
    # defaults (strides/dilations/pads None) mean 1 / 1 / no padding
    assert conv_l2_bound(w, (6,), None, None, None, 1) == conv_l2_bound(w, (6,), [1], [1], [(0, 0)], 1)
    assert conv_l2_bound(w, (6,), [1], [1], [(0, 0)], 1) == pytest.approx(
        conv_l2_bound(w, (6,), [1], [1], [(0, 0)], 1, safety=1.0) * SAFETY)


def test_negative_pads():
    """Negative Conv pads crop the input (dead columns); negative ConvTranspose pads add zero rows."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(3, 2, 3, 2, generator=gen, dtype=torch.float64)
    for pads in [[(-1, 0), (0, -2)], [(-2, 1), (1, -1)]]:
        exact = svd_norm(materialized_matrix(conv_map(w, [1, 2], [1, 1], pads, 1), (2, 7, 8)))
        bound = conv_l2_bound(w, (7, 8), [1, 2], [1, 1], pads, 1, safety=1.0)
        assert exact * (1 - SLACK) <= bound <= 1.3 * exact
        exact = svd_norm(materialized_matrix(conv_t_map(w, [1, 2], [1, 1], pads, [0, 1], 1), (3, 5, 4)))
        bound = conv_transpose_l2_bound(w, (5, 4), [1, 2], [1, 1], pads, [0, 1], 1, safety=1.0)
        assert exact * (1 - SLACK) <= bound <= 1.3 * exact


def test_materialized_matrix_and_exact_norms():
    gen = torch.Generator().manual_seed(1)
    lin = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    matrix = materialized_matrix(lambda x: x.reshape(x.shape[0], -1) @ lin.T, (3, 4), chunk=5)
    torch.testing.assert_close(matrix, lin)
    assert l2_norm_exact(lin, safety=1.0) == pytest.approx(svd_norm(lin), rel=1e-12)
    assert l2_norm_exact(lin.T) == pytest.approx(svd_norm(lin) * SAFETY, rel=1e-12)
    assert linf_norm_exact(lin) == pytest.approx(float(lin.abs().sum(1).max()))
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    m = materialized_matrix(conv_map(w, [1, 1], [1, 1], [(1, 1), (1, 1)], 1), (3, 5, 5), chunk=7)
    x = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(m @ x.flatten(), F.conv2d(x[None], w, padding=1).flatten())


def test_speed():
    w = torch.randn(64, 64, 3, 3)
    start = time.perf_counter()
    conv_l2_bound(w, (32, 32), [1, 1], [1, 1], [(1, 1), (1, 1)], 1)
    assert time.perf_counter() - start < 5.0  # ~0.25 s on 2 CPU cores; loose for loaded CI machines


@pytest.mark.slow
def test_vnncomp_oval21_conv_layers():
    """The real Conv layers of the VNN-COMP oval21 base model: the bound within 1.25x of the exact norm."""
    root = shared_dir()
    path = root / "zoo" / "oval21" / "cifar_base_kw.onnx" if root else None
    if path is None or not path.is_file():
        pytest.skip("third-party model absent: ../shared/zoo/oval21/cifar_base_kw.onnx")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    sizes = tuple(d.dim_value for d in dims[2:])
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for node in convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = inits[node.input[1]].to(torch.float64)
        nd = w.dim() - 2
        strides, dilations = attrs.get("strides", [1] * nd), attrs.get("dilations", [1] * nd)
        flat = attrs.get("pads", [0] * 2 * nd)
        pads, groups = [(flat[i], flat[i + nd]) for i in range(nd)], attrs.get("group", 1)
        matrix = materialized_matrix(conv_map(w, strides, dilations, pads, groups), (w.shape[1] * groups, *sizes))
        exact = l2_norm_exact(matrix, safety=1.0)
        bound = conv_l2_bound(w, sizes, strides, dilations, pads, groups)
        assert exact <= bound <= 1.25 * exact, (node.name, bound, exact)
        assert conv_linf_bound(w, groups) == pytest.approx(linf_norm_exact(matrix), rel=1e-12)
        sizes = tuple((n + b + e - d * (k - 1) - 1) // s + 1
                      for n, (b, e), s, d, k in zip(sizes, pads, strides, dilations, w.shape[2:]))
