"""Support vector machines (``ai.onnx.ml`` SVMClassifier and SVMRegressor, as skl2onnx writes scikit-learn's SVC
and SVR) lowered into the IR's ``KernelExpansion`` (``verifier.ops.kernels``) and default-domain ops.

onnxruntime's SVMClassifier with support vectors is libsvm's one-vs-one machine: for K classes, one decision
function per pair i < j (pairs in that order, p = 0 .. K(K-1)/2 - 1),

    d_p(x) = sum_{r in class i} coef[j-1, r] k(s_r, x) + sum_{r in class j} coef[i, r] k(s_r, x) + rho[p],

and the label is the class with the most votes (i gets the vote of pair p where d_p > 0, j where d_p <= 0);
its probabilities (Platt scaling and pairwise coupling, where ``prob_a`` is given) do not change the label.
So the label is imported as the argmax of a tensor of decision scores (``LabelOf``, ``frontends.onnx_ml``):

- K = 2: the scores (d, -d) (a MatMul of d by (1, -1)): class 0 exactly where d > 0.
- K > 2: the **Condorcet scores** w_c = min_{j != c} o_cj d_p(c, j) (o_cj = 1 when c is the pair's first class,
  else -1), with an extra last score 0. Where some class c wins all its K - 1 pairs, w_c > 0 > w_j for every
  other j, and c is the label (K - 1 votes, the most possible). Where no class wins all its pairs the argmax is
  the extra index K ("no class wins every vote"): a label of onnxruntime's that these scores do not decide.
  A certificate of the argmax c < K on a ball (w_c > w_j for all j, the extra 0 included) proves w_c > 0, so c
  wins every pair and stays the label: certificates of these scores are sound for the label, and certify
  nothing where no class wins every vote.

The Condorcet scores are K - 1 MatMuls of the decision functions by +-1 selection matrices
(``condorcet_weights``) and one elementwise Min. SVMRegressor is f(x) = sum_r coef_r k(s_r, x) + rho.

The decision functions are one ``KernelExpansion`` whose trainable weights are the node's ``coefficients``
(K - 1, n), in the file's layout (the op gathers each pair's, ``verifier.ops.kernels.pair_layout``), and
``rho``: training writes them back there (``Lowering.weight``). The support vectors stay fixed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from verifier.errors import ModelImportError
from verifier.ops.base import LIPVERIFY
from verifier.ops.kernels import condorcet_weights

from .onnx_labels import label_of
from .onnx_lowering import Lowering


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _kernel(node: onnx.NodeProto, attrs: dict, features: int) -> tuple[dict, np.ndarray]:
    """The KernelExpansion attributes and the support vectors (n, d) of an SVM node."""
    params = list(attrs.get("kernel_params", [])) + [0.0, 0.0, 0.0][len(attrs.get("kernel_params", [])):]
    kernel = {"kernel_type": _text(attrs.get("kernel_type", b"LINEAR")), "gamma": float(params[0]),
              "coef0": float(params[1]), "degree": int(params[2])}
    sv = np.asarray(attrs.get("support_vectors", []), dtype=np.float32)
    if sv.size == 0 or features <= 0 or sv.size % features:
        raise ModelImportError(f"{node.op_type} node '{node.name}': {sv.size} support vector entries; lipverify "
                               f"reads SVMs with support vectors (libsvm's SVC and SVR, not linear mode)")
    if _text(attrs.get("post_transform", b"NONE")) != "NONE":
        raise ModelImportError(f"{node.op_type} node '{node.name}': post_transform "
                               f"{_text(attrs.get('post_transform'))} is not supported (NONE is)")
    return kernel, sv.reshape(-1, features)


def _features(attrs: dict) -> int:
    """d from the support vectors and their count (vectors_per_class, or n_supports)."""
    n = int(sum(attrs.get("vectors_per_class", []))) or int(attrs.get("n_supports", 0))
    return len(attrs.get("support_vectors", [])) // n if n else 0


def _expansion(node: onnx.NodeProto, out: str, prefix: str, lowering: Lowering, kernel: dict, sv: np.ndarray,
               coef: np.ndarray, rho: np.ndarray, per_class: list[int] | None) -> onnx.NodeProto:
    """The KernelExpansion of the node's decision functions; ``per_class``: the one-vs-one layout's classes."""
    stored = len(next((a.floats for a in node.attribute if a.name == "rho"), []))  # (else rho stays fixed)
    inputs = [node.input[0], lowering.constant(f"{prefix}_sv", sv),
              lowering.weight(f"{prefix}_a", coef, node, "coefficients"),
              lowering.weight(f"{prefix}_b", rho, node, "rho") if stored == rho.size
              else lowering.constant(f"{prefix}_b", rho)]
    layout = {"vectors_per_class": per_class} if per_class else {}
    return helper.make_node("KernelExpansion", inputs, [out], name=f"{prefix}_kernel", domain=LIPVERIFY, **kernel,
                            **layout)


def svm_classifier(node: onnx.NodeProto, attrs: dict, prefix: str, lowering: Lowering) -> list[onnx.NodeProto]:
    """The label as the argmax of decision scores (module docstring); the scores output is refused."""
    if len(node.output) > 1 and node.output[1] in lowering.needed:
        raise ModelImportError(f"SVMClassifier node '{node.name}': outputs computed from its scores "
                               f"('{node.output[1]}': pairwise decisions or Platt probabilities) are not supported; "
                               f"certify its label output '{node.output[0]}' (lipverify imports its decision scores)")
    per_class = [int(v) for v in attrs.get("vectors_per_class", [])]
    kernel, sv = _kernel(node, attrs, _features(attrs))
    k = len(per_class)
    coef = np.asarray(attrs.get("coefficients", []), dtype=np.float64)
    rho = np.asarray(attrs.get("rho", []), dtype=np.float64)
    if k < 2 or coef.size != (k - 1) * len(sv) or rho.size != k * (k - 1) // 2:
        raise ModelImportError(f"SVMClassifier node '{node.name}': {k} classes, {coef.size} coefficients, "
                               f"{rho.size} offsets for {len(sv)} support vectors do not fit")
    pairs, decision = f"{prefix}_pairs", f"{prefix}_decision"
    out = [_expansion(node, pairs, prefix, lowering, kernel, sv, coef.reshape(k - 1, len(sv)), rho, per_class)]
    if k == 2:
        flip = lowering.constant(f"{prefix}_flip", np.array([[1.0, -1.0]]))
        out.append(helper.make_node("MatMul", [pairs, flip], [decision], name=f"{prefix}_flip"))
    else:
        mins = []
        for j, w in enumerate(condorcet_weights(k)):
            mins.append(f"{prefix}_votes{j}")
            out.append(helper.make_node("MatMul", [pairs, lowering.constant(f"{prefix}_vote{j}", w)], [mins[-1]],
                                        name=f"{prefix}_vote{j}"))
        out.append(helper.make_node("Min", mins, [decision], name=f"{prefix}_condorcet"))
    note = ("the scores (d, -d) of its one decision function d" if k == 2 else
            f"its Condorcet scores (class c: the least of its {k - 1} one-vs-one decisions; a last score 0 wins "
            f"where no class wins every vote, and certifies nothing)")
    out.append(label_of(decision, node.output[0], attrs, note))
    return out


def svm_regressor(node: onnx.NodeProto, attrs: dict, prefix: str, lowering: Lowering) -> list[onnx.NodeProto]:
    if int(attrs.get("one_class", 0)):
        raise ModelImportError(f"SVMRegressor node '{node.name}': one-class SVMs (a +-1 output) are not supported")
    kernel, sv = _kernel(node, attrs, _features(attrs))
    coef = np.asarray(attrs.get("coefficients", []), dtype=np.float64).reshape(1, -1)
    rho = np.asarray(attrs.get("rho", [0.0]), dtype=np.float64).reshape(-1)[:1]
    if coef.shape[1] != len(sv):
        raise ModelImportError(f"SVMRegressor node '{node.name}': {coef.shape[1]} coefficients for {len(sv)} "
                               f"support vectors")
    return [_expansion(node, node.output[0], prefix, lowering, kernel, sv, coef, rho, None)]
