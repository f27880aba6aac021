"""Certificates unchanged by a refactoring: ``certify --method best --json`` radii of this checkout against those
of another commit, per input and per method, to a relative tolerance.

    .venv/bin/python benchmarks/same_certificates.py --base REV [--rtol 1e-6] [--shared ../shared]

The other commit is checked out with ``git worktree`` into a temporary folder and run from there (its own
packages first on the path) with this checkout's interpreter. Cases: mnist_fc/mnist-net_256x2 on the first 100
MNIST test images (l2 and l_inf) and oval21/cifar_base_kw on its VNN-LIB centres (l2 and l_inf). Prints one line
per case and exits 1 if any radius differs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("mnist_fc/mnist-net_256x2.onnx", "data/mnist", "2", ["--limit", "100"]),
         ("mnist_fc/mnist-net_256x2.onnx", "data/mnist", "inf", ["--limit", "100"]),
         ("oval21/cifar_base_kw.onnx", "zoo/oval21/vnnlib", "2", []),
         ("oval21/cifar_base_kw.onnx", "zoo/oval21/vnnlib", "inf", [])]


def certify(checkout: Path, shared: Path, model: str, data: str, norm: str, extra: list[str]) -> tuple[dict, float]:
    cli = "verifier.commands.cli" if (checkout / "verifier" / "commands").is_dir() else "verifier.cli"  # older layout
    cmd = [sys.executable, "-m", cli, "certify", str(shared / "zoo" / model), "--data", str(shared / data),
           "--norm", norm, "--method", "best", "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: certify failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout), time.perf_counter() - start


def differences(a: dict, b: dict, rtol: float) -> list[str]:
    found = []
    series = {"best": (a["radii"], b["radii"])}
    for method in sorted(set(a.get("radii_by_method", {})) | set(b.get("radii_by_method", {}))):
        series[method] = (a.get("radii_by_method", {}).get(method), b.get("radii_by_method", {}).get(method))
    for name, (ra, rb) in series.items():
        if ra is None or rb is None or len(ra) != len(rb):
            found.append(f"{name}: present in one run only")
            continue
        for i, (x, y) in enumerate(zip(ra, rb)):
            if not (x == y or abs(x - y) <= rtol * max(abs(x), abs(y)) or (math.isinf(x) and x == y)):
                found.append(f"{name} input {i}: {x!r} vs {y!r}")
    if a.get("winner") != b.get("winner"):
        found.append("winners differ")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="The commit to compare with.")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("LIPVERIFY_SHARED", REPO.parent / "shared")))
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=REPO, check=True)
        try:
            for model, data, norm, extra in CASES:
                new, t_new = certify(REPO, args.shared, model, data, norm, extra)
                old, t_old = certify(base, args.shared, model, data, norm, extra)
                diffs = differences(new, old, args.rtol)
                failed |= bool(diffs)
                methods = ", ".join(sorted(new.get("radii_by_method", {})))
                print(f"{model} l{norm} ({new['n']} inputs; {methods}): "
                      f"{'same' if not diffs else f'{len(diffs)} DIFFERENCES: ' + '; '.join(diffs[:5])} "
                      f"(median {new['median_radius']:.6g}; {t_new:.1f} s here, {t_old:.1f} s at {args.base})")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
