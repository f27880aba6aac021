"""Local rows (``verifier.patches``): the window rules of 2-D convolutions and activations give the same
coefficients and biases as the dense rules (``Op.linear``) on the same rows made dense, for every 2-D Conv case
(strides, dilations, groups, asymmetric and automatic pads); the window helpers agree with dense arithmetic; and
CROWN's boxes and bounds are the same with local rows as with dense ones (the dense rules' soundness is tested
in ``test_crown.py``). Also the shortcuts of CROWN's intermediate bounds: boxes already CROWN's are skipped at
no loss (and BCP's exact rows of a first convolution), and the probe stops where CROWN does not narrow."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import verifier.engines.crown as crown
import verifier.engines.intermediate as intermediate
from frontends import load_onnx
from verifier.box import Box
from verifier.engines.ibp import propagate
from verifier.patches import Patches
from verifier.problem import LpBall, Problem

from .cases.boxes import case_boxes
from .cases.models import export
from .cases.ops import CONV
from .onnx_graphs import case, node

CONV2D = [c for c in CONV if c["id"].startswith("Conv2d")]
ACTIVATION_CASES = [case(f"{op}-4d", [node(op, ["x"])], [3, 5, 6]) for op in ("Relu", "Sigmoid", "LeakyRelu", "Tanh")]


def random_patches(shape: tuple[int, int, int], batch: int, rows: int, gen: torch.Generator,
                   window: tuple[int, int] = (3, 2), stride: tuple[int, int] = (2, 1),
                   pad: tuple[int, int] = (1, 1)) -> Patches:
    """Random windows on a grid over the tensor (some reaching past its borders), zero outside it."""
    c, h, w = shape
    grid = (max(1, (h + pad[0]) // stride[0]), max(1, (w + pad[1]) // stride[1]))
    data = torch.randn((batch * rows, c, *window), generator=gen, dtype=torch.float64)
    pos = torch.randint(0, grid[0] * grid[1], (batch, rows), generator=gen)
    return Patches(data, pos, grid, stride, pad, shape).masked()


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 1e-12) -> None:
    a, b = a.detach(), b.detach()
    tol = rel * (1 + float(a.abs().max()) + float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol, f"{what}: local and dense rows differ"


def test_windows_dense_and_dot_agree():
    gen = torch.Generator().manual_seed(0)
    p = random_patches((3, 7, 5), 2, 4, gen)
    values = torch.randn((2, 3, 7, 5), generator=gen, dtype=torch.float64)
    dense = p.dense()
    assert dense.shape == (8, 3, 7, 5)
    expected = (dense.reshape(2, 4, -1) * values.reshape(2, 1, -1)).sum(-1).reshape(-1)
    _close(p.dot(values), expected, "dot")
    # a window's entries are the dense row's entries at its positions: the windows of the dense row's own map
    assert float(p.data.abs().sum()) == pytest.approx(float(dense.abs().sum()), rel=1e-12)


def test_start_rows_are_signed_unit_rows():
    index = torch.tensor([[0, 17, 35], [5, 6, 7]])
    signs = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -1.0]], dtype=torch.float64)
    dense = Patches.start(signs, index, (2, 3, 6)).dense().reshape(2, 3, -1)
    expected = torch.zeros_like(dense).scatter_(2, index[..., None], signs[..., None])
    assert torch.equal(dense, expected)


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"]) for c in CONV2D + ACTIVATION_CASES])
def test_local_rule_equals_dense_rule(spec):
    module, gen, lo, hi, env = case_boxes(spec, 5)
    g = module.graph
    node_ = list(g.nodes())[-1]
    args = module.node_args(node_, env)
    out_shape = tuple(env[g.output_name].shape[1:])
    lam = random_patches(out_shape, len(lo), 5, gen)
    local = node_.op.linear_patches(args, lam)
    assert local is not None, f"{spec['id']} has no local rule"
    (coeffs, *_), bias = local
    (dense_coeffs, *_), dense_bias = node_.op.linear(args, [lam.dense()])
    _close(coeffs.dense(), dense_coeffs, spec["id"])
    # the same bias up to the rounding allowances, which the dense rule bounds by norms (1e-9 relative each)
    assert torch.allclose(bias, dense_bias, rtol=1e-6, atol=1e-6), spec["id"] + " bias"


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    """A small random CNN: strided, padded and dilated 2-D convolutions, ReLUs, a dense head."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=2, dilation=2),
                        nn.ReLU(), nn.Conv2d(6, 4, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5))
    path = tmp_path_factory.mktemp("patches") / "cnn.onnx"
    export(net, torch.rand(1, 2, 12, 12), path)
    return path


@pytest.fixture(scope="module")
def cnn(cnn_file):
    return load_onnx(cnn_file).float64()


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_crown_boxes_and_bounds_are_the_same_with_local_rows(cnn, norm, monkeypatch):
    """On a small CNN, CROWN tightens every ReLU input (convolutional ones by local rows): the boxes and the
    spec's bounds agree with dense rows to rounding."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((3, *cnn.graph.sample_shape), generator=gen, dtype=torch.float64)
    eps = torch.full((3,), 0.5 if norm == 2 else 0.03, dtype=torch.float64)
    with torch.no_grad():
        y = cnn(x).argmax(1)
    from verifier.problem import Conjunction
    problem = Problem(LpBall(x, eps, norm), Conjunction.robustness(y, 5))
    results = []
    for local in (True, False):
        monkeypatch.setattr(intermediate, "LOCAL_ROWS", local)
        with torch.no_grad():
            bounds = crown.spec_bounds(cnn, problem, budget=2 ** 40)
            results.append((bounds.env, bounds.low()))
    (env_l, low_l), (env_d, low_d) = results
    # equal up to the rules' rounding allowances (1e-9 relative per op; the dense ones bound theirs by norms)
    _close(low_l, low_d, "spec bounds", 1e-7)
    tightened = 0
    for name, box in env_l.items():
        if isinstance(box, Box) and not box.integer:
            _close(box.lo, env_d[name].lo, name, 1e-7)
            _close(box.hi, env_d[name].hi, name, 1e-7)
            plain = propagate(cnn, problem.inputs.box(torch.float64), upto=name)[name]
            tightened += int(bool((box.hi - box.lo < plain.hi - plain.lo - 1e-9).any()))
    assert tightened > 0, "CROWN tightened no box: the comparison tests nothing"


def test_bcp_rows_of_a_first_convolution_are_exact(cnn, monkeypatch):
    """A chain of one convolution too large to materialize gets the exact row norms of its map
    (``Op.squared_row_norms``), the same as the materialized chain matrix's."""
    import verifier.engines.bcp as bcp
    from verifier.certificates.certify import compute_bounds

    report = compute_bounds(cnn, 2.0, 2 * 12 * 12).l2
    materialized = bcp.prepare(cnn, report).ball
    monkeypatch.setattr(bcp, "MATERIALIZE_LIMIT", 0)
    computed = bcp.prepare(cnn, report).ball
    first = [t for t, src in computed.chain_input.items() if src == cnn.graph.input_name]
    assert first and set(first) <= computed.exact_rows
    for t in computed.exact_rows:  # here every chain is one convolution
        _close(computed.row_norms[t], materialized.row_norms[t], t)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_settled_boxes_are_not_tightened_and_lose_nothing(cnn, norm):
    """The first convolution's box is already CROWN's (l_inf: its interval image of the input box; l2 without a
    cutting domain: BCP's exact rows): skipping it gives the same spec bounds."""
    from verifier.certificates.certify import compute_bounds
    from verifier.engines import bcp
    from verifier.problem import Conjunction

    gen = torch.Generator().manual_seed(4)
    x = torch.rand((2, *cnn.graph.sample_shape), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = cnn(x).argmax(1)
    problem = Problem(LpBall(x, torch.full((2,), 0.4 if norm == 2 else 0.02, dtype=torch.float64), norm),
                      Conjunction.robustness(y, 5))
    ball = bcp.prepare(cnn, compute_bounds(cnn, 2.0, 2 * 12 * 12).l2).ball if norm == 2 else None
    done = intermediate.settled(cnn, problem.inputs, ball)
    first = list(cnn.graph.nodes())[0].outputs[0]
    assert first in done and bool(done[first].all())
    with torch.no_grad():
        skipped = crown.spec_bounds(cnn, problem, ball).low()
        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setattr(crown, "settled", lambda *args: {})
        try:
            full = crown.spec_bounds(cnn, problem, ball).low()
        finally:
            monkeypatch.undo()
    _close(skipped, full, "spec bounds")


def test_probe_stops_where_crown_does_not_narrow(cnn, monkeypatch):
    """Past the probe, CROWN tightens the other entries only for inputs where the probed ones narrowed enough:
    with a ratio no probe can meet, at most ``PROBE_ENTRIES`` entries per input and tensor are tightened."""
    from verifier.engines.ibp import propagate
    from verifier.problem import Conjunction

    gen = torch.Generator().manual_seed(6)
    x = torch.rand((2, *cnn.graph.sample_shape), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = cnn(x).argmax(1)
    problem = Problem(LpBall(x, torch.full((2,), 0.5, dtype=torch.float64), 2.0), Conjunction.robustness(y, 5))
    counts = {}
    for ratio in (-1.0, 2.0):
        monkeypatch.setattr(intermediate, "PROBE_RATIO", ratio)
        with torch.no_grad():
            env = intermediate.boxes(cnn, problem.inputs, budget=2 ** 40, done={})
        plain = propagate(cnn, problem.inputs.box(torch.float64))
        narrower = [((plain[t].hi - plain[t].lo) - (env[t].hi - env[t].lo) > 1e-9).flatten(1).sum(1)
                    for t in env if t in plain and t != cnn.graph.input_name and isinstance(env[t], Box)]
        counts[ratio] = narrower
    most = max(int(c.max()) for c in counts[2.0])
    assert most > intermediate.PROBE_ENTRIES, "the CNN has too few unstable entries to test the probe"
    first = counts[-1.0][0]  # the first convolution's output: later boxes narrow through the forward walk too
    assert int(first.max()) <= intermediate.PROBE_ENTRIES


def test_an_inputs_bounds_do_not_depend_on_its_batch(cnn):
    """The budget is per input: an input with many unstable entries (a large ball) beside one with few does
    not change the other's boxes or bounds."""
    from verifier.problem import Conjunction

    gen = torch.Generator().manual_seed(7)
    x = torch.rand((2, *cnn.graph.sample_shape), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = cnn(x).argmax(1)
    eps = torch.tensor([0.2, 5.0], dtype=torch.float64)
    both = Problem(LpBall(x, eps, 2.0), Conjunction.robustness(y, 5))
    alone = both[:1]
    first = list(cnn.graph.nodes())[0].outputs[0]
    with torch.no_grad():
        box = intermediate.boxes(cnn, both.inputs, budget=0)[first]
        unstable = ((box.lo < 0) & (box.hi > 0)).flatten(1).sum(1)
        assert int(unstable[1]) > int(unstable[0]) > 0
        budget = int(unstable[0]) * intermediate._prefix_entries(cnn, first)  # the first input's entries only
        low_both = crown.spec_bounds(cnn, both, budget=budget).low()
        low_alone = crown.spec_bounds(cnn, alone, budget=budget).low()
        low_none = crown.spec_bounds(cnn, alone, budget=0).low()
    _close(low_both[:1], low_alone, "bounds of the first input")
    assert bool((low_alone > low_none + 1e-9).any()), "the budget let no tightening through: the test tests nothing"


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_crown_radii_with_local_rows_survive_pgd(cnn_file, norm):
    """CROWN's radii on the small CNN (every convolutional bound through local rows) are not broken by PGD."""
    from verifier.engines.attacks import pgd
    from verifier.engines.crown import crown_radii
    from verifier.problem import RadiusProblem

    gen = torch.Generator().manual_seed(8)
    module = load_onnx(cnn_file)
    x = torch.rand((6, *module.graph.sample_shape), generator=gen)
    with torch.no_grad():
        y = module(x).argmax(1)
    balls = RadiusProblem(x, y, norm)
    radii = crown_radii(module, balls, budget=2 ** 40)
    ok = radii > 0
    assert bool(ok.any())
    _, success = pgd(module, balls[ok.nonzero()[:, 0]].at(radii[ok].float() * 0.999), steps=100, restarts=10)
    assert not bool(success.any()), "PGD broke a CROWN radius"
