"""Hostile and careless input through the real command line (issue 12), part 1: output paths (inputs are never
overwritten, unwritable outputs, a full disk), numbers on the command line, and training checkpoints (a pickle
payload never runs). The contract is ``tests/hostile.py``'s."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import run_main
from .hostile import CERTIFY, TRAIN, cli_process, refused, run_refused, snapshot, write_mlp

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # finite values whose effect is not: the data map overflows float32, training diverges, a model too large
    CERTIFY + ("--std", "1e-320"), CERTIFY + ("--input-scale", "1e308"), CERTIFY + ("--mean", "1e308"),
    CERTIFY + ("--method", "bcp", "--std", "1e-39"), TRAIN + ("--out", "o.onnx", "--lr", "1e30", "--epochs", "3"),
    TRAIN + ("--out", "o.onnx", "--method", "lmt", "--lmt-c", "1e300", "--epochs", "3"),
    TRAIN + ("--out", "o.onnx", "--method", "crm", "--crm-t", "1e-300", "--epochs", "3"),
    TRAIN + ("--out", "o.onnx", "--method", "bcp", "--eps", "1e308"),
    ("train", "--arch", "mlp-100000000", "--data", "d.npz", "--input-shape", "4", "--classes", "3", "--out",
     "o.onnx"),
    ("train", "--arch", "4C3F", "--data", "idx", "--split", "test", "--input-shape", "1,2,2", "--out", "o.onnx"),
])
def test_bad_values_are_usage_errors(capsys, ws, args):
    run_refused(capsys, ws, *args)


# ------------------------------------------------------------------------------------------------- checkpoints
class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
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

