"""The float64 pass with its own rounding-error bound (verispec/float_error.py): on generated
networks, cancelling layers and extreme scales included, the exact logits lie within the
bound of the float64 ones, and ``Property.confirm`` decides by it or in exact arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import hard_networks, small_networks, unit_points
from verispec.exact_forward import exact_logits
from verispec.float_error import float_logits
from verispec.network import Dense, Network
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Box


@st.composite
def _points(draw: st.DrawFn) -> tuple[Network, np.ndarray]:
    network = draw(small_networks() | hard_networks())
    x = draw(unit_points(int(np.prod(network.input_shape))))
    return network, x.reshape(network.input_shape)


@settings(deadline=None)
@given(_points())
def test_the_exact_logits_lie_within_the_error_bound(problem):
    network, x = problem
    y, err = float_logits(network, x)
    for a, b, e in zip(y, exact_logits(network, x), err, strict=True):
        if np.isfinite(e):
            assert abs(Fraction(a) - b) <= Fraction(e), (a, float(b), e)


def _cancelling() -> Network:
    """y0 = (1e17 x + 1) - 1e17 x = 1 and y1 = 0.5 exactly; float64 loses the 1 (the ulp of
    1e17 / 3 is 4) and gives y0 = 0."""
    first = Dense(np.array([[1e17], [1e17]]), np.array([1.0, 0.0]))
    second = Dense(np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([0.0, 0.5]))
    return Network((first, second), (1,))


def test_a_witness_within_rounding_is_decided_exactly():
    """At x = 1/3 float64 says y0 = 0 < y1: a false witness of "y0 > y1". The error bound
    sees the cancellation (>= 1), so the check falls back to rationals, which refute it."""
    net = _cancelling()
    x = np.array([1 / 3])
    y, err = float_logits(net, x)
    assert y[0] == 0.0 and err[0] >= 1.0
    assert net.forward64(x[None])[0][0] < 0.5  # the plain float64 pass is fooled
    beats = Predicate((Clause(np.array([[1.0, -1.0]]), [0.0]),))  # y0 > y1
    prop = Property(Box(np.zeros(1), np.ones(1)), beats)
    assert prop.confirm(net, x) is None
