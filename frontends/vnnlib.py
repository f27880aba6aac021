"""VNN-LIB properties (``read_vnnlib``): input regions, and per region the output conditions of a counterexample.

A VNN-LIB file is a list of s-expressions (``frontends.sexpr``): ``(declare-const X_i Real)`` /
``(declare-const Y_j Real)`` for the model's flattened inputs and outputs (row-major order), and ``(assert E)``
where ``E`` is a comparison (``<=``, ``>=``, ``<``, ``>``) between linear terms (variables, numbers, ``+``, ``-``,
``*`` by constants) or an ``and`` / ``or`` of such. The assertions together state what a counterexample
satisfies: the file is read as their conjunction, brought to disjunctive normal form (at most ``MAX_CASES``
cases). Each case is a conjunction of input constraints (bounds on one X_i each: input regions are boxes) and
output constraints (any linear inequality over the Y_j); cases with the same input box are grouped into one
``Region`` whose ``disjuncts`` are their output conjunctions, so several input boxes (acasxu's) and disjunctions
of output conditions (robustness against every other class) are both stated. A region whose box is empty holds
trivially and is dropped. Malformed files, constraints mixing X and Y, and constraints over several inputs are
refused with one line naming the line.

``load_vnnlib`` reads properties as evaluation data (one sample per file: the box centre and the class the
property protects), for ``certify --data``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from verifier.errors import LipverifyError

from .sexpr import SList, parse_sexprs, show

_COMMENT_LABEL = re.compile(r";.*?(?:correct label|label)\s*:?\s*(\d+)", re.IGNORECASE)
_VARIABLE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_COMPARISONS = {"<=", ">=", "<", ">"}
_ARITHMETIC = {"+", "-", "*"}
#: property files larger than this are refused before being read (the largest VNN-COMP files are ~30 MB)
MAX_BYTES = 512 * 2**20
#: most cases of the disjunctive normal form (nn4sys 2022 has files of 120,000 cases: 60,000 boxes x 2)
MAX_CASES = 2**18

#: a linear term: coefficients by variable ('X' or 'Y', index), and a constant
Linear = tuple[dict[tuple[str, int], float], float]


@dataclass(frozen=True)
class Atom:
    """One constraint of a case: sum coef[k] * V_index[k] + const >= 0 (> 0 when ``strict``) over the inputs
    (``kind`` 'X') or the outputs ('Y')."""

    kind: str
    index: tuple[int, ...]
    coef: tuple[float, ...]
    const: float
    strict: bool


@dataclass
class Rows:
    """A conjunction of output constraints: a y + c >= 0 in every row (> 0 where ``strict``); a (R, K)."""

    a: np.ndarray
    c: np.ndarray
    strict: np.ndarray

    def satisfied(self, y: np.ndarray) -> bool:
        """Whether the outputs y (K,) satisfy every row (float64, exactly as written)."""
        v = self.a @ np.asarray(y, dtype=np.float64).reshape(-1) + self.c
        return bool(np.where(self.strict, v > 0, v >= 0).all())


@dataclass
class Region:
    """An input box [lower, upper] (float64, rounded outward where a bound is not exact) and the conjunctions of
    output constraints (``disjuncts``) any of which makes a point of the box a counterexample. ``inputs``: the
    input constraints as written (index, coef, const, strict arrays), for exact membership (``contains``)."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: list[Rows]
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = field(repr=False, default=None)

    def contains(self, x: np.ndarray) -> bool:
        """Whether x (flattened) is a point of the region as the model receives it: in float64, the input
        constraints as written; in a lower precision (a float32 model's input), the rounding to nearest of some
        real point of the box, i.e. between the rounded bounds (rounding is monotone: every real point of
        [lower, upper] rounds into [fl(lower), fl(upper)], and every float there is the rounding of one)."""
        x = np.asarray(x).reshape(-1)
        if x.dtype != np.float64:
            return bool(((self.lower.astype(x.dtype) <= x) & (x <= self.upper.astype(x.dtype))).all())
        index, coef, const, strict = self.inputs
        v = coef * x[index] + const
        return bool(np.where(strict, v > 0, v >= 0).all())

    def violated_by(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Whether (x, y) is a counterexample: x in the region and y satisfying one of its disjuncts."""
        return self.contains(x) and any(rows.satisfied(y) for rows in self.disjuncts)


@dataclass
class VnnlibProperty:
    """A parsed property: the flattened input and output sizes and its regions (the property is violated where
    any region has a counterexample)."""

    path: str
    n_inputs: int
    n_outputs: int
    regions: list[Region]
    text: str = field(repr=False, default="")


class _Reader:
    def __init__(self, where: str):
        self.where = where
        self.declared: dict[str, dict[int, int]] = {"X": {}, "Y": {}}  # kind -> index -> line
        self.constrains_outputs = False

    def fail(self, line: int, message: str) -> LipverifyError:
        return LipverifyError(f"{self.where}: line {line}: {message}")

    def variable(self, atom: str) -> tuple[str, int] | None:
        """('X' or 'Y', index) for a variable name, None for anything else."""
        m = _VARIABLE.fullmatch(atom)
        return (m.group(1), int(m.group(2))) if m else None

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

    def term(self, e: SList | str, line: int) -> Linear:
        """The linear form of a term; ``line``: the line of the enclosing expression (an atom's)."""
        if isinstance(e, str):
            var = self.variable(e)
            if var is not None:
                if var[1] not in self.declared[var[0]]:
                    raise self.fail(line, f"variable '{e}' is used but not declared")
                return {var: 1.0}, 0.0
            if e[:2] in ("X_", "Y_"):
                raise self.fail(line, f"variable '{e}': expected X_<index> or Y_<index> (index 0, 1, 2, ...)")
            try:
                value = float(e)
            except ValueError:
                raise self.fail(line, f"expected a number or a declared variable, got '{e}'")
            if not math.isfinite(value):
                raise self.fail(line, f"expected a finite number, got '{e}'")
            return {}, value
        if not e.items or not isinstance(e.items[0], str) or e.items[0] not in _ARITHMETIC:
            raise self.fail(e.line, f"expected a term (a number, a variable, (+ ...), (- ...) or (* ...)), got "
                                    f"{show(e)}")
        head = e.items[0]
        if len(e.items) < 2:
            raise self.fail(e.line, f"'({head})' needs at least one operand")
        parts = [self.term(item, e.line) for item in e.items[1:]]
        if head == "*":
            return self.product(parts, e.line)
        if head == "-":
            parts = parts[:1] + [_scaled(p, -1.0) for p in parts[1:]] if len(parts) > 1 else [_scaled(parts[0], -1.0)]
        return _sum(parts)

    def product(self, parts: list[Linear], line: int) -> Linear:
        factor, variable = 1.0, None
        for coeffs, const in parts:
            if coeffs:
                if variable is not None:
                    raise self.fail(line, "a product of two variable terms is not linear")
                variable = (coeffs, const)
            else:
                factor *= const
        return _scaled(variable, factor) if variable is not None else ({}, factor)

    def expression(self, e: SList | str, line: int) -> list[tuple[Atom, ...]]:
        """The disjunctive normal form of a boolean expression (``line``: its enclosing one's): its cases, each a
        tuple of atoms."""
        if isinstance(e, str) or not e.items or not isinstance(e.items[0], str):
            raise self.fail(line if isinstance(e, str) else e.line,
                            f"expected a comparison, (and ...) or (or ...), got {show(e)}")
        head = e.items[0]
        if head in ("and", "or"):
            if len(e.items) < 2:
                raise self.fail(e.line, f"'({head})' needs at least one operand")
            forms = [self.expression(item, e.line) for item in e.items[1:]]
            if head == "or":
                cases = [case for form in forms for case in form]
                if len(cases) > MAX_CASES:
                    raise self.fail(e.line, f"more than {MAX_CASES} cases in disjunctive normal form")
                return cases
            return self.conjoin(forms, e.line)
        if head not in _COMPARISONS:
            raise self.fail(e.line, f"expected a comparison (<=, >=, <, >), (and ...) or (or ...), got {show(e)}")
        if len(e.items) != 3:
            raise self.fail(e.line, f"'({head} ...)' compares exactly two terms")
        return [(self.atom(head, self.term(e.items[1], e.line), self.term(e.items[2], e.line), e.line),)]

    def conjoin(self, forms: list[list[tuple[Atom, ...]]], line: int) -> list[tuple[Atom, ...]]:
        """The normal form of a conjunction of normal forms (their cases' products)."""
        cases: list[tuple[Atom, ...]] = [()]
        for form in sorted(forms, key=len):
            if len(cases) * len(form) > MAX_CASES:
                raise self.fail(line, f"more than {MAX_CASES} cases in disjunctive normal form")
            cases = [a + b for a in cases for b in form]
        return cases

    def atom(self, op: str, left: Linear, right: Linear, line: int) -> Atom:
        coeffs, const = _sum([left, _scaled(right, -1.0)])  # left - right
        if op in ("<=", "<"):
            coeffs, const = _scaled((coeffs, const), -1.0)
        coeffs = {v: c for v, c in coeffs.items() if c != 0.0}
        kinds = {kind for kind, _ in coeffs}
        if not kinds:
            raise self.fail(line, "a comparison without variables constrains nothing")
        if len(kinds) == 2:
            raise self.fail(line, "a constraint that mixes inputs X and outputs Y is not supported")
        kind = kinds.pop()
        if kind == "X" and len(coeffs) > 1:
            names = ", ".join(f"X_{i}" for _, i in sorted(coeffs)[:3])
            raise self.fail(line, f"a constraint on several inputs ({names}) is not supported: input regions are "
                                  "boxes (bounds on one X_i each)")
        self.constrains_outputs |= kind == "Y"
        order = sorted(coeffs)
        return Atom(kind, tuple(i for _, i in order), tuple(coeffs[v] for v in order), const, op in ("<", ">"))

    def read(self, forms: list[SList]) -> list[tuple[Atom, ...]]:
        """The file's cases: its assertions conjoined (single-case ones shared by every case)."""
        common: list[Atom] = []
        split: list[list[tuple[Atom, ...]]] = []
        for e in forms:
            if not e.items or not isinstance(e.items[0], str) or e.items[0] not in ("declare-const", "assert"):
                raise self.fail(e.line, f"expected (declare-const ...) or (assert ...), got {show(e)}")
            if e.items[0] == "declare-const":
                self.declare(e)
                continue
            if len(e.items) != 2:
                raise self.fail(e.line, "expected (assert EXPRESSION) with one expression")
            form = self.expression(e.items[1], e.line)
            if len(form) == 1:
                common.extend(form[0])
            else:
                split.append(form)
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
        shared = tuple(common)
        return [shared + case for case in self.conjoin(split, 0)] if split else [shared]


def _scaled(term: Linear, factor: float) -> Linear:
    return {v: c * factor for v, c in term[0].items()}, term[1] * factor


def _sum(terms: list[Linear]) -> Linear:
    coeffs: dict[tuple[str, int], float] = {}
    for part, _ in terms:
        for v, c in part.items():
            coeffs[v] = coeffs.get(v, 0.0) + c
    return coeffs, sum(const for _, const in terms)


def _region(where: str, case: tuple[Atom, ...], n: int, k: int) -> tuple[Region, Rows] | None:
    """The box and output rows of one case (None when its box is empty)."""
    xs = [a for a in case if a.kind == "X"]
    index = np.array([a.index[0] for a in xs], dtype=np.int64)
    coef = np.array([a.coef[0] for a in xs], dtype=np.float64)
    const = np.array([a.const for a in xs], dtype=np.float64)
    strict = np.array([a.strict for a in xs], dtype=bool)
    with np.errstate(all="ignore"):
        value = -const / coef  # coef x + const >= 0: x >= value (coef > 0), x <= value (coef < 0)
    exact = np.abs(coef) == 1.0
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    up = coef > 0
    np.maximum.at(lower, index[up], np.where(exact, value, np.nextafter(value, -np.inf))[up])
    np.minimum.at(upper, index[~up], np.where(exact, value, np.nextafter(value, np.inf))[~up])
    for side, bound in (("lower", lower), ("upper", upper)):
        free = np.flatnonzero(~np.isfinite(bound))
        if len(free):
            raise LipverifyError(f"{where}: X_{int(free[0])} has no {side} bound; every input needs both (input "
                                 "regions are boxes)")
    if (lower > upper).any():
        return None
    ys = [a for a in case if a.kind == "Y"]
    a = np.zeros((len(ys), k))
    for r, atom in enumerate(ys):
        np.add.at(a[r], list(atom.index), atom.coef)
    rows = Rows(a, np.array([t.const for t in ys], dtype=np.float64), np.array([t.strict for t in ys], dtype=bool))
    return Region(lower, upper, [], (index, coef, const, strict)), rows


def read_vnnlib(path: Path) -> VnnlibProperty:
    """The property of one ``.vnnlib`` file (module docstring); one-line ``LipverifyError`` when malformed."""
    path = Path(path)
    if not path.is_file():
        raise LipverifyError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise LipverifyError(f"{path}: larger than {MAX_BYTES >> 20} MiB; not a property file")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LipverifyError(f"{path}: cannot read the VNN-LIB file ({type(e).__name__})")
    reader = _Reader(str(path))
    cases = reader.read(parse_sexprs(text, str(path)))
    n, k = len(reader.declared["X"]), len(reader.declared["Y"])
    regions: dict[bytes, Region] = {}
    for case in cases:
        built = _region(str(path), case, n, k)
        if built is None:
            continue
        region, rows = built
        key = b"".join(np.ascontiguousarray(t).tobytes() for t in region.inputs)
        regions.setdefault(key, region).disjuncts.append(rows)
    return VnnlibProperty(str(path), n, k, list(regions.values()), text)


# ------------------------------------------------------------------------------------------ properties as data
def read_property(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(lower, upper, label) of a property with one input box."""
    prop = read_vnnlib(path)
    if len(prop.regions) != 1:
        raise LipverifyError(f"{path}: {'several input boxes' if prop.regions else 'an empty input box'}; one box "
                             "per file is supported as data")
    region = prop.regions[0]
    return region.lower, region.upper, _label(path, prop)


def _label(path: Path, prop: VnnlibProperty) -> int:
    """The protected class: the one on the losing side of every pairwise comparison Y_a >= Y_b of the
    counterexample (more than one), else the label the file's comment states."""
    smaller = set()
    pairs = 0
    for rows in prop.regions[0].disjuncts:
        for a, c in zip(rows.a, rows.c):
            nz = np.flatnonzero(a)
            if len(nz) == 2 and c == 0 and sorted(a[nz].tolist()) == [-1.0, 1.0]:
                smaller.add(int(nz[a[nz] < 0][0]))
                pairs += 1
    if len(smaller) == 1 and pairs > 1:
        return smaller.pop()
    stated = _COMMENT_LABEL.search(prop.text)
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
