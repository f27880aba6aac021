"""What the lowering of one ONNX-ML node (``frontends.onnx_ml``, ``frontends.onnx_svm``) reads from and adds to
the import: one small context object passed to every lowering, instead of naming conventions.

- ``needed``: every tensor some node of the graph reads, and the output the import is for (a lowering refuses
  only outputs that are needed).
- ``const``: the import's constants; ``constant`` adds one (a buffer of the IR).
- ``attributes``: the trainable weights that live in the node's attributes rather than in initializers (a linear
  model's coefficients and intercepts, an SVM's dual coefficients and offsets): constant name -> (the ML node's
  first output, the attribute), where training writes them back (``frontends.onnx_export``). ``weight`` adds one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass
class Lowering:
    const: dict[str, np.ndarray]
    needed: set[str]
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def constant(self, name: str, value: np.ndarray) -> str:
        """Add the float32 constant ``name`` (a fixed map of the lowering); return its name."""
        self.const[name] = np.asarray(value, dtype=np.float32)
        return name

    def weight(self, name: str, value: np.ndarray, node: onnx.NodeProto, attribute: str) -> str:
        """Add the constant ``name`` holding the float list ``attribute`` of ``node`` (in the attribute's order,
        any shape), trainable and written back there; return its name."""
        self.constant(name, value)
        self.attributes[name] = (node.output[0], attribute)
        return name
