"""scikit-learn's graphs (skl2onnx's ``ai.onnx.ml`` ops) brought to what the IR bounds, before the import walk.

Two steps, both exact:

- **The output** (``resolve_output``, after the lowering): a classifier's label output (``ArgMax`` of the
  scores, then ``ArrayFeatureExtractor`` of the class labels and ``Cast``s; or a ``LinearClassifier``'s own
  label output) is the class of the argmax of a tensor of scores, so a certificate of that argmax is one of
  the label: that tensor is imported instead. A ``ZipMap``
  output (a list of maps, not a tensor) is its input, the probabilities. ``resolve_output`` says which tensor
  it picked and why (``Importer`` keeps the line in the graph's ``info['notes']``).
- **Affine ML ops into default-domain ops** (``lower_ml``): ``Scaler`` (y = (x - offset) * scale) into
  ``Sub`` and ``Mul``; ``LinearClassifier`` and ``LinearRegressor`` (scores = x W^T + b, then the
  ``post_transform``: none, ``SOFTMAX``, ``LOGISTIC``) into ``Gemm`` and ``Softmax`` / ``Sigmoid``. A binary
  classifier with one coefficient row has the scores (-z, z) (onnxruntime's convention), so its ``Gemm`` gets
  the rows -w and w. Their constants are new tensors of the imported graph (not trainable weights of the
  file). ``Normalizer`` stays one node (``verifier.ops.ml``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from verifier.errors import ModelImportError

ML = "ai.onnx.ml"
#: ops between a classifier's argmax and its label output (class lookup, type and shape changes)
LABEL_PATH = ("Cast", "Reshape", "Squeeze", "Flatten", "Identity", "ArrayFeatureExtractor")


def resolve_output(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], output: str
                   ) -> tuple[str, str | None]:
    """(the tensor to import for ``output``, a note saying why when it is another one): module docstring."""
    producer = {o: n for n in nodes for o in n.output}
    t, why = output, None
    node = producer.get(t)
    if node is not None and node.op_type == "ZipMap":
        t, why = node.input[0], f"'{output}' is a ZipMap of '{node.input[0]}' (the probabilities as a map)"
        node = producer.get(t)
    seen = 0
    while node is not None and node.op_type in LABEL_PATH and seen < 16:
        dynamic = [i for i in node.input if i and i not in const]
        if len(dynamic) != 1:
            break
        t, node, seen = dynamic[0], producer.get(dynamic[0]), seen + 1
    if node is not None and node.op_type == "ArgMax":
        return node.input[0], f"'{output}' is the class of the argmax of '{node.input[0]}': its scores are imported"
    if node is not None and node.op_type == "LabelOf":
        return node.input[0], f"'{output}' is the class of the argmax of '{node.input[0]}': that is imported"
    return (t, why) if why else (output, None)


def lower_ml(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """``nodes`` with every Scaler, LinearClassifier and LinearRegressor replaced by default-domain nodes, their
    constants added to ``const`` (module docstring)."""
    out = []
    for i, node in enumerate(nodes):
        if node.domain != ML or node.op_type not in LOWERED:
            out.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        prefix = f"{node.name or node.op_type}_{i}_lowered"
        out += LOWERED[node.op_type](node, attrs, prefix, const)
    return out


def _label_of(decision: str, label: str) -> onnx.NodeProto:
    """A marker (domain ``lipverify``, never imported: ``resolve_output`` follows it back) that ``label`` is the
    class of the argmax of ``decision``."""
    return helper.make_node("LabelOf", [decision], [label], domain="lipverify")


def _scaler(node: onnx.NodeProto, attrs: dict, prefix: str, const: dict[str, np.ndarray]) -> list:
    offset = np.asarray(attrs.get("offset", [0.0]), dtype=np.float32)
    scale = np.asarray(attrs.get("scale", [1.0]), dtype=np.float32)
    const[f"{prefix}_offset"], const[f"{prefix}_scale"] = offset, scale
    return [helper.make_node("Sub", [node.input[0], f"{prefix}_offset"], [f"{prefix}_centred"], name=f"{prefix}_sub"),
            helper.make_node("Mul", [f"{prefix}_centred", f"{prefix}_scale"], [node.output[0]], name=f"{prefix}_mul")]


def _affine(node: onnx.NodeProto, attrs: dict, prefix: str, const: dict[str, np.ndarray], w: np.ndarray,
            b: np.ndarray, post: str, scores: str) -> list:
    """Gemm x W^T + b, then the post-transform (module docstring), writing ``scores``."""
    ops = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}
    if post not in ops:
        raise ModelImportError(f"{node.op_type} node '{node.name}': post_transform {post} is not supported "
                               f"(NONE, SOFTMAX, LOGISTIC are)")
    const[f"{prefix}_w"], const[f"{prefix}_b"] = w.astype(np.float32), b.astype(np.float32)
    raw = scores if ops[post] is None else f"{prefix}_raw"
    out = [helper.make_node("Gemm", [node.input[0], f"{prefix}_w", f"{prefix}_b"], [raw], transB=1,
                            name=f"{prefix}_gemm")]
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


def _linear_classifier(node: onnx.NodeProto, attrs: dict, prefix: str, const: dict[str, np.ndarray]) -> list:
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
        flip = np.concatenate([-w, w]), np.concatenate([-b, b])
        if scores:
            shift = (flip[0], flip[1] + np.array([1.0, 0.0])) if post != "LOGISTIC" else flip
            out += _affine(node, attrs, prefix, const, *shift, "LOGISTIC" if post == "LOGISTIC" else "NONE", scores)
        if label:
            out += _affine(node, attrs, f"{prefix}_decision", const, *flip, "NONE", f"{prefix}_decision")
            out.append(_label_of(f"{prefix}_decision", label))
        return out
    scores = scores or f"{prefix}_scores"
    out += _affine(node, attrs, prefix, const, w, b, post, scores)
    if label:
        out.append(_label_of(scores, label))
    return out


def _linear_regressor(node: onnx.NodeProto, attrs: dict, prefix: str, const: dict[str, np.ndarray]) -> list:
    w, b, post = _coefficients(node, attrs, int(attrs.get("targets", 1)))
    return _affine(node, attrs, prefix, const, w, b, post, node.output[0])


LOWERED = {"Scaler": _scaler, "LinearClassifier": _linear_classifier, "LinearRegressor": _linear_regressor}
