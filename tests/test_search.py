"""The radius searches (``verifier.engines.search``): the radius returned is always a point the check proved (or
the start), and the margin-guided search finds the root of smooth margins to its tolerance in few guesses."""
from __future__ import annotations

import torch

from verifier.engines.search import largest_positive, largest_verified
from verifier.problem import RadiusProblem


def _balls(n: int) -> RadiusProblem:
    """n problems whose centres hold their index (so that a chunk knows which inputs it has)."""
    return RadiusProblem(torch.arange(n).double()[:, None].repeat(1, 3), torch.zeros(n, dtype=torch.long), 2.0)


def _recording(margin_of):
    """A margin function (of eps and the inputs' indices) that records every (index, eps, value) it gave."""
    seen = []

    def margin(part, eps):
        index = part.center[:, 0].long()
        value = margin_of(eps, index)
        seen.extend(zip(index.tolist(), eps.tolist(), value.tolist()))
        return value
    return margin, seen


def _proved(seen, radii, i):
    return any(j == i and e == float(radii[i]) and v > 0 for j, e, v in seen)


def test_margin_search_finds_smooth_roots_in_few_guesses():
    gen = torch.Generator().manual_seed(0)
    a = 0.5 + torch.rand(64, generator=gen, dtype=torch.float64)
    b = torch.exp(4 * torch.rand(64, generator=gen, dtype=torch.float64) - 2)
    p = torch.where(torch.arange(64) % 2 == 0, 1.5, 0.7).double()  # concave and convex margins
    root = (a / b) ** (1 / p)
    prepare, seen = _recording(lambda eps, i: a[i] - b[i] * eps ** p[i])
    radii = largest_positive(_balls(64), prepare, None, steps=40, batch_size=64, rtol=1e-4)
    assert bool((radii <= root).all()) and bool((radii >= root * (1 - 2e-4)).all())
    assert len(seen) <= 14 * 64, len(seen) / 64  # margins bounded (one entry per input and guess)
    assert all(_proved(seen, radii, i) for i in range(64))


def test_margin_search_is_sound_on_erratic_margins_and_starts():
    """A margin that is positive on a random set of points (not monotone in eps): every radius returned was
    proved, or is the start; misclassified inputs (margin <= 0 at eps = 0) get 0."""
    gen = torch.Generator().manual_seed(1)
    wave = torch.rand(32, generator=gen, dtype=torch.float64) * 20 + 5

    def margin(eps, i):
        return torch.cos(wave[i] * eps) - 0.3 + torch.where(i < 4, -2.0, 0.0).double()

    prepare, seen = _recording(margin)
    start = torch.where(torch.arange(32) % 3 == 0, 0.01, 0.0).double()
    radii = largest_positive(_balls(32), prepare, start, steps=30, batch_size=10)
    assert bool((radii[:4] == 0).all()) and bool((radii[4:] > 0).all())
    assert all(float(radii[i]) == float(start[i]) or _proved(seen, radii, i) for i in range(4, 32))


def test_margin_search_ends_at_a_start_it_cannot_prove():
    """Where the margin is not positive at the start (radii proved by another method, beyond this check's
    reach), the start is the answer after that one guess; elsewhere the search goes on from the start."""
    root = torch.linspace(0.2, 0.8, 8, dtype=torch.float64)
    prepare, seen = _recording(lambda eps, i: root[i] - eps)
    start = torch.where(torch.arange(8) < 4, 0.9, 0.1).double()  # above the root for the first four
    radii = largest_positive(_balls(8), prepare, start, steps=30, batch_size=8)
    assert torch.equal(radii[:4], start[:4])
    assert all(len([e for j, e, _ in seen if j == i]) == 2 for i in range(4))  # eps = 0, then the start
    assert bool((radii[4:] <= root[4:]).all()) and bool((radii[4:] >= root[4:] * (1 - 2e-4)).all())


def test_bisection_returns_proved_points():
    proved_up_to = torch.linspace(0.1, 2.0, 8, dtype=torch.float64)
    radii = largest_verified(_balls(8), lambda part: lambda eps: eps <= proved_up_to[part.center[:, 0].long()],
                             None, steps=20, batch_size=3)
    assert bool((radii <= proved_up_to).all()) and bool((radii >= proved_up_to * (1 - 1e-5)).all())
