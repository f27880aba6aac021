"""Decide VNN-COMP instances through the tool interface (``vnncomp/run_instance.sh``) and tabulate per benchmark.

    .venv/bin/python benchmarks/vnncomp.py                         # the zoo's own models and VNN-LIB files
    .venv/bin/python benchmarks/vnncomp.py --instances DIR/instances.csv --category mnist_fc --timeout 60
    .venv/bin/python benchmarks/vnncomp.py --reference RESULTS.csv ...   # a tool's published results beside ours

Every instance runs in its own process (``prepare_instance.sh``, then ``run_instance.sh``), with the instance's
timeout (or ``--timeout``). Each 'sat' result file is checked as the competition's scorer checks it: its X inside
the input box (to 1e-4), its Y what onnxruntime computes at X (to 1e-4), and Y meets an output disjunct of a region
containing X (to 1e-4); a failed check is reported as a wrong counterexample. The table per benchmark: holds /
violated / unknown (timeouts and errors included), the median seconds, and, with ``--reference`` (CSV lines
``category,onnx,vnnlib,prepare_seconds,result,seconds`` as the VNN-COMP results repositories write them), that
tool's unsat / sat counts on the same instances and any conflict (a 'holds' here where it found 'sat', or the
reverse). Instances are matched by the file names of model and property.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import ROOT, zoo_dir

#: the zoo's benchmarks: folder -> (models, property folder or files); each model with each property
ZOO = {
    "acasxu": (["ACASXU_run2a_1_1_batch_2000.onnx"], "vnnlib"),
    "cifar10_resnet": (["resnet_2b.onnx"], "vnnlib"),
    "collins_rul_cnn": (["NN_rul_small_window_20.onnx"], "vnnlib"),
    "eran": (["mnist_relu_9_200.onnx", "ffnnSIGMOID__Point_6x200.onnx"], "vnnlib"),
    "marabou-cifar10": (["cifar10_small.onnx"], "vnnlib"),
    "mnist_fc": (["mnist-net_256x2.onnx"], "vnnlib"),
    "oval21": (["cifar_base_kw.onnx"], "vnnlib"),
    "rl": (["cartpole.onnx"], "vnnlib"),
    "verivital": (["Convnet_avgpool.onnx"], "vnnlib/avgpool"),
}
ZOO_MAXPOOL = ("verivital", "Convnet_maxpool.onnx", "vnnlib/maxpool")
WORDS = {"unsat": "holds", "holds": "holds", "sat": "violated", "violated": "violated"}


def zoo_instances(timeout: float) -> list[tuple[str, Path, Path, float]]:
    zoo = zoo_dir()
    found = []
    for category, (models, folder) in ZOO.items():
        for model in models:
            for prop in sorted((zoo / category / folder).glob("*.vnnlib")):
                found.append((category, zoo / category / model, prop, timeout))
    category, model, folder = ZOO_MAXPOOL
    found += [(category, zoo / category / model, p, timeout)
              for p in sorted((zoo / category / folder).glob("*.vnnlib"))]
    test = zoo / "test" / "instances.csv"
    if test.is_file():
        found += read_instances(test, "test", timeout)
    return found


def read_instances(path: Path, category: str, timeout: float | None) -> list[tuple[str, Path, Path, float]]:
    """The competition's instances.csv: onnx,vnnlib,timeout per line, paths relative to the file's folder."""
    rows = []
    for line in csv.reader(path.read_text().splitlines()):
        if len(line) >= 3:
            rows.append((category, path.parent / line[0].strip(), path.parent / line[1].strip(),
                         float(line[2]) if timeout is None else timeout))
    return rows


def run_one(category: str, model: Path, prop: Path, timeout: float) -> tuple[str, float, str]:
    """(result word, seconds, the result file's text) through prepare_instance.sh and run_instance.sh."""
    scripts = ROOT / "vnncomp"
    subprocess.run([scripts / "prepare_instance.sh", "v1", category, str(model), str(prop)], check=False,
                   capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.txt"
        start = time.monotonic()
        done = subprocess.run([scripts / "run_instance.sh", "v1", category, str(model), str(prop), str(out),
                               str(timeout)], capture_output=True, text=True, timeout=timeout + 60)
        seconds = time.monotonic() - start
        text = out.read_text() if out.is_file() else ""
    word = text.split("\n", 1)[0].strip() if done.returncode == 0 and text else f"error({done.returncode})"
    return word, seconds, text


def check_counterexample(model: Path, prop: Path, text: str, tol: float = 1e-4) -> bool:
    """The scorer's check of a 'sat' result file (module docstring); gzipped files are read from the copies
    run_instance.sh unpacked beside them."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from frontends.vnnlib import read_vnnlib

    model, prop = (Path(str(p).removesuffix(".gz")) for p in (model, prop))
    body = text.split("\n", 1)[1].replace("\n", " ").strip()[1:-1]
    xs, ys = [], []
    for part in body.split(")"):
        part = part.strip()
        if part:
            name, value = part[1:].split()
            (xs if name.startswith("X_") else ys).append(float(value))
    proto = onnx.load(str(model))
    inp = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}][0]
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {inp.name: np.array(xs, dtype=dtype).reshape(shape)})[0].reshape(-1)
    if len(ys) != len(y) or np.abs(y - np.array(ys)).max() >= tol:
        return False
    for region in read_vnnlib(prop).regions:
        x = np.array(xs)
        if ((x >= region.lower - tol) & (x <= region.upper + tol)).all():
            for rows in region.disjuncts:
                if ((rows.a @ np.array(ys) + rows.c) >= -tol).all():
                    return True
    return False


def _key(model: str | Path, prop: str | Path) -> tuple[str, str]:
    """An instance's key: the file names of model and property, without a .gz suffix."""
    return Path(model).name.removesuffix(".gz"), Path(prop).name.removesuffix(".gz")


def reference_results(paths: list[Path]) -> dict[tuple[str, str], str]:
    results = {}
    for path in paths:
        for line in csv.reader(path.read_text().splitlines()):
            if len(line) >= 5:
                results[_key(line[1], line[2])] = line[4].strip().lower()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=Path, action="append", default=[], help="instances.csv (repeatable)")
    parser.add_argument("--category", action="append", default=[], help="the category of each --instances")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per instance (default: the csv's; "
                        "60 for the zoo)")
    parser.add_argument("--limit", type=int, default=None, help="the first N instances of each category")
    parser.add_argument("--reference", type=Path, action="append", default=[], help="a tool's results csv")
    parser.add_argument("--log", type=Path, default=None, help="also write one CSV line per instance here")
    args = parser.parse_args()
    if args.instances:
        cats = args.category + [p.parent.name for p in args.instances[len(args.category):]]
        instances = [row for p, c in zip(args.instances, cats) for row in read_instances(p, c, args.timeout)]
    else:
        instances = zoo_instances(args.timeout or 60.0)
    if args.limit:
        kept, seen = [], defaultdict(int)
        for row in instances:
            seen[row[0]] += 1
            if seen[row[0]] <= args.limit:
                kept.append(row)
        instances = kept
    reference = reference_results(args.reference)
    table: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    times: dict[str, list[float]] = defaultdict(list)
    log = open(args.log, "w") if args.log else None
    for k, (category, model, prop, timeout) in enumerate(instances, 1):
        word, seconds, text = run_one(category, model, prop, timeout)
        status = WORDS.get(word, "unknown")
        if status == "violated" and not check_counterexample(model, prop, text):
            status = "wrong counterexample"
        row = table[category]
        row[status] += 1
        times[category].append(seconds)
        ref = reference.get(_key(model, prop))
        if ref is not None:
            row["ref " + ref] += 1
            if (status, ref) in (("holds", "sat"), ("violated", "unsat")):
                row["conflicts"] += 1
        line = f"{category},{model.name},{prop.name},{word},{seconds:.1f},{ref or ''}"
        if log:
            print(line, file=log, flush=True)
        bar = "#" * (30 * k // len(instances))
        print(f"\r[{bar:<30}] {k}/{len(instances)} {line[:90]:<90}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    head = f"{'benchmark':<16} {'n':>4} {'holds':>6} {'violated':>8} {'unknown':>8} {'median s':>9}"
    print(head + (f" {'ref unsat':>9} {'ref sat':>7} {'conflicts':>9}" if reference else "") + "  wrong ce")
    for category, row in table.items():
        n = len(times[category])
        unknown = n - row["holds"] - row["violated"] - row["wrong counterexample"]
        line = (f"{category:<16} {n:>4} {row['holds']:>6} {row['violated']:>8} {unknown:>8} "
                f"{statistics.median(times[category]):>9.1f}")
        if reference:
            line += f" {row['ref unsat']:>9} {row['ref sat']:>7} {row['conflicts']:>9}"
        print(line + f"  {row['wrong counterexample']}")


if __name__ == "__main__":
    main()
