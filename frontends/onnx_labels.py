"""Label outputs of classifiers: which tensor lipverify imports for them, and the marker that says so.

A classifier's label output (``ArgMax`` of the scores, then ``ArrayFeatureExtractor`` of the class labels and
``Cast``s; or the label of an ONNX-ML classifier, which the lowering (``frontends.onnx_ml``,
``frontends.onnx_svm``) marks with ``label_of``) is the class of the argmax of a tensor of scores, so a
certificate of that argmax is one of the label: that tensor is imported instead. A ``ZipMap`` output (a list of
maps, not a tensor) is its input, the probabilities. ``resolve_output`` says which tensor it picked and why
(``Importer`` keeps the line in the graph's ``info['notes']``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from verifier.ops.base import LIPVERIFY

#: ops between a classifier's argmax and its label output (class lookup, type and shape changes)
LABEL_PATH = ("Cast", "Reshape", "Squeeze", "Flatten", "Identity", "ArrayFeatureExtractor")


def resolve_output(nodes: list[onnx.NodeProto], const: dict[str, np.ndarray], output: str
                   ) -> tuple[str, str | None, list[str] | None]:
    """(the tensor to import for ``output``, a note saying why when it is another one, and for a label
    imported as the argmax of a tensor that the file does not hold, the class labels by index as text, which
    parity compares with the file's labels): module docstring."""
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
        return (node.input[0], f"'{output}' is the class of the argmax of '{node.input[0]}': its scores are "
                f"imported", None)
    if node is not None and node.op_type == "LabelOf":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        detail = attrs.get("note", b"").decode()
        classes = [c.decode() for c in attrs.get("classes", [])] or None
        return (node.input[0], f"'{output}' is the class of the argmax of '{node.input[0]}'"
                f"{': ' + detail if detail else ''}: that is imported", classes)
    return (t, why, None) if why else (output, None, None)


def label_of(decision: str, label: str, attrs: dict, note: str = "") -> onnx.NodeProto:
    """A marker (domain ``lipverify``, never imported: ``resolve_output`` follows it back) that ``label`` is the
    class of the argmax of ``decision``, with the classifier's class labels (from its ``attrs``) and a note."""
    classes = attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or []
    text = [c.decode() if isinstance(c, bytes) else str(c) for c in classes]
    extra = {"classes": text} if text else {}  # (an empty list attribute has no type)
    return helper.make_node("LabelOf", [decision], [label], domain=LIPVERIFY, note=note, **extra)
