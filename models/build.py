"""Build the bundled models: train them on Fashion-MNIST with plain torch, export to ONNX, write the manifest.

    .venv/bin/python models/build.py [--data FOLDER] [--epochs N] [--seed S]

The data folder defaults to ../shared/data/fashion-mnist, then Debian's /usr/share/datasets/fashion-mnist.
The robust-training zoo (one model per method, ``lipverify train``) is made by ``models/make_zoo.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from frontends.idx import load_idx_split  # noqa: E402
from training.arch import to_onnx  # noqa: E402
from training.run import find_fashion_mnist  # noqa: E402


def small_cnn() -> nn.Module:
    """Conv-BN-ReLU-MaxPool, a strided Conv, two dense layers: every common op family, 27k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def export(model: nn.Module, path: Path) -> None:
    path.write_bytes(to_onnx(model, (1, 28, 28), input_name="image").SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = args.data or find_fashion_mnist()
    if data is None:
        sys.exit("models/build.py: no Fashion-MNIST folder found; pass --data")
    torch.manual_seed(args.seed)
    x_train, y_train = load_idx_split(data, "train")
    x_test, y_test = load_idx_split(data, "test")
    x_train, x_test = torch.from_numpy(x_train[:, None]), torch.from_numpy(x_test[:, None])
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)

    model, start = small_cnn(), time.time()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(128):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.time() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())

    path = HERE / "fmnist_cnn_small.onnx"
    export(model, path)
    manifest = {"models": [{
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "command": f"python models/build.py --epochs {args.epochs} --seed {args.seed}",
        "training": "standard (cross-entropy, Adam 2e-3, batch 128)",
        "data": "Fashion-MNIST train (60,000), accuracy on Fashion-MNIST test (10,000)",
        "input": "N x 1 x 28 x 28, pixels in [0, 1]",
        "epochs": args.epochs,
        "seconds": round(seconds, 1),
        "clean_accuracy": round(accuracy, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
    }]}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["models"][0], indent=2))


if __name__ == "__main__":
    main()
