"""Regions: membership is exact (the closed region of the real numbers), and ``inside`` moves a
point a few ulps outside back in (issue 12, bug 6: witnesses 1-2 ulp outside their ball)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from verispec.regions import Ball, Box, Norm, Polytope

EPS = st.sampled_from([1e-300, 1e-12, 1e-9, 0.01, 0.3, 1.0, 1e6, 1e200])


def _exact_linf(x: np.ndarray, c: np.ndarray, eps: float) -> bool:
    return all(
        abs(Fraction(a) - Fraction(b)) <= Fraction(eps)
        for a, b in zip(x.tolist(), c.tolist(), strict=True)
    )


def _exact_l2(x: np.ndarray, c: np.ndarray, eps: float) -> bool:
    total = sum(
        ((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x.tolist(), c.tolist(), strict=True)),
        Fraction(0),
    )
    return total <= Fraction(eps) ** 2


@st.composite
def near_boundary(draw: st.DrawFn, norm: Norm) -> tuple[np.ndarray, float, np.ndarray]:
    """(centre, eps, x): a point x on the sphere of radius eps moved by a few ulps either way."""
    d = draw(st.integers(1, 6))
    eps = draw(EPS)
    scale = draw(st.sampled_from([1e-30, 1.0, 1e3, 1e30]))
    c = np.array(draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d))) * scale
    parts = st.floats(-1, 1).filter(lambda v: v == 0 or abs(v) > 1e-6)
    direction = np.array(draw(st.lists(parts, min_size=d, max_size=d)))
    if not np.any(direction):
        direction[0] = 1.0
    if norm is Norm.LINF:
        direction = direction / np.max(np.abs(direction))
    else:
        direction = direction / np.linalg.norm(direction)
    x = c + eps * direction
    ulps = draw(st.integers(-3, 3))
    for _ in range(abs(ulps)):
        x = np.nextafter(x, np.sign(ulps) * np.inf)
    return c, eps, x


@given(near_boundary(Norm.LINF))
def test_linf_membership_is_exact(case):
    c, eps, x = case
    assert Ball(c, eps, Norm.LINF).contains(x) == _exact_linf(x, c, eps)


@given(near_boundary(Norm.L2))
def test_l2_membership_is_exact(case):
    c, eps, x = case
    assert Ball(c, eps, Norm.L2).contains(x) == _exact_l2(x, c, eps)


@given(st.data(), st.sampled_from([Norm.LINF, Norm.L2]), st.booleans())
def test_inside_returns_a_point_of_the_closed_region_next_to_x(data, norm, with_domain):
    c, eps, x = data.draw(near_boundary(norm))
    domain = Box(c - 2 * eps, c + eps / 2) if with_domain else None
    ball = Ball(c, eps, norm, domain)
    moved = ball.inside(x)
    assert moved is not None
    exact = _exact_linf if norm is Norm.LINF else _exact_l2
    assert exact(moved, c, eps)
    if domain is not None:
        assert np.all(moved >= domain.lo) and np.all(moved <= domain.hi)
    if ball.contains(x):
        np.testing.assert_array_equal(moved, x)  # a point inside is never moved
    else:
        assert np.all(np.abs(moved - x) <= 3 * eps + 8 * np.spacing(np.abs(x)))


def test_witness_one_ulp_outside_is_rejected_then_moved_in():
    """The bug's shape: a witness at distance 1.0000056e-12 from the centre at eps 1e-12."""
    c = np.array([0.25, -1e-3])
    ball = Ball(c, 1e-12, Norm.LINF)
    x = c.copy()
    while float(Fraction(x[0]) - Fraction(c[0])) < 1.0000056e-12:
        x[0] = np.nextafter(x[0], 1.0)
    assert not ball.contains(x)
    moved = ball.inside(x)
    assert moved is not None and _exact_linf(moved, c, 1e-12)


def test_polytope_membership_is_exact_at_a_tie():
    a = np.array([[0.1, 0.2]])
    x = np.array([1.0, 1.0])
    b_exact = float(Fraction(0.1) + Fraction(0.2))  # the float nearest the exact sum
    below = np.nextafter(b_exact, -np.inf)
    exact_sum = Fraction(0.1) + Fraction(0.2)
    for b in (b_exact, below, np.nextafter(b_exact, np.inf)):
        assert Polytope(a, np.array([b])).contains(x) == (exact_sum <= Fraction(float(b)))


def test_box_membership_and_clip_are_exact():
    box = Box(np.array([0.0]), np.array([1.0]))
    assert box.contains(np.array([1.0])) and not box.contains(np.array([np.nextafter(1.0, 2)]))
    assert box.inside(np.array([1.5]))[0] == 1.0


_EXTREME = st.sampled_from([0.0, 5e-324, -5e-324, 1e-310, 2.0**-1022, 1e-300, 0.5, 1e300])


@given(
    st.lists(st.tuples(_EXTREME, _EXTREME), min_size=1, max_size=4),
    st.sampled_from([5e-324, 1e-310, 1e-300, 0.05, 1.0, 1e300]),
    st.sampled_from([Norm.LINF, Norm.L2]),
)
@example([(0.0, 0.0), (5e-324, 0.0)], 0.05, Norm.L2)  # the soundness suite's crash
def test_membership_is_exact_at_subnormal_and_huge_differences(pairs, eps, norm):
    """Centres and points apart by subnormal or huge amounts, eps from 5e-324 to 1e300: the
    exact test answers (a subnormal difference with eps 0.05 overflowed the l2 test's scaling
    and crashed the projections engine) and agrees with rationals."""
    c = np.array([p[0] for p in pairs])
    x = np.array([p[1] for p in pairs])
    exact = _exact_linf if norm is Norm.LINF else _exact_l2
    assert Ball(c, eps, norm).contains(x) == exact(x, c, eps)
