"""The robust-training zoo as a table in the seeds' format: clean / PGD / certified accuracy per method.

    .venv/bin/python benchmarks/training_table.py [--run] [--eps 1.58]

``--run`` first retrains and re-evaluates every model side by side (``models/make_zoo.py --train``: one
architecture, 4C3F at width 0.25, and one budget, 10 epochs, for every method); without it the table is read
from ``models/manifest.json``. Certified accuracy per certificate method evaluated there (LMT Prop. 2, LipLT
on the bundled sample data/fashion-mnist-1k; BCP on its first 200 images). The seeds' MNIST 4C3F numbers at
l2 1.58 are printed beside it for the ordering (LMT 40.6, BCP 48.0, CRM 63.4 certified).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import ROOT

#: the seeds' tables, MNIST 4C3F at l2 eps 1.58: (clean, PGD, certified) in %; standard and CRM from CRM's
#: Table 1, LMT and BCP from BCP's Table 2
SEEDS = {"standard": (99.0, 45.4, 0.0), "lmt": (86.48, 53.56, 40.55), "bcp": (92.41, 64.70, 47.95),
         "crm": (96.27, 88.04, 63.37)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--eps", default="1.58", choices=["0.5", "1", "1.58"])
    args = parser.parse_args()
    if args.run:
        subprocess.run([sys.executable, str(ROOT / "models" / "make_zoo.py"), "--train"], check=True)
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    print(f"Fashion-MNIST, 4C3F width 0.25, 10 epochs, l2 eps {args.eps}: accuracy in % on the first 1,000 test images "
          f"(BCP's certificate on the first 200)")
    head = f"{'clean':>6} {'PGD':>6}"
    print(f"{'method':<16} {head} {'Prop.2':>7} {'LipLT':>6} {'BCP*':>6}   seeds, MNIST 4C3F eps 1.58: {head} cert.")
    for entry in manifest["models"]:
        if "method" not in entry:
            continue
        cert = entry["certified_accuracy"]
        row = " ".join(f"{100 * cert[k][args.eps]:>{w}.1f}" for k, w in (("lmt-pairwise", 7), ("liplt", 6),
                                                                          ("bcp", 6)))
        seed = SEEDS.get(entry["method"])
        seed_text = "" if seed is None else f"{' ' * 29}{seed[0]:>6.1f} {seed[1]:>6.1f} {seed[2]:>5.1f}"
        clean, pgd = 100 * entry["clean_accuracy"], 100 * entry["pgd_accuracy"][args.eps]
        print(f"{entry['method']:<16} {clean:>6.1f} {pgd:>6.1f} {row} {seed_text}")


if __name__ == "__main__":
    main()
