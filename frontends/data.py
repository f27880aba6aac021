"""Loading evaluation data for a model: ``.npz`` files, MNIST-format IDX folders and VNN-LIB properties.

``load_dataset(path, sample_shape, ...)`` returns a ``Dataset`` whose ``x`` has the model's input layout
``(N, *sample_shape)`` and lies in the *model's* input space, together with the map from the user's space (the
values in the file, or pixels scaled to [0, 1] for IDX images) to the model's input:

    model_input = (user_x * input_scale - mean) / std          (mean, std: a scalar or one value per channel)

Radii are stated in the USER's space (before mean/std normalization): a certificate computed by a verifier on
the model's input space (the space of the ONNX graph) is converted with ``Dataset.radius_to_user``, which is
conservative (see its docstring for the proof), and attacks can run in user space on ``Dataset.x_user`` through
``Dataset.user_model(model)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from verifier.errors import InputShapeError, LipverifyError

from .idx import load_idx_split
from .layout import Shape
from .layout import fmt as _fmt
from .layout import to_sample_shape
from .npz import read_npz


@dataclass
class Dataset:
    """Samples in the model's input space, with the affine map from the user's space.

    ``x``: float32 ``(N, *sample_shape)``, what the model takes (``to_model(x_user)``).
    ``y``: int64 ``(N,)`` labels.
    ``x_user``: float32 ``(N, *sample_shape)``, the same samples in the user's space (the space radii are stated
    in: before ``input_scale`` and mean/std normalization), already in the model's layout; the same tensor as
    ``x`` when there is no preprocessing.
    ``source``: where the data came from; ``space``: one line saying what space radii are measured in;
    ``layout``: how the file's samples were brought to the model's shape (reshape, transposition).
    ``input_scale``, ``mean``, ``std``: the map ``model = (user * input_scale - mean) / std``; ``mean`` and
    ``std`` are float64 tensors broadcastable to ``sample_shape`` (scalars or one value per channel on
    ``channel_axis``, an axis of the sample, not counting the batch axis).
    ``bounds``: the box the user's inputs live in (``(0.0, 1.0)`` for IDX pixels), or None when unknown.
    """

    x: torch.Tensor
    y: torch.Tensor
    source: str
    space: str
    x_user: torch.Tensor
    sample_shape: Shape
    input_scale: float = 1.0
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    std: torch.Tensor = field(default_factory=lambda: torch.ones((), dtype=torch.float64))
    channel_axis: int | None = None
    bounds: tuple[float, float] | None = None
    layout: str = "as stored"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    # ----------------------------------------------------------------------------------------------- the map
    @property
    def identity(self) -> bool:
        """True when the user's space is the model's input space (no scale, mean or std)."""
        return self.input_scale == 1.0 and bool((self.mean == 0).all()) and bool((self.std == 1).all())

    @property
    def scale(self) -> torch.Tensor:
        """Per-entry factor d model_input / d user_x = input_scale / std, float64 of shape ``sample_shape``."""
        return (self.input_scale / self.std).expand(self.sample_shape).clone()

    @property
    def shift(self) -> torch.Tensor:
        """Per-entry offset -mean / std, float64 of shape ``sample_shape`` (model = user * scale + shift)."""
        return (-self.mean / self.std).expand(self.sample_shape).clone()

    def _like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` as floats (its own float dtype, else float32) with mean and std in that dtype and device."""
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return x.to(dtype), self.mean.to(device=x.device, dtype=dtype), self.std.to(device=x.device, dtype=dtype)

    def to_model(self, user_x: torch.Tensor) -> torch.Tensor:
        """``(user_x * input_scale - mean) / std`` for a batch ``(B, *sample_shape)`` (keeps dtype and device)."""
        if self.identity:
            return user_x
        x, mean, std = self._like(user_x)
        return (x * self.input_scale - mean) / std

    def to_user(self, model_x: torch.Tensor) -> torch.Tensor:
        """The inverse map: ``(model_x * std + mean) / input_scale``."""
        if self.identity:
            return model_x
        x, mean, std = self._like(model_x)
        return (x * std + mean) / self.input_scale

    def user_model(self, model: Any) -> nn.Module:
        """``model`` composed with ``to_model``: a module that takes user-space batches (for attacks)."""
        return _UserSpaceModel(model, self)

    def model_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``bounds`` mapped to the model's input space: per-entry float32 tensors of shape ``sample_shape``."""
        if self.bounds is None:
            return None
        lo = torch.full((1, *self.sample_shape), float(self.bounds[0]), dtype=torch.float64)
        hi = torch.full((1, *self.sample_shape), float(self.bounds[1]), dtype=torch.float64)
        a, b = self.to_model(lo)[0], self.to_model(hi)[0]
        return torch.minimum(a, b).float(), torch.maximum(a, b).float()

    # ------------------------------------------------------------------------------------ radius conversion
    @property
    def max_scale(self) -> float:
        """max over entries of |input_scale / std_c|: the Lipschitz constant of the user -> model map in any
        l_p norm (it is diagonal)."""
        return float((abs(self.input_scale) / self.std.abs()).max())

    def radius_to_user(self, r_model: float | torch.Tensor) -> float | torch.Tensor:
        """A radius certified in the model's input space -> a radius certified in the user's space.

        Returns ``r_model * min_c(std_c) / input_scale`` (= ``r_model / max_scale``), for l2 and l_inf alike.

        Direction and proof. The map is ``m(u) = D u + c`` with ``D = diag(s)``, ``s_i = input_scale / std_i``.
        For any perturbation ``d`` of the user's input, ``m(u + d) - m(u) = D d`` and, in any l_p norm
        (p = 2 or inf included), ``||D d||_p <= max_i |s_i| * ||d||_p`` because every entry ``|s_i d_i| <=
        max|s| |d_i|``. Suppose no point within ``r_model`` of ``m(u)`` (model space) changes the prediction.
        If ``||d||_p <= r_model / max|s|`` then ``||D d||_p <= r_model``, so ``m(u + d)`` is such a point and
        the prediction on ``u + d`` is unchanged: the user-space ball of radius ``r_model / max|s| =
        r_model * min|std| / input_scale`` is certified. The converse direction does not hold in general
        (with several different std values the image of a user-space ball is an ellipsoid / a box with unequal
        sides, not a ball), which is why this conversion is conservative, and exact when std is a scalar.
        A verifier that handles per-coordinate boxes can do better for l_inf: the user-space l_inf ball of
        radius r maps exactly onto the box ``m(u) +- r * scale`` (``scale`` per entry).
        """
        return r_model / self.max_scale

    def radius_to_model(self, r_user: float | torch.Tensor) -> float | torch.Tensor:
        """The model-space radius whose ball contains the image of the user-space ball of radius ``r_user``:
        ``r_user * max_scale`` (what a verifier working in model space must certify so that the user-space
        ball is safe). Inverse of ``radius_to_user``."""
        return r_user * self.max_scale


class _UserSpaceModel(nn.Module):
    def __init__(self, model: Any, data: Dataset):
        super().__init__()
        self.model = model
        self.data = data

    def forward(self, user_x: torch.Tensor) -> torch.Tensor:
        return self.model(self.data.to_model(user_x))


# --------------------------------------------------------------------------------------------------- loading
def load_dataset(
    path: str | os.PathLike | tuple[Any, Any],
    sample_shape: Sequence[int],
    split: str = "test",
    limit: int | None = None,
    input_scale: float | None = None,
    mean: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
    std: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Samples and labels from ``path`` shaped for a model whose input is ``(B, *sample_shape)``.

    ``path``: an ``.npz`` file with arrays ``x`` (samples, first axis = samples) and ``y`` (integer labels of
    shape (N,), or one-hot / scores of shape (N, K), read by argmax), used as given (or those two arrays
    themselves, numpy or torch, as a tuple); or a folder of
    MNIST-format IDX files (``split`` 'test' or 'train'), whose pixels are scaled to [0, 1]; or a ``.vnnlib``
    property file or a folder of them (``frontends.vnnlib``: each box's centre and protected class).
    Samples are brought to ``sample_shape``: unchanged when equal; transposed when the file is channel-last
    (H, W, C) and the model channel-first (C, H, W) or the reverse and that permutation is unambiguous;
    otherwise reshaped by element count (which must match). ``limit``: the first ``limit`` samples.
    ``input_scale``, ``mean``, ``std``: ``model_input = (x * input_scale - mean) / std``, mean and std a scalar
    or one value per channel of the model's input. ``num_classes``: when given, labels must be below it.
    Problems are ``LipverifyError``s (``InputShapeError`` for shapes) with a one-line message.
    """
    sample_shape = tuple(int(d) for d in sample_shape)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise LipverifyError(f"limit must be a positive number of samples, got {limit!r}")
    if split not in ("test", "train"):
        raise LipverifyError(f"split must be 'test' or 'train', got {split!r}")

    if isinstance(path, tuple):  # (x, y) given in Python (the API, ``verifier.commands.api``)
        if len(path) != 2:
            raise LipverifyError(f"data given as a tuple must be (x, y), got {len(path)} items")
        x, y = (_as_array(v) for v in path)
        path, source, base_space, bounds = "the given (x, y)", "the given (x, y)", "the given x values", None
    else:
        path = Path(path)
        x, y, source, base_space, bounds = _read(path, split)

    for key, array in (("x", x), ("y", y)):  # before len() and --limit's slicing
        if array.ndim < 1:
            raise InputShapeError(f"{path}: {key} is a scalar; expected an array with one entry per sample")
    if len(x) != len(y):
        raise InputShapeError(f"{path}: {len(x)} samples in x but {len(y)} labels in y")
    total = len(x)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) == 0:
        raise LipverifyError(f"{path}: no samples")
    if limit is not None and limit < total:
        source += f", first {len(x)} of {total} samples"
    else:
        source += f", {len(x)} samples"

    x = _check_x(x, path)
    y = _check_y(y, path, num_classes)
    x, layout = to_sample_shape(x, sample_shape)

    scale, mean_t, std_t, axis = _preprocessing(input_scale, mean, std, sample_shape)
    x_user = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ds = Dataset(x=x_user, y=torch.from_numpy(y), source=source, space=base_space, x_user=x_user,
                 sample_shape=sample_shape, input_scale=scale, mean=mean_t, std=std_t, channel_axis=axis,
                 bounds=bounds, layout=layout)
    if not ds.identity:
        ds.x = ds.to_model(x_user.double()).float().contiguous()
        ds.space = (f"{base_space}; radii are stated in this space, before the map {_describe(scale, mean_t, std_t)} "
                    "to the model's input (certified radii are converted back conservatively)")
        _check_map(ds, path)
    return ds


def _read(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, str, str, tuple[float, float] | None]:
    """(x, y, source, the space of x in words, the box x lives in or None) of a data path (``load_dataset``)."""
    if path.suffix == ".vnnlib" or (path.is_dir() and any(path.glob("*.vnnlib"))):
        from .vnnlib import load_vnnlib

        x, y, source = load_vnnlib(path)
        base_space = "the model's input space (VNN-LIB box centres)"
        bounds = None
    elif path.is_dir():
        x, y = load_idx_split(path, split)
        source = f"{path} (MNIST-format IDX, {split} split)"
        base_space = "pixels scaled to [0, 1]"
        bounds: tuple[float, float] | None = (0.0, 1.0)
    elif path.is_file():
        x, y = read_npz(path)
        source = f"{path} (.npz)"
        base_space = "the given .npz values"
        bounds = None
    else:
        raise LipverifyError(f"{path}: no such file or folder (expected an .npz with arrays x and y, a folder of "
                             "MNIST-format IDX files, or VNN-LIB properties)")
    return x, y, source, base_space, bounds


def _as_array(value: Any) -> np.ndarray:
    """A numpy array of a numpy array, a torch tensor or a sequence."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_map(ds: Dataset, path: Path) -> None:
    """The map to the model's input must keep numbers finite and scales positive in the arithmetic certificates
    use (a scale that overflows or underflows would turn bounds into inf or NaN)."""
    box = ds.model_bounds()
    f32 = torch.finfo(torch.float32)
    finite = bool((ds.scale >= f32.tiny).all() and (ds.scale <= f32.max).all() and torch.isfinite(ds.shift).all()
                  and torch.isfinite(ds.x).all())
    if not finite or (box is not None and not bool(torch.isfinite(box[0]).all() and torch.isfinite(box[1]).all())):
        raise LipverifyError(f"{path}: the map {_describe(ds.input_scale, ds.mean, ds.std)} to the model's input "
                             "overflows or underflows float32 on these data; check --input-scale, --mean and --std")


def _describe(scale: float, mean: torch.Tensor, std: torch.Tensor) -> str:
    def values(t: torch.Tensor) -> str:
        flat = [f"{v:g}" for v in t.reshape(-1).tolist()]
        return flat[0] if len(flat) == 1 else "[" + ", ".join(flat) + "]"

    x = "x" if scale == 1.0 else f"x * {scale:g}"
    return f"({x} - {values(mean)}) / {values(std)}"


def _check_x(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise LipverifyError(f"{path}: x has dtype {x.dtype}; expected numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise LipverifyError(f"{path}: x contains NaN or infinite values")
    return x


def _check_y(y: np.ndarray, path: Path, num_classes: int | None) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise LipverifyError(f"{path}: labels y have dtype {y.dtype}; expected integers")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot or scores
        if num_classes is not None and y.shape[1] != num_classes:
            raise InputShapeError(f"{path}: one-hot labels have {y.shape[1]} columns; the model has "
                                  f"{num_classes} outputs")
        if not np.isfinite(y).all():
            raise LipverifyError(f"{path}: labels y contain NaN or infinite values")
        y = np.argmax(y, axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputShapeError(f"{path}: labels y have shape {_fmt(y.shape)}; expected (N,) integers or (N, K) "
                              "one-hot")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise LipverifyError(f"{path}: labels y are not integers")
        if (np.abs(y) > 2**31).any():
            raise LipverifyError(f"{path}: labels y are out of range (found {float(np.abs(y).max()):g})")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise LipverifyError(f"{path}: labels must be >= 0, found {int(y.min())}")
    if num_classes is not None and (y >= num_classes).any():
        raise LipverifyError(f"{path}: labels must be below {num_classes} (the model's outputs), found "
                             f"{int(y.max())}")
    return y


def _as_values(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value,
                         dtype=np.float64)
    except (TypeError, ValueError):
        raise LipverifyError(f"{name} must be a number or one number per channel, got {value!r}")
    if arr.ndim > 1:
        raise LipverifyError(f"{name} must be a number or one number per channel, got shape {_fmt(arr.shape)}")
    if arr.size == 0:
        raise LipverifyError(f"{name} is empty; expected a number or one number per channel")
    if not np.isfinite(arr).all():
        raise LipverifyError(f"{name} must be finite")
    return arr.reshape(-1)


def _channel_axis(name: str, count: int, sample_shape: Shape) -> int:
    """The axis of the sample with ``count`` entries: the first non-singleton axis (channel-first) or the last
    axis (channel-last)."""
    if not sample_shape:
        raise LipverifyError(f"{name} has {count} values but the model's input is a scalar")
    first = next((i for i, d in enumerate(sample_shape) if d != 1), 0)
    last = len(sample_shape) - 1
    axes = sorted({a for a in (first, last) if sample_shape[a] == count})
    if not axes:
        raise LipverifyError(f"{name} has {count} values but the model input {_fmt(sample_shape)} has no channel "
                             f"axis of that size (channel-first: axis {first}, channel-last: the last axis)")
    if len(axes) > 1:
        raise LipverifyError(f"{name} has {count} values and the model input {_fmt(sample_shape)} has that size on "
                             f"both axis {axes[0]} and axis {axes[1]}: cannot tell the channel axis")
    return axes[0]


def _preprocessing(input_scale: float | None, mean: Any, std: Any,
                   sample_shape: Shape) -> tuple[float, torch.Tensor, torch.Tensor, int | None]:
    scale = 1.0 if input_scale is None else input_scale
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise LipverifyError(f"input scale must be a number, got {input_scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise LipverifyError(f"input scale must be a positive number, got {input_scale!r}")
    values = {"mean": _as_values("mean", 0.0 if mean is None else mean),
              "std": _as_values("std", 1.0 if std is None else std)}
    if (values["std"] <= 0).any():
        raise LipverifyError(f"std must be positive, got {values['std'].tolist()}")
    axis: int | None = None
    out: dict[str, torch.Tensor] = {}
    for name, arr in values.items():
        if arr.size == 1:
            out[name] = torch.tensor(float(arr[0]), dtype=torch.float64)
            continue
        a = _channel_axis(name, arr.size, sample_shape)
        if axis is not None and a != axis:
            raise LipverifyError(f"mean and std give different channel axes ({axis} and {a})")
        axis = a
        view = [1] * len(sample_shape)
        view[a] = arr.size
        out[name] = torch.from_numpy(arr.copy()).reshape(view)
    return scale, out["mean"], out["std"], axis


__all__ = ["Dataset", "load_dataset"]
