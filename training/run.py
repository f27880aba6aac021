"""`lipverify train`: load or build the model, load the data, train, export the same graph with new weights."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import onnx
import torch

from frontends.outputs import OutputPaths
from verifier.errors import LipverifyError

from .loop import TrainConfig, train

#: the largest target radius (model space) training takes: radius times a Lipschitz bound must stay a float32
MAX_TRAIN_EPS = 2.0 ** 60
#: where Fashion-MNIST is looked for when --data is not given
FASHION_MNIST = ("$LIPVERIFY_SHARED/data/fashion-mnist", "../shared/data/fashion-mnist",
                 "/usr/share/datasets/fashion-mnist")


def find_fashion_mnist() -> Path | None:
    """The first Fashion-MNIST IDX folder of ``FASHION_MNIST`` (the repo's ../shared counts too)."""
    repo = Path(__file__).resolve().parents[1]
    shared = os.environ.get("LIPVERIFY_SHARED")
    candidates = ([Path(shared) / "data" / "fashion-mnist"] if shared else []) + [
        Path("../shared/data/fashion-mnist"), repo.parent / "shared" / "data" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist")]
    return next((c for c in candidates if c.is_dir()), None)


def _source(model_path: str | None, arch: str | None, width: float, input_shape: tuple[int, ...],
            classes: int, outputs: OutputPaths) -> onnx.ModelProto:
    from frontends.onnx_io import read_model

    if (model_path is None) == (arch is None):
        raise LipverifyError("give either MODEL.onnx or --arch NAME")
    if model_path is not None:
        return read_model(model_path, outputs)  # its files (external data too) are inputs no output overwrites
    from .arch import build, to_onnx

    return to_onnx(build(arch, input_shape, classes, width), input_shape)


def _check_config(config: TrainConfig) -> None:
    if config.eps < 0 or not math.isfinite(config.eps):
        raise LipverifyError("--eps must be finite and >= 0")
    if config.epochs < 1 or config.batch_size < 1:
        raise LipverifyError("--epochs and --batch-size must be positive")


def _check_trainable(module: Any) -> None:
    """One line where the imported model has no trainable weight."""
    if not any(p.requires_grad for p in module.parameters()):
        raise LipverifyError("the model has no trainable weights")


def run_train(model_path: str | None, *, arch: str | None = None, width: float = 1.0,
              input_shape: tuple[int, ...] = (1, 28, 28), classes: int = 10, data_path: str | None = None,
              split: str = "train", val: int = 5000, limit: int | None = None, out: str, config: TrainConfig,
              output: str | None = None,
              device: str = "auto", input_scale: float | None = None, mean: str | None = None, std: str | None = None,
              checkpoint: str | None = None, resume: bool = False, progress: bool = True,
              source: onnx.ModelProto | None = None) -> dict[str, Any]:
    """Train and export; the report: config, history, seconds, final held-out metrics, export checks.

    ``out`` and ``checkpoint`` follow the output-path policy (``frontends.outputs``): checked before any work
    (never an input: the model, its external data, the data), written atomically. ``output``: the graph output
    trained on (default: the first), as ``certify --output``. ``source``: the model already read (the Python
    API's), ``model_path`` then only its name in the report; ``data_path`` may be a tuple (x, y) of arrays."""
    from frontends.data import load_dataset
    from frontends.onnx_export import export_weights, serialize
    from frontends.onnx_import import load_onnx
    from frontends.parity import check_parity
    from verifier.commands.loading import import_model, parse_values, pick_device

    _check_config(config)
    if data_path is None:
        found = find_fashion_mnist()
        data_path = str(found) if found else None
    if data_path is None:
        raise LipverifyError("no --data given and no Fashion-MNIST folder found (looked in "
                             f"{', '.join(FASHION_MNIST)})")
    files = [p for p in ([data_path] if source is not None else [model_path, data_path]) if not isinstance(p, tuple)]
    outputs = OutputPaths({"--out": out, "--checkpoint": checkpoint}, inputs=files)
    source = source if source is not None else _source(model_path, arch, width, input_shape, classes, outputs)
    _, module = import_model(source, output)
    _check_trainable(module)
    data = load_dataset(data_path, module.graph.sample_shape, split=split, limit=limit,
                        input_scale=input_scale, mean=parse_values(mean, "mean"), std=parse_values(std, "std"))
    k = math.prod(module.graph.output_shape) if module.graph.output_shape else 1
    if int(data.y.max()) >= k:
        raise LipverifyError(f"labels go up to {int(data.y.max())} but the model has {k} outputs")
    if not 0 < val < len(data):
        raise LipverifyError(f"--val must be between 1 and {len(data) - 1} (the data has {len(data)} samples)")
    dev = pick_device(device)
    module = module.to(dev)
    x, y = data.x[:-val], data.y[:-val]
    x_val, y_val = data.x[-val:], data.y[-val:]
    eps_model = float(data.radius_to_model(config.eps)) if config.eps > 0 else 0.0
    if eps_model > MAX_TRAIN_EPS:
        raise LipverifyError(f"--eps {config.eps:g} is {eps_model:.3g} in the model's input space; training "
                             f"arithmetic (float32, times Lipschitz bounds) holds radii up to {MAX_TRAIN_EPS:.3g}")
    result = train(module, x, y, x_val, y_val, config, eps_model=eps_model, bounds=data.model_bounds(),
                   checkpoint=checkpoint, resume=resume, progress=progress)

    module = module.cpu().eval()
    exported = export_weights(module, source)
    outputs.write_bytes("--out", serialize(exported))
    reloaded = load_onnx(exported, output)
    parity = check_parity(exported, module)
    same_nodes = [(n.op_type, list(n.input), list(n.output)) for n in exported.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in source.graph.node]
    with torch.no_grad():
        probe = x_val[:64].cpu()
        ir_diff = float((reloaded(probe) - module(probe)).abs().max())
    final = result.history[-1] if result.history else {}
    return {
        "model": model_path, "arch": arch, "width": width if arch else None, "out": out,
        "output": module.graph.info.get("output"), "data": data.source, "train_samples": len(x), "held_out": val,
        "config": {**asdict(replace(config, options=None)), "options": asdict(config.options)},
        "seconds": round(result.seconds, 2), "note": result.note,
        "clean_accuracy": final.get("clean_accuracy"), "certified_accuracy": final.get("certified_accuracy"),
        "certificate": final.get("certificate"), "history": result.history,
        "export": {"same_nodes": same_nodes, "parity": parity["ok"], "max_rel_diff": parity["max_rel_diff"],
                   "reimport_max_abs_diff": ir_diff},
    }


def format_train(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"trained {result['model'] or result['arch']} with {c['method']} (eps {c['eps']:g}, {c['epochs']} epochs, "
             f"{result['seconds']:.1f} s) on {result['data']}"]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    lines.append(f"held-out ({result['held_out']} samples, first {c['eval_size']} evaluated): clean accuracy "
                 f"{result['clean_accuracy']:.4f}, certified accuracy at l2 {c['eps']:g} "
                 f"{result['certified_accuracy']:.4f} ({result['certificate']})")
    e = result["export"]
    diff = "labels compared" if e["max_rel_diff"] is None else f"max rel diff {e['max_rel_diff']:.2g}"
    lines.append(f"wrote {result['out']}: same nodes {'yes' if e['same_nodes'] else 'NO'}, onnxruntime parity "
                 f"{'ok' if e['parity'] else 'FAILED'} ({diff})")
    lines.append(f"next: lipverify certify {result['out']} --data <test data> --method best")
    return "\n".join(lines)
