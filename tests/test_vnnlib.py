"""VNN-LIB properties as data (frontends.vnnlib): box centres and protected classes, clear errors, the zoo's files."""
from __future__ import annotations

import numpy as np
import pytest

from frontends.data import load_dataset
from frontends.vnnlib import load_vnnlib
from verifier.errors import LipverifyError

from .conftest import shared_dir


def _write(path, lower, upper, outputs: str, comment: str = "; a property"):
    lines = [comment] + [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (<= X_{i} {hi}))", f"(assert (>= X_{i} {lo}))"]
    path.write_text("\n".join(lines + [outputs]) + "\n")
    return path


DISJUNCTION = "(assert (or\n (and (>= Y_0 Y_2))\n (and (>= Y_1 Y_2))\n))"
TARGETED = "(assert (>= Y_1 Y_0))\n(assert (>= Y_1 Y_2))"


def test_centres_and_labels(tmp_path):
    _write(tmp_path / "a.vnnlib", [0.0, 0.2], [0.1, 0.4], DISJUNCTION)
    _write(tmp_path / "b.vnnlib", [1.0, -1.0], [3.0, 1.0], TARGETED, "; index 7, correct label 0, target label 1")
    x, y, source = load_vnnlib(tmp_path)
    np.testing.assert_allclose(x, [[0.05, 0.3], [2.0, 0.0]], rtol=1e-6)
    assert y.tolist() == [2, 0] and "2 input boxes" in source
    ds = load_dataset(tmp_path, (1, 2))
    assert tuple(ds.x.shape) == (2, 1, 2) and ds.bounds is None and "VNN-LIB" in ds.space


def test_refused_properties_say_why(tmp_path):
    bad = _write(tmp_path / "m.vnnlib", [0.0, 0.0], [1.0, 1.0], DISJUNCTION)
    bad.write_text(bad.read_text().replace("(assert (>= X_1 0.0))", ""))
    with pytest.raises(LipverifyError, match="X_1 has no lower bound"):
        load_vnnlib(bad)
    two = _write(tmp_path / "t.vnnlib", [0.0], [1.0], DISJUNCTION)
    two.write_text(two.read_text() + "(assert (<= X_0 0.5))\n")
    assert load_vnnlib(two)[0].tolist() == [[0.25]]  # the assertions are conjoined: the box is [0, 0.5]
    several = _write(tmp_path / "s.vnnlib", [0.0], [1.0], "(assert (or (and (<= X_0 0.5) (>= Y_0 Y_1)) "
                     "(and (>= X_0 0.5) (>= Y_2 Y_1))))")
    with pytest.raises(LipverifyError, match="several input boxes"):
        load_vnnlib(several)
    unlabeled = _write(tmp_path / "u.vnnlib", [0.0], [1.0], TARGETED)
    with pytest.raises(LipverifyError, match="protected class"):
        load_vnnlib(unlabeled)
    with pytest.raises(LipverifyError, match="no such file"):
        load_vnnlib(tmp_path / "nothing.vnnlib")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LipverifyError, match="no .vnnlib"):
        load_vnnlib(tmp_path / "empty")


@pytest.mark.slow
def test_zoo_properties_match_the_models_predictions():
    """The zoo's CIFAR-10 properties: every centre is classified as the class its property protects."""
    root = shared_dir()
    if root is None or not (root / "zoo" / "oval21" / "vnnlib").is_dir():
        pytest.skip("../shared/zoo absent (set LIPVERIFY_SHARED)")
    import torch

    from frontends import load_onnx

    for model, folder in (("oval21/cifar_base_kw.onnx", "oval21/vnnlib"),
                          ("cifar10_resnet/resnet_2b.onnx", "cifar10_resnet/vnnlib"),
                          ("marabou-cifar10/cifar10_small.onnx", "marabou-cifar10/vnnlib")):
        module = load_onnx(root / "zoo" / model)
        ds = load_dataset(root / "zoo" / folder, module.graph.sample_shape)
        with torch.no_grad():
            assert (module(ds.x).argmax(1) == ds.y).all(), model
