"""Every third-party model in ../shared/zoo imports and computes what onnxruntime computes, batched."""
from __future__ import annotations

import pytest

from frontends import load_onnx, read_model
from frontends.parity import check_parity

from .conftest import zoo_models

pytestmark = pytest.mark.slow  # zoo

MODELS = zoo_models()
if not MODELS:
    MODELS = [pytest.param(None, marks=pytest.mark.skip(
        reason="third-party models absent: no ../shared/zoo (set LIPVERIFY_SHARED to the shared folder)"))]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.name}" if p else "none")
def test_zoo_model_matches_onnxruntime(path):
    module = load_onnx(path)
    report = check_parity(read_model(path), module, batch_sizes=(1, 7))
    assert report["ok"], report
    # image classifiers and regressors declare batch 1 or a symbolic batch: they must run natively batched
    if len(module.graph.sample_shape) > 0:
        assert module.graph.batched, "a real model with a batch axis should run batched without the per-sample loop"


def test_zoo_is_present_when_shared_is(zoo):
    assert len(list(zoo.glob("*/*.onnx"))) >= 10
