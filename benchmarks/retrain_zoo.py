"""Retrain a third-party zoo model robustly and compare its certified radii before and after.

    .venv/bin/python benchmarks/retrain_zoo.py [--model mnist_fc/mnist-net_256x2.onnx] [--method lmt]
        [--eps 1.0] [--epochs 5] [--out /tmp/retrained.onnx]

Only the MNIST *test* set is available here, so the model is retrained on its first 8,000 images and both
versions are certified on held-out images from the last 2,000 (``--check`` of them). The exported file must
keep the node list, match onnxruntime, and certify larger radii (lmt-pairwise and BCP, l2, [0, 1] pixels).
"""
from __future__ import annotations

import argparse
import json
import math

import onnx
import torch

from common import zoo_dir  # noqa: E402  (puts the repo on sys.path)
from frontends.data import load_dataset  # noqa: E402
from frontends.onnx_import import load_onnx  # noqa: E402
from training.loop import TrainConfig  # noqa: E402
from training.run import run_train  # noqa: E402
from verifier.engines.bcp import bcp_radii  # noqa: E402
from verifier.problem import RadiusProblem  # noqa: E402
from verifier.certificates.methods import certified_radii  # noqa: E402
from verifier.certificates.certify import compute_bounds  # noqa: E402


def radii(path: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    module = load_onnx(path)
    bounds = compute_bounds(module, 2.0, input_dim=math.prod(module.graph.sample_shape))
    with torch.no_grad():
        z = module(x).reshape(len(x), -1)
    prop2 = certified_radii(z, y, bounds, 2.0, "lmt-pairwise").double()
    lo, hi = torch.zeros(module.graph.sample_shape), torch.ones(module.graph.sample_shape)
    bcp = bcp_radii(module, bounds.l2, RadiusProblem(x, y, 2.0, lo, hi), start=prop2.float())
    return {"clean": (z.argmax(1) == y).double(), "lmt-pairwise": prop2, "bcp": bcp}


def summary(r: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {"clean_accuracy": float(r["clean"].mean())}
    for k in ("lmt-pairwise", "bcp"):
        out[f"{k} median radius"] = float(r[k].median())
        for e in (0.1, 0.5, 1.0):
            out[f"{k} certified@{e}"] = float((r[k] >= e).double().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_fc/mnist-net_256x2.onnx")
    parser.add_argument("--method", default="lmt")
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--check", type=int, default=500)
    parser.add_argument("--out", default="/tmp/retrained.onnx")
    args = parser.parse_args()
    model = str(zoo_dir() / args.model)
    data_dir = str(zoo_dir().parent / "data" / "mnist")
    report = run_train(model, data_path=data_dir, split="test", val=2000, out=args.out,
                       config=TrainConfig(method=args.method, eps=args.eps, epochs=args.epochs), progress=True)
    sample = load_onnx(model).graph.sample_shape
    data = load_dataset(data_dir, sample, split="test")
    x, y = data.x[-2000:][:args.check], data.y[-2000:][:args.check]
    before, after = summary(radii(model, x, y)), summary(radii(args.out, x, y))
    nodes = [n.op_type for n in onnx.load(args.out).graph.node]
    print(json.dumps({"model": args.model, "method": args.method, "epochs": args.epochs, "seconds": report["seconds"],
                      "export": report["export"], "nodes": nodes, "before": before, "after": after}, indent=1))


if __name__ == "__main__":
    main()
