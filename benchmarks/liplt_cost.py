"""LipLT against the naive bound on deep chains: seconds and bounds as the depth grows.

    .venv/bin/python benchmarks/liplt_cost.py [--width 128] [--depths 2,4,8,16,32]

Random ReLU MLPs (input 784, ``width`` hidden units per layer, 10 classes, He-initialized), exported to ONNX and
imported. For each depth: seconds of the naive bound (``verifier.engines.lipschitz``) and of LipLT
(``verifier.engines.liplt``, which includes the naive one), the mean pairwise bounds L_ij, and their ratio. LipLT
needs O(L^2) matrix norms (eq. 19): one batched back-propagation per activation layer gives all of its L Jacobians at once, so the
passes grow as O(L) and the SVDs as O(L^2).
"""
from __future__ import annotations

import argparse
import io
import time
import warnings

import onnx
import torch
from torch import nn

from common import ROOT  # noqa: F401,E402  (puts the repo on sys.path)
from frontends import load_onnx  # noqa: E402
from verifier.engines.liplt import liplt  # noqa: E402
from verifier.engines.lipschitz import graph_lipschitz  # noqa: E402


def mlp(depth: int, width: int) -> nn.Module:
    torch.manual_seed(depth)
    layers: list[nn.Module] = [nn.Flatten()]
    d = 784
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depths", default="2,4,8,16,32")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ReLU MLPs 784-{args.width}x L-10")
    print(f"{'depth':>6}{'naive s':>10}{'LipLT s':>10}{'naive L_ij':>14}{'LipLT L_ij':>14}{'ratio':>8}")
    for depth in (int(d) for d in args.depths.split(",")):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(mlp(depth, args.width), (torch.zeros(1, 1, 28, 28),), buffer, dynamo=False,
                              opset_version=13, input_names=["x"], dynamic_axes={"x": {0: "N"}})
        module = load_onnx(onnx.load_from_string(buffer.getvalue()))
        start = time.perf_counter()
        naive = graph_lipschitz(module, 2.0)
        t_naive = time.perf_counter() - start
        start = time.perf_counter()
        report = liplt(module, 2.0)
        t_liplt = time.perf_counter() - start
        off = ~torch.eye(10, dtype=torch.bool)
        a, b = float(report.naive_pairwise[off].mean()), float(report.raw_pairwise[off].mean())
        print(f"{depth:>6}{t_naive:>10.2f}{t_liplt:>10.2f}{a:>14.5g}{b:>14.5g}{a / b:>8.2f}")
        del naive


if __name__ == "__main__":
    main()
