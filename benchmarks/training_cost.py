"""Seconds per training step of each method relative to standard training: same model, batch and data.

    .venv/bin/python benchmarks/training_cost.py [--arch 4C3F] [--width 0.25] [--batch 128] [--steps 30]

Targets (issue 6): LMT <= 1.3x, BCP and CRM <= 3x standard. Each method runs ``--steps`` optimizer steps (loss,
backward, Adam) on Fashion-MNIST-shaped batches (the real training images when ../shared/data is there,
random pixels otherwise, which costs the same), after 3 warm-up steps, in ``--rounds`` rounds that interleave
the methods (a shared machine's speed drifts by tens of percent over a minute); the median step time is
reported.
The held-out evaluation after each epoch is not part of training time (``lipverify train`` reports it apart).

Reference rows (not training methods):
- ``ibp-floor``: the box half of BCP alone, i.e. plain interval bound propagation (IBP, Gowal et al.) through
  the same walk, with no Lipschitz ball, no power iteration and no problem (11): the clean forward plus the
  centre (W c) and radius (|W| r) passes that any box-based loss needs, each differentiated. BCP cannot cost
  less than that; ``bcp / ibp-floor`` is what BCP's ball adds.
- ``three-passes``: the same three passes in plain torch (the ``training.arch`` module: clean, W c + b and
  |W| r through every layer, ReLU on the first two) with no box arithmetic at all: the cost of the layers
  themselves, which no box-based loss can go below whatever its element-wise code.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import ROOT  # noqa: F401  (puts the repo on sys.path)
from frontends.onnx_import import load_onnx  # noqa: E402
from training.arch import build, to_onnx  # noqa: E402
from training.losses import METHODS, Loss, Step  # noqa: E402
from training.run import find_fashion_mnist  # noqa: E402
from verifier.engines.bcp import BallBounds, walk  # noqa: E402
from verifier.box import Box  # noqa: E402
from verifier.rounding import training_arithmetic  # noqa: E402
from verifier.ir import inference_mode  # noqa: E402

TARGETS = {"lmt": 1.3, "crm": 3.0, "bcp": 3.0}
FLOOR, PASSES = "ibp-floor", "three-passes"


class IBPFloor:
    """The reference loss: 0.5 CE(z) + 0.5 CE(worst logits of the IBP box), through ``verifier.engines.bcp.walk``."""

    def __init__(self, module) -> None:
        self.module, self.output = module, module.graph.logits_tensor()

    def __call__(self, x, y, step):
        nodes = list(self.module.graph.nodes())
        with inference_mode(nodes), training_arithmetic():
            z = self.module(x).reshape(len(x), -1)
            box = walk(self.module, BallBounds(), Box.ball(x, step.eps, step.lower, step.upper), {}, None, self.output,
                       grad=True)[self.output]
        lo, hi = box.lo.reshape(len(x), -1), box.hi.reshape(len(x), -1)
        worst = hi.scatter(1, y[:, None], lo.gather(1, y[:, None]))
        return 0.5 * F.cross_entropy(z, y) + 0.5 * F.cross_entropy(worst, y), z


class ThreePasses:
    """The reference loss: CE(z) + CE(c + r) after the plain passes c <- relu(W c + b), r <- |W| r."""

    def __init__(self, net: torch.nn.Sequential) -> None:
        self.net = net

    def __call__(self, x, y, step):
        z = self.net(x)
        c, r = x, torch.full_like(x, float(step.eps))
        for layer in self.net:
            if isinstance(layer, torch.nn.Conv2d):
                c, r = layer(c), F.conv2d(r, layer.weight.abs(), None, layer.stride, layer.padding)
            elif isinstance(layer, torch.nn.Linear):
                c, r = layer(c), F.linear(r, layer.weight.abs())
            else:
                c, r = layer(c), (r if isinstance(layer, torch.nn.ReLU) else layer(r))
        return F.cross_entropy(z, y) + F.cross_entropy(c + r, y), z


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


class Runner:
    """One method's model, loss and optimizer, stepping through the shared batches."""

    def __init__(self, method: str, arch: str, width: float, data, eps: float) -> None:
        torch.manual_seed(0)
        net = build(arch, (1, 28, 28), 10, width)
        self.module = net if method == PASSES else load_onnx(to_onnx(net, (1, 28, 28)))
        self.module.train()
        self.loss = ThreePasses(net) if method == PASSES else IBPFloor(self.module) if method == FLOOR else \
            Loss(self.module, method)
        self.opt = torch.optim.Adam(self.module.parameters(), lr=1e-3)
        self.step = Step(eps, 1.0 if method != "bcp" else 0.5, torch.zeros(1, 28, 28), torch.ones(1, 28, 28))
        self.data, self.i, self.times = data, 0, []

    def run(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            x, y = self.data[self.i % len(self.data)]
            self.i += 1
            start = time.perf_counter()
            value, _ = self.loss(x, y, self.step)
            self.opt.zero_grad()
            value.backward()
            self.opt.step()
            if record:
                self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="4C3F")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds the steps are split into")
    parser.add_argument("--eps", type=float, default=1.0)
    args = parser.parse_args()
    data = batches(args.batch, 16)
    runners = {m: Runner(m, args.arch, args.width, data, args.eps) for m in (*METHODS, FLOOR, PASSES)}
    for r in runners.values():
        r.run(3, record=False)  # warm-up
    # rounds of a few steps per method, interleaved, so that drifts of the machine's speed hit all alike
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for r in runners.values():
            r.run(per_round)
    print(f"{args.arch} width {args.width}, batch {args.batch}, {torch.get_num_threads()} threads; median of "
          f"{args.rounds} x {per_round} steps per method, interleaved")
    base = statistics.median(runners["standard"].times)
    print(f"{'method':<16} {'s/step':>8} {'ratio':>6}  target")
    for method, r in runners.items():
        seconds = statistics.median(r.times)
        target = TARGETS.get(method)
        verdict = "" if target is None else f"<= {target}x: {'met' if seconds / base <= target else 'MISSED'}"
        if method == "bcp":
            verdict += f" ({seconds / statistics.median(runners[FLOOR].times):.2f}x {FLOOR})"
        if method == FLOOR:
            verdict = "reference: interval propagation alone (see the docstring)"
        if method == PASSES:
            verdict = "reference: the layers' three passes alone, no box arithmetic"
        print(f"{method:<16} {seconds:>8.4f} {seconds / base:>6.2f}  {verdict}")


if __name__ == "__main__":
    main()
