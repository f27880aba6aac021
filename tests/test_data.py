"""frontends.data: .npz and IDX loading, reshaping / transposition to the model's input, labels, preprocessing and
the conversion of radii between the model's input space and the user's space."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from frontends.data import Dataset, load_dataset
from verifier.errors import InputShapeError, LipverifyError

from .conftest import shared_dir
from .onnx_graphs import torch_single_thread

single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

RNG = np.random.default_rng(0)


def write_npz(tmp_path, name="data.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg, f"not one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("data_shape", [(784,), (28, 28), (28, 28, 1), (1, 28, 28), (784, 1)])
@pytest.mark.parametrize("model_shape", [(784, 1), (1, 28, 28), (784,), (28, 28, 1), (28, 28)])
def test_single_channel_layouts_keep_pixel_order(tmp_path, data_shape, model_shape):
    n = 5
    flat = RNG.random((n, 784), dtype=np.float32)
    path = write_npz(tmp_path, x=flat.reshape(n, *data_shape), y=np.arange(n) % 10)
    ds = load_dataset(path, model_shape)
    assert isinstance(ds, Dataset)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert tuple(ds.x.shape) == (n, *model_shape)
    # one channel: every layout is the same row-major pixel order
    np.testing.assert_array_equal(ds.x.reshape(n, -1).numpy(), flat)
    np.testing.assert_array_equal(ds.y.numpy(), np.arange(n) % 10)
    assert ds.space == "the given .npz values"
    assert ds.bounds is None
    assert torch.equal(ds.x, ds.x_user)
    assert "(.npz)" in ds.source and "5 samples" in ds.source


def test_channel_last_data_to_channel_first_model(tmp_path):
    n = 3
    x = RNG.random((n, 32, 32, 3), dtype=np.float32)  # NHWC
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(n, int)), (3, 32, 32))
    assert tuple(ds.x.shape) == (n, 3, 32, 32)
    assert ds.x[1, 2, 5, 7].item() == x[1, 5, 7, 2]  # pixel (h=5, w=7), channel 2 of sample 1
    np.testing.assert_array_equal(ds.x.numpy(), x.transpose(0, 3, 1, 2))
    assert ds.layout.startswith("transposed channel-last to channel-first")


def test_channel_first_data_to_channel_last_model(tmp_path):
    n = 3
    x = RNG.random((n, 3, 32, 32), dtype=np.float32)  # NCHW
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(n, int)), (32, 32, 3))  # e.g. cifar10_small (NHWC)
    assert tuple(ds.x.shape) == (n, 32, 32, 3)
    assert ds.x[2, 5, 7, 1].item() == x[2, 1, 5, 7]
    np.testing.assert_array_equal(ds.x.numpy(), x.transpose(0, 2, 3, 1))
    assert ds.layout.startswith("transposed channel-first to channel-last")


def test_transposition_through_singleton_axes(tmp_path):
    x = RNG.random((2, 8, 6, 3), dtype=np.float32)
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(2, int)), (1, 3, 8, 6))
    assert tuple(ds.x.shape) == (2, 1, 3, 8, 6)
    assert ds.x[1, 0, 2, 4, 5].item() == x[1, 4, 5, 2]


def test_ambiguous_permutation_reshapes_by_count(tmp_path):
    # (4, 2, 4) -> (4, 4, 2): moving the last axis to the front fits, but a 4 is also a spatial size
    x = RNG.random((2, 4, 2, 4), dtype=np.float32)
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(2, int)), (4, 4, 2))
    assert ds.layout.startswith("reshaped")
    np.testing.assert_array_equal(ds.x.numpy(), x.reshape(2, 4, 4, 2))


def test_wrong_element_count(tmp_path):
    path = write_npz(tmp_path, x=np.zeros((4, 28, 28), np.float32), y=np.zeros(4, int))
    with pytest.raises(InputShapeError) as err:
        load_dataset(path, (3, 32, 32))
    assert one_line(err) == "data samples have shape (28, 28) (784 values); the model expects (3, 32, 32) (3072 values)"


def test_npz_keys(tmp_path):
    path = write_npz(tmp_path, images=np.zeros((2, 4)), labels=np.zeros(2, int))
    with pytest.raises(LipverifyError) as err:
        load_dataset(path, (4,))
    msg = one_line(err)
    assert "'x'" in msg and "'y'" in msg and "'images'" in msg and "'labels'" in msg
    path = write_npz(tmp_path, "only_x.npz", x=np.zeros((2, 4)))
    with pytest.raises(LipverifyError, match=r"no array 'y' \(arrays found: 'x'\)"):
        load_dataset(path, (4,))


# ---------------------------------------------------------------------------------------------------- labels
def test_labels(tmp_path):
    x = RNG.random((6, 4), dtype=np.float32)
    y = np.array([3, 0, 2, 2, 1, 0])
    one_hot = np.eye(4)[y]
    for labels in (one_hot, one_hot.astype(np.float32), y.astype(np.float64), y[:, None], y.astype(np.uint8)):
        ds = load_dataset(write_npz(tmp_path, x=x, y=labels), (4,), num_classes=4)
        np.testing.assert_array_equal(ds.y.numpy(), y)
    with pytest.raises(LipverifyError, match="not integers"):
        load_dataset(write_npz(tmp_path, x=x, y=y + 0.5), (4,))
    with pytest.raises(LipverifyError, match=">= 0"):
        load_dataset(write_npz(tmp_path, x=x, y=y - 1), (4,))
    with pytest.raises(LipverifyError, match="below 3"):
        load_dataset(write_npz(tmp_path, x=x, y=y), (4,), num_classes=3)
    with pytest.raises(InputShapeError, match="5 columns"):
        load_dataset(write_npz(tmp_path, x=x, y=np.eye(5)[y]), (4,), num_classes=4)
    with pytest.raises(InputShapeError, match="6 samples in x but 5 labels"):
        load_dataset(write_npz(tmp_path, x=x, y=y[:5]), (4,))
    with pytest.raises(InputShapeError):
        load_dataset(write_npz(tmp_path, x=x, y=np.zeros((6, 2, 2))), (4,))


def test_limit(tmp_path):
    x = RNG.random((10, 4), dtype=np.float32)
    path = write_npz(tmp_path, x=x, y=np.arange(10))
    ds = load_dataset(path, (4,), limit=3)
    assert len(ds) == 3 and tuple(ds.x.shape) == (3, 4)
    np.testing.assert_array_equal(ds.x.numpy(), x[:3])
    assert "first 3 of 10 samples" in ds.source
    assert len(load_dataset(path, (4,), limit=50)) == 10
    for bad in (0, -1, 2.5):
        with pytest.raises(LipverifyError, match="limit"):
            load_dataset(path, (4,), limit=bad)


def test_bad_values(tmp_path):
    with pytest.raises(LipverifyError, match="NaN"):
        load_dataset(write_npz(tmp_path, x=np.array([[np.nan, 0.0]]), y=np.zeros(1, int)), (2,))
    with pytest.raises(LipverifyError, match="dtype"):
        load_dataset(write_npz(tmp_path, x=np.array([["a", "b"]]), y=np.zeros(1, int)), (2,))
    with pytest.raises(LipverifyError, match="split"):
        load_dataset(write_npz(tmp_path, x=np.zeros((1, 2)), y=np.zeros(1, int)), (2,), split="val")


# --------------------------------------------------------------------------------------------- bad paths
def test_bad_paths(tmp_path):
    with pytest.raises(LipverifyError) as err:
        load_dataset(tmp_path / "absent.npz", (4,))
    assert "no such file or folder" in one_line(err)
    text = tmp_path / "data.csv"
    text.write_text("1,2,3\n")
    with pytest.raises(LipverifyError) as err:
        load_dataset(text, (4,))
    assert "not an .npz file" in one_line(err)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(LipverifyError) as err:
        load_dataset(broken, (4,))
    assert "cannot read the .npz" in one_line(err)
    with pytest.raises(LipverifyError) as err:
        load_dataset(tmp_path, (4,))  # a folder without IDX files
    assert "MNIST-format" in one_line(err)


# ------------------------------------------------------------------------------------- mean, std, radii
def test_mean_std_per_channel_first(tmp_path):
    x = RNG.random((4, 3, 5, 6), dtype=np.float32)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(4, int)), (3, 5, 6), mean=mean, std=std)
    assert ds.channel_axis == 0
    assert ds.x[1, 2, 3, 4].item() == pytest.approx((x[1, 2, 3, 4] - mean[2]) / std[2], rel=1e-6)
    np.testing.assert_array_equal(ds.x_user.numpy(), x)
    torch.testing.assert_close(ds.to_model(ds.x_user), ds.x)
    torch.testing.assert_close(ds.to_user(ds.x), ds.x_user)
    assert ds.space.startswith("the given .npz values; radii are stated in this space, before the map "
                               "(x - [0.4914, 0.4822, 0.4465]) / [0.247, 0.2435, 0.2616] to the model's input")
    assert ds.scale.shape == (3, 5, 6) and ds.scale[2, 0, 0].item() == pytest.approx(1 / std[2])


def test_mean_std_channel_last_and_scale(tmp_path):
    x = RNG.integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)  # raw 0-255 pixels, NHWC model
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(4, int)), (5, 6, 3), input_scale=1 / 255,
                      mean=mean, std=std)
    assert ds.channel_axis == 2
    assert ds.x[3, 4, 5, 1].item() == pytest.approx((x[3, 4, 5, 1] / 255 - 0.4) / 0.25, rel=1e-6)
    assert ds.max_scale == pytest.approx(1 / 255 / 0.2)
    assert ds.radius_to_user(1.0) == pytest.approx(0.2 * 255)


def test_mean_std_errors(tmp_path):
    path = write_npz(tmp_path, x=np.zeros((2, 3, 4, 3), np.float32), y=np.zeros(2, int))
    with pytest.raises(LipverifyError) as err:
        load_dataset(path, (3, 4, 3), mean=[0.1, 0.2, 0.3])
    assert "cannot tell the channel axis" in one_line(err)
    with pytest.raises(LipverifyError) as err:
        load_dataset(path, (3, 4, 3), std=[1.0, 2.0])
    assert "no channel axis of that size" in one_line(err)
    with pytest.raises(LipverifyError, match="positive"):
        load_dataset(path, (3, 4, 3), std=0.0)
    with pytest.raises(LipverifyError, match="positive"):
        load_dataset(path, (3, 4, 3), input_scale=-1.0)
    path = write_npz(tmp_path, "b.npz", x=np.zeros((2, 3, 4, 4), np.float32), y=np.zeros(2, int))
    with pytest.raises(LipverifyError, match="different channel axes"):
        load_dataset(path, (3, 4, 4), mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 3.0, 4.0])
    # scalars and length-1 values apply to every entry
    ds = load_dataset(path, (3, 4, 4), mean=[0.5], std=2.0)
    assert ds.channel_axis is None and ds.radius_to_user(1.0) == pytest.approx(2.0)


@pytest.mark.parametrize("p", [2.0, float("inf")])
def test_radius_conversion_direction(tmp_path, p):
    """A user-space perturbation of norm radius_to_user(r) lands within r in model space (any direction), and
    the bound is tight along the channel with the smallest std; the naive max(std) conversion is not sound."""
    x = RNG.random((2, 3, 4, 4), dtype=np.float32)
    std = np.array([0.5, 0.1, 0.3])
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(2, int)), (3, 4, 4), input_scale=2.0,
                      mean=[0.1, 0.2, 0.3], std=std)
    r_model = 0.7
    r_user = ds.radius_to_user(r_model)
    assert r_user == pytest.approx(r_model * std.min() / 2.0)
    assert ds.radius_to_model(r_user) == pytest.approx(r_model)

    def model_norm(d_user: torch.Tensor) -> torch.Tensor:
        u = ds.x_user[:1].double()
        return (ds.to_model(u + d_user) - ds.to_model(u)).flatten(1).norm(p=p, dim=1)

    gen = torch.Generator().manual_seed(0)
    d = torch.randn((500, 3, 4, 4), generator=gen, dtype=torch.float64)
    if p == float("inf"):
        d = d.sign()  # corners of the l_inf ball: the worst case
    d = d / d.flatten(1).norm(p=p, dim=1).reshape(-1, 1, 1, 1) * r_user
    assert bool((model_norm(d) <= r_model * (1 + 1e-9)).all())
    worst = torch.zeros((1, 3, 4, 4), dtype=torch.float64)
    worst[0, 1, 2, 3] = r_user  # all of the budget on the smallest-std channel
    assert model_norm(worst).item() == pytest.approx(r_model, rel=1e-9)
    naive = r_model * std.max() / 2.0
    assert model_norm(worst / r_user * naive).item() > r_model * 1.5


def test_user_model_and_bounds(tmp_path):
    x = RNG.random((3, 2, 4), dtype=np.float32)
    ds = load_dataset(write_npz(tmp_path, x=x, y=np.zeros(3, int)), (2, 4), mean=[0.5, -0.5], std=[0.5, 2.0])
    lin = torch.nn.Linear(4, 3)
    torch.testing.assert_close(ds.user_model(lin)(ds.x_user), lin(ds.x))
    assert ds.model_bounds() is None


# ------------------------------------------------------------------------------------------------- IDX
def write_idx(path, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_tiny_idx_folder(tmp_path, compress):
    images = RNG.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    labels = np.array([5, 0, 4, 1, 9, 2, 1], np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress)
    ds = load_dataset(tmp_path, (784, 1), limit=5)
    assert tuple(ds.x.shape) == (5, 784, 1)
    np.testing.assert_allclose(ds.x.numpy().reshape(5, 28, 28), images[:5] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y.numpy(), labels[:5])
    assert ds.space == "pixels scaled to [0, 1]" and ds.bounds == (0.0, 1.0)
    assert "IDX" in ds.source and "test split" in ds.source
    lo, hi = ds.model_bounds()
    assert float(lo.min()) == 0.0 and float(hi.max()) == 1.0
    # normalization outside the model: bounds follow the map, the space statement says where radii live
    ds = load_dataset(tmp_path, (1, 28, 28), mean=0.1307, std=0.3081)
    lo, hi = ds.model_bounds()
    assert lo.shape == (1, 28, 28) and float(lo[0, 0, 0]) == pytest.approx(-0.1307 / 0.3081, rel=1e-6)
    assert ds.space.startswith("pixels scaled to [0, 1]; radii are stated in this space, before")
    with pytest.raises(LipverifyError) as err:
        load_dataset(tmp_path, (784,), split="train")
    assert "train-images-idx3-ubyte" in one_line(err)


def mnist_folder():
    root = shared_dir()
    if root is None or not (root / "data" / "mnist").is_dir():
        pytest.skip("MNIST absent: no ../shared/data/mnist (set LIPVERIFY_SHARED to the shared folder)")
    return root / "data" / "mnist"


@pytest.mark.slow
def test_real_mnist():
    ds = load_dataset(mnist_folder(), (1, 28, 28), limit=100)
    assert tuple(ds.x.shape) == (100, 1, 28, 28) and len(ds) == 100
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert "first 100 of 10000 samples" in ds.source
    with pytest.raises(LipverifyError, match="train-images"):
        load_dataset(mnist_folder(), (784,), split="train")  # only the test set is shared


@pytest.mark.slow
def test_real_fashion_mnist_train():
    root = shared_dir()
    if root is None or not (root / "data" / "fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST absent: no ../shared/data/fashion-mnist")
    ds = load_dataset(root / "data" / "fashion-mnist", (28, 28, 1), split="train", limit=1000)
    assert tuple(ds.x.shape) == (1000, 28, 28, 1) and "train split" in ds.source
    assert set(ds.y.tolist()) == set(range(10))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mnist_fc/mnist-net_256x2.onnx", "eran/mnist_relu_9_200.onnx"])
def test_zoo_models_classify_loaded_mnist(model):
    from frontends import load_onnx

    folder = mnist_folder()
    zoo = folder.parents[1] / "zoo" / model
    if not zoo.is_file():
        pytest.skip(f"model absent: {zoo}")
    module = load_onnx(zoo)
    ds = load_dataset(folder, module.graph.sample_shape, limit=100, num_classes=10)
    with torch.no_grad():
        accuracy = (module(ds.x).argmax(1) == ds.y).float().mean().item()
    assert accuracy >= 0.9
