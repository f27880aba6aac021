"""Seconds per training step of each method relative to standard training: same model, batch and data.

    .venv/bin/python benchmarks/training_cost.py [--arch 4C3F] [--width 0.25] [--batch 128] [--steps 30]

Targets (issue 6): LMT <= 1.3x, BCP and CRM <= 3x standard. Each method runs ``--steps`` optimizer steps (loss,
backward, Adam) on Fashion-MNIST-shaped batches (the real training images when ../shared/data is there,
random pixels otherwise, which costs the same), after 3 warm-up steps; the median step time is reported.
The held-out evaluation after each epoch is not part of training time (``lipverify train`` reports it apart).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import ROOT  # noqa: F401  (puts the repo on sys.path)
from frontends.onnx_import import load_onnx  # noqa: E402
from training.arch import build, to_onnx  # noqa: E402
from training.losses import METHODS, Loss, Step  # noqa: E402
from training.run import find_fashion_mnist  # noqa: E402

TARGETS = {"lmt": 1.3, "crm": 3.0, "bcp": 3.0}


def batches(batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    folder = find_fashion_mnist()
    gen = torch.Generator().manual_seed(0)
    if folder is not None:
        from frontends.idx import load_idx_split

        x, y = load_idx_split(folder, "train")
        x, y = torch.from_numpy(x[:batch * count, None]).float(), torch.from_numpy(y[:batch * count]).long()
    else:
        x, y = torch.rand(batch * count, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch * count,),
                                                                                   generator=gen)
    return list(zip(x.split(batch), y.split(batch)))


def time_method(method: str, arch: str, width: float, data, eps: float) -> float:
    torch.manual_seed(0)
    module = load_onnx(to_onnx(build(arch, (1, 28, 28), 10, width), (1, 28, 28)))
    module.train()
    loss = Loss(module, method)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    step = Step(eps, 1.0 if method != "bcp" else 0.5, torch.zeros(1, 28, 28), torch.ones(1, 28, 28))
    times = []
    for i, (x, y) in enumerate(data):
        start = time.perf_counter()
        value, _ = loss(x, y, step)
        opt.zero_grad()
        value.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="4C3F")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eps", type=float, default=1.0)
    args = parser.parse_args()
    data = batches(args.batch, args.steps + 3)
    print(f"{args.arch} width {args.width}, batch {args.batch}, {torch.get_num_threads()} threads; median of "
          f"{args.steps} steps")
    base = None
    print(f"{'method':<16} {'s/step':>8} {'ratio':>6}  target")
    for method in METHODS:
        seconds = time_method(method, args.arch, args.width, data, args.eps)
        base = base or seconds
        target = TARGETS.get(method)
        verdict = "" if target is None else f"<= {target}x: {'met' if seconds / base <= target else 'MISSED'}"
        print(f"{method:<16} {seconds:>8.4f} {seconds / base:>6.2f}  {verdict}")


if __name__ == "__main__":
    main()
