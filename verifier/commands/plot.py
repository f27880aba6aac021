"""The certified-accuracy curve every seed paper shows, as ``certify --plot`` writes it (matplotlib, imported
only when a plot is written)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

import torch

from verifier.errors import LipverifyError

#: the formats ``--plot`` writes, by the file's suffix (no suffix: png)
PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: str) -> str:
    """The image format of a ``--plot`` path, checked before any work starts."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in PLOT_FORMATS:
        raise LipverifyError(f"--plot {path}: cannot write '.{suffix}' images; use "
                             f"{', '.join('.' + f for f in PLOT_FORMATS)}")
    return suffix


def certify_curves(result: dict[str, Any]) -> dict[str, list[float]]:
    """The curves of a certify report: its certified radii, and the attack's (an upper bound) when it ran."""
    curves = {result["method"]: result["radii"]}
    if "attack_radii" in result:
        curves[f"{result['attack_method']} attack (upper bound)"] = [
            math.inf if r is None else r for r in result["attack_radii"]]
    return curves


def plot_curve(radii_by_method: dict[str, Any], out: IO[bytes], fmt: str, norm: str, title: str) -> None:
    """Certified accuracy against eps, the curve every seed paper shows (an attack's curve, if given, is an
    upper bound on the robust accuracy; inf radii count as never broken), written to ``out`` as ``fmt``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    curves = {name: torch.as_tensor(radii).double().cpu() for name, radii in radii_by_method.items()}
    finite = torch.cat([r[torch.isfinite(r)] for r in curves.values()] or [torch.zeros(0, dtype=torch.float64)])
    top = float(finite.max()) if len(finite) and float(finite.max()) > 0 else 1.0
    eps = torch.linspace(0, top * 1.05, 200)
    for name, r in curves.items():
        acc = [(r > e).double().mean().item() if e > 0 else (r > 0).double().mean().item() for e in eps]
        ax.plot(eps.numpy(), acc, label=name)
    ax.set_xlabel(f"eps (l{norm})")
    ax.set_ylabel("certified accuracy" if len(radii_by_method) == 1 else "accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title[:60])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(out, format=fmt, dpi=120)
    finally:
        plt.close(fig)
