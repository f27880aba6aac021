"""Hostile and careless input through the real command line (issue 12): every case gives exit code 2 and one
line on stderr, never a traceback; no input file is changed and nothing but the asked-for outputs is written
(every file under the test's folder is hashed before and after); a pickle payload never runs.

Most cases run ``verifier.cli.main`` in-process (the console script's entry point); the ones that need a
process of their own (a file-size limit standing in for a full disk, peak memory, a pickle payload) run
``python -m verifier.cli``.
"""
from __future__ import annotations

import hashlib
import io
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
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


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A folder with a model, its data in three formats, and hashes of every file in it."""
    monkeypatch.chdir(tmp_path)
    write_mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 4)).astype(np.float32), y=rng.integers(0, 3, 60))
    write_idx(tmp_path / "idx")
    return tmp_path


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
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env)


CERTIFY = ("certify", "m.onnx", "--data", "d.npz", "--limit", "5")
TRAIN = ("train", "m.onnx", "--data", "d.npz", "--epochs", "1", "--val", "10", "--json")


# ------------------------------------------------------------------------------------ inputs are never outputs
@pytest.mark.parametrize("args, needle", [
    (CERTIFY + ("--report", "m.onnx"), "input of this command"),
    (CERTIFY + ("--report", "d.npz"), "input of this command"),
    (CERTIFY + ("--plot", "m.onnx"), "input of this command"),
    (CERTIFY + ("--report", "./sub/../m.onnx"), "input of this command"),
    (("certify", "m.onnx", "--data", "idx", "--report", "idx/t10k-labels-idx1-ubyte"), "input of this command"),
    (("attack", "m.onnx", "--data", "d.npz", "--report", "m.onnx"), "input of this command"),
    (TRAIN + ("--out", "m.onnx"), "input of this command"),
    (TRAIN + ("--out", "d.npz"), "input of this command"),
    (TRAIN + ("--out", "o.onnx", "--checkpoint", "m.onnx"), "input of this command"),
    (TRAIN + ("--out", "o.onnx", "--checkpoint", "d.npz", "--resume"), "input of this command"),
    (TRAIN + ("--out", "c.st", "--checkpoint", "c.st"), "name the same file"),
    (CERTIFY + ("--report", "r.json", "--plot", "r.json"), "name the same file"),
])
def test_inputs_are_never_overwritten(capsys, ws, args, needle):
    (ws / "sub").mkdir()
    run_refused(capsys, ws, *args, needles=(needle,))


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_links_to_an_input_are_refused(capsys, ws, link):
    (os.symlink if link == "symlink" else os.link)(ws / "m.onnx", ws / "alias.json")
    run_refused(capsys, ws, *CERTIFY, "--report", "alias.json", needles=("input of this command",))


def test_external_data_file_is_an_input(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mlp(tmp_path / "m.onnx", external={})
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 4), np.float32), y=np.zeros(5, np.int64))
    run_refused(capsys, tmp_path, *CERTIFY, "--report", "w.bin", needles=("input of this command", "w.bin"))
    run_refused(capsys, tmp_path, *TRAIN, "--val", "2", "--out", "w.bin", needles=("input of this command",))


# ---------------------------------------------------------------------------------- outputs that cannot be written
@pytest.mark.parametrize("args, needle", [
    (CERTIFY + ("--report", "missing/r.json"), "does not exist"),
    (CERTIFY + ("--report", "idx"), "is a folder"),
    (CERTIFY + ("--report", "/dev/full"), "not a regular file"),
    (CERTIFY + ("--report", "fifo"), "not a regular file"),
    (CERTIFY + ("--report", "d.npz/r.json"), "not a folder"),
    (CERTIFY + ("--plot", "curve.onnx"), "cannot write '.onnx' images"),
    (CERTIFY + ("--plot", "curve.txt"), "cannot write '.txt' images"),
    (CERTIFY + ("--report", ""), "empty path"),
    (TRAIN + ("--out", "missing/o.onnx"), "does not exist"),
    (TRAIN + ("--out", "o.onnx", "--checkpoint", "idx"), "is a folder"),
])
def test_unwritable_outputs_are_refused_before_work(capsys, ws, args, needle):
    os.mkfifo(ws / "fifo")
    run_refused(capsys, ws, *args, needles=(needle,))


def test_unwritable_folder(capsys, ws):
    if os.geteuid() != 0:
        locked = ws / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "r.json")
    elif Path("/sys").is_dir() and not os.access("/sys", os.W_OK):
        target = "/sys/r.json"
    else:
        target = "/sys/lipverify-test.json"
        if Path("/sys").is_dir():
            code, _, err = run_main(capsys, *CERTIFY, "--report", target)
            assert code == 2 and len(err.strip().splitlines()) == 1 and not Path(target).exists()
            return
        pytest.skip("running as root with no read-only folder to write into")
    run_refused(capsys, ws, *CERTIFY, "--report", target, needles=("r.json",))


@pytest.mark.parametrize("args", [
    CERTIFY + ("--report", "r.json"),
    CERTIFY + ("--plot", "r.png"),
    TRAIN + ("--out", "o.onnx"),
    TRAIN + ("--out", "o.onnx", "--checkpoint", "c.st"),
], ids=["report", "plot", "out", "checkpoint"])
def test_full_disk_gives_one_line_and_no_partial_file(ws, args):
    before = snapshot(ws)
    proc = cli_process(*args, cwd=ws, file_limit=64)
    refused((proc.returncode, proc.stdout, proc.stderr), "cannot write")
    assert snapshot(ws) == before  # no partial output, no temporary file left


def test_outputs_are_written_and_nothing_else(ws):
    before = snapshot(ws)
    proc = cli_process(*CERTIFY, "--report", "r.json", "--plot", "r.svg", "--json", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(ws)
    assert set(after) - set(before) == {"r.json", "r.svg"}
    assert all(after[k] == v for k, v in before.items())
    proc = cli_process(*TRAIN, "--out", "o.onnx", "--checkpoint", "c.st", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    assert set(snapshot(ws)) - set(after) == {"o.onnx", "c.st"}


# -------------------------------------------------------------------------------- numbers checked before work
@pytest.mark.parametrize("args", [
    CERTIFY + ("--eps", "-1"), CERTIFY + ("--eps", "nan"), CERTIFY + ("--eps", "inf"), CERTIFY + ("--eps", "x"),
    CERTIFY[:-2] + ("--limit", "0"), CERTIFY[:-2] + ("--limit", "-3"), CERTIFY + ("--batch-size", "0"),
    CERTIFY + ("--input-scale", "0"), CERTIFY + ("--input-scale", "nan"), CERTIFY + ("--std", "0"),
    CERTIFY + ("--std", "1,-1"), CERTIFY + ("--mean", "nan"), CERTIFY + ("--mean", ","),
    CERTIFY + ("--min-certified-accuracy", "2", "--at-eps", "0.1"),
    CERTIFY + ("--min-certified-accuracy", "nan", "--at-eps", "0.1"),
    CERTIFY + ("--min-certified-accuracy", "-0.1", "--at-eps", "0.1"),
    CERTIFY + ("--min-certified-accuracy", "0.5", "--at-eps", "-1"),
    CERTIFY + ("--min-certified-accuracy", "0.5"), CERTIFY + ("--attack-steps", "0"),
    ("attack", "m.onnx", "--data", "d.npz", "--eps", "-0.5"), ("attack", "m.onnx", "--data", "d.npz", "--steps", "0"),
    ("attack", "m.onnx", "--data", "d.npz", "--restarts", "0"),
    ("attack", "m.onnx", "--data", "d.npz", "--batch-size", "-1"),
    TRAIN + ("--out", "o.onnx", "--lr", "inf"), TRAIN + ("--out", "o.onnx", "--lr", "nan"),
    TRAIN + ("--out", "o.onnx", "--lr", "0"), TRAIN + ("--out", "o.onnx", "--lr", "-1"),
    TRAIN + ("--out", "o.onnx", "--eps", "nan"), TRAIN + ("--out", "o.onnx", "--epochs", "0"),
    TRAIN + ("--out", "o.onnx", "--batch-size", "0"), TRAIN + ("--out", "o.onnx", "--ramp", "2"),
    TRAIN + ("--out", "o.onnx", "--seed", "-1"), TRAIN + ("--out", "o.onnx", "--seed", str(2**70)),
    TRAIN + ("--out", "o.onnx", "--width", "0"), TRAIN + ("--out", "o.onnx", "--input-shape", "1,0,28"),
    TRAIN + ("--out", "o.onnx", "--input-shape", "a"), TRAIN + ("--out", "o.onnx", "--classes", "1"),
    TRAIN + ("--out", "o.onnx", "--crm-t", "0"), TRAIN + ("--out", "o.onnx", "--crm-lambda", "-1"),
    TRAIN + ("--out", "o.onnx", "--cross-lambda", "nan"), TRAIN + ("--out", "o.onnx", "--lmt-c", "-1"),
    TRAIN + ("--out", "o.onnx", "--limit", "0"), TRAIN[:-4] + ("--val", "0", "--out", "o.onnx"),
    TRAIN + ("--out", "o.onnx", "--resume"),
])
def test_bad_values_are_usage_errors(capsys, ws, args):
    run_refused(capsys, ws, *args)


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


def test_huge_file_is_refused_without_reading_it(tmp_path):
    """A 3 GiB file (sparse) is refused from its size, in a process whose peak memory stays under 500 MB."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.write(b"\x08\x08")
        f.truncate(3 * 2**30)
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "verifier.cli", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
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


# ------------------------------------------------------------------------------------------------- checkpoints
class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickle_payload_checkpoint_never_runs(ws, how):
    marker = ws / "PWNED"
    ckpt = ws / "ck.pt"
    if how == "torch.save":
        torch.save({"module": Payload(marker)}, ckpt)
    else:
        ckpt.write_bytes(__import__("pickle").dumps(Payload(marker), protocol=2))
    before = snapshot(ws)
    proc = cli_process(*TRAIN, "--out", "o.onnx", "--checkpoint", "ck.pt", "--resume", cwd=ws)
    refused((proc.returncode, proc.stdout, proc.stderr), "ck.pt", "could run code" if how == "pickle" else "ck.pt")
    assert not marker.exists()
    assert snapshot(ws) == before


@pytest.fixture
def checkpoint(capsys, ws):
    """A real checkpoint of one epoch of TRAIN, and its state."""
    from training.checkpoint import load_checkpoint

    code, _, err = run_main(capsys, *TRAIN, "--out", "o.onnx", "--checkpoint", "c.st")
    assert code == 0, err
    return ws / "c.st", load_checkpoint(ws / "c.st")


def _tampered(state: dict, case: str) -> dict:
    state = dict(state)
    if case == "weights-shape":
        state["module"] = {k: torch.zeros(2) for k in state["module"]}
    elif case == "weights-nan":
        state["module"] = {k: v * float("nan") for k, v in state["module"].items()}
    elif case == "weights-missing":
        state["module"] = dict(list(state["module"].items())[:1])
    elif case == "optimizer-shape":
        opt = state["optimizer"]
        state["optimizer"] = {**opt, "state": {k: {**v, "exp_avg": torch.zeros(3, 3)} for k, v in opt["state"].items()}}
    elif case == "optimizer-keys":
        state["optimizer"] = {**state["optimizer"], "state": {0: {"bogus": torch.zeros(1)}}}
    elif case == "optimizer-index":
        state["optimizer"] = {**state["optimizer"], "state": {99: {}}}
    elif case == "history":
        state["history"] = [{"epoch": "one"}]
    elif case == "epoch":
        state["epoch"] = -5
    elif case == "seconds":
        state["seconds"] = float("inf")
    elif case == "config":
        state["config"] = "standard"
    elif case == "no-module":
        del state["module"]
    return state


@pytest.mark.parametrize("case", ["weights-shape", "weights-nan", "weights-missing", "optimizer-shape",
                                  "optimizer-keys", "optimizer-index", "history", "epoch", "seconds", "config",
                                  "no-module"])
def test_tampered_checkpoints_are_refused(capsys, ws, checkpoint, case):
    from training.checkpoint import save_checkpoint

    path, state = checkpoint
    save_checkpoint(_tampered(state, case), path)
    run_refused(capsys, ws, *TRAIN, "--epochs", "2", "--out", "o.onnx", "--checkpoint", "c.st", "--resume")


@pytest.mark.parametrize("case", ["truncated", "random", "foreign-safetensors", "bad-json", "missing-tensor",
                                  "deep"])
def test_corrupt_checkpoints_are_refused(capsys, ws, checkpoint, case):
    import json

    from safetensors.torch import save

    path, _ = checkpoint
    content = path.read_bytes()
    deep = {"$dict": [["module", json.loads("[" * 40 + "]" * 40)]]}
    path.write_bytes({
        "truncated": content[:len(content) // 2],
        "random": bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8)),
        "foreign-safetensors": save({"w": torch.zeros(2)}),
        "bad-json": save({"w": torch.zeros(2)}, metadata={"format": "lipverify-checkpoint/1", "state": "{"}),
        "missing-tensor": save({"w": torch.zeros(2)}, metadata={"format": "lipverify-checkpoint/1",
                                                                "state": '{"$dict": [["module", {"$tensor": "t9"}]]}'}),
        "deep": save({"w": torch.zeros(2)}, metadata={"format": "lipverify-checkpoint/1", "state": json.dumps(deep)}),
    }[case])
    run_refused(capsys, ws, *TRAIN, "--epochs", "2", "--out", "o.onnx", "--checkpoint", "c.st", "--resume")


def test_checkpoint_round_trip_keeps_types():
    from training.checkpoint import _Decoder, _encode

    state = {"a": (0.9, 0.999), 3: [torch.arange(3), {"b": None, "c": True, "d": "x"}], "e": float("inf")}
    tensors: dict = {}
    tree = _encode(state, tensors)

    class Handle:
        def keys(self):
            return tensors.keys()

        def get_tensor(self, name):
            return tensors[name]

    back = _Decoder(Path("c"), Handle(), "cpu")(tree)
    assert back["a"] == (0.9, 0.999) and back["e"] == float("inf") and back[3][1] == state[3][1]
    assert torch.equal(back[3][0], torch.arange(3))


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
