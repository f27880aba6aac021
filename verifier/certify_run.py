"""`lipverify certify`: load the model and the data, bound the model once, certify every input."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .certify import certified_radii
from .errors import LipverifyError
from .report import (LogitEngine, Timer, batched_logits, compute_bounds, norm_label, norm_value, plot_curve,
                     summarize)

DEFAULT_EPS = {2.0: (0.1, 0.25, 0.5, 1.0), math.inf: (0.01, 0.03, 0.1)}


def parse_values(text: str | None, name: str) -> list[float] | float | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise LipverifyError(f"--{name} takes a number or comma-separated numbers, got '{text}'")
    return values[0] if len(values) == 1 else values


def pick_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise LipverifyError("--device cuda: torch sees no CUDA device here")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_certify(model_path: str, data_path: str, *, split: str = "test", norm: str = "2",
                eps_list: Sequence[float] = (), method: str | None = None, limit: int | None = None,
                batch_size: int = 256, device: str = "auto", input_scale: float | None = None,
                mean: str | None = None, std: str | None = None, output: str | None = None,
                plot_path: str | None = None, gate: float | None = None,
                gate_eps: float | None = None) -> dict[str, Any]:
    from frontends.data import load_dataset

    from .inspect import import_model

    p = norm_value(norm)
    eps_list = tuple(eps_list) or DEFAULT_EPS[p]
    if any(e < 0 or not math.isfinite(e) for e in eps_list):
        raise LipverifyError("--eps values must be finite and >= 0")
    with Timer() as timer:
        model, module = import_model(model_path, output)
        dev = pick_device(device)
        data = load_dataset(data_path, module.graph.sample_shape, split=split, limit=limit,
                            input_scale=input_scale, mean=parse_values(mean, "mean"), std=parse_values(std, "std"))
        bounds = compute_bounds(module, p, input_dim=max(1, int(torch.tensor(module.graph.sample_shape).prod())))
        if method is None:
            method = "lmt-pairwise" if bounds.l2.last_matrix is not None else "lmt"
        if method == "lmt-pairwise" and bounds.l2.last_matrix is None:
            raise LipverifyError("--method lmt-pairwise needs a model whose logits come from an affine layer; "
                                 "use --method lmt")
        module = module.to(dev)
        engine = LogitEngine(module, dev, model)
        logits = batched_logits(module, data.x, batch_size, dev, engine=engine)
        if logits.shape[1] < 2:
            raise LipverifyError(f"the model has {logits.shape[1]} output; certificates need class logits")
        if int(data.y.max()) >= logits.shape[1]:
            raise LipverifyError(f"labels go up to {int(data.y.max())} but the model has {logits.shape[1]} classes")
        correct = logits.argmax(dim=1) == data.y
        radii = data.radius_to_user(certified_radii(logits, data.y, bounds, p, method).float())
    result: dict[str, Any] = {
        "model": model_path, "method": method, "norm": norm_label(p), "n": len(data.y),
        "data": data.source, "space": data.space,
        **summarize(radii, correct, eps_list),
        "radii": [float(r) for r in radii],
        "lipschitz": bounds.l2.lipschitz if p == 2 else (bounds.linf.lipschitz if bounds.linf else None),
        "lipschitz_sub": bounds.l2.lipschitz_sub if p == 2 else (bounds.linf.lipschitz_sub if bounds.linf else None),
        "seconds": timer.seconds, "device": str(dev), "logits_from": engine.name,
    }
    if gate is not None:
        from .certify import certified_accuracy

        value = certified_accuracy(radii, gate_eps)
        result["gate"] = {"eps": gate_eps, "required": gate, "value": value, "passed": value >= gate}
    if plot_path:
        plot_curve({method: radii}, plot_path, norm_label(p), model_path)
    return result
