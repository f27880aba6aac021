"""Bad input: exit code 2 and one line on stderr naming the problem, never a traceback (run as a real process)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from frontends import load_onnx
from verifier.errors import InputShapeError, ModelImportError, UnsupportedOpsError

pytestmark = pytest.mark.slow  # CLI subprocesses


def mlp_model(extra_nodes=(), opset=13) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), *extra_nodes]
    out = nodes[-1].output[0]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.commands.cli", *args], capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path / "nope.onnx")), "no such file", "nope.onnx")


def test_truncated_file(tmp_path):
    data = mlp_model([helper.make_node("Relu", ["h"], ["y"], name="act")]).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("inspect", str(path)), "truncated.onnx")


@pytest.mark.parametrize("content", [b"hello, this is not a model\n", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n"])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "thing.onnx"
    path.write_bytes(content)
    assert_one_line_error(run_cli("inspect", str(path)), "thing.onnx")


def test_unknown_ops_are_all_named(tmp_path):
    model = mlp_model([helper.make_node("FooBar", ["h"], ["a"], name="first_bad"),
                       helper.make_node("Relu", ["a"], ["b"], name="fine"),
                       helper.make_node("Frobnicate", ["b"], ["y"], name="second_bad", domain="com.example")])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "unknown.onnx"
    onnx.save(model, path)
    line = assert_one_line_error(run_cli("inspect", str(path)), "FooBar", "first_bad", "Frobnicate", "second_bad")
    assert "unsupported" in line
    with pytest.raises(UnsupportedOpsError) as err:
        load_onnx(model)
    assert err.value.ops == [("FooBar", "first_bad"), ("com.example.Frobnicate", "second_bad")]


def test_unknown_op_json_lists_them(tmp_path):
    path = tmp_path / "unknown.onnx"
    onnx.save(mlp_model([helper.make_node("FooBar", ["h"], ["y"], name="bad")]), path)
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 2
    import json
    obj = json.loads(proc.stdout)
    assert obj["unsupported_ops"] == [{"op": "FooBar", "node": "bad"}]


def _external_model(tmp_path, location: str) -> onnx.ModelProto:
    model = mlp_model([helper.make_node("Relu", ["h"], ["y"], name="act")])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_folder_is_refused(tmp_path, where):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.ones(12, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    location = "../secret.bin" if where == "parent" else str(outside)
    path = folder / "m.onnx"
    path.write_bytes(_external_model(tmp_path, location).SerializeToString())
    outside.chmod(0)  # were it opened, the error would say permission denied, not "outside"
    try:
        assert_one_line_error(run_cli("inspect", str(path)), "outside", "secret.bin")
    finally:
        outside.chmod(0o600)


def test_external_data_inside_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(12, np.float32).tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_external_model(tmp_path, "w.bin").SerializeToString())
    module = load_onnx(path)
    y = module(torch.ones(2, 4))
    assert torch.allclose(y, torch.full((2, 3), 4.0))


def test_no_inputs(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    node = helper.make_node("Relu", ["W"], ["y"], name="r")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w])
    path = tmp_path / "noinput.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert_one_line_error(run_cli("inspect", str(path)), "no inputs")


def test_two_inputs_are_refused():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "ab"]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ModelImportError, match="2 inputs"):
        load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_unknown_output_name(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(mlp_model([helper.make_node("Relu", ["h"], ["y"], name="act")]), path)
    assert_one_line_error(run_cli("inspect", str(path), "--output", "nope"), "nope", "y")


def test_wrong_data_shape_says_what_was_expected():
    module = load_onnx(mlp_model([helper.make_node("Relu", ["h"], ["y"], name="act")]))
    with pytest.raises(InputShapeError, match=r"expected input of shape \(B, 4\), got \(2, 5\)"):
        module(torch.ones(2, 5))


def test_directory_instead_of_file(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path)))


def test_unsupported_first_output_suggests_another(tmp_path):
    # a first output through an op without rules (Hardmax) beside a supported one: the error names the others
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Hardmax", ["h"], ["onehot"], name="hardmax", axis=1),
             helper.make_node("Softmax", ["h"], ["probabilities"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("onehot", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path / "sk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    assert_one_line_error(run_cli("inspect", str(path)), "Hardmax", "hardmax", "--output", "probabilities")
    proc = run_cli("inspect", str(path), "--output", "probabilities")
    assert proc.returncode == 0, proc.stderr


def test_a_label_output_is_imported_as_its_scores_with_a_note(tmp_path):
    # the shape of a scikit-learn export: a label output (ArgMax) first, the probabilities second
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("ArgMax", ["h"], ["label"], name="argmax", axis=1),
             helper.make_node("Softmax", ["h"], ["probabilities"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path / "sk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    proc = run_cli("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "note      'label' is the class of the argmax of 'h'" in proc.stdout
