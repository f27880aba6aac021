"""Box-rule cases and helpers: every op case with a box rule, a case as a module, random boxes and points
sampled in them, and the zoo models with inputs (run by ``test_box.py`` and ``test_jacobian.py``)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from frontends import load_onnx
from verifier.box import Box
from verifier.engines.ibp import propagate
from verifier.errors import NoRuleError

from ..conftest import shared_dir, zoo_models
from ..onnx_graphs import case, make_model, node
from .ops import ACTIVATIONS, BN, CONV, CONVT, MATMUL, elementwise_cases, gemm_cases, pool_cases
from .shape import (CONCAT, FLATTEN, PAD, RESHAPE, SLICE, TRANSPOSE, gather_cases, reduce_cases, softmax_cases,
                    split_cases, squeeze_cases)


# the thresholded Softplus of dynamo exporters (Where(x > t, x, Softplus(x)), one node in the IR): the jump
SOFTPLUS_T = [case(f"Softplus-threshold{t}", [node("Softplus", ["x"], ["sp"]), node("Greater", ["x", "t"], ["gt"]),
                                              node("Where", ["gt", "x", "sp"])], [6], {"t": np.float32(t)},
                   opset=18, affine=(0.5, s)) for t, s in ((0.5, 60.0), (20.0, 400.0))]


CASES = (gemm_cases() + MATMUL + CONV + CONVT + BN + ACTIVATIONS + SOFTPLUS_T + pool_cases() + elementwise_cases()
         + FLATTEN + RESHAPE + TRANSPOSE + squeeze_cases() + CONCAT + split_cases() + SLICE + gather_cases() + PAD
         + reduce_cases() + softmax_cases())


def module_of(spec):
    return load_onnx(make_model(spec["nodes"], spec["sample_shape"], spec["inits"], spec["opset"],
                                spec["batches"][0], spec["affine"]))


def random_bounds(shape, gen, boxes=2, width=0.1):
    """Boxes inside [0, 1) (the parity input range, which every case is built for): centres in [0.1, 0.9],
    radii in [0, width), a few exactly 0."""
    c = 0.1 + 0.8 * torch.rand((boxes, *shape), generator=gen)
    r = width * torch.rand((boxes, *shape), generator=gen)
    r = torch.where(torch.rand(r.shape, generator=gen) < 0.1, torch.zeros_like(r), r)
    return c - r, c + r


def case_boxes(spec, seed: int):
    """A case's float64 module, a generator, random input boxes [lo, hi] and the forward boxes up to its output,
    for the backward rules (gradient boxes, linear bounds); skips per-sample graphs, cases without a box rule and
    integer outputs."""
    module = module_of(spec).double()
    g = module.graph
    if not g.batched or not g.leading_batch:
        pytest.skip("per-sample graph: the backward rules need batched models")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (t.double() for t in random_bounds(g.sample_shape, gen))
    try:
        env = propagate(module, Box.from_bounds(lo, hi), upto=g.output_name)
    except NoRuleError:
        pytest.skip("no box rule for this case")
    out = env[g.output_name]
    if out.integer or not out.center.is_floating_point():
        pytest.skip("integer output")
    return module, gen, lo, hi, env


def sample_points(lo, hi, gen, count=64):
    """Points of the float boxes [lo, hi] (shape (B, ...)) -> (count, B, ...): every corner when there are
    at most ``count`` of them, else half random corners and half uniform points; clamped into [lo, hi]."""
    n = lo[0].numel()
    if 2 ** n <= count:
        signs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=lo.dtype)
        t = signs.reshape(-1, 1, *lo.shape[1:]).expand(-1, *lo.shape)
    else:
        corners = (torch.rand((count // 2, *lo.shape), generator=gen) < 0.5).to(lo.dtype)
        inner = torch.rand((count - count // 2, *lo.shape), generator=gen)
        t = torch.cat([corners, inner])
    x = lo + (hi - lo) * t
    return torch.maximum(torch.minimum(x, hi), lo)


def outputs(module, points):
    """The IR forward of points (S, B, ...) -> (S, B, ...)."""
    s, b = points.shape[:2]
    with torch.no_grad():
        y = module(points.reshape(s * b, *points.shape[2:]))
    return y.reshape(s, b, *y.shape[1:])


def assert_inside(box: Box, y: torch.Tensor, what: str):
    y = y.to(box.dtype)
    lo, hi = box.lo, box.hi
    below, above = y < lo, y > hi
    assert not bool(below.any()) and not bool(above.any()), (
        f"{what}: {int(below.sum() + above.sum())} sample outputs outside the box, by up to "
        f"{float(torch.maximum(lo - y, y - hi).max()):.3g}")


# --- exactness ------------------------------------------------------------------------------------------------
ELEMENTWISE_CHAINS = ACTIVATIONS + BN + [c for c in elementwise_cases()
                                         if "-const-" in c["id"] or c["id"].startswith(("Neg", "normalize"))]


#: where the activations turn (Relu-like kinks, HardSwish, GELU in both forms, SiLU / Swish with alpha 1.7 and
#: 0.3, Mish), as inputs of the SIGNED prefix x -> (x - 0.5) * 6 of the activation cases
SILU_MIN = -1.2784645427610738
TURNS = [0.5 + p / 6 for p in (0.0, -1.5, -0.75179152469356446, -0.75246142207101626, SILU_MIN, SILU_MIN / 1.7,
                               SILU_MIN / 0.3, -1.1924312145154952)]


AFFINE = [c for c in gemm_cases() + MATMUL[:-1] + CONV + CONVT + pool_cases() + reduce_cases()
          if c["id"].startswith(("Gemm", "MatMul", "Conv", "AveragePool", "GlobalAveragePool", "ReduceMean",
                                 "ReduceSum")) and c["batched"]]


# --- whole models --------------------------------------------------------------------------------------------
ZOO = zoo_models()


ZOO_PARAMS = [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in ZOO] or [
    pytest.param(None, marks=pytest.mark.skip(reason="third-party models absent: no ../shared/zoo "
                                                    "(set LIPVERIFY_SHARED to the shared folder)"))]


def zoo_inputs(module, path, count=4):
    """The first MNIST test images for MNIST models (when ../shared/data/mnist exists), else uniform [0, 1)."""
    root = shared_dir()
    shape = module.graph.sample_shape
    if root is not None and math.prod(shape) == 784 and (root / "data" / "mnist").is_dir():
        from frontends.data import load_dataset

        return load_dataset(root / "data" / "mnist", shape, limit=count).x
    return torch.rand((count, *shape), generator=torch.Generator().manual_seed(5))
