"""Hypothesis cases for the exact solvers: a small network with a goal of each spec kind."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.strategies import point_specs, safe_orderings, small_networks, unit_points
from verispec.network import Network
from verispec.properties import Goal
from verispec.regions import Box


@st.composite
def point_goals(draw: st.DrawFn) -> tuple[Network, Goal]:
    """Local robustness, relaxed top-k or affinity (overlapping groups allowed) at a point of
    [0, 1]^d, as an l_inf or l2 ball, with or without the domain [0, 1]^d."""
    net = draw(small_networks())
    x = draw(unit_points(net.input_size))
    spec = draw(point_specs(net.num_classes))
    domain = draw(st.sampled_from([None, Box.uniform(0.0, 1.0, net.input_shape)]))
    return net, spec.at(x, net.forward64(x[None])[0], domain)


@st.composite
def ordering_goals(draw: st.DrawFn) -> tuple[Network, Goal]:
    """A safe-ordering property over a box or a polytope with a box."""
    net = draw(small_networks())
    spec = draw(safe_orderings(net.input_size, net.num_classes))
    return net, Goal((spec.as_property(),))


any_goals = st.one_of(point_goals(), ordering_goals())
