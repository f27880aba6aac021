"""scikit-learn's graphs (skl2onnx's ``ai.onnx.ml`` ops) brought to what the IR bounds, before the import walk.

The lowering (``lower_ml``), exact; the label outputs it marks are resolved by ``frontends.onnx_labels``:

- **Affine ML ops into default-domain ops**: ``Scaler`` (y = (x - offset) * scale) into
  ``Sub`` and ``Mul``; ``LinearClassifier`` and ``LinearRegressor`` (scores = x W^T + b, then the
  ``post_transform``: none, ``SOFTMAX``, ``LOGISTIC``) into ``Gemm`` and ``Softmax`` / ``Sigmoid``. A binary
  classifier with one coefficient row z = w x + b has the scores (1 - z, z) (onnxruntime's convention;
  (1 - sigma(z), sigma(z)) with LOGISTIC) and the label of the argmax of (-z, z), so its ``Gemm`` gets the row
  w, then fixed maps. Their coefficients and intercepts are trainable weights (``Lowering.weight``: training
  writes them back into the node's attributes, ``frontends.onnx_export``); Scaler's offsets and scales are
  constants. ``Normalizer`` stays one node
  (``verifier.ops.ml``).
- **SVMs** (``SVMClassifier``, ``SVMRegressor``): ``frontends.onnx_svm``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from verifier.errors import ModelImportError

from .onnx_labels import label_of
from .onnx_lowering import Lowering
from .onnx_svm import svm_classifier, svm_regressor

ML = "ai.onnx.ml"


def lower_ml(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], output: str,
             attributes: dict[str, tuple[str, str]] | None = None) -> list[onnx.NodeProto]:
    """``nodes`` with every Scaler, LinearClassifier, LinearRegressor, SVMClassifier and SVMRegressor replaced by
    default-domain nodes and ``KernelExpansion`` (``frontends.onnx_svm``), their constants added to ``const``
    (module docstring); ``output``: the tensor the import is for (with every node input: what is needed).
    ``attributes`` receives the trainable weights kept in the nodes' attributes (``Lowering.attributes``)."""
    lowering = Lowering(const, {t for n in nodes for t in n.input} | {output},
                        {} if attributes is None else attributes)
    out = []
    for i, node in enumerate(nodes):
        if node.domain != ML or node.op_type not in LOWERED:
            out.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out += LOWERED[node.op_type](node, attrs, f"{node.name or node.op_type}_{i}_lowered", lowering)
    return out


def _scaler(node: onnx.NodeProto, attrs: dict, prefix: str, lowering: Lowering) -> list:
    offset = lowering.constant(f"{prefix}_offset", np.asarray(attrs.get("offset", [0.0])))
    scale = lowering.constant(f"{prefix}_scale", np.asarray(attrs.get("scale", [1.0])))
    return [helper.make_node("Sub", [node.input[0], offset], [f"{prefix}_centred"], name=f"{prefix}_sub"),
            helper.make_node("Mul", [f"{prefix}_centred", scale], [node.output[0]], name=f"{prefix}_mul")]


def _affine(node: onnx.NodeProto, prefix: str, lowering: Lowering, w: np.ndarray, b: np.ndarray, post: str,
            scores: str) -> list:
    """Gemm x W^T + b, then the post-transform (module docstring), writing ``scores``; W and b are the node's
    trainable ``coefficients`` and ``intercepts``."""
    ops = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}
    if post not in ops:
        raise ModelImportError(f"{node.op_type} node '{node.name}': post_transform {post} is not supported "
                               f"(NONE, SOFTMAX, LOGISTIC are)")
    intercepts = any(a.name == "intercepts" for a in node.attribute)  # (without them, b = 0 stays fixed)
    weights = [lowering.weight(f"{prefix}_w", w, node, "coefficients"),
               lowering.weight(f"{prefix}_b", b, node, "intercepts") if intercepts
               else lowering.constant(f"{prefix}_b", b)]
    raw = scores if ops[post] is None else f"{prefix}_raw"
    out = [helper.make_node("Gemm", [node.input[0], *weights], [raw], transB=1, name=f"{prefix}_gemm")]
    if ops[post] == "Softmax":
        out.append(helper.make_node("Softmax", [raw], [scores], axis=-1, name=f"{prefix}_softmax"))
    elif ops[post] == "Sigmoid":
        out.append(helper.make_node("Sigmoid", [raw], [scores], name=f"{prefix}_sigmoid"))
    return out


def _coefficients(node: onnx.NodeProto, attrs: dict, rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    coef = np.asarray(attrs.get("coefficients", []), dtype=np.float64)
    if rows <= 0 or coef.size == 0 or coef.size % rows:
        raise ModelImportError(f"{node.op_type} node '{node.name}': {coef.size} coefficients for {rows} rows")
    b = np.asarray(attrs.get("intercepts", np.zeros(rows)), dtype=np.float64).reshape(-1)
    if b.size != rows:
        raise ModelImportError(f"{node.op_type} node '{node.name}': {b.size} intercepts for {rows} rows")
    post = attrs.get("post_transform", b"NONE")
    return coef.reshape(rows, -1), b, post.decode() if isinstance(post, bytes) else str(post)


def _linear_classifier(node: onnx.NodeProto, attrs: dict, prefix: str, lowering: Lowering) -> list:
    """The scores as onnxruntime computes them, and the label as the argmax of a decision tensor: the scores
    themselves, except for a binary classifier with one row z = w x + b, whose scores are (1 - z, z) without a
    post-transform ((1 - sigma(z), sigma(z)) with LOGISTIC) and whose label is class 1 where z > 0: the
    argmax of (-z, z)."""
    labels = attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or []
    rows = len(np.asarray(attrs.get("intercepts", []))) or len(labels)
    w, b, post = _coefficients(node, attrs, rows)
    label, scores = node.output[0], node.output[1] if len(node.output) > 1 else ""
    out = []
    if rows == 1 and len(labels) == 2:
        z = f"{prefix}_z"
        out += _affine(node, prefix, lowering, w, b, "NONE", z)
        flip = lowering.constant(f"{prefix}_flip", np.array([[-1.0, 1.0]]))
        out.append(helper.make_node("MatMul", [z, flip], [f"{prefix}_decision"], name=f"{prefix}_flip"))
        if scores and post == "LOGISTIC":
            out.append(helper.make_node("Sigmoid", [f"{prefix}_decision"], [scores], name=f"{prefix}_sigmoid"))
        elif scores:
            shift = lowering.constant(f"{prefix}_shift", np.array([1.0, 0.0]))
            out.append(helper.make_node("Add", [f"{prefix}_decision", shift], [scores], name=f"{prefix}_shift"))
        if label:
            out.append(label_of(f"{prefix}_decision", label, attrs))
        return out
    scores = scores or f"{prefix}_scores"
    out += _affine(node, prefix, lowering, w, b, post, scores)
    if label:
        out.append(label_of(scores, label, attrs))
    return out


def _linear_regressor(node: onnx.NodeProto, attrs: dict, prefix: str, lowering: Lowering) -> list:
    w, b, post = _coefficients(node, attrs, int(attrs.get("targets", 1)))
    return _affine(node, prefix, lowering, w, b, post, node.output[0])


LOWERED = {"Scaler": _scaler, "LinearClassifier": _linear_classifier, "LinearRegressor": _linear_regressor,
           "SVMClassifier": svm_classifier, "SVMRegressor": svm_regressor}
