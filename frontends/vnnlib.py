"""VNN-LIB property files as evaluation data: one sample per file, the centre of its input box, and its label.

A VNN-COMP robustness property states an input box (``(assert (<= X_i hi))``, ``(assert (>= X_i lo))``, in the
model's own input space, flattened in row-major order) and the output condition of a counterexample. The
sample is the box's centre. The label is the class the property protects: the index that is on the losing side
of every comparison (``Y_j >= Y_c`` or ``Y_c <= Y_j`` for the other classes j, the usual disjunction), or else
the label the file's comment states (``label: 2``, ``correct label 0``: targeted properties say which class
must not win, not which one is right). Files with several input boxes (disjunctions over inputs) are refused.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from verifier.errors import LipverifyError

_BOUND = re.compile(r"\(\s*assert\s*\(\s*(<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)\s*\)")
_BOUND_REVERSED = re.compile(r"\(\s*assert\s*\(\s*(<=|>=)\s+([-+0-9.eE]+)\s+X_(\d+)\s*\)\s*\)")
_COMPARE = re.compile(r"\(\s*(<=|>=)\s+Y_(\d+)\s+Y_(\d+)\s*\)")
_DECLARE_X = re.compile(r"\(\s*declare-const\s+X_(\d+)\s+Real\s*\)")
_COMMENT_LABEL = re.compile(r";.*?(?:correct label|label)\s*:?\s*(\d+)", re.IGNORECASE)


def read_property(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(lower, upper, label) of one property file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LipverifyError(f"{path}: cannot read the VNN-LIB file ({type(e).__name__})")
    n = len(_DECLARE_X.findall(text))
    if n == 0:
        raise LipverifyError(f"{path}: no input variables X_i declared (not a VNN-LIB property?)")
    lower, upper = np.full(n, np.nan), np.full(n, np.nan)
    bounds = [(op, int(i), float(v)) for op, i, v in _BOUND.findall(text)]
    bounds += [("<=" if op == ">=" else ">=", int(i), float(v)) for op, v, i in _BOUND_REVERSED.findall(text)]
    for op, i, v in bounds:
        if i >= n:
            raise LipverifyError(f"{path}: bound on X_{i} but only {n} inputs are declared")
        target = upper if op == "<=" else lower
        if not np.isnan(target[i]):
            raise LipverifyError(f"{path}: X_{i} has several {'upper' if op == '<=' else 'lower'} bounds (a "
                                 "disjunction of input boxes); one box per file is supported")
        target[i] = v
    missing = np.flatnonzero(np.isnan(lower) | np.isnan(upper))
    if len(missing):
        side = "lower" if np.isnan(lower[missing[0]]) else "upper"
        raise LipverifyError(f"{path}: X_{int(missing[0])} has no {side} bound; every input needs both")
    if (lower > upper).any():
        raise LipverifyError(f"{path}: an empty input box (X_{int(np.flatnonzero(lower > upper)[0])})")
    return lower, upper, _label(path, text)


def _label(path: Path, text: str) -> int:
    losing = []
    for op, a, b in _COMPARE.findall(text):
        big, small = (int(a), int(b)) if op == ">=" else (int(b), int(a))
        losing.append((big, small))
    smalls = {s for _, s in losing}
    if len(smalls) == 1 and len(losing) > 1:
        return smalls.pop()
    stated = _COMMENT_LABEL.search(text)
    if stated:
        return int(stated.group(1))
    raise LipverifyError(f"{path}: cannot tell the protected class (no class is compared against all others, and "
                         "no 'label N' comment)")


def load_vnnlib(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, description): x (N, n_inputs) the box centres, y the labels, from a ``.vnnlib`` file or every
    ``.vnnlib`` file of a folder (sorted by name)."""
    if not path.exists():
        raise LipverifyError(f"{path}: no such file or folder")
    files = sorted(path.glob("*.vnnlib")) if path.is_dir() else [path]
    if not files:
        raise LipverifyError(f"{path}: no .vnnlib files")
    props = [read_property(f) for f in files]
    sizes = {len(lo) for lo, _, _ in props}
    if len(sizes) > 1:
        raise LipverifyError(f"{path}: the properties have different input sizes {sorted(sizes)}")
    x = np.stack([(lo + hi) / 2 for lo, hi, _ in props]).astype(np.float32)
    y = np.array([label for _, _, label in props], dtype=np.int64)
    return x, y, f"{path} (VNN-LIB: centres of {len(files)} input boxes)"
