"""Pre-activation bounds: valid at every sampled point of every region kind, each method at
least as tight as the one before it, back-substitution bounds valid, input sets exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from verispec.solvers.bounds import (
    BoundMethod,
    Bounds,
    InputSet,
    back_substitute,
    compute_bounds,
    interval_bounds,
    linear_bounds,
    lp_bounds,
)
from verispec.solvers.lowering import lower

from tests.solvers.helpers import sample_region
from tests.strategies import conv_networks, regions, small_networks, unit_points
from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.regions import Ball, Box, Norm, Polytope

TOL = 1e-9


def _samples(network: Network, region, seed: int, n: int = 400) -> np.ndarray:
    pts = sample_region(region, n, np.random.default_rng(seed))
    return pts.reshape(len(pts), -1)


def _assert_valid(bounds: Bounds, zs: list[np.ndarray]) -> None:
    for k, z in enumerate(zs):
        assert np.all(z >= bounds.lo[k]), (bounds.method, k, (bounds.lo[k] - z).max())
        assert np.all(z <= bounds.hi[k]), (bounds.method, k, (z - bounds.hi[k]).max())


def _assert_tighter(tight: Bounds, loose: Bounds) -> None:
    for k in range(len(tight.lo)):
        assert np.all(tight.lo[k] >= loose.lo[k] - TOL * (1 + np.abs(loose.lo[k])))
        assert np.all(tight.hi[k] <= loose.hi[k] + TOL * (1 + np.abs(loose.hi[k])))


@st.composite
def nets_and_regions(draw, kinds=("box", "linf", "l2", "polytope")):
    net = draw(small_networks(activations=("relu", "minmax", "groupsort4"), max_hidden=16))
    return net, draw(regions(net.input_size, kinds))


@settings(max_examples=60)
@given(nets_and_regions(), st.integers(0, 2**32 - 1))
def test_every_method_bounds_every_sample_and_tightens(case, seed):
    net, region = case
    pl = lower(net)
    inp = InputSet.of(region)
    zs = pl.pre_activations(_samples(net, region, seed))
    ib = interval_bounds(pl, inp)
    lb = linear_bounds(pl, inp)
    pb = lp_bounds(pl, inp)
    assert (ib.method, lb.method, pb.method) == (
        BoundMethod.INTERVAL,
        BoundMethod.LINEAR,
        BoundMethod.LP,
    )
    for b in (ib, lb, pb):
        _assert_valid(b, zs)
    _assert_tighter(lb, ib)
    _assert_tighter(pb, lb)
    assert pb.num_unstable(pl) <= lb.num_unstable(pl) <= ib.num_unstable(pl)


@settings(max_examples=10)
@given(conv_networks(), st.sampled_from(["box", "linf", "l2"]), st.integers(0, 2**32 - 1))
def test_bounds_on_conv_networks(net, kind, seed):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, net.input_shape)
    unit = Box.uniform(0, 1, net.input_shape)
    region = {
        "box": Box(np.clip(c - 0.05, 0, 1), np.clip(c + 0.05, 0, 1)),
        "linf": Ball(c, 0.05, Norm.LINF, unit),
        "l2": Ball(c, 0.3, Norm.L2, unit),
    }[kind]
    pl = lower(net)
    inp = InputSet.of(region)
    zs = pl.pre_activations(_samples(net, region, seed, 200))
    ib, lb = interval_bounds(pl, inp), linear_bounds(pl, inp)
    _assert_valid(ib, zs)
    _assert_valid(lb, zs)
    _assert_tighter(lb, ib)


def test_methods_differ_somewhere():
    """On a deep enough net the tighter methods are strictly tighter (the checks above would
    pass for three copies of the interval bounds)."""
    rng = np.random.default_rng(3)
    import torch
    from torch import nn

    seq = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.from_numpy(rng.standard_normal(m.weight.shape)))
    net = Network.from_torch(seq, (3,))
    pl = lower(net)
    inp = InputSet.of(Box.uniform(-1, 1, (3,)))
    ib, lb, pb = (compute_bounds(pl, inp, m) for m in BoundMethod)
    width = [sum(float((b.hi[k] - b.lo[k]).sum()) for k in range(pl.depth)) for b in (ib, lb, pb)]
    assert width[1] < width[0] and width[2] < width[1]


@settings(max_examples=60)
@given(nets_and_regions(), st.integers(0, 2**32 - 1), st.sampled_from(list(BoundMethod)))
def test_back_substitute_lower_bounds_hold_at_samples(case, seed, method):
    net, region = case
    pl = lower(net)
    inp = InputSet.of(region)
    bounds = compute_bounds(pl, inp, method)
    x = _samples(net, region, seed)
    zs = pl.pre_activations(x)
    rng = np.random.default_rng(seed)
    for k in range(pl.depth):
        spec = rng.standard_normal((3, pl.weights[k].shape[0]))
        offset = rng.standard_normal(3)
        lb = back_substitute(pl, inp, bounds, k, spec, offset)
        assert lb.coef.shape == (3, pl.input_size) and lb.value.shape == (3,)
        actual = zs[k] @ spec.T + offset  # (n, 3)
        linear = x @ lb.coef.T + lb.const  # the linear lower bound, pointwise
        assert np.all(actual >= lb.value)
        assert np.all(actual >= linear - TOL * (1 + np.abs(actual)))
        assert np.all(linear >= lb.value)


def test_back_substitute_is_exact_on_a_linear_network():
    W = np.array([[1.0, -2.0], [0.5, 3.0]])
    from verispec.network import Dense

    pl = lower(Network((Dense(W, np.array([0.25, -1.0])),), (2,)))
    inp = InputSet.of(Box(np.array([0.0, -1.0]), np.array([1.0, 1.0])))
    b = interval_bounds(pl, inp)
    lb = back_substitute(pl, inp, b, 0, np.eye(2), np.zeros(2))
    np.testing.assert_allclose(lb.value, [0.25 - 2.0, -1.0 - 3.0], atol=1e-8)
    np.testing.assert_allclose(lb.coef, W)


def test_unbounded_polytope_without_box_raises():
    with pytest.raises(SpecError, match="unbounded"):
        InputSet.of(Polytope(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0])))


def test_empty_polytope_without_box_is_empty_not_unbounded():
    A = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    b = np.array([-1.0, 0.0, 1.0, 1.0])  # x0 <= -1 and x0 >= 0
    assert InputSet.of(Polytope(A, b)).empty


@given(unit_points(3), st.sampled_from([0.05, 0.3, 0.7]))
def test_input_set_of_every_region(c, eps):
    unit = Box.uniform(0, 1, (3,))
    box = InputSet.of(Box(c - eps, c + eps))
    np.testing.assert_array_equal(box.lo, c - eps)
    np.testing.assert_array_equal(box.hi, c + eps)
    assert box.center is None and box.l2_eps is None and box.A is None and not box.empty

    linf = InputSet.of(Ball(c, eps, Norm.LINF, unit))
    np.testing.assert_array_equal(linf.lo, np.maximum(c - eps, 0))
    np.testing.assert_array_equal(linf.hi, np.minimum(c + eps, 1))
    assert linf.l2_eps is None

    l2 = InputSet.of(Ball(c, eps, Norm.L2))
    np.testing.assert_array_equal(l2.lo, c - eps)
    np.testing.assert_array_equal(l2.center, c)
    assert l2.l2_eps == eps
    l2d = InputSet.of(Ball(c, eps, Norm.L2, unit))
    np.testing.assert_array_equal(l2d.hi, np.minimum(c + eps, 1))

    A = np.array([[1.0, 1.0, 1.0]])
    poly = InputSet.of(Polytope(A, np.array([1.0]), Box(c - eps, c + eps)))
    np.testing.assert_array_equal(poly.lo, c - eps)
    np.testing.assert_array_equal(poly.A, A)
    np.testing.assert_array_equal(poly.b, [1.0])


def test_input_set_of_a_bounded_polytope_is_its_bounding_box():
    # the triangle x >= 0, y >= 0, x + 2 y <= 2: bounding box [0, 2] x [0, 1]
    A = np.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 2.0]])
    inp = InputSet.of(Polytope(A, np.array([0.0, 0.0, 2.0])))
    np.testing.assert_allclose(inp.lo, [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(inp.hi, [2.0, 1.0], atol=1e-6)
    assert np.all(inp.lo <= 0.0) and np.all(inp.hi >= [2.0, 1.0])  # padded outward


def test_input_set_rejects_other_regions():
    with pytest.raises(UnsupportedError):
        InputSet.of(object())


@given(unit_points(3), st.integers(0, 2**32 - 1))
def test_input_set_lower_is_a_valid_lower_bound(c, seed):
    rng = np.random.default_rng(seed)
    region = Ball(c, 0.4, Norm.L2, Box.uniform(0, 1, (3,)))
    inp = InputSet.of(region)
    M = rng.standard_normal((4, 3))
    x = sample_region(region, 500, rng)
    assert np.all(x @ M.T >= inp.lower(M) - 1e-12)
    # with the l2 ball the bound beats the box bound for some direction
    box_only = InputSet(inp.lo, inp.hi)
    assert np.all(inp.lower(M) >= box_only.lower(M))


def test_with_box_and_empty():
    inp = InputSet(np.zeros(2), np.ones(2), A=np.ones((1, 2)), b=np.ones(1))
    half = inp.with_box(np.array([0.5, -1.0]), np.array([2.0, 0.5]))
    np.testing.assert_array_equal(half.lo, [0.5, 0.0])
    np.testing.assert_array_equal(half.hi, [1.0, 0.5])
    np.testing.assert_array_equal(half.A, inp.A)
    assert not half.empty
    assert inp.with_box(np.array([2.0, 0.0]), np.array([3.0, 1.0])).empty
