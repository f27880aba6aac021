"""The small models the certificate tests share: the bundled CNN, MLPs trained in the test on separable blobs
(large certified radii), and mnist-net_256x2 with the first MNIST test images (skipped without ../shared)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from frontends import load_onnx
from frontends.data import load_dataset
from verifier.certificates.certify import compute_bounds
from verifier.commands.logits import batched_logits

from ..conftest import REPO, shared_dir

BUNDLED = REPO / "models" / "fmnist_cnn_small.onnx"
#: what ``--method best`` runs on an MLP whose logits come from an affine layer
ALL_METHODS = {"lmt", "lmt-pairwise", "liplt", "ibp", "bcp", "crown", "alpha-crown", "local"}
#: what ``best`` skips on every network (the kernel certificate is for SVMs), with the reason's start
NETWORK_SKIPS = {"kernel": "--method kernel applies to support vector machines"}


def only_network_skips(skipped: dict[str, str]) -> bool:
    """Whether ``best``'s ``methods_skipped`` on a network are exactly ``NETWORK_SKIPS``, for those reasons."""
    return set(skipped) == set(NETWORK_SKIPS) and all(skipped[k].startswith(v) for k, v in NETWORK_SKIPS.items())
#: the norms of the heavier soundness tests (PGD with many restarts): l2 in the fast tier, l_inf in the full suite
NORMS_L2_FAST = [pytest.param(2.0, id="l2"), pytest.param(float("inf"), id="linf", marks=pytest.mark.slow)]


def export(net: nn.Module, example: torch.Tensor, path) -> None:
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), buffer, dynamo=False, opset_version=13, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    path.write_bytes(buffer.getvalue())


def blob_model(folder, net: nn.Module):
    """``net`` (6 inputs, 3 classes) trained in the test on separable blobs with weight decay, so that certified
    radii are large; saved as ONNX with its data. Returns (model path, data path, x, y)."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=gen) * 3
    y = torch.arange(300) % 3
    x = centers[y] + 0.5 * torch.randn(300, 6, generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    export(net, x[:1], folder / "mlp.onnx")
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    return folder / "mlp.onnx", folder / "data.npz", x, y


def relu_tanh_blobs(folder):
    """A ReLU/Tanh MLP trained on separable blobs (``blob_model``); 120 of its points."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    path, data, x, y = blob_model(folder, net)
    return path, data, x[:120], y[:120]


def mlp_and_cnn(smooth_model):
    """The blob MLP (no domain box) and the bundled CNN on random images in [0, 1] with its own predictions."""
    path, _, x, y = smooth_model
    yield "mlp", load_onnx(path), x, y, None, None
    module = load_onnx(BUNDLED)
    xs = torch.rand((12, *module.graph.sample_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ys = module(xs).argmax(1)
    yield "cnn", module, xs, ys, 0.0, 1.0


def mnist_net(limit: int):
    """mnist-net_256x2 and the first ``limit`` MNIST test images: (module, data, bounds, logits, correct, lower,
    upper); skips when ../shared is absent."""
    root = shared_dir()
    if root is None or not (root / "zoo" / "mnist_fc").is_dir() or not (root / "data" / "mnist").is_dir():
        pytest.skip("../shared/zoo/mnist_fc or ../shared/data/mnist absent (set LIPVERIFY_SHARED)")
    module = load_onnx(root / "zoo" / "mnist_fc" / "mnist-net_256x2.onnx")
    ds = load_dataset(root / "data" / "mnist", module.graph.sample_shape, limit=limit)
    bounds = compute_bounds(module, 2.0, input_dim=784)
    logits = batched_logits(module, ds.x, limit, torch.device("cpu"))
    lower, upper = ds.model_bounds()
    return module, ds, bounds, logits, logits.argmax(1) == ds.y, lower, upper
