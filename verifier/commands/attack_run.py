"""`lipverify attack` and `certify --attack`: per input, an upper bound on the robust radius in the user's space.

The attack runs on the model composed with the data's preprocessing (``Dataset.user_model``), on the user-space
samples ``Dataset.x_user``, inside the box the user's inputs live in (``Dataset.bounds``: [0, 1] for IDX
pixels), so its radii are comparable with the certified radii that ``certify`` states in the same space. It
attacks the logits (the input of a trailing Softmax/LogSoftmax, which keeps the argmax but flattens the margin).

- ``pgd`` (default): ``verifier.engines.attacks.attack_radius``, the distance of the closest adversarial example PGD
  finds, by batched bisection on eps (relative tolerance 1e-3);
- ``deepfool``: the distance of DeepFool's adversarial example (no bisection; cheaper, usually larger).

Every radius is the distance of an example that was checked to change the argmax: 0 for an input the model
already misclassifies, inf where nothing was found (up to the diameter of the box, or 1e4 without a box).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from verifier.certificates.certify import certified_accuracy
from verifier.commands.loading import load_inputs, norm_label
from verifier.commands.progress import Timer, progress
from verifier.errors import LipverifyError
from verifier.ir import GraphModule
from verifier.problem import RadiusProblem

METHODS = ("pgd", "deepfool")
#: the relative tolerance of the bisection (``attack_radius``'s ``tol``)
TOLERANCE = 1e-3


class LogitsModule(nn.Module):
    """``module`` returning its logits tensor (``Graph.logits_tensor``: before a trailing Softmax), differentiable,
    as ``(B, K)``."""

    def __init__(self, module: GraphModule):
        super().__init__()
        self.module = module
        self.name = module.graph.logits_tensor()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, g = self.module, self.module.graph
        if self.name == g.output_name:
            z = m(x)
            return z.reshape(z.shape[0], -1)
        m.check_input(x)
        x = x.to(device=m.device, dtype=m.float_dtype)
        if g.batched:
            return m.run(x, keep={self.name})[self.name].reshape(x.shape[0], -1)
        rows = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1] if g.leading_batch else x[i]
            rows.append(m.run(xi, keep={self.name})[self.name].reshape(-1))
        return torch.stack(rows)


@dataclass
class AttackResult:
    radii: torch.Tensor  # float64 (N,), cpu: 0 misclassified, inf nothing found
    examples: torch.Tensor  # (N, *sample_shape) user space, cpu: x_user itself where the radius is 0 or inf
    correct: torch.Tensor  # bool (N,): the IR's argmax equals the label
    seconds: float


def attack_dataset(module: GraphModule, data: Any, norm: float, *, method: str = "pgd", steps: int = 50,
                   restarts: int = 5, batch_size: int = 256, seed: int = 0,
                   label: str = "attacking") -> AttackResult:
    """Attack every input of ``data`` (a ``frontends.data.Dataset``) in the user's space, in chunks of
    ``batch_size`` (bisection runs on a whole chunk at once), with a progress bar on stderr when there are
    several chunks. ``module`` must already be on the device to use."""
    from verifier.engines.attacks import attack_radius, deepfool, flat_norm

    if method not in METHODS:
        raise LipverifyError(f"attack method must be one of {', '.join(METHODS)}, got {method!r}")
    model = data.user_model(LogitsModule(module)).eval()
    lower, upper = (None, None) if data.bounds is None else (float(data.bounds[0]), float(data.bounds[1]))
    if data.bounds is not None and len(data):
        lo_x, hi_x = float(data.x_user.min()), float(data.x_user.max())
        if lo_x < lower - 1e-6 or hi_x > upper + 1e-6:
            raise LipverifyError(f"the data lie in [{lo_x:g}, {hi_x:g}], outside the box [{lower:g}, {upper:g}] "
                                 f"their format promises")
    radii, examples, correct = [], [], []
    with Timer() as timer:
        chunks = list(zip(torch.split(data.x_user, batch_size), torch.split(data.y, batch_size)))
        with progress(chunks, label, min_items=2) as bar:
            for x, y in bar:
                with torch.no_grad():
                    z = model(x.to(module.device))
                if z.shape[1] < 2:
                    raise LipverifyError(f"the model has {z.shape[1]} output; attacks need class logits")
                ok = (z.argmax(1).cpu() == y)
                if method == "pgd":
                    r, xa = attack_radius(model, RadiusProblem(x, y, norm, lower, upper), steps=steps,
                                          restarts=restarts, tol=TOLERANCE, seed=seed, return_examples=True)
                    r, xa = r.cpu(), xa.cpu()
                else:
                    xa = deepfool(model, RadiusProblem(x, y, norm, lower, upper), steps=steps).cpu()
                    with torch.no_grad():
                        flipped = model(xa.to(module.device)).argmax(1).cpu() != y
                    r = flat_norm(xa.double() - x.double(), norm)
                    r = torch.where(flipped, r, torch.full_like(r, math.inf))
                    r[~ok] = 0.0
                    xa = torch.where(flipped.reshape(-1, *[1] * (x.dim() - 1)), xa, x)
                radii.append(r.double())
                examples.append(xa.float())
                correct.append(ok)
    if not radii:
        empty = torch.zeros(0, dtype=torch.float64)
        return AttackResult(empty, data.x_user[:0], torch.zeros(0, dtype=torch.bool), timer.seconds)
    return AttackResult(torch.cat(radii), torch.cat(examples), torch.cat(correct), timer.seconds)


def json_radius(r: float) -> float | None:
    """A radius for JSON: null for inf (no adversarial example found), the float otherwise."""
    r = float(r)
    return r if math.isfinite(r) else None


def median_over_correct(radii: torch.Tensor, correct: torch.Tensor) -> float | None:
    """The (lower) median of the radii of correctly classified inputs, inf counted as the largest value;
    None (JSON null) when it is inf or there is no correctly classified input."""
    r = radii[correct]
    return json_radius(r.median()) if len(r) else None


def run_attack(model_path: str, data_path: str, *, split: str = "test", norm: str = "2",
               eps_list: Sequence[float] = (), limit: int | None = None, batch_size: int = 256,
               device: str = "auto", input_scale: float | None = None, mean: str | None = None,
               std: str | None = None, output: str | None = None, steps: int = 50, restarts: int = 5,
               method: str = "pgd", seed: int = 0, source=None) -> dict[str, Any]:
    with Timer() as timer:
        p, eps_list, _, module, dev, data = load_inputs(
            model_path, data_path, norm=norm, eps_list=eps_list, split=split, limit=limit, device=device,
            input_scale=input_scale, mean=mean, std=std, output=output, source=source)
        module = module.to(dev)
        with torch.no_grad():
            k = LogitsModule(module)(data.x[:1].to(dev)).shape[1]
        if k < 2:
            raise LipverifyError(f"the model has {k} output; attacks need class logits")
        if int(data.y.max()) >= k:
            raise LipverifyError(f"labels go up to {int(data.y.max())} but the model has {k} classes")
        att = attack_dataset(module, data, p, method=method, steps=steps, restarts=restarts,
                             batch_size=batch_size, seed=seed)
    radii, correct = att.radii, att.correct
    n = len(radii)
    kept = {f"{e:g}": round(certified_accuracy(radii, e) * n) for e in eps_list}  # radius > eps
    return {
        "model": model_path, "method": method, "norm": norm_label(p), "n": len(data),
        "data": data.source, "space": data.space,
        "box": None if data.bounds is None else [float(data.bounds[0]), float(data.bounds[1])],
        "steps": steps, "restarts": restarts if method == "pgd" else None,
        "tolerance": TOLERANCE if method == "pgd" else None,
        "clean_accuracy": float(correct.double().mean()) if len(correct) else 0.0,
        "attack_radii": [json_radius(r) for r in radii],
        "median_attack_radius": median_over_correct(radii, correct),
        "robust_accuracy": {e: k / n for e, k in kept.items()},
        "attack_success": {e: (n - k) / n for e, k in kept.items()},
        "not_found": int((correct & torch.isinf(radii)).sum()),
        "seconds": timer.seconds, "device": str(dev),
    }


def _fmt_radius(r: float | None) -> str:
    return "inf" if r is None else f"{r:.6g}"


def format_attack(result: dict[str, Any]) -> str:
    how = f"{result['steps']} steps"
    if result["method"] == "pgd":
        how += f", {result['restarts']} restarts, bisection to {100 * result['tolerance']:g}%"
    box = "none" if result["box"] is None else f"[{result['box'][0]:g}, {result['box'][1]:g}]"
    lines = [f"model      {result['model']}",
             f"attack     {result['method']}  (l{result['norm']}; {how})",
             f"data       {result['data']}  ({result['n']} inputs)",
             f"radii in   {result['space']}",
             f"box        {box}", "",
             f"clean accuracy        {100 * result['clean_accuracy']:.2f}%"]
    for eps, acc in result["robust_accuracy"].items():
        lines.append(f"robust at eps {eps:<8}<= {100 * acc:.2f}%  (attack succeeds on "
                     f"{100 * result['attack_success'][eps]:.2f}%)")
    lines.append(f"median attack radius  {_fmt_radius(result['median_attack_radius'])}  (correctly classified "
                 f"inputs; an upper bound on the robust radius)")
    if result["not_found"]:
        lines.append(f"no example found      {result['not_found']} correctly classified inputs (radius inf)")
    lines.append(f"seconds               {result['seconds']:.2f}")
    return "\n".join(lines)
