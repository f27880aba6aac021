"""`lipverify certify`: load the model and the data, bound the model once, certify every input."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .certify import certified_radii
from .errors import LipverifyError
from .loading import load_inputs
from .report import LogitEngine, Timer, batched_logits, compute_bounds, norm_label, summarize


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
        by_method: dict[str, torch.Tensor] = {}
        skipped: dict[str, str] = {}
        found = torch.zeros(len(data.y), dtype=torch.float64)  # model space: the largest radius so far
        for name in (_portfolio(bounds, p) if method == "best" else [method]):
            try:
                r = _method_radii(name, module, data, bounds, logits, p, batch_size, found)
            except LipverifyError as e:
                if method != "best":
                    raise
                skipped[name] = str(e)
                continue
            found = torch.maximum(found, r.double().cpu())
            by_method[name] = data.radius_to_user(r.float())
        radii = torch.stack(list(by_method.values())).amax(dim=0)
    result: dict[str, Any] = {
        "model": model_path, "method": method, "norm": norm_label(p), "n": len(data.y),
        "data": data.source, "space": data.space,
        **summarize(radii, correct, eps_list),
        "radii": [float(r) for r in radii],
        "lipschitz": bounds.l2.lipschitz if p == 2 else (bounds.linf.lipschitz if bounds.linf else None),
        "lipschitz_sub": bounds.l2.lipschitz_sub if p == 2 else (bounds.linf.lipschitz_sub if bounds.linf else None),
        "seconds": timer.seconds, "device": str(dev), "logits_from": engine.name,
    }
    if method == "best":  # every method is sound, so the largest radius per input is too
        names = list(by_method)
        winners = torch.stack(list(by_method.values())).argmax(dim=0)
        result["radii_by_method"] = {k: [float(r) for r in v] for k, v in by_method.items()}
        result["winner"] = [names[int(w)] if float(radii[i]) > 0 else None for i, w in enumerate(winners)]
        result["methods_skipped"] = skipped
    if attack:
        result.update(_compare_with_attack(module, data, engine, p, radii, correct, method=attack_method,
                                           steps=attack_steps, restarts=attack_restarts, batch_size=batch_size))
    if gate is not None:
        from .certify import certified_accuracy

        value = certified_accuracy(radii, gate_eps)
        result["gate"] = {"eps": gate_eps, "required": gate, "value": value, "passed": value >= gate}
    return result


def _portfolio(bounds, p: float) -> list[str]:
    """The methods ``--method best`` runs for this model and norm."""
    pairwise = bounds.l2.last_matrix is not None
    return ["lmt"] + (["lmt-pairwise"] if pairwise else []) + ["liplt", "ibp", "bcp", "local"]


def _method_radii(method: str, module, data, bounds, logits: torch.Tensor, p: float, batch_size: int,
                  found: torch.Tensor) -> torch.Tensor:
    """Model-space radii of one certificate method (``found``: the largest radii of the methods run before)."""
    if method in ("ibp", "bcp", "local"):
        return _box_radii(module, data, bounds, logits, p, method, batch_size, found)
    if method == "liplt":
        return _liplt_radii(module, data, bounds, logits, p)
    return certified_radii(logits, data.y, bounds, p, method)


def _on_cpu(module):
    """The module itself on the CPU, else a CPU copy: the local and LipLT bounds run in float64 on the CPU."""
    import copy

    return copy.deepcopy(module).cpu() if module.device.type != "cpu" else module


def _liplt_radii(module, data, bounds, logits: torch.Tensor, p: float) -> torch.Tensor:
    """CRM eq. 5 with LipLT's pairwise bounds (``verifier.liplt``; the naive ones where smaller)."""
    from .certify import pairwise_radii
    from .errors import NoRuleError
    from .liplt import liplt

    mod = _on_cpu(module)
    report = bounds.l2 if p == 2 else bounds.linf
    try:
        pairs = liplt(mod, p, naive=report).pairwise  # the naive bounds where LipLT cannot map the graph
    except NoRuleError as e:
        raise LipverifyError(f"--method liplt: {e}")
    return pairwise_radii(logits.cpu(), data.y.cpu(), pairs)


def _box_radii(module, data, bounds, logits: torch.Tensor, p: float, method: str, batch_size: int,
               found: torch.Tensor) -> torch.Tensor:
    """IBP / BCP / local radii in model space (``verifier.bcp``, ``verifier.local``), within the model-space box
    of the data's bounds. BCP bisects from the LMT Prop. 2 radius (when the model ends with an affine layer), a
    sound lower end; local starts its search at the largest radius found so far (or Prop. 2's) and reports
    only radii it proves itself."""
    from .bcp import bcp_radii, ibp_radii
    from .errors import NoRuleError
    from .local import check_supported, local_radii

    box = data.model_bounds()
    lower, upper = (None, None) if box is None else box
    x, y = data.x.cpu(), data.y.cpu()  # data.x is in model space
    mod = _on_cpu(module)
    if not mod.graph.batched or not mod.graph.leading_batch:
        raise LipverifyError(f"--method {method} needs a model that runs whole batches (this one runs sample by "
                             f"sample)")
    if method == "ibp":
        return ibp_radii(mod, bounds.l2, x, y, p, lower, upper, batch_size=batch_size).cpu()
    prop2 = certified_radii(logits, data.y, bounds, p, "lmt-pairwise").cpu() \
        if bounds.l2.last_matrix is not None else None
    if method == "bcp":
        return bcp_radii(mod, bounds.l2, x, y, lower, upper, prop2=prop2, norm=p, batch_size=batch_size).cpu()
    try:
        check_supported(mod, bounds.l2)
    except NoRuleError as e:
        raise LipverifyError(f"--method local: {e}")
    start = found if prop2 is None else torch.maximum(found, prop2.double())
    return local_radii(mod, bounds.l2, x, y, p, lower, upper, start=start, batch_size=batch_size).cpu()


#: slack for float32 rounding of certified radii when comparing them with attack distances (float64)
VIOLATION_RTOL = 1e-6


def _compare_with_attack(module, data, engine: LogitEngine, p: float, radii: torch.Tensor, correct: torch.Tensor,
                         *, method: str, steps: int, restarts: int, batch_size: int) -> dict[str, Any]:
    """Attack every input; the attack radii beside the certified ones, their median ratio, and the violations.

    A violation is an input whose certified radius exceeds (by more than float32 rounding) the distance of an
    adversarial example that the attack found on the IR and that the logits certify used (``engine``: the
    same IR, or onnxruntime) confirm: its prediction differs from the label. Examples the engine does not
    confirm (the IR and onnxruntime disagree within their parity tolerance at a decision boundary) are listed
    as ``attack_unconfirmed`` instead."""
    from .attack_run import attack_dataset, json_radius, median_over_correct

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
