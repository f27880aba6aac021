"""Op classes, one per ONNX op family, registered by op type and opset version (see ``base.rule``)."""
from verifier.ops import activations, elementwise, linear, pooling, reduce, shape, smooth  # noqa: F401  (registration)
from verifier.ops.base import Op, lookup, registered_op_types, rule

__all__ = ["Op", "lookup", "registered_op_types", "rule"]
