"""The IR as a whole: graph structure, batching (native, rewritten, per-sample), output choice, training hooks."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from frontends import load_onnx
from frontends.parity import check_parity


def make(nodes, in_shape, inits=(), outputs=("y",), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
         for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def torch_export(model: nn.Module, example: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=13, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


class ViewNet(nn.Module):
    """The PyTorch idiom x.view(x.size(0), -1): a Shape/Gather/Concat chain or a [1, -1] constant in the file."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("dynamic", [True, False])
def test_torch_view_export_runs_batched(dynamic):
    torch.manual_seed(0)
    net = ViewNet()
    proto = torch_export(net, torch.zeros(1, 1, 6, 6), dynamic)
    module = load_onnx(proto)
    assert module.graph.batched
    x = torch.rand(7, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-5)
    assert check_parity(proto, module)["ok"]


def test_graph_that_mixes_the_batch_runs_per_sample():
    # a file with batch 1 that sums over axis 0: batched execution would mix samples
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
             helper.make_node("Relu", ["s"], ["y"])]
    proto = make(nodes, [1, 4], [("axes", np.array([0]))])
    module = load_onnx(proto)
    assert not module.graph.batched
    x = torch.randn(5, 4)
    assert torch.allclose(module(x), torch.relu(x))
    assert check_parity(proto, module)["ok"]


def test_output_without_batch_axis_is_stacked():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Squeeze", ["h", "ax"], ["y"])]
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    proto = make(nodes, [1, 4], [("W", w), ("ax", np.array([0]))])
    module = load_onnx(proto)
    assert module.graph.output_shape == (3,)
    x = torch.randn(6, 4)
    assert torch.allclose(module(x), x @ torch.from_numpy(w), atol=1e-5)
    assert check_parity(proto, module)["ok"]


def test_input_without_batch_axis():
    w = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    proto = make([helper.make_node("MatMul", ["x", "W"], ["y"])], [5], [("W", w)])
    module = load_onnx(proto)
    assert module.graph.sample_shape == (5,) and not module.graph.leading_batch
    x = torch.randn(4, 5)
    assert torch.allclose(module(x), x @ torch.from_numpy(w), atol=1e-5)
    assert check_parity(proto, module)["ok"]


def test_residual_graph_structure_and_output_choice():
    w = np.eye(4, dtype=np.float32) * 2
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["y"], name="res"),
             helper.make_node("Neg", ["a"], ["z"], name="neg")]
    proto = make(nodes, ["N", 4], [("W", w)], outputs=("y", "z"))
    module = load_onnx(proto)
    dag = module.graph.dag
    assert set(dag.nodes) == {"mm", "relu", "res"}  # pruned to what output y needs
    assert set(dag.predecessors("res")) == {"relu"} and dag.edges["mm", "relu"]["tensors"] == ["a"]
    assert module.graph.order.index("mm") < module.graph.order.index("res")
    second = load_onnx(proto, output="z")
    x = torch.randn(3, 4)
    assert torch.allclose(second(x), -2 * x)
    assert torch.allclose(module(x), torch.relu(2 * x) + x)


def test_weights_are_parameters_and_train_mode_reaches_batchnorm():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 6, 6),), buffer, dynamo=False, opset_version=13,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}})
    module = load_onnx(onnx.load_from_string(buffer.getvalue()))
    assert "BatchNormalization" in module.graph.op_counts()
    names = set(module.onnx_weights())
    assert len(names) == 6  # conv w/b, bn scale/bias, linear w/b; running stats are buffers
    x = torch.rand(8, 1, 6, 6)
    assert torch.allclose(module(x), net(x), atol=1e-5)
    module.train()
    net.train()
    assert torch.allclose(module(x), net(x), atol=1e-4)  # batch statistics, like torch
    module.eval()
    loss = module(x).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())
