"""Case tables of the data-movement ops, reductions and Softmax (run by ``test_ops_shape.py`` and
``test_box.py``)."""
from __future__ import annotations

import numpy as np

from ..onnx_graphs import INT_MAX, INT_MIN, case, node
from .ops import SIGNED


def _axes(opset, since, axes, inits, name="axes"):
    """Axes as an attribute before opset ``since``, as a constant input from it on: (extra inputs, attrs)."""
    if axes is None:
        return [], {}
    if opset >= since:
        inits[name] = np.asarray(axes, dtype=np.int64)
        return [name], {}
    return [], {"axes": axes}


# --- Flatten, Reshape, Transpose, Squeeze, Unsqueeze -----------------------------------------------------
SHAPE4 = [2, 3, 4]  # sample shape: input (B, 2, 3, 4)


FLATTEN = [case(f"Flatten-axis{a}-opset{o}", [node("Flatten", ["x"], axis=a)], SHAPE4, opset=o,
                batched=a in (0, 1, -3, -4)) for a in (0, 1, 2, 4, -1, -3, -4) for o in (11, 13)]


FLATTEN.append(case("Flatten-default", [node("Flatten", ["x"])], SHAPE4))


FLATTEN.append(case("Flatten-2d-axis0", [node("Flatten", ["x"], axis=0)], [5]))


RESHAPE = [case(f"Reshape-{t}", [node("Reshape", ["x", "s"])], SHAPE4, {"s": np.int64(t)}, batched=b)
           for t, b in [([0, -1], True), ([0, 4, 0, 2], True), ([-1, 6, 4], True), ([0, 2, -1], True),
                        ([0, 0, 12], True), ([0, 24, 1, 1], True), ([1, -1], True), ([-1], False),
                        ([2, -1], False), ([0, -1, 2, 0], True)]]


RESHAPE += [case(f"Reshape-allowzero-{t}", [node("Reshape", ["x", "s"], allowzero=1)], SHAPE4, {"s": np.int64(t)},
                 opset=14) for t in ([-1, 4, 6], [1, 24])]


RESHAPE.append(case("Reshape-opset21", [node("Reshape", ["x", "s"])], SHAPE4, {"s": np.int64([0, 12, -1])}, opset=21))


TRANSPOSE = [case(f"Transpose-{p}", [node("Transpose", ["x"], **({"perm": p} if p else {}))], SHAPE4,
                  batched=not p or p[0] == 0) for p in ([0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2], [0, 1, 2, 3])]


TRANSPOSE += [case(f"Transpose-{p}-mixes-batch", [node("Transpose", ["x"], **({"perm": p} if p else {}))], SHAPE4,
                   batched=False) for p in (None, [1, 0, 2, 3], [3, 2, 0, 1])]


def squeeze_cases():
    out = []
    for opset in (11, 13, 21):
        for axes in ([1], [-2], [1, 3], [3, 1], [-4, 3], None):
            inits = {}
            extra, attrs = _axes(opset, 13, axes, inits)
            # no axes: every size-1 axis, the batch axis included (a symbolic batch has no meaning then)
            out.append(case(f"Squeeze-opset{opset}-{axes}", [node("Squeeze", ["x", *extra], **attrs)], [1, 3, 1, 2],
                            inits, opset, batched=axes is not None, batches=("N", 1) if axes else (1,)))
        if opset != 21:  # squeezing the batch axis of a batch-1 file
            inits = {}
            extra, attrs = _axes(opset, 13, [0, 3], inits)
            out.append(case(f"Squeeze-opset{opset}-batch-axis", [node("Squeeze", ["x", *extra], **attrs)],
                            [1, 3, 1, 2], inits, opset, batched=False, batches=(1,)))
        for axes in ([1], [-1], [1, 4], [4, 1], [-1, 2], [2, -2], [0]):
            inits = {}
            extra, attrs = _axes(opset, 13, axes, inits)
            out.append(case(f"Unsqueeze-opset{opset}-{axes}", [node("Unsqueeze", ["x", *extra], **attrs)], [3, 4],
                            inits, opset, batched=0 not in axes))
    return out


# --- Concat, Split -------------------------------------------------------------------------------------
CONCAT = [
    case("Concat-axis1", [node("Relu", ["x"], ["r"]), node("Concat", ["x", "r"], axis=1)], [3, 4], affine=SIGNED),
    case("Concat-axis-1", [node("Neg", ["x"], ["n"]), node("Concat", ["n", "x"], axis=-1)], [3, 4]),
    case("Concat-three-axis2", [node("Neg", ["x"], ["n"]), node("Sigmoid", ["x"], ["s"]),
                                node("Concat", ["x", "n", "s", "x"], axis=2)], [2, 3, 4], affine=SIGNED),
    case("Concat-4-at-opset7", [node("Neg", ["x"], ["n"]), node("Concat", ["x", "n"], axis=1)], [3], opset=7),
    case("Concat-slices", [node("Slice", ["x", "s0", "e0", "a"], ["p"]), node("Slice", ["x", "s1", "e1", "a"], ["q"]),
                           node("Concat", ["q", "p"], axis=2)], [3, 8],
         {"s0": [0], "e0": [3], "s1": [3], "e1": [INT_MAX], "a": [2]}),
]


def split_cases():
    shape, out = [6, 7], []

    def merged(n_out, order, axis, **kw):  # Split, then concatenated back in another order (order matters)
        outs = [f"o{i}" for i in range(n_out)]
        return [node("Split", kw.pop("inputs", ["x"]), outs, axis=axis, **kw),
                node("Concat", [outs[i] for i in order], axis=axis)]

    out.append(case("Split-opset11-attr", merged(3, [2, 0, 1], 1, split=[1, 2, 3]), shape, opset=11))
    out.append(case("Split-2-at-opset7", merged(2, [1, 0], 2, split=[5, 2]), shape, opset=7))
    out.append(case("Split-opset11-equal", merged(2, [1, 0], 1), shape, opset=11))
    out.append(case("Split-opset13-input", merged(3, [1, 2, 0], -1, inputs=["x", "s"]), shape,
                    {"s": np.int64([2, 4, 1])}, opset=13))
    out.append(case("Split-opset13-equal", merged(3, [2, 0, 1], 1), shape, opset=13))
    out.append(case("Split-opset18-num_outputs-uneven", merged(3, [2, 1, 0], 2, num_outputs=3), shape, opset=18))
    out.append(case("Split-opset18-num_outputs-even", merged(2, [1, 0], 1, num_outputs=2), shape, opset=18))
    out.append(case("Split-opset18-num_outputs-4of7", merged(4, [3, 1, 0, 2], -1, num_outputs=4), shape, opset=18))
    out.append(case("Split-opset18-input", merged(2, [1, 0], 2, inputs=["x", "s"]), shape, {"s": np.int64([5, 2])},
                    opset=18))
    out.append(case("Split-one-output-used", [node("Split", ["x"], ["o0", "o1", "o2"], axis=1),
                                              node("Sub", ["o2", "o1"])], shape, opset=13))
    return out


# --- Slice, Gather -------------------------------------------------------------------------------------
def slice_case(case_id, starts, ends, axes=None, steps=None, opset=13, batched=True):
    shape = [6, 8]
    if opset < 10:
        attrs = dict(starts=starts, ends=ends, **({"axes": axes} if axes is not None else {}))
        return case(f"Slice-{case_id}-opset{opset}", [node("Slice", ["x"], **attrs)], shape, opset=opset,
                    batched=batched)
    inits = {"st": np.asarray(starts), "en": np.asarray(ends)}
    ins = ["x", "st", "en"]
    if axes is not None or steps is not None:
        inits["ax"] = np.asarray(axes)
        ins.append("ax")
    if steps is not None:
        inits["sp"] = np.asarray(steps)
        ins.append("sp")
    return case(f"Slice-{case_id}-opset{opset}", [node("Slice", ins)], shape, inits, opset, batched=batched)


SLICE = [
    slice_case("attrs", [1, -3], [5, 100], [1, 2], opset=9),
    slice_case("attrs-no-axes", [0, 1, 2], [INT_MAX, 5, -1], opset=9),  # the batch axis sliced whole
    slice_case("attrs-neg-axis", [-5], [-2], [-1], opset=9),
    slice_case("neg-start-end", [-4], [-1], [2]),
    slice_case("no-axes", [0, 1], [INT_MAX, -1]),
    slice_case("steps2", [1], [8], [-1], [2]),
    slice_case("steps3-two-axes", [0, 1], [6, 8], [1, 2], [3, 2]),
    slice_case("reverse", [-1], [INT_MIN], [2], [-1]),
    slice_case("reverse-step2", [6], [0], [1], [-2]),
    slice_case("reverse-step3", [7], [2], [2], [-3]),
    slice_case("neg-steps-two-axes", [-2, 5], [0, -100], [1, 2], [-1, -2]),
    slice_case("clamp-pos", [-100], [100], [2], [1]),
    slice_case("clamp-reverse", [100], [-100], [2], [-1]),
    slice_case("clamp-reverse-start-below", [-100], [-200], [1], [-1]),  # start clamps to 0: one entry
    slice_case("clamp-reverse-end-above", [3], [100], [1], [-1]),  # end clamps to n - 1: empty
    slice_case("steps-int32", np.int32([1]), np.int32([-1]), np.int32([2]), np.int32([2])),
    slice_case("opset10", [1, 0], [-1, 5], [1, 2], [1, 2], opset=10),
    slice_case("opset11-neg-axes", [-3], [INT_MAX], [-2], [1], opset=11),
]


SLICE.append(case("Slice-empty-concat", [node("Slice", ["x", "st", "en", "ax", "sp"], ["e"]),
                                         node("Concat", ["e", "x"], axis=1)], [6, 8],
                  {"st": np.int64([3]), "en": np.int64([100]), "ax": np.int64([1]), "sp": np.int64([-1])}))


def gather_cases():
    out = []
    for opset in (11, 13):
        for idx, axis in [(2, 1), (-1, 2), ([0, 3, -1], 2), ([[0, 1], [4, -2]], 1), ([1, 1, 0], -1), ([-5], 1),
                          ([[3]], -2)]:
            out.append(case(f"Gather-{idx}-axis{axis}-opset{opset}", [node("Gather", ["x", "i"], axis=axis)], [5, 6],
                            {"i": np.int64(idx)}, opset))
    out.append(case("Gather-batch-axis", [node("Gather", ["x", "i"], axis=0)], [5, 6], {"i": np.int64(0)},
                    batched=False, batches=(1,)))  # x[0] of a batch-1 file: drops the batch axis
    out.append(case("Gather-int32", [node("Gather", ["x", "i"], axis=2)], [5, 6], {"i": np.int32([5, 0, -6])}))
    return out


# --- Pad -------------------------------------------------------------------------------------------------
def pad_case(case_id, mode, pads, value=None, axes=None, opset=13):
    shape = [3, 4, 5]
    if opset < 11:
        attrs = dict(mode=mode, pads=pads, **({"value": value} if value is not None else {}))
        return case(f"Pad-{case_id}-opset{opset}", [node("Pad", ["x"], **attrs)], shape, opset=opset)
    inits, ins = {"p": np.int64(pads)}, ["x", "p"]
    if value is not None or axes is not None:
        ins.append("v" if value is not None else "")
        if value is not None:
            inits["v"] = np.float32(value)
    if axes is not None:
        inits["a"] = np.int64(axes)
        ins.append("a")
    return case(f"Pad-{case_id}-opset{opset}", [node("Pad", ins, mode=mode)], shape, inits, opset, SIGNED)


P = [0, 0, 1, 2, 0, 0, 2, 1]  # (B, C, H, W): H by (1, 2), W by (2, 1)


NEG = [0, 0, -1, 2, 0, 0, 1, -2]


PAD = [
    pad_case("constant-value", "constant", P, 0.7), pad_case("constant-default", "constant", P),
    pad_case("constant-channels", "constant", [0, 1, 0, 0, 0, 2, 0, 0], -1.5),
    pad_case("edge", "edge", P), pad_case("reflect", "reflect", P), pad_case("reflect-max", "reflect",
                                                                             [0, 0, 3, 4, 0, 0, 3, 4]),
    pad_case("wrap", "wrap", P, opset=19), pad_case("wrap-big", "wrap", [0, 0, 3, 4, 0, 0, 4, 5], opset=19),
    pad_case("opset11-constant", "constant", P, 0.25, opset=11), pad_case("opset11-edge", "edge", P, opset=11),
    pad_case("attrs-constant", "constant", P, 1.5, opset=2), pad_case("attrs-edge", "edge", P, opset=2),
    pad_case("attrs-reflect", "reflect", P, opset=2), pad_case("attrs-default", "constant", P, opset=7),
    pad_case("axes", "constant", [1, 2, 2, 1], 0.3, axes=[2, 3], opset=18),
    pad_case("axes-neg", "reflect", [2, 1], axes=[-1], opset=18),
    pad_case("axes-unsorted", "edge", [2, 1, 0, 3], axes=[3, -2], opset=18),
    pad_case("axes-wrap", "wrap", [1, 2], axes=[-2], opset=19),
    pad_case("axes-opset21", "constant", [1, 1], -2.0, axes=[1], opset=21),
    *[pad_case(f"negative-{m}", m, NEG, opset=19) for m in ("constant", "edge", "reflect", "wrap")],
    # cropping 3 of 5 and padding the same axis: edge/reflect/wrap read the cropped tensor
    *[pad_case(f"negative-crop-then-pad-{m}", m, [0, 0, 1, -3, 0, 0, -2, 1], opset=19)
      for m in ("constant", "edge", "reflect", "wrap")],
    pad_case("negative-axes", "reflect", [-1, 1, 1, -3], axes=[2, 3], opset=18),
    pad_case("negative-attrs", "constant", NEG, 0.5, opset=2),
]


# --- reductions, Softmax -------------------------------------------------------------------------------
def reduce_cases():
    out = []
    for op, since in (("ReduceMean", 18), ("ReduceSum", 13), ("ReduceMax", 18), ("ReduceMin", 18)):
        for opset in (11, 13, 18):
            for axes in ([2, 3], [1], [-1], [1, -1], [3, 1, 2]):
                for keep in (0, 1):
                    inits = {}
                    extra, attrs = _axes(opset, since, axes, inits)
                    out.append(case(f"{op}-opset{opset}-{axes}-keep{keep}", [
                        node(op, ["x", *extra], keepdims=keep, **attrs)], [3, 4, 5], inits, opset, SIGNED))
            out.append(case(f"{op}-opset{opset}-all-axes", [node(op, ["x"])], [3, 4, 5], opset=opset, affine=SIGNED,
                            batched=False))
            if opset >= since:
                out.append(case(f"{op}-opset{opset}-noop", [node(op, ["x"], noop_with_empty_axes=1)], [3, 4],
                                opset=opset, affine=SIGNED))
                out.append(case(f"{op}-opset{opset}-empty-axes-input", [node(op, ["x", "a"], keepdims=0)], [3, 4],
                                {"a": np.zeros(0, np.int64)}, opset, SIGNED, batched=False))
    return out


def softmax_cases():
    out = []
    for op in ("Softmax", "LogSoftmax"):
        for opset, axes in ((11, (1, 2, 3, -1, -3, None)), (13, (1, 2, -1, -2, None))):
            for axis in axes:
                attrs = {} if axis is None else {"axis": axis}
                out.append(case(f"{op}-opset{opset}-axis{axis}", [node(op, ["x"], **attrs)], [2, 3, 4], opset=opset,
                                affine=(0.5, 8.0)))
        # axis 0 normalizes over the batch too: only meaningful where the file fixes batch 1
        out.append(case(f"{op}-opset11-axis0", [node(op, ["x"], axis=0)], [2, 3], opset=11, affine=(0.5, 8.0),
                        batched=False, batches=(1,)))
        out.append(case(f"{op}-opset11-2d", [node(op, ["x"])], [5], opset=11, affine=(0.5, 8.0)))
        out.append(case(f"{op}-opset13-2d", [node(op, ["x"])], [5], opset=13, affine=(0.5, 8.0)))
    return out
