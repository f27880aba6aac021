"""Certification throughput against plain onnxruntime inference on the same model and batch.

    .venv/bin/python benchmarks/certify_throughput.py [MODEL.onnx ...] [--batch 256] [--repeats 5]
        [--method lmt-pairwise] [--device cpu]

For each model: images per second of onnxruntime inference, of global certification (logits plus radii; the
Lipschitz bounds are computed once per model and reported separately, as a certificate deployment would cache
them), and their ratio (target >= 0.5x). Without model arguments: the bundled models and the zoo's image
classifiers.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, best_of, zoo_dir  # noqa: E402  (puts the repo on sys.path)
from frontends import load_onnx, read_model  # noqa: E402
from verifier.certificates.methods import certified_radii  # noqa: E402
from frontends.parity import reference_forward, reference_runner  # noqa: E402
from verifier.commands.logits import LogitEngine, batched_logits  # noqa: E402
from verifier.certificates.certify import compute_bounds  # noqa: E402

CLASSIFIERS = ["mnist_fc/mnist-net_256x2.onnx", "eran/mnist_relu_9_200.onnx", "oval21/cifar_base_kw.onnx",
               "cifar10_resnet/resnet_2b.onnx", "verivital/Convnet_maxpool.onnx", "marabou-cifar10/cifar10_small.onnx"]


def default_models() -> list[Path]:
    return sorted(ROOT.glob("models/*.onnx")) + [zoo_dir() / c for c in CLASSIFIERS if (zoo_dir() / c).exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="lmt-pairwise", choices=["lmt", "lmt-pairwise"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {args.batch}, "
          f"method {args.method}, l2")
    print(f"{'model':<40}{'bounds s':>9}{'ORT img/s':>11}{'certify img/s':>15}{'ratio':>7}")
    print("(--device cuda runs the logits through the IR on the GPU; on the CPU, onnxruntime computes them where "
          "the file takes whole batches)")
    for path in args.models or default_models():
        model = read_model(path)
        module = load_onnx(model)
        start = time.perf_counter()
        bounds = compute_bounds(module, 2.0, input_dim=int(np.prod(module.graph.sample_shape)))
        bound_seconds = time.perf_counter() - start
        module = module.to(device)
        name, run = reference_runner(model)
        x = np.random.default_rng(0).random((args.batch, *module.graph.sample_shape)).astype(np.float32)
        xt = torch.from_numpy(x)
        engine = LogitEngine(module, device, model)
        y = batched_logits(module, xt, args.batch, device, engine=engine).argmax(1)
        method = args.method if bounds.l2.last_matrix is not None else "lmt"

        def certify() -> None:
            logits = batched_logits(module, xt, args.batch, device, engine=engine)
            certified_radii(logits, y, bounds, 2.0, method)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_ort = best_of(lambda: reference_forward(run, module, x, np.dtype(np.float32)), args.repeats)
        t_cert = best_of(certify, args.repeats)
        label = f"{path.parent.name}/{path.name}"[-39:]
        print(f"{label:<40}{bound_seconds:>9.2f}{args.batch / t_ort:>11.0f}{args.batch / t_cert:>15.0f}"
              f"{t_ort / t_cert:>7.2f}  logits: {engine.name}")


if __name__ == "__main__":
    main()
