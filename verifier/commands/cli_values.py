"""The command line's value types: every number a user types is checked when the command line is parsed, before
any work starts (finite, in its range), so that a bad value is one line with exit code 2, never a failure
halfway through a run."""
from __future__ import annotations

import math
from typing import Any

import click


class Number(click.ParamType):
    """A finite float with optional bounds: ``low`` (``low_open``: excluded) and ``high``."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float) and math.isfinite(value) and self._fits(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number, got {value!r}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number{' ' + self._range() if self._range() else ''}, got {value!r}",
                      param, ctx)
        if not self._fits(number):
            self.fail(f"must be {self._range()}, got {value!r}", param, ctx)
        return number

    def _fits(self, number: float) -> bool:
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        return self.high is None or number <= self.high


class Values(click.ParamType):
    """One finite number or comma-separated numbers (a value per channel), kept as the text given;
    ``positive``: every value > 0."""

    name = "values"

    def __init__(self, positive: bool = False):
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            self.fail("expected a number or comma-separated numbers, got nothing", param, ctx)
        for part in parts:
            try:
                number = float(part)
            except ValueError:
                self.fail(f"expected a number or comma-separated numbers, got {text!r}", param, ctx)
            if not math.isfinite(number) or (self.positive and number <= 0):
                self.fail(f"every value must be finite{' and > 0' if self.positive else ''}, got {text!r}",
                          param, ctx)
        return text


class Shape(click.ParamType):
    """Comma-separated positive integers (a sample shape such as 1,28,28)."""

    name = "shape"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            dims = tuple(int(d) for d in str(value).split(","))
        except ValueError:
            self.fail(f"expected comma-separated integers, got {value!r}", param, ctx)
        if not dims or any(d < 1 for d in dims) or math.prod(dims) > 2**31:
            self.fail(f"expected positive dimensions (at most 2^31 values in all), got {value!r}", param, ctx)
        return dims


#: counts: at least 1 (batch sizes, limits, epochs, steps)
COUNT = click.IntRange(min=1)
#: radii: finite and >= 0
RADIUS = Number(low=0.0)
#: strictly positive finite numbers (learning rate, scale, width)
POSITIVE = Number(low=0.0, low_open=True)
#: fractions in [0, 1]
FRACTION = Number(low=0.0, high=1.0)
#: seeds: what torch's generators take
SEED = click.IntRange(min=0, max=2**32 - 1)
