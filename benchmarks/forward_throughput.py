"""IR forward throughput against onnxruntime on the same model and batch (images per second, and the ratio).

    .venv/bin/python benchmarks/forward_throughput.py [MODEL.onnx ...] [--batch 256] [--repeats 5] [--device cpu]

Without model arguments: the bundled models and every model of ../shared/zoo (or $LIPVERIFY_SHARED/zoo).
`certify_throughput.py` measures the certificates on top of it; a ratio near 1 here means the IR
itself costs about what plain inference costs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import ROOT, best_of, zoo_dir  # noqa: E402  (puts the repo on sys.path)
from frontends import load_onnx, read_model  # noqa: E402
from frontends.parity import reference_forward, reference_runner  # noqa: E402


def default_models() -> list[Path]:
    return sorted(ROOT.glob("models/*.onnx")) + sorted(zoo_dir().glob("*/*.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}")
    print(f"{'model':<45}{'IR img/s':>12}{'ORT img/s':>12}{'IR/ORT':>8}  batching")
    for path in args.models or default_models():
        model = read_model(path)
        module = load_onnx(model).to(args.device)
        name, run = reference_runner(model)
        x = np.random.default_rng(0).random((args.batch, *module.graph.sample_shape)).astype(np.float32)
        xt = torch.from_numpy(x).to(args.device)

        def ir() -> None:
            with torch.no_grad():
                module(xt)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        t_ir = best_of(ir, args.repeats)
        t_ref = best_of(lambda: reference_forward(run, module, x, np.dtype(np.float32)), args.repeats)
        label = f"{path.parent.name}/{path.name}"[-44:]
        mode = "native" if module.graph.batched else "per sample"
        print(f"{label:<45}{args.batch / t_ir:>12.0f}{args.batch / t_ref:>12.0f}{t_ref / t_ir:>8.2f}  {mode}"
              + ("" if name == "onnxruntime" else f" (reference: {name})"))


if __name__ == "__main__":
    main()
