"""Architectures lipverify builds itself (``lipverify train --arch NAME``): the seeds' mCnF families, created as
ONNX through the PyTorch exporter so that they are trained and exported by the same path as imported models.

mCnF: m convolutions then n fully connected layers, ReLU after each but the last (Wong & Kolter's families,
used by CRM §5 and BCP §5):

- 2C2F: conv 16 4x4/2, conv 32 4x4/2, fc 100, fc K
- 4C3F: conv 32 3x3, conv 32 4x4/2, conv 64 3x3, conv 64 4x4/2, fc 512, fc 512, fc K
- 6C2F: conv 32 3x3, conv 32 3x3, conv 32 4x4/2, conv 64 3x3, conv 64 3x3, conv 64 4x4/2, fc 512, fc K

``width`` scales every channel count and hidden width (at least 1): 4C3F at width 0.25 is conv 8-8-16-16, fc
128-128. Also ``mlp-H1-H2-...``: Flatten then dense layers of those widths (each times ``width``).
"""
from __future__ import annotations

import io
import math
import re
import warnings

import onnx
import torch
from torch import nn

from verifier.errors import LipverifyError

#: the most parameters a built architecture may have (512 MiB in float32)
MAX_PARAMETERS = 2**27
#: (out channels, kernel, stride, padding) per convolution, and the hidden dense widths
FAMILIES: dict[str, tuple[list[tuple[int, int, int, int]], list[int]]] = {
    "2C2F": ([(16, 4, 2, 1), (32, 4, 2, 1)], [100]),
    "4C3F": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512]),
    "6C2F": ([(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512]),
}


def names() -> list[str]:
    return [*FAMILIES, "mlp-H1-H2-..."]


def build(name: str, input_shape: tuple[int, ...] = (1, 28, 28), classes: int = 10,
          width: float = 1.0) -> nn.Module:
    """The torch module of architecture ``name`` for inputs (B, *input_shape) (C, H, W for mCnF)."""
    if width <= 0:
        raise LipverifyError(f"--width must be positive, got {width}")

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    specs: list[tuple[str, tuple[int, ...]]] = []  # ("conv", (c_in, c_out, k, s, p)) or ("dense", (n_in, n_out))
    mlp = re.fullmatch(r"mlp((?:-\d+)+)", name)
    if mlp:
        hidden = [scaled(int(h)) for h in mlp.group(1).strip("-").split("-")]
        features = math.prod(input_shape)
    elif name in FAMILIES:
        if len(input_shape) != 3:
            raise LipverifyError(f"--arch {name} takes images (C, H, W); the data has samples of shape "
                                 f"{tuple(input_shape)}")
        convs, dense = FAMILIES[name]
        c, h, w = input_shape
        for out, k, s, p in convs:
            out = scaled(out)
            specs.append(("conv", (c, out, k, s, p)))
            c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if h < 1 or w < 1:
                raise LipverifyError(f"--arch {name}: inputs of shape {tuple(input_shape)} are too small for its "
                                     "convolutions")
        features, hidden = c * h * w, [scaled(n) for n in dense]
    else:
        raise LipverifyError(f"unknown architecture '{name}'; one of {', '.join(names())}")
    for n in [*hidden, classes]:
        specs.append(("dense", (features, n)))
        features = n
    count = sum(a[0] * a[1] * (a[2] ** 2 if kind == "conv" else 1) + a[1] for kind, a in specs)
    if count > MAX_PARAMETERS:
        raise LipverifyError(f"--arch {name} at --width {width:g} has {count:,} parameters; the limit is "
                             f"{MAX_PARAMETERS:,}")
    layers: list[nn.Module] = [] if specs[0][0] == "conv" else [nn.Flatten()]
    for i, (kind, a) in enumerate(specs):
        if kind == "conv":
            layers += [nn.Conv2d(a[0], a[1], a[2], stride=a[3], padding=a[4]), nn.ReLU()]
            if specs[i + 1][0] == "dense":
                layers.append(nn.Flatten())
        else:
            layers += [nn.Linear(*a)] + ([nn.ReLU()] if i + 1 < len(specs) else [])
    return nn.Sequential(*layers)


def to_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int = 13,
            input_name: str = "input") -> onnx.ModelProto:
    """``module`` (in eval mode) exported by torch's ONNX exporter, batch axis symbolic, output 'logits';
    BatchNormalization stays a node (PRESERVE) so that its statistics remain trainable and exportable."""
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *input_shape),), buffer, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=["logits"],
                          dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE)
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "lipverify"
    return model
