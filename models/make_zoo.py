"""Evaluate the robust-training zoo and write its manifest.

    .venv/bin/python models/make_zoo.py [--train] [--epochs 10]

With ``--train``, first trains one model per method with ``lipverify train`` (same architecture, budget and
seed; Fashion-MNIST from ../shared/data or /usr/share/datasets) into models/. Then, for every model, on the
bundled sample data/fashion-mnist-1k (the first 1,000 test images): clean accuracy, PGD accuracy (20 steps x 5
restarts, l2) and certified accuracy at l2 eps 0.5, 1.0 and 1.58 for each certificate method, exactly as
``lipverify certify MODEL --data data/fashion-mnist-1k --method M --eps E`` reports them (BCP, whose bisection
is slow on CPU, on the first 200 images: ``--limit 200``; every entry lists its commands).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from verifier.commands.certify_run import run_certify  # noqa: E402

TRAIN_METHODS = ("standard", "lmt", "crm", "bcp", "cross-lipschitz")
CERT_METHODS = ("lmt-pairwise", "liplt", "bcp")
#: BCP's bisection costs ~0.3 s per image on these CNNs (this CPU): it runs on the first 200 images only
LIMIT = {"bcp": 200}
EPS = (0.5, 1.0, 1.58)
SAMPLE = ROOT / "data" / "fashion-mnist-1k"


def train_command(method: str, epochs: int) -> list[str]:
    return ["lipverify", "train", "--arch", "4C3F", "--width", "0.25", "--method", method, "--eps", "1.0",
            "--epochs", str(epochs), "--seed", "0", "--out", f"models/fmnist_4c3f_{method}.onnx", "--json"]


def pgd_accuracy(path: Path, eps: float) -> float:
    from frontends.data import load_dataset
    from frontends.onnx_import import load_onnx
    from verifier.engines.attacks import pgd
    from verifier.problem import RadiusProblem

    module = load_onnx(path)
    data = load_dataset(SAMPLE, module.graph.sample_shape)
    with torch.no_grad():
        correct = module(data.x).argmax(1) == data.y
    _, success = pgd(module, RadiusProblem(data.x[correct], data.y[correct], 2, 0.0, 1.0).at(eps), steps=20, restarts=5)
    return float((~success).sum()) / len(data.y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="Evaluate only these methods (keep the others' "
                        "entries).")
    parser.add_argument("--reports", type=Path, default=None, help="A folder of `lipverify train --json` reports "
                        "(METHOD.json) of models trained by the same commands elsewhere.")
    args = parser.parse_args()
    old = {e["file"]: e for e in json.loads((HERE / "manifest.json").read_text())["models"]} \
        if (HERE / "manifest.json").exists() else {}
    entries = dict(old)
    for method in TRAIN_METHODS:
        if args.only is not None and method not in args.only:
            continue
        cmd = train_command(method, args.epochs)
        path = ROOT / cmd[cmd.index("--out") + 1]
        training = old.get(path.name, {}).get("training_report")
        if args.reports is not None and (args.reports / f"{method}.json").exists() and \
                (args.reports / f"{method}.json").stat().st_size:
            training = json.loads((args.reports / f"{method}.json").read_text())
        if args.train:
            out = subprocess.run([str(ROOT / ".venv" / "bin" / cmd[0]), *cmd[1:]], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            training = json.loads(out)
        if not path.exists():
            print(f"skipping {path.name}: not trained", file=sys.stderr)
            continue
        t0 = time.time()
        certified, radii, commands = {}, {}, {}
        for cm in CERT_METHODS:
            r = run_certify(str(path), str(SAMPLE), method=cm, eps_list=EPS, limit=LIMIT.get(cm))
            certified[cm] = {f"{e:g}": r["certified_accuracy"][f"{e:g}"] for e in EPS}
            radii[cm] = torch.tensor(r["radii"])
            commands[cm] = (f"lipverify certify models/{path.name} --data data/fashion-mnist-1k --method {cm} "
                            + " ".join(f"--eps {e:g}" for e in EPS)
                            + (f" --limit {LIMIT[cm]}" if cm in LIMIT else ""))
            if cm == "lmt-pairwise":
                clean = r["clean_accuracy"]
        n = min(len(r) for r in radii.values())
        best = torch.stack([r[:n] for r in radii.values()]).amax(0)
        certified[f"best of the above (first {n})"] = {f"{e:g}": float((best >= e).float().mean()) for e in EPS}
        entry = {
            "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "command": " ".join(cmd), "method": method, "architecture": "4C3F at width 0.25 (conv 8-8-16-16, "
            "fc 128-128-10)", "data": "Fashion-MNIST train (55,000; the last 5,000 held out)",
            "input": "N x 1 x 28 x 28, pixels in [0, 1]",
            "seconds": training["seconds"] if training else None,
            "held_out": {k: training[k] for k in ("clean_accuracy", "certified_accuracy", "certificate")}
            if training else None,
            "evaluated_on": "data/fashion-mnist-1k (first 1,000 Fashion-MNIST test images)",
            "clean_accuracy": clean,
            "pgd_accuracy": {f"{e:g}": pgd_accuracy(path, e) for e in EPS},
            "certified_accuracy": certified,
            "certify_commands": commands,
            "evaluation_seconds": round(time.time() - t0, 1),
            "training_report": training,
        }
        entries[path.name] = entry
        print(json.dumps({k: v for k, v in entry.items() if k != "training_report"}), file=sys.stderr)
        (HERE / "manifest.json").write_text(json.dumps({"models": list(entries.values())}, indent=2) + "\n")


if __name__ == "__main__":
    main()
