"""Hostile and careless input through the real command line (issue 12), part 2: data files, models and VNN-LIB
properties, corrupted or crafted. The contract is ``tests/hostile.py``'s."""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from .conftest import REPO, run_main
from .hostile import run_refused, write_idx, write_mlp


# ----------------------------------------------------------------------------------------------- bad data files
def npz_with_header(path: Path, header: str, data: bytes, y: np.ndarray | None = None) -> Path:
    """An .npz whose x.npy has ``header`` (the dict text) and ``data``, written by hand."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    npy = b"\x93NUMPY\x01\x00" + (len(text) + pad + 1).to_bytes(2, "little") + text + b" " * pad + b"\n" + data
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", npy)
        buf = io.BytesIO()
        np.save(buf, np.zeros(2, np.int64) if y is None else y)
        z.writestr("y.npy", buf.getvalue())
    return path


def make_data(ws: Path, case: str) -> str:
    path = ws / "bad.npz"
    zeros = np.zeros((5, 4), np.float32)
    labels = np.zeros(5, np.int64)
    arrays = {
        "x-scalar": dict(x=np.float32(1.0), y=labels), "y-scalar": dict(x=zeros, y=np.int64(1)),
        "lengths": dict(x=zeros, y=np.zeros(4, np.int64)), "nan": dict(x=zeros + np.nan, y=labels),
        "inf": dict(x=zeros + np.inf, y=labels), "label-range": dict(x=zeros, y=labels + 7),
        "label-negative": dict(x=zeros, y=labels - 1), "label-fraction": dict(x=zeros, y=labels + 0.5),
        "label-huge": dict(x=zeros, y=labels + 1e30), "complex": dict(x=zeros.astype(np.complex64), y=labels),
        "strings": dict(x=np.array([["a"] * 4] * 5), y=labels), "no-y": dict(x=zeros),
        "shape": dict(x=np.zeros((5, 7), np.float32), y=labels), "empty": dict(x=zeros[:0], y=labels[:0]),
    }
    if case in arrays:
        np.savez(path, **arrays[case])
    elif case == "pickled":
        np.savez(path, x=np.array([object()] * 5, dtype=object), y=labels)
    elif case == "huge-header":
        npz_with_header(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 4), }",
                        b"\0" * 32)
    elif case == "short-data":
        npz_with_header(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", b"\0" * 16)
    elif case == "truncated":
        np.savez(path, x=zeros, y=labels)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "not-zip":
        path.write_bytes(b"x,y\n1,2\n")
    elif case == "empty-file":
        path.write_bytes(b"")
    elif case.startswith("idx-"):
        folder = write_idx(ws / "bad_idx")
        images = folder / "t10k-images-idx3-ubyte"
        content = images.read_bytes()
        images.write_bytes({"idx-huge": bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3 + content[16:],
                            "idx-truncated": content[:40], "idx-no-dims": bytes([0, 0, 8, 0]) + content[4:],
                            "idx-not": b"P5 2 2 255\n" + content[16:]}[case])
        return str(folder)
    return str(path)


@pytest.mark.parametrize("case", [
    "x-scalar", "y-scalar", "lengths", "nan", "inf", "label-range", "label-negative", "label-fraction",
    "label-huge", "complex", "strings", "no-y", "shape", "empty", "pickled", "huge-header", "short-data",
    "truncated", "not-zip", "empty-file", "idx-huge", "idx-truncated", "idx-no-dims", "idx-not"])
def test_bad_data_files(capsys, ws, case):
    data = make_data(ws, case)
    run_refused(capsys, ws, "certify", "m.onnx", "--data", data)


# ---------------------------------------------------------------------------------------------------- bad models
@pytest.mark.parametrize("case, needle", [
    ("zeros", "not an ONNX file"), ("text", "m.onnx"), ("empty", "empty file"), ("truncated", "m.onnx"),
    ("pickle", "m.onnx"), ("folder", "is a directory"), ("missing", "no such file"),
    ("ext-negative-offset", "external data"), ("ext-length-not-int", "external data"),
    ("ext-null-byte", "NUL"), ("ext-past-end", "past the end"), ("ext-outside", "outside"),
])
def test_bad_models(capsys, tmp_path, monkeypatch, case, needle):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    external = {"ext-negative-offset": {"offset": "-4"}, "ext-length-not-int": {"length": "12.5"},
                "ext-null-byte": {"location": "w\0.bin"}, "ext-past-end": {"offset": "64"},
                "ext-outside": {"location": "../w.bin"}}
    if case in external:
        write_mlp(model, external=external[case])
    elif case == "folder":
        model.mkdir()
    elif case != "missing":
        write_mlp(model)
        content = model.read_bytes()
        model.write_bytes({"zeros": b"\0" * 4096, "text": b"hello, not a model\n", "empty": b"",
                           "truncated": content[:len(content) // 2],
                           "pickle": __import__("pickle").dumps({"weights": [1, 2]})}[case])
    run_refused(capsys, tmp_path, "inspect", "m.onnx", needles=(needle,))


def test_corrupted_models_never_crash(capsys, tmp_path, monkeypatch):
    """Random byte changes in a model's structure: every run ends with exit 0 (still a valid model), 1 or 2
    (one line), never an internal error."""
    monkeypatch.chdir(tmp_path)
    content = write_mlp(tmp_path / "base.onnx").read_bytes()
    rng = np.random.default_rng(12)
    codes = set()
    for _ in range(40):
        mutated = bytearray(content)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        (tmp_path / "m.onnx").write_bytes(bytes(mutated))
        code, _, err = run_main(capsys, "inspect", "m.onnx")
        codes.add(code)
        assert code in (0, 1, 2) and (code != 2 or len(err.strip().splitlines()) == 1), err
    assert 2 in codes


def test_huge_input_shape_is_refused(capsys, tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000, 100000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100000, 100000])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    run_refused(capsys, tmp_path, "inspect", str(tmp_path / "m.onnx"), needles=("10000000000 values",))


@pytest.mark.slow
def test_huge_file_is_refused_without_reading_it(tmp_path):
    """A 3 GiB file (sparse) is refused from its size, in a process whose peak memory stays under 500 MB."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.write(b"\x08\x08")
        f.truncate(3 * 2**30)
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "verifier.commands.cli", "inspect",
                           str(path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    status, stderr = proc.stdout.split("\n", 1)
    exit_code, peak_kb = map(int, status.split())
    assert exit_code == 2 and "larger than any ONNX file" in stderr and len(stderr.strip().splitlines()) == 1
    assert peak_kb < 500 * 1024


# ------------------------------------------------------------------------------------------------ bad VNN-LIB
def vnnlib(body: str) -> str:
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    bounds = "".join(f"(assert (<= X_{i} 1.0))\n(assert (>= X_{i} 0.0))\n" for i in range(4))
    return head + bounds + body


@pytest.mark.parametrize("text, needle", [
    (vnnlib("(assert (or (and (>= Y_0 Y_1)) (and (>= Y_2 Y_1)))"), "line 16: '(' opened here is never closed"),
    (vnnlib("(assert (>= Y_0 Y_1)))\n"), "line 16: unexpected ')'"),
    (vnnlib("(assert (>= X_-1 0))\n(assert (>= Y_0 Y_1))"), "variable 'X_-1'"),
    (vnnlib("; label 1\n"), "no assertion on the outputs"),
    (vnnlib("(assert (>= Y_0 Y_7))"), "'Y_7' is used but not declared"),
    (vnnlib("(assert (>= Y_0 inf))"), "finite number"),
    (vnnlib('(assert (>= Y_0 "a"))'), "no strings"),
    (vnnlib("(assert " * 70 + "x" + ")" * 70), "nested deeper"),
    (vnnlib("(assert (>= Y_0 Y_1) (>= Y_2 Y_1))"), "one expression"),
    (vnnlib("(check-sat)\n(assert (>= Y_0 Y_1))"), "expected (declare-const ...) or (assert ...)"),
    (vnnlib("(declare-const X_0 Real)\n(assert (>= Y_0 Y_1))"), "declared twice"),
    (vnnlib("(declare-const Z Real)\n(assert (>= Y_0 Y_1))"), "variable 'Z'"),
    (vnnlib("(assert (>= Y_0 (foo Y_1)))"), "expected a term"),
    (vnnlib("(assert (or (<= X_0 0.5) (>= Y_0 Y_1)))"), "several input boxes"),
    (vnnlib("(assert (>= Y_0 Y_1))").replace("(declare-const X_2 Real)\n", "").replace(
        "(assert (<= X_2 1.0))\n(assert (>= X_2 0.0))\n", ""), "X_2 is not declared"),
    (vnnlib("(assert (>= Y_0 Y_1))").replace("(assert (>= X_3 0.0))\n", ""), "X_3 has no lower bound"),
])
def test_bad_vnnlib(capsys, ws, text, needle):
    (ws / "p.vnnlib").write_text(text)
    run_refused(capsys, ws, "certify", "m.onnx", "--data", "p.vnnlib", needles=(needle,))


def test_good_vnnlib_with_arithmetic_is_read(capsys, ws):
    disjuncts = "(and (>= Y_0 Y_2)) (and (>= Y_1 Y_2)) (and (>= (+ Y_1 (* 2 Y_0)) (- Y_2 1)))"
    (ws / "p.vnnlib").write_text(vnnlib(f"(assert (or {disjuncts}))"))
    code, out, err = run_main(capsys, "certify", "m.onnx", "--data", "p.vnnlib", "--json")
    assert code == 0, err


def test_nul_bytes_in_paths_are_refused():
    """A path with a NUL byte (possible through the Python API, not argv) is one clear error, not a ValueError."""
    from frontends.data import load_dataset
    from frontends.onnx_io import read_model
    from frontends.outputs import OutputPaths
    from verifier.errors import LipverifyError

    with pytest.raises(LipverifyError, match="NUL byte"):
        read_model("m\0.onnx")
    with pytest.raises(LipverifyError, match="NUL byte"):
        OutputPaths({"--report": "r\0.json"})
    with pytest.raises(LipverifyError, match="no such file"):
        load_dataset("d\0.npz", (4,))
