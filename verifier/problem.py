"""Verification problems as data: an input set, an output spec, and the two together.

Input sets (a batch of B sets, one per input, in the model's input space):

- ``LpBall(center, eps, norm, lower, upper)``: {x : ||x - center||_p <= eps} intersected with the domain box
  [lower, upper] (None: unbounded), p = 2 or inf, ``eps`` one radius per input. The domain box is the data's
  range mapped to the model's input (certificates are about inputs in the domain, as in every report).
- ``InputBox(lower, upper)``: the plain box lower <= x <= upper (VNN-LIB's input regions).

Both answer the two questions every bound engine asks: ``box()`` (the l_inf box enclosing the set, a
``verifier.box.Box``; for an l2 ball the l_inf ball of the same radius, which contains it) and ``l2_ball()`` (a
centre and an l2 radius whose ball contains the set: BCP's ball bounds, Lee et al. 2020 §3.1).

Output specs, on the model's outputs z (the logits tensor, flattened per input):

- ``Conjunction(C, d)``: holds at z when every row of C z + d is > 0 (C: (B, R, K), d: (B, R)). Engines prove
  it with a lower bound of each row that is > 0 over the whole input set.
- ``Conjunction.robustness(labels, classes)``: the rows z_y - z_j for every j != y, the spec of every certified
  radius. It keeps its labels, so engines with a pairwise form (LMT Prop. 2, BCP's last layer, the local
  Cross-Lipschitz bounds) recognize it; its C is built only when asked for.
- ``Disjunction(parts)``: holds when any of its conjunctions holds (what a VNN-LIB property's complement needs).

A ``Problem`` is one input set and one spec: "for every x in the set, the spec holds at z(x)". A
``RadiusProblem`` is the question behind a certified radius: the largest eps per input such that the problem
with ``LpBall(center, eps, ...)`` holds; ``at(eps)`` gives that problem.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Union

import torch
from torch import Tensor

from verifier.box import Box
from verifier.rounding import REL64

NORMS = (2.0, math.inf)


def _check_ball(obj: Any) -> None:
    """A ball's norm (2 or inf, kept as a float) and domain bounds (as tensors) checked in place."""
    if obj.norm not in NORMS:
        raise ValueError("norm must be 2 or inf")
    object.__setattr__(obj, "norm", float(obj.norm))
    for name in ("lower", "upper"):
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, torch.as_tensor(value))


@dataclass(frozen=True)
class LpBall:
    """{x : ||x - center||_p <= eps} within [lower, upper], one ball per input (see the module docstring).

    ``center``: (B, *sample_shape); ``eps``: (B,) float64 (a scalar is broadcast); ``lower``/``upper``: None,
    scalars, or tensors broadcastable to one sample (shared by the batch)."""

    center: Tensor
    eps: Tensor
    norm: float = 2.0
    lower: Tensor | None = None
    upper: Tensor | None = None

    def __post_init__(self) -> None:
        _check_ball(self)
        eps = torch.as_tensor(self.eps, dtype=torch.float64)
        if eps.dim() == 0:
            eps = eps.expand(len(self.center)).clone()
        object.__setattr__(self, "eps", eps)

    def __len__(self) -> int:
        return len(self.center)

    def __getitem__(self, index: Any) -> "LpBall":
        return replace(self, center=self.center[index], eps=self.eps[index])

    def box(self, dtype: torch.dtype = torch.float64) -> Box:
        """The l_inf ball of radius eps (containing the l2 ball of radius eps) within the domain, in ``dtype``."""
        lower = None if self.lower is None else self.lower.to(dtype)
        upper = None if self.upper is None else self.upper.to(dtype)
        return Box.ball(self.center.to(dtype), self.eps.to(dtype), lower, upper)

    def l2_ball(self) -> tuple[Tensor, Tensor]:
        """(centre, rho): the l2 ball of radius rho (B,) around the centre contains the set: eps for p = 2, and
        for p = inf sqrt(N) eps, the l2 ball circumscribing the box (BCP §3.1), rounded up."""
        if self.norm == 2:
            return self.center, self.eps
        return self.center, self.eps * math.sqrt(math.prod(self.center.shape[1:])) * (1 + REL64)


@dataclass(frozen=True)
class InputBox:
    """The box lower <= x <= upper, one per input (both (B, *sample_shape))."""

    lower: Tensor
    upper: Tensor

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ValueError(f"box bounds of shapes {tuple(self.lower.shape)} and {tuple(self.upper.shape)}")
        if not bool((self.lower <= self.upper).all()):
            raise ValueError("an input box with lower > upper (or NaN bounds)")

    def __len__(self) -> int:
        return len(self.lower)

    def __getitem__(self, index: Any) -> "InputBox":
        return InputBox(self.lower[index], self.upper[index])

    @property
    def center(self) -> Tensor:
        """The midpoint, in float64 (where the engines evaluate the clean values)."""
        return (self.lower.double() + self.upper.double()) / 2

    def box(self, dtype: torch.dtype = torch.float64) -> Box:
        return Box.from_bounds(self.lower.to(dtype), self.upper.to(dtype))

    def l2_ball(self) -> tuple[Tensor, Tensor]:
        """(centre, rho) with the centre the float64 midpoint and rho the l2 norm of the largest distance from it
        to the box's faces per coordinate, rounded up: every point of the box lies in that ball."""
        c = self.center
        far = torch.maximum(self.upper.double() - c, c - self.lower.double()).clamp_min(0.0)
        rho = far.reshape(len(c), -1).norm(dim=1) * (1 + REL64) + REL64 * c.reshape(len(c), -1).abs().amax(1)
        return c, rho


InputSet = Union[LpBall, InputBox]


@dataclass(frozen=True)
class Conjunction:
    """C z + d > 0 in every row (see the module docstring). ``labels``/``classes`` are set by ``robustness``."""

    c: Tensor | None = None  # (B, R, K)
    d: Tensor | None = None  # (B, R)
    labels: Tensor | None = None
    classes: int | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            return
        if self.c is None or self.d is None:
            raise ValueError("a conjunction needs its rows C and offsets d (or labels, for robustness)")
        if self.c.dim() != 3 or self.d.shape != self.c.shape[:2]:
            raise ValueError(f"rows C of shape {tuple(self.c.shape)} (B, R, K) and offsets d of shape "
                             f"{tuple(self.d.shape)} (B, R) do not fit")

    @classmethod
    def robustness(cls, labels: Tensor, classes: int | None = None) -> "Conjunction":
        """z_y - z_j > 0 for every j != y (``classes``: K, needed only when C itself is asked for)."""
        return cls(labels=torch.as_tensor(labels, dtype=torch.long), classes=classes)

    @property
    def is_robustness(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.c)

    def __getitem__(self, index: Any) -> "Conjunction":
        """The conjunctions of some inputs (a slice, indices or a mask)."""
        if self.labels is not None:
            return Conjunction(labels=self.labels[index], classes=self.classes)
        return Conjunction(self.c[index], self.d[index])

    def rows(self) -> tuple[Tensor, Tensor]:
        """(C, d) in float64; for a robustness spec, rows e_y - e_j for j != y in increasing j."""
        if self.labels is None:
            return self.c.double(), self.d.double()
        return self._robustness_rows

    @cached_property
    def _robustness_rows(self) -> tuple[Tensor, Tensor]:
        if self.classes is None:
            raise ValueError("a robustness spec needs its number of classes to give its rows")
        k, y = self.classes, self.labels
        eye = torch.eye(k, dtype=torch.float64, device=y.device)
        full = eye[y][:, None, :] - eye[None, :, :]  # (B, K, K): row j is e_y - e_j
        keep = torch.arange(k, device=y.device)[None, :] != y[:, None]
        c = full[keep].reshape(len(y), k - 1, k)
        return c, torch.zeros(c.shape[:2], dtype=torch.float64, device=y.device)

    def values(self, z: Tensor) -> Tensor:
        """C z + d per input and row, (B, R), at outputs z (B, K) (float64, no rounding allowance)."""
        c, d = self.rows()
        return (c @ z.double().reshape(len(z), -1, 1))[..., 0] + d

    def holds_at(self, z: Tensor) -> Tensor:
        """Per input, whether the outputs z satisfy every row (no rounding allowance: for counterexamples)."""
        return (self.values(z) > 0).all(dim=1)


@dataclass(frozen=True)
class Disjunction:
    """Holds when any of its conjunctions holds."""

    parts: tuple[Conjunction, ...]

    def __post_init__(self) -> None:
        if not self.parts or len({len(p) for p in self.parts}) != 1:
            raise ValueError("a disjunction needs one or more conjunctions over the same inputs")

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index: Any) -> "Disjunction":
        return Disjunction(tuple(p[index] for p in self.parts))

    def holds_at(self, z: Tensor) -> Tensor:
        return torch.stack([p.holds_at(z) for p in self.parts]).any(dim=0)


Spec = Union[Conjunction, Disjunction]


@dataclass(frozen=True)
class Problem:
    """For every x in ``inputs``, ``spec`` holds at the model's outputs z(x) (one problem per input)."""

    inputs: InputSet
    spec: Spec

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.spec):
            raise ValueError(f"{len(self.inputs)} input sets but {len(self.spec)} specs")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: Any) -> "Problem":
        return Problem(self.inputs[index], self.spec[index])

    def conjunctions(self) -> list["Problem"]:
        """One problem per conjunction of the spec (the problem holds where any of them holds)."""
        parts = self.spec.parts if isinstance(self.spec, Disjunction) else (self.spec,)
        return [Problem(self.inputs, part) for part in parts]


@dataclass(frozen=True)
class RadiusProblem:
    """The largest eps per input such that the prediction ``labels`` is robust on the l_p ball of radius eps
    around ``center`` within [lower, upper]: the question every certified radius answers. ``center`` may be None
    for methods that need only the logits (LMT's global certificates)."""

    center: Tensor | None
    labels: Tensor
    norm: float = 2.0
    lower: Tensor | None = None
    upper: Tensor | None = None

    def __post_init__(self) -> None:
        _check_ball(self)
        object.__setattr__(self, "labels", torch.as_tensor(self.labels, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> "RadiusProblem":
        center = None if self.center is None else self.center[index]
        return replace(self, center=center, labels=self.labels[index])

    @property
    def spec(self) -> Conjunction:
        return Conjunction.robustness(self.labels)

    def at(self, eps: float | Tensor) -> Problem:
        """The problem at radius eps (a scalar or one per input)."""
        if self.center is None:
            raise ValueError("this radius problem has no centres (it was built for logit-only methods)")
        return Problem(LpBall(self.center, eps, self.norm, self.lower, self.upper), self.spec)

    def to(self, *args: Any, **kwargs: Any) -> "RadiusProblem":
        """The same problem with its tensors moved (``Tensor.to``'s arguments)."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(*args, **kwargs)
        return replace(self, center=move(self.center), lower=move(self.lower), upper=move(self.upper))
