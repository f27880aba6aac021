"""Data-movement ops: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Pad.

Each moves or copies entries without arithmetic (Pad in constant mode adds constants), so its Lipschitz
constant is at most 1 (Pad in edge/reflect/wrap mode repeats entries: more, see ``Pad``'s rule), and its
box rule moves the radius like the centre (exact; constants enter with radius 0).
Batch-1 constants in the file (``Reshape`` to ``[1, -1]``, ``Flatten`` at axis 0) are rewritten in
``adapt_batch`` so that the IR runs on batches.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from verifier.box import Box, is_box, is_integer, parts
from verifier.ops.base import Lipschitz, Op, RuleArgs, ints, norm_axis, rule


def moved(op: Op, x, *rest):
    """The box rule of a map that only moves, selects or copies entries of its first input: exact."""
    if not is_box(x) or any(is_box(t) for t in rest):
        raise op.no_box("only the first input may depend on the model input")
    return x.map(lambda t: op.forward(t, *rest))


class Movement(Op):
    """Moves or selects entries without repeating any: an isometry or a restriction, norm 1 in every l_p."""

    def is_affine(self, dynamic):
        return dynamic[0] and not any(dynamic[1:])

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0], "exact")

    def interval(self, x, *rest):
        return moved(self, x, *rest)


@rule("Flatten", since=(1, 9, 11, 13, 21))
class Flatten(Movement):
    permutes_entries = True
    """Reshape to 2-D: (prod(shape[:axis]), prod(shape[axis:]))."""

    def setup(self) -> None:
        self.axis = int(self.attr("axis", 1))

    def forward(self, x):
        axis = norm_axis(self.axis, x.dim())
        return x.reshape(math.prod(x.shape[:axis]), -1) if axis > 0 else x.reshape(1, -1)

    def adapt_batch(self, in_shapes, out_shapes) -> None:
        shape = in_shapes[0]
        if shape and norm_axis(self.axis, len(shape)) == 0 and shape[0] == 1:
            self.axis = 1  # (1, N) at batch 1 is (B, N) at batch B


@rule("Reshape", since=(1, 5, 13, 14, 19, 21))
class Reshape(Movement):
    permutes_entries = True
    """Reshape to a constant target: 0 copies the input dimension (unless allowzero), -1 is inferred."""

    static_inputs = (1,)

    def setup(self) -> None:
        shape = self.static.get(1)
        self.target = ints(shape) if shape is not None else ints(self.attr("shape"))
        self.allowzero = bool(self.attr("allowzero", 0))

    def forward(self, x, *_):
        target = [x.shape[i] if (d == 0 and not self.allowzero) else d for i, d in enumerate(self.target)]
        return x.reshape(target)

    def adapt_batch(self, in_shapes, out_shapes) -> None:
        shape, out = in_shapes[0], out_shapes[0]
        if shape and out and shape[0] == 1 and out[0] == 1 and self.target and self.target[0] == 1:
            self.target = [-1, *out[1:]]  # a file that fixes batch 1 in the target shape


@rule("Transpose", since=(1, 13, 21))
class Transpose(Movement):
    permutes_entries = True
    def setup(self) -> None:
        self.perm = ints(self.attr("perm")) or None

    def forward(self, x):
        perm = self.perm or list(reversed(range(x.dim())))
        return x.permute(perm)


@rule("Squeeze", since=(1, 11, 13, 21))
class Squeeze(Movement):
    permutes_entries = True
    """Remove size-1 axes (attribute before opset 13, input from 13 on; all size-1 axes when none given)."""

    static_inputs = (1,)

    def setup(self) -> None:
        axes = self.static.get(1)
        self.axes = ints(axes) if axes is not None else ints(self.attr("axes")) or None

    def forward(self, x, *_):
        axes = self.axes if self.axes is not None else [i for i, d in enumerate(x.shape) if d == 1]
        axes = tuple(norm_axis(a, x.dim()) for a in axes)
        if any(x.shape[a] != 1 for a in axes):
            raise ValueError(f"Squeeze of axes {axes} of a tensor of shape {tuple(x.shape)}")
        return x.squeeze(axes) if axes else x

    def adapt_batch(self, in_shapes, out_shapes) -> None:
        if self.axes is None and in_shapes[0] is not None:
            self.axes = [i for i, d in enumerate(in_shapes[0]) if d == 1]  # fixed by the batch-1 run


@rule("Unsqueeze", since=(1, 11, 13, 21))
class Unsqueeze(Movement):
    permutes_entries = True
    """Insert size-1 axes at the given positions of the output."""

    static_inputs = (1,)

    def setup(self) -> None:
        axes = self.static.get(1)
        self.axes = ints(axes) if axes is not None else ints(self.attr("axes"))

    def forward(self, x, *_):
        rank = x.dim() + len(self.axes)
        for a in sorted(norm_axis(a, rank) for a in self.axes):
            x = x.unsqueeze(a)
        return x


@rule("Concat", since=(1, 4, 11, 13))
class Concat(Op):
    """Stacking branches: sqrt(L_1^2 + L_2^2 + ...) in l2, max in l_inf; constants only shift."""

    def is_affine(self, dynamic):
        return sum(dynamic) == 1

    def linear_in_inputs(self, dynamic):
        return True

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        return Lipschitz([1.0 for d in args.dynamic if d], "exact", "stack")

    def setup(self) -> None:
        self.axis = int(self.attr("axis", 1))

    def forward(self, *xs):
        xs = [x for x in xs if x is not None]
        return torch.cat(xs, dim=norm_axis(self.axis, xs[0].dim()))

    def interval(self, *xs):
        """Centres and radii concatenated (constants with radius 0)."""
        like = next(x for x in xs if is_box(x))
        pairs = [parts(x, like) for x in xs if x is not None]
        return Box(self.forward(*[c for c, _ in pairs]), self.forward(*[r for _, r in pairs]),
                   all(is_integer(x) for x in xs if x is not None))


@rule("Split", since=(1, 2, 11, 13, 18))
class Split(Movement):
    """Split along ``axis`` into given sizes (attribute before 13, input from 13), equal parts otherwise
    (opset 18 ``num_outputs``: parts of ceil(n / k), the last one smaller)."""

    static_inputs = (1,)

    def setup(self) -> None:
        split = self.static.get(1)
        self.split = ints(split) if split is not None else ints(self.attr("split")) or None
        self.axis = int(self.attr("axis", 0))
        self.num_outputs = self.attr("num_outputs")

    def forward(self, x, *_):
        axis = norm_axis(self.axis, x.dim())
        if self.split:
            sizes = self.split
        else:
            k = int(self.num_outputs) if self.num_outputs else self.n_outputs
            n = x.shape[axis]
            chunk = math.ceil(n / k) if self.num_outputs else n // k
            sizes = [chunk] * (k - 1) + [n - chunk * (k - 1)]
        return tuple(torch.split(x, sizes, dim=axis))

    def interval(self, x, *rest):
        if not is_box(x):
            raise self.no_box("only the first input may depend on the model input")
        return tuple(Box(c, r, x.integer) for c, r in zip(self.forward(x.center, *rest), self.forward(x.radius, *rest)))


def _slice_indices(start: int, end: int, step: int, n: int) -> range:
    """ONNX Slice clamping: negative values count from the end, then clamp start and end to [0, n]; backwards
    (negative step) start to [0, n-1] and end to [-1, n-1] (-1: up to and including entry 0)."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return range(start, end, step)


@rule("Slice", since=(1, 10, 11, 13))
class Slice(Movement):
    """Strided slices (steps may be negative) on the given axes: attributes before opset 10, inputs after."""

    static_inputs = (1, 2, 3, 4)

    def setup(self) -> None:
        if self.opset < 10:
            self.starts, self.ends = ints(self.attr("starts")), ints(self.attr("ends"))
            self.axes = ints(self.attr("axes")) or list(range(len(self.starts)))
            self.steps = [1] * len(self.starts)
        else:
            self.starts, self.ends = ints(self.static.get(1)), ints(self.static.get(2))
            self.axes = ints(self.static.get(3)) or list(range(len(self.starts)))
            self.steps = ints(self.static.get(4)) or [1] * len(self.starts)

    def forward(self, x, *_):
        for start, end, axis, step in zip(self.starts, self.ends, self.axes, self.steps):
            axis = norm_axis(axis, x.dim())
            idx = _slice_indices(start, end, step, x.shape[axis])
            if step == 1:
                x = x.narrow(axis, idx.start, max(len(idx), 0))
            else:
                x = x.index_select(axis, torch.tensor(list(idx), dtype=torch.long, device=x.device))
        return x

    def adapt_batch(self, in_shapes, out_shapes) -> None:
        shape = in_shapes[0]
        if not shape or shape[0] != 1:
            return
        keep = [i for i, (s, e, a, st) in enumerate(zip(self.starts, self.ends, self.axes, self.steps))
                if not (norm_axis(a, len(shape)) == 0 and len(_slice_indices(s, e, st, 1)) == 1)]
        if len(keep) < len(self.axes):  # a full slice of the batch axis: drop it
            self.starts, self.ends, self.axes, self.steps = (
                [v[i] for i in keep] for v in (self.starts, self.ends, self.axes, self.steps))


@rule("Gather", since=(1, 11, 13))
class Gather(Op):
    """Take entries along ``axis`` at constant indices (negative ones count from the end). An index taken k
    times repeats its slice k times: sqrt(k) in l2, 1 in l_inf."""

    def is_affine(self, dynamic):
        return dynamic[0]

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        n = args.in_shapes[0][norm_axis(self.axis, len(args.in_shapes[0]))]
        idx = np.where(self.indices < 0, self.indices + n, self.indices).reshape(-1)
        copies = int(np.bincount(idx, minlength=n).max()) if idx.size else 1
        return Lipschitz([math.sqrt(copies) if args.l2 else 1.0], "exact")

    static_inputs = (1,)

    def setup(self) -> None:
        self.indices = np.asarray(self.static.get(1), dtype=np.int64)
        self.axis = int(self.attr("axis", 0))

    def interval(self, x, *rest):
        return moved(self, x, *rest)

    def forward(self, x, *_):
        axis = norm_axis(self.axis, x.dim())
        n = x.shape[axis]
        idx = torch.as_tensor(np.where(self.indices < 0, self.indices + n, self.indices), device=x.device)
        out = x.index_select(axis, idx.reshape(-1))
        return out.reshape(*x.shape[:axis], *self.indices.shape, *x.shape[axis + 1:])


@rule("Pad", since=(1, 2, 11, 13, 18, 19, 21))
class Pad(Op):
    """Pad (or crop, negative pads) in mode constant, edge, reflect or wrap; pads as an attribute before
    opset 11, as inputs (pads, constant_value, axes) from 11 on. Per axis, negative pads crop first and the
    edge/reflect/wrap values then come from the cropped tensor (as onnxruntime does)."""

    static_inputs = (1, 2, 3)

    def setup(self) -> None:
        mode = self.attr("mode", b"constant")
        self.mode = mode.decode() if isinstance(mode, bytes) else mode
        if self.opset < 11:
            self.pads, self.value, self.axes = ints(self.attr("pads")), float(self.attr("value", 0.0)), None
        else:
            self.pads = ints(self.static.get(1))
            value = self.static.get(2)
            self.value = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) else 0.0
            self.axes = ints(self.static.get(3)) or None
        if self.mode not in ("constant", "edge", "reflect", "wrap"):
            from verifier.errors import ModelImportError
            raise ModelImportError(f"Pad node '{self.name}': unknown mode '{self.mode}'")

    def is_affine(self, dynamic):
        return dynamic[0]

    def lipschitz(self, args: RuleArgs) -> Lipschitz:
        """Constant mode only adds constants (norm 1); edge/reflect/wrap repeat entries: sqrt of the largest
        number of copies of one entry (the product over axes of each axis' largest count) in l2, 1 in l_inf."""
        if self.mode == "constant" or not args.l2:
            return Lipschitz([1.0], "exact")
        copies = 1
        shape = args.in_shapes[0]
        for axis, (b, e) in enumerate(self._per_axis(len(shape))):
            if b > 0 or e > 0:
                n = shape[axis] - max(-b, 0) - max(-e, 0)
                src = self._source_indices(n, max(b, 0), max(e, 0), "cpu").numpy()
                copies *= int(np.bincount(src, minlength=n).max())
        return Lipschitz([math.sqrt(copies)], "exact")

    def _per_axis(self, rank: int) -> list[tuple[int, int]]:
        axes = [norm_axis(a, rank) for a in self.axes] if self.axes else list(range(rank))
        k = len(axes)
        pairs = [(0, 0)] * rank
        for i, a in enumerate(axes):
            pairs[a] = (self.pads[i], self.pads[i + k])
        return pairs

    def interval(self, x, *rest):
        """Edge/reflect/wrap copy entries; constant mode pads the centre with the value, the radius with 0."""
        if self.mode != "constant":
            return moved(self, x, *rest)
        if not is_box(x):
            raise self.no_box("only the first input may depend on the model input")
        return Box(self.forward(x.center), self._constant_pad(x.radius, 0.0), x.integer)

    def _constant_pad(self, x, value: float):
        flat: list[int] = []
        for b, e in reversed(self._per_axis(x.dim())):
            flat += [b, e]
        return F.pad(x, flat, value=value)

    def forward(self, x, *_):
        pairs = self._per_axis(x.dim())
        if self.mode == "constant":
            return self._constant_pad(x, self.value)
        for axis, (b, e) in enumerate(pairs):
            if b < 0 or e < 0:  # negative pads crop first; edge/reflect/wrap then read the cropped tensor (ORT)
                x = x.narrow(axis, max(-b, 0), x.shape[axis] - max(-b, 0) - max(-e, 0))
                b, e = max(b, 0), max(e, 0)
            if b or e:
                x = x.index_select(axis, self._source_indices(x.shape[axis], b, e, x.device))
        return x

    def _source_indices(self, n: int, b: int, e: int, device) -> torch.Tensor:
        """For edge/reflect/wrap: which input entry each output entry copies."""
        pos = np.arange(-b, n + e)
        if self.mode == "edge":
            src = np.clip(pos, 0, n - 1)
        elif self.mode == "wrap":
            src = np.mod(pos, n)
        elif self.mode == "reflect":
            period = 2 * (n - 1) if n > 1 else 1
            src = np.mod(pos, period) if n > 1 else np.zeros_like(pos)
            src = np.where(src >= n, period - src, src)
        else:  # constant mode never gets here
            raise AssertionError(self.mode)
        return torch.as_tensor(src, dtype=torch.long, device=device)
