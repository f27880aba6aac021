"""`lipverify certify`: load the model and the data, bound the model once, certify every input."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from verifier.certificates.certify import certified_accuracy, compute_bounds
from verifier.certificates.methods import BEST, METHODS, Method, Task, default_method
from verifier.commands.loading import load_inputs, norm_label
from verifier.commands.logits import LogitEngine, batched_logits
from verifier.commands.progress import Timer
from verifier.commands.report import summarize
from verifier.errors import LipverifyError
from verifier.problem import RadiusProblem


def run_certify(model_path: str, data_path: str, *, split: str = "test", norm: str = "2",
                eps_list: Sequence[float] = (), method: str | None = None, limit: int | None = None,
                batch_size: int = 256, device: str = "auto", input_scale: float | None = None,
                mean: str | None = None, std: str | None = None, output: str | None = None,
                gate: float | None = None, gate_eps: float | None = None, attack: bool = False,
                attack_steps: int = 50, attack_restarts: int = 5, attack_method: str = "pgd",
                source=None) -> dict[str, Any]:
    """The certify report (see the README); with ``attack``, also the attack radius per input
    (``attack_run.attack_dataset``), the median ratio certified / attack, and ``soundness_violations``: the
    inputs whose certified radius exceeds the distance of an adversarial example (a disproved certificate)."""
    with Timer() as timer:
        p, eps_list, model, module, dev, data = load_inputs(
            model_path, data_path, norm=norm, eps_list=eps_list, split=split, limit=limit, device=device,
            input_scale=input_scale, mean=mean, std=std, output=output, source=source)
        bounds = compute_bounds(module, p, input_dim=max(1, int(torch.tensor(module.graph.sample_shape).prod())))
        if method is not None and method != BEST and method not in METHODS:
            raise LipverifyError(f"unknown method {method!r}; choose from {', '.join([*METHODS, BEST])}")
        chosen = [default_method(bounds)] if method is None else list(METHODS.values()) if method == BEST \
            else [METHODS[method]]
        method = chosen[0].name if method is None else method
        module = module.to(dev)
        engine = LogitEngine(module, dev, model)
        if method != BEST:  # a method that cannot apply is refused before any work
            why = chosen[0].applies(Task(RadiusProblem(None, data.y, p), logits=torch.zeros(0), bounds=bounds,
                                         module=module))
            if why is not None:
                raise LipverifyError(f"--method {method} {why}")
        logits = batched_logits(module, data.x, batch_size, dev, engine=engine)
        if logits.shape[1] < 2:
            raise LipverifyError(f"the model has {logits.shape[1]} output; certificates need class logits")
        if int(data.y.max()) >= logits.shape[1]:
            raise LipverifyError(f"labels go up to {int(data.y.max())} but the model has {logits.shape[1]} classes")
        correct = logits.argmax(dim=1) == data.y
        box = data.model_bounds()
        problem = RadiusProblem(data.x.cpu(), data.y.cpu(), p, None if box is None else box[0],
                                None if box is None else box[1])
        task = Task(problem, logits=logits, bounds=bounds, module=module, batch_size=batch_size,
                    found=torch.zeros(len(data.y), dtype=torch.float64))
        by_method, skipped = _run_methods(chosen, task, data, portfolio=method == BEST)
        radii = torch.stack(list(by_method.values())).amax(dim=0)
    result: dict[str, Any] = {
        "model": model_path, "method": method, "norm": norm_label(p), "n": len(data.y),
        "data": data.source, "space": data.space,
        **summarize(radii, correct, eps_list),
        "radii": [float(r) for r in radii],
        **_lipschitz_fields(bounds, p),
        "seconds": timer.seconds, "device": str(dev), "logits_from": engine.name,
    }
    if method == BEST:  # every method is sound, so the largest radius per input is too
        names = list(by_method)
        winners = torch.stack(list(by_method.values())).argmax(dim=0)
        result["radii_by_method"] = {k: [float(r) for r in v] for k, v in by_method.items()}
        result["winner"] = [names[int(w)] if float(radii[i]) > 0 else None for i, w in enumerate(winners)]
        result["methods_skipped"] = skipped
    if attack:
        result.update(_compare_with_attack(module, data, engine, p, radii, correct, method=attack_method,
                                           steps=attack_steps, restarts=attack_restarts, batch_size=batch_size))
    if gate is not None:
        value = certified_accuracy(radii, gate_eps)
        result["gate"] = {"eps": gate_eps, "required": gate, "value": value, "passed": value >= gate}
    return result


def _run_methods(chosen: list[Method], task: Task, data, portfolio: bool) -> tuple[dict[str, torch.Tensor],
                                                                                   dict[str, str]]:
    """Each method's radii in the user's space, in order (``task.found``, model space, carries the largest radius
    so far to the next method); in a ``portfolio`` a method that fails is skipped with its reason."""
    by_method: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for m in chosen:
        try:
            r = m.radii(task)
        except LipverifyError as e:
            if not portfolio:
                raise
            skipped[m.name] = str(e)
            continue
        task.found = torch.maximum(task.found, r.double().cpu())
        by_method[m.name] = data.radius_to_user(r.float())
    return by_method, skipped


#: slack for float32 rounding of certified radii when comparing them with attack distances (float64)
VIOLATION_RTOL = 1e-6


def _lipschitz_fields(bounds, p: float) -> dict[str, Any]:
    """The report's Lipschitz bounds where some method computed them (``lipschitz_computed``): the kernel
    method alone needs none."""
    if not bounds.computed:
        return {"lipschitz": None, "lipschitz_sub": None, "lipschitz_computed": False}
    report = bounds.l2 if p == 2 else bounds.linf
    return {"lipschitz": _finite(report.lipschitz if report else None),
            "lipschitz_sub": _finite(report.lipschitz_sub if report else None), "lipschitz_computed": True}


def _finite(value: float | None) -> float | None:
    """A Lipschitz bound for the report: None where it is unbounded (an op without a Lipschitz rule)."""
    return value if value is not None and math.isfinite(value) else None


def _compare_with_attack(module, data, engine: LogitEngine, p: float, radii: torch.Tensor, correct: torch.Tensor,
                         *, method: str, steps: int, restarts: int, batch_size: int) -> dict[str, Any]:
    """Attack every input; the attack radii beside the certified ones, their median ratio, and the violations.

    A violation is an input whose certified radius exceeds (by more than float32 rounding) the distance of an
    adversarial example that the attack found on the IR and that the logits certify used (``engine``: the
    same IR, or onnxruntime) confirm: its prediction differs from the label. Examples the engine does not
    confirm (the IR and onnxruntime disagree within their parity tolerance at a decision boundary) are listed
    as ``attack_unconfirmed`` instead."""
    from verifier.commands.attack_run import attack_dataset, json_radius, median_over_correct

    att = attack_dataset(module, data, p, method=method, steps=steps, restarts=restarts, batch_size=batch_size,
                         label="attacking")
    cert = radii.double().cpu()
    arad = att.radii
    suspect = (cert > arad * (1 + VIOLATION_RTOL)).nonzero()[:, 0]
    violations, unconfirmed = [], []
    if len(suspect):
        with torch.no_grad():
            z = torch.cat([engine(data.to_model(chunk)) for chunk in torch.split(att.examples[suspect], batch_size)])
        flips = z.argmax(1) != data.y[suspect]
        violations = [int(i) for i in suspect[flips]]
        unconfirmed = [int(i) for i in suspect[~flips]]
    usable = correct.cpu() & torch.isfinite(arad) & (arad > 0)
    ratios = cert[usable] / arad[usable]
    out: dict[str, Any] = {
        "attack_method": method, "attack_steps": steps, "attack_restarts": restarts if method == "pgd" else None,
        "attack_radii": [json_radius(r) for r in arad],
        "attack_median_radius": median_over_correct(arad, correct.cpu()),
        "attack_median_ratio": float(ratios.median()) if len(ratios) else None,
        "attack_seconds": att.seconds,
        "soundness_violations": [{"input": i, "certified": float(cert[i]), "attack": float(arad[i])}
                                 for i in violations],
    }
    if unconfirmed:
        out["attack_unconfirmed"] = unconfirmed
    return out
