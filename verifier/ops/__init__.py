"""Op classes, one per ONNX op family, registered by op type and opset version (see ``base.rule``)."""
# (imported for their registration)
from verifier.ops import (activations, conv, elementwise, kernels, linear, ml, normalization,  # noqa: F401
                          pooling, reduce, shape, smooth)
from verifier.ops.base import Op, lookup, registered_op_types, rule

__all__ = ["Op", "lookup", "registered_op_types", "rule"]
