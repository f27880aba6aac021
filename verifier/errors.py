"""Errors that reach the user as one line (the CLI prints them and exits with code 2)."""
from __future__ import annotations


class LipverifyError(Exception):
    """A problem with what the user gave us: printed as one line, exit code 2."""


class ModelImportError(LipverifyError):
    """The ONNX model cannot be read or translated into the IR."""


class UnsupportedOpsError(ModelImportError):
    """The model uses ops on its input-dependent path that lipverify has no rule for.

    ``ops`` lists ``(op_type, node_name)`` for every such node, so that one message names them all.
    """

    def __init__(self, ops: list[tuple[str, str]]):
        self.ops = list(ops)
        listed = ", ".join(f"{op} (node '{name}')" for op, name in self.ops[:self.SHOWN])
        more = len(self.ops) - self.SHOWN
        super().__init__(f"unsupported op{'s' if len(self.ops) > 1 else ''}: {listed}"
                         + (f" and {more} more node{'s' if more > 1 else ''}" if more > 0 else ""))

    #: how many nodes the message names (``ops`` has them all)
    SHOWN = 10


class InputShapeError(LipverifyError):
    """Data whose shape does not fit the model's input."""


class NoRuleError(LipverifyError):
    """An op has no rule of the requested kind (Lipschitz or box) yet."""
