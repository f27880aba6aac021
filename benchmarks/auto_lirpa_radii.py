"""auto_LiRPA's certified radii on given inputs, for ``benchmarks/crown.py`` (run by an interpreter where
auto_LiRPA and onnx2torch import; it never imports lipverify).

    PYTHON benchmarks/auto_lirpa_radii.py MODEL.onnx INPUTS.npz METHOD

INPUTS.npz holds ``x`` (model space, batch first), ``y`` and ``norm`` (2 or inf); METHOD is auto_LiRPA's name
(CROWN, alpha-CROWN, IBP). The radius search is lipverify's (``verifier.engines.search``): from 1e-3, x4 while
the margins are proved, then 20 bisection steps, all inputs at once. Prints one JSON line: radii, seconds.
"""
from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import onnx
import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm
from onnx2torch import convert

STEPS = 20


def margins_proved(model: BoundedModule, x: torch.Tensor, c: torch.Tensor, norm: float, eps: torch.Tensor,
                   method: str) -> torch.Tensor:
    """Per input, whether every margin is proved at its eps: one batch when auto_LiRPA takes one eps per input
    (l2: shape (B, 1); l_inf: broadcast to x), else input by input with a scalar eps (its convolutions' l2 rule
    takes only a scalar)."""
    shape = (-1, 1) if norm == 2 else (-1,) + (1,) * (x.dim() - 1)
    try:
        ptb = PerturbationLpNorm(norm=norm, eps=eps.reshape(shape).to(x.dtype))
        lb, _ = model.compute_bounds(x=(BoundedTensor(x, ptb),), C=c, method=method, bound_upper=False)
        return (lb > 0).all(dim=1)
    except (AssertionError, IndexError, RuntimeError):
        out = []
        for i in range(len(x)):
            ptb = PerturbationLpNorm(norm=norm, eps=float(eps[i]))
            lb, _ = model.compute_bounds(x=(BoundedTensor(x[i:i + 1], ptb),), C=c[i:i + 1], method=method,
                                         bound_upper=False)
            out.append(bool((lb > 0).all()))
        return torch.tensor(out)


def radii(model: BoundedModule, x: torch.Tensor, y: torch.Tensor, norm: float, method: str) -> torch.Tensor:
    k = int(model(x).shape[1])
    eye = torch.eye(k)
    c = torch.stack([eye[int(t)][None] - eye[[j for j in range(k) if j != int(t)]] for t in y])  # (B, K-1, K)
    lo = torch.zeros(len(y), dtype=torch.float64)
    hi = torch.full((len(y),), 1e-3, dtype=torch.float64)
    for _ in range(40):
        good = margins_proved(model, x, c, norm, hi, method)
        if not bool(good.any()):
            break
        lo = torch.where(good, hi, lo)
        hi = torch.where(good, hi * 4, hi)
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        good = margins_proved(model, x, c, norm, mid, method)
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    return lo


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model_path, inputs_path, method = sys.argv[1:4]
    data = np.load(inputs_path)
    x, y, norm = torch.tensor(data["x"]), torch.tensor(data["y"]), float(data["norm"])
    net = convert(onnx.load(model_path)).eval()
    bounded = BoundedModule(net, torch.zeros_like(x), device="cpu", verbose=False)
    start = time.perf_counter()
    r = radii(bounded, x, y, norm, method)
    print(json.dumps({"radii": r.tolist(), "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
