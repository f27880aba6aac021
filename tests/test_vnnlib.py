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


# ------------------------------------------------------------------------------------------ whole properties
def _property(tmp_path, body: str, n: int = 2, k: int = 3):
    from frontends.vnnlib import read_vnnlib

    head = [f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)" for j in range(k)]
    path = tmp_path / "p.vnnlib"
    path.write_text("\n".join(head) + "\n" + body + "\n")
    return read_vnnlib(path)


BOX = "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 -1.0))\n(assert (<= X_1 1.0))\n"


def test_disjunctive_normal_form_regions_and_rows(tmp_path):
    # a top-level box and a disjunction of outputs: one region, one disjunct per case
    prop = _property(tmp_path, BOX + "(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2) (< Y_1 (+ 2 (* -3 Y_0))))))")
    (region,) = prop.regions
    assert region.lower.tolist() == [0.0, -1.0] and region.upper.tolist() == [1.0, 1.0]
    first, second = region.disjuncts
    assert first.a.tolist() == [[1.0, 0.0, -1.0]] and first.c.tolist() == [0.0] and not first.strict.any()
    # Y_1 < 2 - 3 Y_0  ->  -3 Y_0 - Y_1 + 2 > 0 (strict)
    assert second.a.tolist() == [[0.0, 1.0, -1.0], [-3.0, -1.0, 0.0]] and second.c.tolist() == [0.0, 2.0]
    assert second.strict.tolist() == [False, True]
    assert first.satisfied(np.array([1.0, 0.0, 1.0])) and not first.satisfied(np.array([0.0, 0.0, 1.0]))
    # two input boxes inside an or, outputs shared: two regions
    prop = _property(tmp_path, "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)) "
                               "(and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1))))\n(assert (<= Y_0 Y_1))")
    assert [r.lower.tolist() for r in prop.regions] == [[0.0, 0.0], [2.0, 0.0]]
    assert all(len(r.disjuncts) == 1 for r in prop.regions)
    # a conjunction of two disjunctions: their product (2 x 2 cases, one box)
    prop = _property(tmp_path, BOX + "(assert (or (>= Y_0 1) (>= Y_1 1)))\n(assert (or (>= Y_2 1) (>= Y_2 5)))")
    assert len(prop.regions) == 1 and len(prop.regions[0].disjuncts) == 4
    # an empty box holds trivially: the case is dropped
    prop = _property(tmp_path, BOX + "(assert (or (and (>= X_0 5) (>= Y_0 1)) (and (<= X_0 0.5) (>= Y_1 1))))")
    assert len(prop.regions) == 1 and prop.regions[0].upper.tolist() == [0.5, 1.0]


def test_membership_as_the_model_receives_it(tmp_path):
    """A float32 point is in the region when it is the rounding of a real point of the box; float64 points are
    checked against the constraints as written."""
    prop = _property(tmp_path, "(assert (>= X_0 0.1))\n(assert (<= X_0 0.1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))"
                               "\n(assert (>= Y_0 0))")
    region = prop.regions[0]
    assert region.contains(np.array([0.1, 0.5], np.float32))  # float32(0.1) != 0.1, but it is its rounding
    assert not region.contains(np.array([np.nextafter(np.float32(0.1), np.float32(1)), 0.5], np.float32))
    assert region.contains(np.array([0.1, 0.5])) and not region.contains(np.array([0.1 + 1e-12, 0.5]))
    assert region.violated_by(np.array([0.1, 0.5]), np.array([0.0, 0.0, 0.0]))
    assert not region.violated_by(np.array([0.1, 0.5]), np.array([-1e-9, 0.0, 0.0]))


@pytest.mark.parametrize("body, needle", [
    (BOX + "(assert (>= (+ X_0 Y_0) 1))", "mixes inputs X and outputs Y"),
    (BOX + "(assert (>= (+ X_0 X_1) 1))\n(assert (>= Y_0 0))", "several inputs (X_0, X_1)"),
    (BOX + "(assert (>= (* Y_0 Y_1) 1))", "product of two variable terms"),
    (BOX + "(assert (>= (+ 1 2) 1))\n(assert (>= Y_0 0))", "without variables"),
    ("(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 0))", "X_1 has no lower bound"),
])
def test_unsupported_constructs_are_named(tmp_path, body, needle):
    with pytest.raises(LipverifyError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        _property(tmp_path, body)


def test_too_many_cases_are_refused(tmp_path, monkeypatch):
    import frontends.vnnlib as vnnlib

    monkeypatch.setattr(vnnlib, "MAX_CASES", 8)
    body = BOX + "\n".join(f"(assert (or (>= Y_0 {i}) (>= Y_1 {i})))" for i in range(4))
    with pytest.raises(LipverifyError, match="more than 8 cases"):
        _property(tmp_path, body)
    assert len(_property(tmp_path, BOX + "\n".join(f"(assert (or (>= Y_0 {i}) (>= Y_1 {i})))"
                                                     for i in range(3))).regions[0].disjuncts) == 8


def test_every_zoo_property_parses():
    root = shared_dir()
    if root is None or not (root / "zoo").is_dir():
        pytest.skip("../shared/zoo absent (set LIPVERIFY_SHARED)")
    from frontends.vnnlib import read_vnnlib

    files = sorted((root / "zoo").rglob("*.vnnlib"))
    assert len(files) > 50
    for path in files:
        prop = read_vnnlib(path)
        assert prop.regions and all(r.disjuncts for r in prop.regions), path
