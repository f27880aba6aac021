"""What the commands print: the Lipschitz, LipLT and certify tables and the certify summary (clean and certified
accuracy, median radius). The plot is ``plot.py``, the progress bar and timer ``progress.py``, the bounds a
certificate needs ``verifier.certificates.certify.compute_bounds``."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from verifier.certificates.certify import certified_accuracy
from verifier.commands.loading import norm_label
from verifier.engines.lipschitz import LipschitzReport


def format_lipschitz(report: LipschitzReport, model: str) -> str:
    lines = [f"model        {model}", f"norm         l{norm_label(report.norm)}",
             f"lipschitz    {report.lipschitz:.6g}   (input -> {report.output})"]
    if report.lipschitz_sub is not None:
        lines.append(f"lipschitz_sub {report.lipschitz_sub:.6g}  (input -> {report.last_input}, before the last "
                     f"affine layer)")
    lines += ["", f"{'node':<32}{'op':<20}{'bound':>12}  {'method':<12}{'chain':>5}"]
    for n in report.nodes:
        chain = "" if n.segment is None else str(n.segment)
        lines.append(f"{n.name[-31:]:<32}{n.op_type:<20}{n.bound:>12.6g}  {n.method:<12}{chain:>5}")
    if report.segments:
        lines += ["", "affine chains bounded as one map (LMT §5.2):",
                  f"{'chain':>5}  {'bound':>12}  {'product':>12}  {'method':<13}nodes"]
        for i, s in enumerate(report.segments):
            lines.append(f"{i:>5}  {s.bound:>12.6g}  {s.product:>12.6g}  {s.method:<13}{', '.join(s.nodes)[:60]}")
    return "\n".join(lines)


def summarize(radii: torch.Tensor, correct: torch.Tensor, eps_list: Sequence[float]) -> dict[str, Any]:
    correct_radii = radii[correct]
    return {
        "clean_accuracy": float(correct.double().mean()) if len(correct) else 0.0,
        "certified_accuracy": {f"{e:g}": certified_accuracy(radii, e) for e in eps_list},
        "median_radius": float(correct_radii.median()) if len(correct_radii) else 0.0,
    }


def format_liplt(report: Any, pairwise: bool = False) -> str:
    """LipLT beside the naive bounds, in the layout of CRM's Table 2 (means over the unique class pairs)."""
    k = report.pairwise.shape[0]
    iu = torch.triu_indices(k, k, 1)

    def mean_pairs(t: torch.Tensor | None) -> float:
        return float(t[iu[0], iu[1]].mean()) if t is not None and k > 1 else math.nan

    def mean_sums(t: torch.Tensor | None) -> float:
        return float((t[iu[0]] + t[iu[1]]).mean()) if t is not None and k > 1 else math.nan

    # a pair bound from the global one: sqrt(2) L in l2 (LMT Prop. 1), 2 L in l_inf (|z_i - z_j| <= 2 ||dz||_inf)
    factor, label = (math.sqrt(2), "sqrt(2) L") if report.norm == 2 else (2.0, "2 L")
    rows = [("naive", mean_pairs(report.naive_pairwise), mean_sums(report.naive_per_class),
             factor * report.naive_lipschitz),
            ("LipLT", mean_pairs(report.raw_pairwise), mean_sums(report.raw_per_class),
             factor * report.raw_lipschitz)]
    if report.fallback:
        return f"LipLT: {report.fallback}; the naive bounds stand (L = {report.lipschitz:.6g})"
    lines = [f"LipLT (CRM §3), {len(report.units)} activation layers; matrix norms and terms: "
             + ", ".join(f"{v} {k}" for k, v in report.norms.items()),
             f"{'':<8}{'L_ij':>12}{'L_i + L_j':>12}{label:>12}   (means over class pairs)"]
    lines += [f"{name:<8}{a:>12.5g}{b:>12.5g}{c:>12.5g}" for name, a, b, c in rows]
    ratio = [x / y if y > 0 else math.nan for x, y in zip(rows[0][1:], rows[1][1:])]
    lines.append(f"{'ratio':<8}" + "".join(f"{r:>12.3g}" for r in ratio) + "   (naive / LipLT)")
    if pairwise:
        lines.append("L_ij (used: min of LipLT and naive), row i, column j:")
        lines += ["  " + " ".join(f"{float(v):>9.4g}" for v in row) for row in report.pairwise]
    return "\n".join(lines)


def format_certify(result: dict[str, Any]) -> str:
    lip = f"{result['lipschitz']:.6g}" if result["lipschitz"] is not None else \
        "not computed (the method needs none)" if result.get("lipschitz_computed") is False else \
        "none (an op has no Lipschitz rule)"
    lines = [f"model      {result['model']}",
             f"method     {result['method']}  (l{result['norm']}; L = {lip}"
             + (f", L_sub = {result['lipschitz_sub']:.6g}" if result.get('lipschitz_sub') else "") + ")",
             f"data       {result['data']}  ({result['n']} inputs)",
             f"radii in   {result['space']}", "",
             f"clean accuracy        {100 * result['clean_accuracy']:.2f}%"]
    for eps, acc in result["certified_accuracy"].items():
        lines.append(f"certified at eps {eps:<6}{100 * acc:.2f}%")
    lines.append(f"median radius         {result['median_radius']:.6g}  (correctly classified inputs)")
    if "attack_radii" in result:
        median = result.get("attack_median_radius")
        lines.append(f"median attack radius  {'inf' if median is None else f'{median:.6g}'}  (upper bound on the "
                     f"robust radius: {result.get('attack_method', 'pgd')})")
    if "attack_median_ratio" in result:
        ratio = result["attack_median_ratio"]
        lines.append(f"certified / attack    {'n/a' if ratio is None else f'{ratio:.4g}'}  (median over correctly "
                     f"classified inputs with an attack radius)")
    if result.get("soundness_violations"):
        lines.append(f"SOUNDNESS VIOLATIONS  {len(result['soundness_violations'])} inputs: certified radius > "
                     f"attack radius")
    lines.append(f"seconds               {result['seconds']:.2f}")
    if "gate" in result:
        g = result["gate"]
        lines.append(f"gate                  certified accuracy at eps {g['eps']:g} = {100 * g['value']:.2f}% "
                     f"{'>=' if g['passed'] else '<'} {100 * g['required']:.2f}%  -> "
                     f"{'PASS' if g['passed'] else 'FAIL'}")
    return "\n".join(lines)
