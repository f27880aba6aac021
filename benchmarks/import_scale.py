"""Import cost against graph size, and the memory it takes to refuse a huge file (issue 12's targets).

    .venv/bin/python benchmarks/import_scale.py [--nodes 5000 50000] [--huge-gib 3]

For each size, a valid chain of Identity nodes (and of Relu nodes, which stay in the IR) is written and
``lipverify inspect`` runs on it as a real process: wall seconds, peak memory, exit code. Then a sparse file of
``--huge-gib`` GiB of zeros (and one that starts like an ONNX file) is handed to ``inspect``: it must be refused
(exit 2) without being read. Targets on a 2-core machine: a 50,000-node Identity chain in under 10 s; refusing a
3 GB file under 500 MB of memory.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True)
print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def chain(n: int, op: str, path: Path) -> Path:
    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def inspect(path: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak resident MB) of ``lipverify inspect path`` in a fresh process."""
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "verifier.commands.cli", "inspect", str(path)]
    code, seconds, kb = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.split()
    return int(code), float(seconds), int(kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--huge-gib", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'file':<44}{'exit':>5}{'seconds':>9}{'peak MB':>9}")
        for n in args.nodes:
            for op in ("Identity", "Relu"):
                t = time.perf_counter()
                path = chain(n, op, folder / f"{op}_{n}.onnx")
                made = time.perf_counter() - t
                code, seconds, mb = inspect(path)
                print(f"{f'{n} {op} nodes (written in {made:.1f} s)':<44}{code:>5}{seconds:>9.2f}{mb:>9.0f}")
        size = int(args.huge_gib * 2**30)
        for name, head in (("zeros", b""), ("starts like ONNX", b"\x08\x08")):
            path = folder / "huge.onnx"
            with open(path, "wb") as f:
                f.write(head)
                f.truncate(size)  # sparse: nothing is written to disk
            code, seconds, mb = inspect(path)
            print(f"{f'{args.huge_gib:g} GiB {name}':<44}{code:>5}{seconds:>9.2f}{mb:>9.0f}")
            path.unlink()
        print(f"this process: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
