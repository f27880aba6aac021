"""CROWN and alpha-CROWN beside lipverify's other certificates and auto_LiRPA, side by side in one run.

    .venv/bin/python benchmarks/crown.py [--cases NAME,...] [--alpha-limit 10] [--auto-lirpa PYTHON] [--json F]

Per case (a zoo model, its inputs, a norm): the median certified radius over the correctly classified inputs
(numpy's median: the mean of the two middle values for an even count) and the seconds per input of ibp, bcp,
local, crown, alpha-crown and best (the portfolio, every method in registry order, each starting from the radii
found before it), each method alone on the same inputs, in model space, with no domain clipping (the issue's
convention), one thread. With ``--auto-lirpa PYTHON`` (an interpreter where auto_LiRPA and onnx2torch import,
e.g. a throwaway venv; never a dependency), auto_LiRPA's CROWN and alpha-CROWN on the same inputs
(``benchmarks/auto_lirpa_radii.py``). alpha-CROWN, both tools', runs on the first ``--alpha-limit`` inputs,
and so does a second crown column, to compare with it on the same inputs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, zoo_dir

from frontends.data import load_dataset
from verifier.certificates.certify import compute_bounds
from verifier.certificates.methods import METHODS, Task
from verifier.commands.loading import import_model
from verifier.problem import RadiusProblem

#: name -> (model, data, norm, limit): data "mnist" and "fashion-mnist" are ../shared/data, else a zoo folder
CASES = {
    "mnist-net-l2": ("zoo/mnist_fc/mnist-net_256x2.onnx", "mnist", 2.0, 100),
    "smoke": ("zoo/mnist_fc/mnist-net_256x2.onnx", "mnist", 2.0, 6),
    "mnist-net-linf": ("zoo/mnist_fc/mnist-net_256x2.onnx", "mnist", math.inf, 100),
    "mnist_relu_9_200-l2": ("zoo/eran/mnist_relu_9_200.onnx", "mnist", 2.0, 20),
    "ffnnSIGMOID-l2": ("zoo/eran/ffnnSIGMOID__Point_6x200.onnx", "mnist", 2.0, 20),
    "cifar_base_kw-l2": ("zoo/oval21/cifar_base_kw.onnx", "oval21/vnnlib", 2.0, None),
    "cifar_base_kw-linf": ("zoo/oval21/cifar_base_kw.onnx", "oval21/vnnlib", math.inf, None),
    "resnet_2b-l2": ("zoo/cifar10_resnet/resnet_2b.onnx", "cifar10_resnet/vnnlib", 2.0, None),
    "Convnet_maxpool-l2": ("zoo/verivital/Convnet_maxpool.onnx", "mnist", 2.0, 20),
    "fmnist_4c3f_lmt-l2": ("models/fmnist_4c3f_lmt.onnx", "fashion-mnist", 2.0, 100),
}
METHOD_ORDER = ["ibp", "bcp", "local", "crown", "alpha-crown"]


def _paths(model: str, data: str) -> tuple[Path, Path]:
    shared = zoo_dir().parent
    model_path = ROOT / model if model.startswith("models/") else shared / model
    data_path = shared / "data" / data if data in ("mnist", "fashion-mnist") else shared / "zoo" / data
    return model_path, data_path


def _task(module, x, y, norm: float) -> Task:
    bounds = compute_bounds(module, norm, input_dim=int(x[0].numel()))
    with torch.no_grad():
        logits = module(x)
    return Task(RadiusProblem(x, y, norm), logits=logits, bounds=bounds, module=module)


def _timed(fn) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    radii = fn()
    return np.asarray(radii, dtype=np.float64), time.perf_counter() - start


def lipverify_columns(module, x, y, norm: float, alpha_limit: int) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (radii, seconds) for each method alone, crown and alpha-crown on the first ``alpha_limit``
    inputs as well, and the portfolio."""
    out = {}
    for name in METHOD_ORDER:
        n = alpha_limit if name == "alpha-crown" else len(y)
        out[name] = _timed(lambda: METHODS[name].radii(_task(module, x[:n], y[:n], norm)))
    if alpha_limit < len(y):
        out[f"crown (first {alpha_limit})"] = _timed(lambda: METHODS["crown"].radii(
            _task(module, x[:alpha_limit], y[:alpha_limit], norm)))
    task = _task(module, x, y, norm)
    task.found = torch.zeros(len(y), dtype=torch.float64)

    def portfolio():
        best = torch.zeros(len(y), dtype=torch.float64)
        for method in METHODS.values():
            if method.applies(task) is None:
                best = torch.maximum(best, method.radii(task).double().cpu())
                task.found = best.clone()
        return best
    out["best"] = _timed(portfolio)
    return out


def auto_lirpa_columns(python: str, model: Path, x, y, norm: float, alpha_limit: int) -> dict[str, tuple]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, n in (("CROWN", len(y)), ("alpha-CROWN", alpha_limit)):
            inputs = Path(tmp) / "inputs.npz"
            np.savez(inputs, x=x[:n].numpy(), y=y[:n].numpy(), norm=norm)
            proc = subprocess.run([python, str(ROOT / "benchmarks" / "auto_lirpa_radii.py"), str(model), str(inputs),
                                   method], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                print(f"  auto_LiRPA {method}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"auto_LiRPA {method}"] = (np.asarray(result["radii"]), result["seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(c for c in CASES if c != "smoke"),
                        help="Comma-separated case names (smoke: six MNIST images, a quick check of the script).")
    parser.add_argument("--alpha-limit", type=int, default=10)
    parser.add_argument("--auto-lirpa", default=None, help="An interpreter where auto_LiRPA imports.")
    parser.add_argument("--json", default=None, help="Also write every radius here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {}
    for case in args.cases.split(","):
        model, data, norm, limit = CASES[case]
        model_path, data_path = _paths(model, data)
        if not model_path.exists() or not data_path.exists():
            print(f"{case}: skipped ({model_path if not model_path.exists() else data_path} absent)")
            continue
        _, module = import_model(str(model_path), None)
        ds = load_dataset(data_path, module.graph.sample_shape, limit=limit)
        with torch.no_grad():
            keep = module(ds.x).argmax(1) == ds.y
        x, y = ds.x[keep], ds.y[keep]
        alpha_limit = min(args.alpha_limit, len(y))
        columns = lipverify_columns(module, x, y, norm, alpha_limit)
        if args.auto_lirpa:
            columns.update(auto_lirpa_columns(args.auto_lirpa, model_path, x, y, norm, alpha_limit))
        print(f"{case}: {len(y)} correctly classified of {len(keep)}", flush=True)
        for name, (radii, seconds) in columns.items():
            print(f"  {name:<22} median {np.median(radii):.4g}  {seconds / len(radii):8.3f} s/input "
                  f"({len(radii)} inputs)", flush=True)
        report[case] = {name: {"radii": r.tolist(), "seconds": s} for name, (r, s) in columns.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
