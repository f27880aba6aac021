"""Local certificates: seconds and median certified radius of each method on the zoo's image classifiers.

    .venv/bin/python benchmarks/local_certify.py [--limit 100] [--norm 2] [--attack] [MODEL.onnx=DATA ...]
        [--methods lmt-pairwise,liplt,ibp,bcp,local,best]

For each model and method: wall seconds of `lipverify certify` (model import, bounds, logits and radii; the
bisections run on all inputs at once), inputs per second, and the median certified radius over correctly
classified inputs; with --attack, the PGD attack's median radius and the median ratio certified / attack for
``best``. The issue's target: mnist-net_256x2, 100 MNIST test images, l2, best: median >= 0.13 in < 60 s.
MNIST models read ../shared/data/mnist, the CIFAR-10 models the centres of their VNN-LIB properties.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from common import zoo_dir  # noqa: E402  (puts the repo on sys.path)
from verifier.commands.certify_run import run_certify  # noqa: E402

DEFAULT = [("mnist_fc/mnist-net_256x2.onnx", "mnist"), ("eran/mnist_relu_9_200.onnx", "mnist"),
           ("eran/ffnnSIGMOID__Point_6x200.onnx", "mnist"), ("verivital/Convnet_maxpool.onnx", "mnist"),
           ("verivital/Convnet_avgpool.onnx", "mnist"), ("oval21/cifar_base_kw.onnx", "oval21/vnnlib"),
           ("cifar10_resnet/resnet_2b.onnx", "cifar10_resnet/vnnlib"),
           ("marabou-cifar10/cifar10_small.onnx", "marabou-cifar10/vnnlib")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", help="MODEL.onnx=DATA (default: the zoo's image classifiers)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--norm", default="2", choices=["2", "inf"])
    parser.add_argument("--methods", default="lmt-pairwise,liplt,ibp,bcp,local,best")
    parser.add_argument("--attack", action="store_true", help="also attack (PGD) for the best method")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    zoo = zoo_dir()
    pairs = [tuple(p.split("=", 1)) for p in args.pairs] or [
        (str(zoo / m), str(zoo.parent / "data" / "mnist") if d == "mnist" else str(zoo / d)) for m, d in DEFAULT]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, l{args.norm}, "
          f"first {args.limit} inputs")
    print(f"{'model':<34}{'method':<14}{'seconds':>9}{'inputs/s':>10}{'median':>11}{'attack':>9}{'ratio':>8}")
    for model, data in pairs:
        if not Path(model).exists() or not Path(data).exists():
            print(f"{model}: absent, skipped")
            continue
        for method in args.methods.split(","):
            attack = args.attack and method == "best"
            start = time.perf_counter()
            try:
                r = run_certify(model, data, norm=args.norm, method=method, limit=args.limit, device=args.device,
                                attack=attack)
            except Exception as e:  # a method that does not apply to this model
                print(f"{Path(model).name[:33]:<34}{method:<14}  n/a: {str(e)[:70]}")
                continue
            seconds = time.perf_counter() - start
            med = r["median_radius"]
            extra = (f"{r['attack_median_radius']:>9.4f}{r['attack_median_ratio']:>8.3f}" if attack
                     and r.get("attack_median_ratio") is not None else "")
            print(f"{Path(model).name[:33]:<34}{method:<14}{seconds:>9.2f}{r['n'] / seconds:>10.1f}"
                  f"{med if med is not None else math.nan:>11.5f}{extra}")


if __name__ == "__main__":
    main()
