"""VNN-LIB property files as evaluation data: one sample per file, the centre of its input box, and its label.

A VNN-LIB file is a list of s-expressions: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)`` for the
model's flattened inputs and outputs, and ``(assert E)`` where ``E`` is a comparison (``<=``, ``>=``, ``<``,
``>``) between terms (variables, numbers, ``+``, ``-``, ``*``) or an ``and`` / ``or`` of such. The file is
parsed as a whole (``parse_sexprs``: balanced parentheses, one line naming the line and what was expected
otherwise), every variable must be declared with an index from 0, every constant must be a finite number, and
at least one assertion must constrain the outputs.

As data, a VNN-COMP robustness property gives an input box (``(assert (<= X_i hi))``, ``(assert (>= X_i lo))``,
in the model's own input space, flattened in row-major order; a top-level ``and`` of such bounds counts too) and
the output condition of a counterexample. The sample is the box's centre. The label is the class the property
protects: the index that is on the losing side of every comparison (``Y_j >= Y_c`` or ``Y_c <= Y_j`` for the
other classes j, the usual disjunction), or else the label the file's comment states (``label: 2``, ``correct
label 0``: targeted properties say which class must not win, not which one is right). Files with several input
boxes (input bounds inside an ``or``) are refused here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verifier.errors import LipverifyError

_COMMENT_LABEL = re.compile(r";.*?(?:correct label|label)\s*:?\s*(\d+)", re.IGNORECASE)
_VARIABLE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_COMPARISONS = {"<=", ">=", "<", ">"}
_ARITHMETIC = {"+", "-", "*"}
#: deeper nesting than any benchmark uses; refused so that no walk can exhaust Python's stack
MAX_DEPTH = 64
#: property files larger than this are refused before being read (the largest VNN-COMP files are ~30 MB)
MAX_BYTES = 512 * 2**20


@dataclass
class SList:
    """A parenthesized s-expression: its items (nested ``SList``s and atoms, plain strings) and the line of its
    '('."""

    items: list["SList | str"]
    line: int


#: one token: a comment, a newline (to count lines), a parenthesis, a quote (refused) or an atom
_TOKEN = re.compile(r';[^\n]*|\n|[()"]|[^\s();"]+')


def parse_sexprs(text: str, where: str) -> list[SList]:
    """The top-level s-expressions of ``text`` (comments start with ';'). Unbalanced parentheses, atoms outside
    parentheses, nesting deeper than ``MAX_DEPTH`` and string literals are refused with one line naming the
    line."""
    stack: list[SList] = []
    top: list[SList] = []
    number = 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == "\n":
            number += 1
        elif first == ";":
            continue
        elif first == "(":
            if len(stack) >= MAX_DEPTH:
                raise LipverifyError(f"{where}: line {number}: expressions nested deeper than {MAX_DEPTH}")
            stack.append(SList([], number))
        elif first == ")":
            if not stack:
                raise LipverifyError(f"{where}: line {number}: unexpected ')' with no '(' open")
            done = stack.pop()
            (stack[-1].items if stack else top).append(done)
        elif first == '"':
            raise LipverifyError(f"{where}: line {number}: unexpected '\"' (VNN-LIB has no strings)")
        elif stack:
            stack[-1].items.append(token)
        else:
            raise LipverifyError(f"{where}: line {number}: expected (declare-const ...) or (assert ...), got "
                                 f"'{token}'")
    if stack:
        raise LipverifyError(f"{where}: line {stack[-1].line}: '(' opened here is never closed")
    return top


def _show(e: SList | str) -> str:
    if isinstance(e, str):
        return f"'{e}'"
    head = e.items[0] if e.items and isinstance(e.items[0], str) else "..."
    return f"'({head} ...)'" if e.items else "'()'"


@dataclass
class _Property:
    """What ``read_property`` keeps of a parsed file."""

    n_inputs: int
    n_outputs: int
    bounds: list[tuple[str, int, float]]  # (op, input index, value): X_i op value
    compares: list[tuple[str, int, int]]  # (op, a, b): Y_a op Y_b, anywhere in the assertions


class _Reader:
    def __init__(self, where: str):
        self.where = where
        self.declared: dict[str, dict[int, int]] = {"X": {}, "Y": {}}  # kind -> index -> line
        self.prop = _Property(0, 0, [], [])
        self.constrains_outputs = False

    def fail(self, line: int, message: str) -> LipverifyError:
        return LipverifyError(f"{self.where}: line {line}: {message}")

    def variable(self, atom: str) -> tuple[str, int] | None:
        """('X' or 'Y', index) for a variable name, None for anything else."""
        m = _VARIABLE.fullmatch(atom)
        return (m.group(1), int(m.group(2))) if m else None

    def form(self, e: SList) -> None:
        if not e.items or not isinstance(e.items[0], str):
            raise self.fail(e.line, f"expected (declare-const ...) or (assert ...), got {_show(e)}")
        head = e.items[0]
        if head == "declare-const":
            self.declare(e)
        elif head == "assert":
            if len(e.items) != 2:
                raise self.fail(e.line, "expected (assert EXPRESSION) with one expression")
            has_y = self.expression(e.items[1], e.line, top=True)
            self.constrains_outputs |= has_y
        else:
            raise self.fail(e.line, f"expected (declare-const ...) or (assert ...), got {_show(e)}")

    def declare(self, e: SList) -> None:
        if len(e.items) != 3 or not all(isinstance(i, str) for i in e.items[1:]):
            raise self.fail(e.line, "expected (declare-const NAME Real)")
        name, kind = e.items[1], e.items[2]
        var = self.variable(name)
        if var is None:
            raise self.fail(e.line, f"variable '{name}': expected X_<index> or Y_<index> (index 0, 1, 2, ...)")
        if kind != "Real":
            raise self.fail(e.line, f"variable '{name}' has type '{kind}'; expected Real")
        if var[1] in self.declared[var[0]]:
            raise self.fail(e.line, f"variable '{name}' is declared twice (first on line "
                                    f"{self.declared[var[0]][var[1]]})")
        self.declared[var[0]][var[1]] = e.line

    def term(self, e: SList | str, line: int) -> tuple[set[str], float | None, tuple[str, int] | None]:
        """(kinds of the variables in the term, its value if constant, the variable if it is one); ``line``: the
        line of the enclosing expression (an atom's)."""
        if isinstance(e, str):
            var = self.variable(e)
            if var is not None:
                if var[1] not in self.declared[var[0]]:
                    raise self.fail(line, f"variable '{e}' is used but not declared")
                return {var[0]}, None, var
            if e[:2] in ("X_", "Y_"):
                raise self.fail(line, f"variable '{e}': expected X_<index> or Y_<index> (index 0, 1, 2, ...)")
            try:
                value = float(e)
            except ValueError:
                raise self.fail(line, f"expected a number or a declared variable, got '{e}'")
            if not math.isfinite(value):
                raise self.fail(line, f"expected a finite number, got '{e}'")
            return set(), value, None
        if not e.items or not isinstance(e.items[0], str) or e.items[0] not in _ARITHMETIC:
            raise self.fail(e.line, f"expected a term (a number, a variable, (+ ...), (- ...) or (* ...)), got "
                                    f"{_show(e)}")
        if len(e.items) < 2:
            raise self.fail(e.line, f"'({e.items[0]})' needs at least one operand")
        kinds: set[str] = set()
        for item in e.items[1:]:
            kinds |= self.term(item, e.line)[0]
        return kinds, None, None

    def expression(self, e: SList | str, line: int, top: bool) -> bool:
        """Check one boolean expression (``line``: its enclosing one's); record bounds and comparisons. Returns
        whether it involves Y."""
        if isinstance(e, str) or not e.items or not isinstance(e.items[0], str):
            raise self.fail(line if isinstance(e, str) else e.line,
                            f"expected a comparison, (and ...) or (or ...), got {_show(e)}")
        head = e.items[0]
        if head in ("and", "or"):
            if len(e.items) < 2:
                raise self.fail(e.line, f"'({head})' needs at least one operand")
            found = [self.expression(item, e.line, top=top and head == "and") for item in e.items[1:]]
            return any(found)
        if head not in _COMPARISONS:
            raise self.fail(e.line, f"expected a comparison (<=, >=, <, >), (and ...) or (or ...), got {_show(e)}")
        if len(e.items) != 3:
            raise self.fail(e.line, f"'({head} ...)' compares exactly two terms")
        (ka, va, a), (kb, vb, b) = self.term(e.items[1], e.line), self.term(e.items[2], e.line)
        if va is not None and vb is not None:
            raise self.fail(e.line, "a comparison of two numbers constrains nothing")
        if "X" in ka | kb and "Y" not in ka | kb:
            self.input_bound(e, head, a, va, b, vb, top)
        if a is not None and b is not None and a[0] == b[0] == "Y" and head in (">=", "<="):
            self.prop.compares.append((head, a[1], b[1]))
        return "Y" in ka | kb

    def input_bound(self, e: SList, op: str, a, va, b, vb, top: bool) -> None:
        if not top:
            raise self.fail(e.line, "input bounds inside (or ...) describe several input boxes; one box per file "
                                    "is supported here")
        flip = {"<=": ">=", ">=": "<=", "<": ">", ">": "<"}
        if a is not None and vb is not None:
            self.prop.bounds.append((op.rstrip("=") + "=", a[1], vb))
        elif b is not None and va is not None:
            self.prop.bounds.append((flip[op].rstrip("=") + "=", b[1], va))
        else:
            raise self.fail(e.line, "an input constraint that is not a bound on one input X_i (not supported as "
                                    "data)")

    def finish(self, forms: list[SList]) -> _Property:
        for e in forms:
            self.form(e)
        for kind in ("X", "Y"):
            indices = self.declared[kind]
            if not indices:
                raise LipverifyError(f"{self.where}: no {'input' if kind == 'X' else 'output'} variables "
                                     f"{kind}_i declared (not a VNN-LIB property?)")
            missing = sorted(set(range(len(indices))) - set(indices))
            if missing:
                raise LipverifyError(f"{self.where}: {kind}_{missing[0]} is not declared but {kind}_"
                                     f"{max(indices)} is; indices must run from 0")
        if not self.constrains_outputs:
            raise LipverifyError(f"{self.where}: no assertion on the outputs Y_j (a property needs an output "
                                 "constraint)")
        self.prop.n_inputs, self.prop.n_outputs = len(self.declared["X"]), len(self.declared["Y"])
        return self.prop


def read_property(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(lower, upper, label) of one property file."""
    if not path.is_file():
        raise LipverifyError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise LipverifyError(f"{path}: larger than {MAX_BYTES >> 20} MiB; not a property file")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LipverifyError(f"{path}: cannot read the VNN-LIB file ({type(e).__name__})")
    prop = _Reader(str(path)).finish(parse_sexprs(text, str(path)))
    n = prop.n_inputs
    lower, upper = np.full(n, np.nan), np.full(n, np.nan)
    for op, i, v in prop.bounds:
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
    return lower, upper, _label(path, text, prop)


def _label(path: Path, text: str, prop: _Property) -> int:
    losing = [(a, b) if op == ">=" else (b, a) for op, a, b in prop.compares]  # (bigger, smaller)
    smalls = {s for _, s in losing}
    if len(smalls) == 1 and len(losing) > 1:
        return smalls.pop()
    stated = _COMMENT_LABEL.search(text)
    if stated:
        label = int(stated.group(1))
        if label >= prop.n_outputs:
            raise LipverifyError(f"{path}: the comment's label {label} is not an output (Y_0..Y_{prop.n_outputs - 1})")
        return label
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
