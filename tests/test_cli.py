"""`lipverify inspect`: the report, its JSON fields, and its exit codes (0 parity, 1 mismatch, 2 bad input)."""
from __future__ import annotations

import json

import pytest


from .conftest import REPO, run_main, zoo_models

BUNDLED = REPO / "models" / "fmnist_cnn_small.onnx"


def test_inspect_bundled_model_table(capsys):
    code, out, _ = run_main(capsys, "inspect", str(BUNDLED))
    assert code == 0
    assert "parity vs onnxruntime" in out and "-> OK" in out
    for op in ("Conv", "BatchNormalization", "MaxPool", "Gemm", "Relu", "Flatten"):
        assert op in out


def test_inspect_bundled_model_json(capsys):
    code, out, _ = run_main(capsys, "inspect", str(BUNDLED), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["inputs"] == [{"name": "image", "shape": ["N", 1, 28, 28], "ir_shape": ["B", 1, 28, 28]}]
    assert report["outputs"][0]["name"] == "logits" and report["outputs"][0]["selected"]
    assert report["op_counts"] == {"Conv": 2, "BatchNormalization": 1, "Relu": 3, "MaxPool": 1, "Flatten": 1,
                                   "Gemm": 2}
    assert report["ops"]["Conv"] == {"forward": True, "lipschitz": True, "box": True}
    assert report["unsupported_ops"] == []
    parity = report["parity"]
    assert parity["ok"] and parity["max_rel_diff"] <= 1e-4 and parity["batch_sizes"] == [1, 7]
    assert report["batched"] is True


def test_inspect_exits_1_when_parity_fails(capsys, monkeypatch):
    from verifier.ops.activations import Relu

    monkeypatch.setattr(Relu, "forward", lambda self, x: x)  # a wrong forward must be caught
    code, out, _ = run_main(capsys, "inspect", str(BUNDLED), "--json")
    assert code == 1
    assert json.loads(out)["parity"]["ok"] is False


@pytest.mark.slow
@pytest.mark.parametrize("path", zoo_models() or [pytest.param(None, marks=pytest.mark.skip(
    reason="third-party models absent: no ../shared/zoo (set LIPVERIFY_SHARED)"))],
    ids=lambda p: f"{p.parent.name}/{p.name}" if p else "none")
def test_inspect_json_on_zoo(capsys, path):
    code, out, err = run_main(capsys, "inspect", str(path), "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["parity"]["ok"], report["parity"]


def test_help_and_version(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and "inspect" in out
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and "lipverify" in out


def test_usage_error_is_one_line(capsys):
    code, _, err = run_main(capsys, "inspect")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "MODEL" in err
