"""Helpers for the hostile-input tests (issue 12): a workspace of small inputs, file hashes, and running the real
command line in-process (``verifier.commands.cli.main``, the console script's entry point) or as a process of its own
(for a file-size limit standing in for a full disk, peak memory, a pickle payload).

The contract every case checks: exit code 2 and one line on stderr, never a traceback; no input file changed and
nothing but the asked-for outputs written (every file under the test's folder is hashed before and after).
"""
from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .conftest import REPO, run_main


# ------------------------------------------------------------------------------------------------ the workspace
def write_mlp(path: Path, external: dict[str, str] | None = None) -> Path:
    """A 4 -> 8 -> 3 ReLU MLP; ``external``: keys of W1's external-data entry (its data then goes to w.bin)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "W2")
    if external is not None:
        (path.parent / "w.bin").write_bytes(w1.raw_data)
        w1.ClearField("raw_data")
        w1.data_location = TensorProto.EXTERNAL
        for key, value in {"location": "w.bin", "offset": "0", "length": "128", **external}.items():
            entry = w1.external_data.add()
            entry.key, entry.value = key, value
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w1, w2])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def write_idx(folder: Path, n: int = 30) -> Path:
    """A tiny MNIST-format folder (2x2 images) for the 4-input MLP."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 2, 2)) + \
        rng.integers(0, 256, n * 4, dtype=np.uint8).tobytes()
    labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + rng.integers(0, 3, n, dtype=np.uint8).tobytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return folder


def make_workspace(root: Path) -> Path:
    """``root`` with a model (m.onnx), its data as an .npz (d.npz) and as an IDX folder (idx/)."""
    write_mlp(root / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.normal(size=(60, 4)).astype(np.float32), y=rng.integers(0, 3, 60))
    write_idx(root / "idx")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def refused(result: tuple[int, str, str], *needles: str) -> str:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_refused(capsys, root: Path, *args: str, needles: tuple[str, ...] = ()) -> str:
    """Run in-process; assert the refusal and that no file under ``root`` changed or appeared."""
    before = snapshot(root)
    line = refused(run_main(capsys, *args), *needles)
    assert snapshot(root) == before
    return line


def cli_process(*args: str, cwd: Path, file_limit: int | None = None, timeout: int = 300):
    def limit():
        if file_limit is not None:  # writes past this many bytes fail with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "verifier.commands.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, env=env)


CERTIFY = ("certify", "m.onnx", "--data", "d.npz", "--limit", "5")
TRAIN = ("train", "m.onnx", "--data", "d.npz", "--epochs", "1", "--val", "10", "--json")
