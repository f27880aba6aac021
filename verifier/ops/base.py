"""The op base class and the registry that maps (ONNX op type, opset) to an op class.

Every IR node holds one op object. An op keeps its forward (torch, batched), its Lipschitz rule, its box
(interval) rule and its gradient-box rule together, so that one file says everything about one op family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from verifier.box import Box, is_box
from verifier.errors import NoRuleError
from verifier.jacobian import affine_transpose, no_gradient_rule
from verifier.linear import affine_backward

Shape = tuple[int, ...]

#: float safety factor on every bound computed in float64 (singular values are accurate to ~1e-15 relative)


@dataclass
class RuleArgs:
    """What a node's rule sees: constant inputs as float64 tensors (None where the input depends on the model
    input, is static or absent), which inputs depend on the model input, and the batch-1 shapes of the import
    probe (batch axis included, as in the file)."""

    values: list[torch.Tensor | None]
    dynamic: list[bool]
    in_shapes: list[Shape | None]
    out_shapes: list[Shape]
    norm: float = 2.0  # 2 or math.inf

    @property
    def l2(self) -> bool:
        return self.norm == 2

    @staticmethod
    def numel(shape: Shape | None) -> int:
        return math.prod(shape) if shape else 1

    def duplication(self, k: int) -> float:
        """Factor for an input broadcast into a larger output (its entries repeated): sqrt(copies) in l2."""
        copies = self.numel(self.out_shapes[0]) / max(self.numel(self.in_shapes[k]), 1)
        return math.sqrt(max(copies, 1.0)) if self.l2 else 1.0


@dataclass
class Lipschitz:
    """A node's Lipschitz rule result (LMT §4): ``factors[i]`` bounds the node's output change per unit change
    of its i-th input-dependent input (in ``norm``); ``combine`` says how several such inputs compose:
    'sum' (Add: L_a + L_b) or 'stack' (Concat, elementwise Max: sqrt(L_a^2 + L_b^2) in l2, max in l_inf).
    ``method`` names how the bound was obtained: exact (closed form or SVD), dft, materialized, theorem, slope."""

    factors: list[float]
    method: str
    combine: str = "sum"
    note: str = field(default="")

    @property
    def value(self) -> float:
        return max(self.factors) if self.factors else 0.0


def lipschitz_factor(value: torch.Tensor) -> float | torch.Tensor:
    """A rule's factor from a torch scalar: a float, or the scalar itself where it carries gradients (training's
    estimate, ``verifier.engines.power_iteration``, evaluates rules on the trainable weights)."""
    return value if value.requires_grad else float(value)


#: the default ONNX domain's names (both mean the same domain)
DEFAULT_DOMAIN, ONNX_ML = "", "ai.onnx.ml"
#: the domain of the nodes lipverify's importer writes (lowerings and pattern rewrites; never in files)
LIPVERIFY = "lipverify"

# (domain, op type) -> list of (since_version, class), kept sorted by since_version
_REGISTRY: dict[tuple[str, str], list[tuple[int, type["Op"]]]] = {}


def _domain(domain: str) -> str:
    return DEFAULT_DOMAIN if domain in ("", "ai.onnx") else domain


def rule(op_type: str, since: int | Sequence[int] = 1, domain: str = DEFAULT_DOMAIN
         ) -> Callable[[type["Op"]], type["Op"]]:
    """Register an op class for ``op_type`` of ``domain`` from that domain's opset ``since`` on (several versions
    may share a class). A second registration of the same (domain, op type, version) is refused, as onnx2torch's
    converter registry does."""
    versions = (since,) if isinstance(since, int) else tuple(since)

    def register(cls: type[Op]) -> type[Op]:
        entries = _REGISTRY.setdefault((_domain(domain), op_type), [])
        taken = {v for v, _ in entries}
        twice = [v for v in versions if v in taken] or [v for i, v in enumerate(versions) if v in versions[:i]]
        if twice:
            raise ValueError(f"op {op_type} version {twice[0]} is registered twice ({cls.__name__})")
        entries.extend((v, cls) for v in versions)
        entries.sort(key=lambda e: e[0])
        if "op_type" not in cls.__dict__:  # (a registered subclass gets its own name, not its parent's)
            cls.op_type = op_type
        return cls

    return register


def lookup(op_type: str, opset: int, domain: str = DEFAULT_DOMAIN) -> type["Op"] | None:
    """The op class for ``op_type`` of ``domain`` in a model importing that domain at ``opset``: the newest
    version <= opset."""
    entries = _REGISTRY.get((_domain(domain), op_type), [])
    found = None
    for since, cls in entries:
        if since <= opset:
            found = cls
    if found is None and entries:  # older opset than any registered version: take the first
        found = entries[0][1]
    return found


def registered_op_types() -> list[str]:
    """Every registered op type, prefixed by its domain outside the default one."""
    return sorted(f"{d}.{t}" if d else t for d, t in _REGISTRY)


class Op:
    """One ONNX node's semantics on batched torch tensors.

    Construction receives the node's attributes and the values of its *static* inputs (inputs that must be
    constants known at import, such as a Reshape target shape or Slice bounds), as numpy arrays.
    ``forward`` receives every other input as a torch tensor (or None for a missing optional input), in ONNX
    input order, static inputs included as None placeholders.
    """

    op_type: ClassVar[str] = ""
    #: input positions that must be constants; read at import and passed to __init__ as numpy arrays
    static_inputs: ClassVar[tuple[int, ...]] = ()
    #: constant input positions that are trainable weights (nn.Parameter); other constants are buffers
    weight_inputs: ClassVar[tuple[int, ...]] = ()
    #: whether the op keeps the argmax of its input (Softmax, LogSoftmax): a trailing one can be skipped, and
    #: certificates bound the logits before it
    keeps_argmax: ClassVar[bool] = False
    #: whether the op only rearranges entries, a bijection (Flatten, Reshape, Transpose, Squeeze, Unsqueeze):
    #: each output entry is one input entry, so a weight seen through it stays a weight and rows stay unit vectors
    permutes_entries: ClassVar[bool] = False
    #: whether the forward normalizes with batch statistics while the module trains (BatchNormalization): one
    #: sample's training-mode outputs then depend on the rest of its batch
    batch_statistics: ClassVar[bool] = False
    #: whether the linear rule takes a ``lower_slope`` (ReLU's triangle): alpha-CROWN optimizes it
    slope_variable: ClassVar[bool] = False

    def __init__(self, attrs: dict[str, Any], static: dict[int, np.ndarray | None], opset: int, name: str,
                 n_outputs: int = 1):
        self.attrs = attrs
        self.static = static
        self.opset = opset
        self.name = name
        self.n_outputs = n_outputs  # how many outputs the node declares
        self.training = False
        self.setup()

    def setup(self) -> None:
        """Read attributes and static inputs into fields (override)."""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def forward(self, *xs: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def adapt_batch(self, in_shapes: list[Shape | None], out_shapes: list[Shape]) -> None:
        """Rewrite batch-1 constants (e.g. a Reshape to ``[1, -1]``) so that the op runs on any batch size.

        Called once at import with the shapes seen when running the model at batch 1. Whether the whole graph
        then runs batched is checked by the importer against per-sample runs, so a rewrite can never change
        what the model computes.
        """

    # --- rules ------------------------------------------------------------------------------------------
    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Guaranteed upper bound of the op's Lipschitz constant in ``args.norm`` (LMT §4)."""
        raise NoRuleError(f"no Lipschitz rule for {self.op_type} (node '{self.name}')")

    def is_affine(self, dynamic: list[bool]) -> bool:
        """Whether the op is an affine map of its one input-dependent input (then chains of such ops are
        bounded as one map: the norm of a product is far below the product of norms, LMT §5.2)."""
        return False

    def no_rule(self, why: str) -> NoRuleError:
        return NoRuleError(f"no Lipschitz rule for {self.op_type} (node '{self.name}'): {why}")

    def interval(self, *inputs: Any) -> Any:
        """Box in -> box out (interval arithmetic, BCP eq. 7-8): a ``verifier.box.Box`` for each input-dependent
        input, the constant tensor for constant inputs, None for static or absent ones; returns a Box (a tuple
        of Boxes for several outputs) that encloses the op's output over all inputs in the boxes, in real
        arithmetic and for the float forward (see ``verifier/box.py``)."""
        raise NoRuleError(f"no box rule for {self.op_type} (node '{self.name}')")

    def linear_in_inputs(self, dynamic: list[bool]) -> bool:
        """Whether the op is affine in all its input-dependent inputs together (an affine op of one input, or a
        sum or concatenation of branches): then its Jacobians are constant and ``grad_interval`` is exact."""
        return self.is_affine(dynamic)

    def grad_interval(self, inputs: list[Any], grads: list[Any]) -> list[Any]:
        """Gradient box rule (``verifier/jacobian.py``): ``inputs`` as for ``interval`` (forward boxes of batch
        B), ``grads`` a Box of output gradients (batch B * P) per output, or None; returns per input a Box
        enclosing J^T g for every Jacobian J the op has on the input boxes and every g in the gradient boxes
        (None for constant inputs). This default serves ops affine in their input-dependent inputs."""
        if not self.linear_in_inputs([is_box(x) for x in inputs]):
            raise no_gradient_rule(self)
        return affine_transpose(self, inputs, grads)

    def linear(self, inputs: list[Any], lams: list[Any]) -> tuple[list[Any], torch.Tensor]:
        """Backward linear rule (CROWN, ``verifier/linear.py``): ``inputs`` as for ``interval`` (forward boxes
        of batch B), ``lams`` the coefficients of a lower bound on each output (batch B * R), or None; returns
        per input its coefficients (None for constant inputs) and a bias (B * R,) such that
        sum_o lam_o . out_o >= sum_i lam_i . in_i + bias on the input boxes. This default serves ops affine in
        their input-dependent inputs (exact up to the rounding allowance); others raise NoRuleError, and the
        engine bounds their output by its box."""
        if not self.linear_in_inputs([is_box(x) for x in inputs]):
            raise NoRuleError(f"no linear rule for {self.op_type} (node '{self.name}')")
        return affine_backward(self, inputs, lams)

    def linear_patches(self, inputs: list[Any], lam: Any) -> tuple[list[Any], torch.Tensor] | None:
        """``linear`` on local rows (``verifier.patches.Patches`` on the op's one output), for ops whose rows stay
        local (2-D convolutions, elementwise activations): their coefficients on the inputs (local rows, or None
        for constants) and the bias. None: the engine makes the rows dense and applies ``linear``."""
        return None

    def unstable(self, box: Box) -> torch.Tensor | None:
        """The entries of its first input's box whose tightening can tighten the op's linear rule (CROWN
        tightens only these, ``verifier.engines.crown``); None: all of them."""
        return None

    def channel_scale(self, args: RuleArgs, channels: int) -> torch.Tensor | None:
        """The per-channel factor (axis 1, float64) when the op is a channel-wise affine map of its one
        input-dependent input, as ``args`` (the Lipschitz rule's arguments) describe it; None otherwise. A
        convolution between such maps is one convolution with a rescaled kernel (``verifier/engines/lipschitz.py``)."""
        return None

    def squared_row_norms(self, ones: torch.Tensor, args: list[Any]) -> torch.Tensor | None:
        """The squared l2 norms of the rows of the op's linear map in its first input, bias left out, one per
        output entry (batch axis of size 1), for an op linear in that input with a constant weight as its second
        (``args``: the forward's arguments; the first is not read); ``ones``: ones shaped like the first input.
        None for other ops. Differentiable in the weight (training's row-norm estimates)."""
        return None

    def no_box(self, why: str) -> NoRuleError:
        return NoRuleError(f"no box rule for {self.op_type} (node '{self.name}'): {why}")

    @classmethod
    def has_rule(cls, kind: str) -> bool:
        """Whether this op class implements ``kind`` ('forward', 'lipschitz' or 'interval')."""
        return getattr(cls, kind) is not getattr(Op, kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def norm_axis(axis: int, rank: int) -> int:
    """ONNX negative axes count from the end."""
    return axis + rank if axis < 0 else axis


def ints(value: Any) -> list[int]:
    """An attribute or static input as a list of python ints."""
    if value is None:
        return []
    return [int(v) for v in np.asarray(value).reshape(-1)]
