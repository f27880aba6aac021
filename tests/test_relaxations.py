"""The activations' linear relaxations (``Activation.lines``, ``verifier.relaxations``): on boxes narrow and
wide, around every kink and turning point, the lower line lies below the function and the upper line above it
at every point of a dense grid of the box (its ends and the turning points included); on narrow boxes of smooth
activations the two lines are within second-order distance of each other."""
from __future__ import annotations

import pytest
import torch

from verifier.box import Box
from verifier.ops.activations import Activation, Relu

from .cases.boxes import module_of
from .cases.ops import ACTIVATIONS

#: interior points where some activation has a kink or turns (ReLU-like, HardSwish, GELU's minimum, Clip's ends,
#: HardSigmoid's corners, SiLU's and Mish's minima and the turns of their slopes)
TURNS = (0.0, -1.5, 1.5, -0.75179152469356446, -1.0, 0.5, -0.7, -2.5, 2.5, -1.2784645427610738, 2.3993572805154677,
         -2.3993572805154677, -1.1924312145154952, -2.256376396360793, 1.4905711794854285)
WIDTHS = (0.0, 1e-3, 0.3, 2.0, 12.0)
SMOOTH = ("Sigmoid", "Tanh", "Softplus", "Erf", "Gelu-opset20", "Gelu-opset20-approximatenone", "Mish-opset18",
          "Swish-opset24", "Swish-opset24-alpha1.7", "Swish-opset24-alpha0.3", "SiLU-pattern", "Mish-pattern")


def _activation(spec):
    module = module_of(spec).double()
    node = next(n for n in module.graph.nodes() if isinstance(n.op, Activation))
    return module, node


def _boxes(shape, gen):
    """Boxes of every width in WIDTHS: random centres in [-6, 6], and boxes with an end or centre at a turn."""
    boxes = []
    for w in WIDTHS:
        c = (torch.rand((2, *shape), generator=gen, dtype=torch.float64) - 0.5) * 12
        at = torch.tensor(TURNS, dtype=torch.float64)[torch.randint(len(TURNS), (3, *shape), generator=gen)]
        c = torch.cat([c, at, at - w / 2, at + w / 2])
        boxes.append((c - w / 2, c + w / 2))
    lo = torch.cat([b[0] for b in boxes])
    hi = torch.cat([b[1] for b in boxes])
    return lo, hi


def _grid(lo, hi, count=257):
    t = torch.linspace(0, 1, count, dtype=torch.float64).reshape(-1, *[1] * lo.dim())
    pts = lo + (hi - lo) * t
    turns = torch.tensor(TURNS, dtype=torch.float64).reshape(-1, *[1] * lo.dim())
    inside = torch.minimum(torch.maximum(turns.expand(-1, *lo.shape), lo), hi)
    return torch.cat([pts, lo[None], hi[None], inside])


@pytest.mark.parametrize("spec", [pytest.param(c, id=c["id"], marks=c["marks"]) for c in ACTIVATIONS])
def test_activation_lines_hold_on_a_dense_grid(spec):
    module, node = _activation(spec)
    gen = torch.Generator().manual_seed(11)
    shape = module.graph.shapes[node.inputs[0]][1:]
    lo, hi = _boxes(shape, gen)
    box = Box.from_bounds(lo, hi)
    args = module.node_args(node, {node.inputs[0]: box})
    (a_l, b_l), (a_u, b_u) = node.op.lines(box, tuple(args[1:]))
    pts = _grid(box.lo, box.hi)
    with torch.no_grad():
        f = node.op.forward(pts.reshape(-1, *shape), *args[1:]).reshape(pts.shape)
    tol = 1e-13 * (1 + f.abs() + pts.abs())
    below = (a_l * pts + b_l - f - tol).max()
    above = (f - (a_u * pts + b_u) - tol).max()
    assert float(below) <= 0, f"{spec['id']}: the lower line is above the function by {float(below):.3g}"
    assert float(above) <= 0, f"{spec['id']}: the upper line is below the function by {float(above):.3g}"
    if isinstance(node.op, Relu):
        return
    op_type = node.op.op_type
    narrow = ((box.hi - box.lo) <= 1.5e-3) & (box.hi > box.lo)
    gap = ((a_u - a_l) * pts + (b_u - b_l)).amax(0)
    # second order: |f''| w^2 / 8 and rounding, far below w = 1e-3
    if spec["id"].startswith(SMOOTH) and "tanh" not in spec["id"]:
        assert float(gap[narrow].max()) <= 1e-6, f"{op_type}: lines {float(gap[narrow].max()):.3g} apart"


def test_relu_lines_are_the_triangle():
    """ReLU keeps CROWN's triangle: on boxes across 0 the upper line is the chord, exactly where it is."""
    spec = next(c for c in ACTIVATIONS if c["id"].startswith("Relu"))
    module, node = _activation(spec)
    shape = module.graph.shapes[node.inputs[0]][1:]
    lo = -torch.rand((2, *shape), dtype=torch.float64) - 0.1
    hi = torch.rand((2, *shape), dtype=torch.float64) + 0.1
    box = Box.from_bounds(lo, hi)
    lam = -torch.ones((2, *shape), dtype=torch.float64)  # one row per sample: only upper lines
    coeffs, bias = node.op.linear([box], [lam])
    chord = box.hi / (box.hi - box.lo)
    assert torch.allclose(-coeffs[0], chord, rtol=1e-15)
    assert torch.allclose(-bias, (chord * -box.lo).flatten(1).sum(1), rtol=1e-8)  # + rounding allowances
