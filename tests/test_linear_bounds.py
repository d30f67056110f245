"""IBP, CROWN and alpha-CROWN (verispec/solvers/propagation.py) and the crown engine: every
bound holds on sampled and attacked points, each method is at least as tight as the one before
it, CROWN is exact where no ReLU is unstable, and the ``crown`` engine's options and verdicts."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from verispec.solvers.bounds import InputSet, to_sets
from verispec.solvers.lowering import lower
from verispec.solvers.propagation import (
    Method,
    TorchNet,
    atom_bounds,
    crown_bounds,
    gradient_bound,
)

import verispec as vs
from tests.strategies import (
    LOWERING_REGRESSION,
    cancelling_networks,
    hard_networks,
    regions,
    small_networks,
)
from verispec.engines.base import engine_class
from verispec.engines.linear_bounds import LinearBoundsConfig, LinearBoundsEngine
from verispec.errors import ConfigError
from verispec.exact_forward import exact_logits
from verispec.network import Dense, Network, ReLU
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.results import Verdict

CPU = torch.device("cpu")


def _samples(region, n_in: int, rng: np.random.Generator, count: int = 300) -> np.ndarray:
    """Points of the region: uniform in its box, corners, and (balls) on the sphere."""
    inputs = InputSet.of(region)
    lo, hi = inputs.lo, inputs.hi
    pts = [rng.uniform(lo, hi, (count, n_in)), np.where(rng.random((count, n_in)) < 0.5, lo, hi)]
    if isinstance(region, Ball) and region.norm is Norm.L2:
        d = rng.standard_normal((count, n_in))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pts.append(region.center.ravel() + region.eps * d)
    x = np.concatenate(pts)
    keep = np.array([region.contains(p) for p in x])
    return x[keep]


def _attacked(
    network: Network, region, C: np.ndarray, d: np.ndarray, start: np.ndarray
) -> np.ndarray:
    """Projected signed-gradient descent on each atom from ``start``: points that push the
    atoms down (kept only where they stay in the region)."""
    module = network.module(torch.float64)
    inputs = InputSet.of(region)
    out = []
    for row in range(C.shape[0]):
        x = torch.tensor(start.copy(), requires_grad=True)
        step = 0.1 * float(np.max(inputs.hi - inputs.lo, initial=0.0))
        for _ in range(20):
            value = module(x.reshape(1, *network.input_shape))[0] @ torch.from_numpy(C[row])
            (g,) = torch.autograd.grad(value, x)
            with torch.no_grad():
                x -= step * torch.sign(g)
                x.copy_(torch.clamp(x, torch.from_numpy(inputs.lo), torch.from_numpy(inputs.hi)))
        out.append(x.detach().numpy())
    pts = np.array(out)
    return pts[np.array([region.contains(p) for p in pts], dtype=bool)]


def _bounds(network: Network, region, C: np.ndarray, d: np.ndarray, method: Method) -> np.ndarray:
    net = TorchNet.of(lower(network), CPU)
    sets = to_sets([InputSet.of(region)], CPU)
    C_, d_ = torch.from_numpy(C[None]), torch.from_numpy(d[None])
    value = atom_bounds(net, sets, C_, d_, method, alpha_steps=10)
    return value[0].detach().numpy()


@st.composite
def _problems(draw):
    network = draw(small_networks() | hard_networks())
    n_in = int(np.prod(network.input_shape))
    region = draw(regions(n_in, kinds=("box", "linf", "l2")))
    m = network.num_classes
    C = np.concatenate([np.eye(m), -np.eye(m)])
    if m > 1:
        C = np.concatenate([C, np.eye(m)[:1] - np.eye(m)[1:]])  # y_0 - y_j: spec-like atoms
    return network, region, C


@settings(deadline=None, max_examples=40)
@given(_problems(), st.integers(0, 2**32 - 1))
def test_every_bound_holds_on_sampled_and_attacked_points_and_each_method_is_tighter(problem, seed):
    network, region, C = problem
    n_in = int(np.prod(network.input_shape))
    d = np.zeros(C.shape[0])
    if isinstance(region, Polytope):
        return
    rng = np.random.default_rng(seed)
    bounds = {m: _bounds(network, region, C, d, m) for m in Method}
    x = _samples(region, n_in, rng)
    if len(x):
        x = np.concatenate([x, _attacked(network, region, C, d, x[0])])
    y = network.forward64(x.reshape(len(x), *network.input_shape)) if len(x) else np.zeros((0, 1))
    for method, lower_bound in bounds.items():
        assert np.all(np.isfinite(lower_bound) | (lower_bound == -np.inf))
        if len(x):
            worst = (y @ C.T + d).min(axis=0)
            assert np.all(lower_bound <= worst), (method, lower_bound - worst)
    assert np.all(bounds[Method.CROWN] >= bounds[Method.IBP])
    assert np.all(bounds[Method.ALPHA_CROWN] >= bounds[Method.CROWN])


def test_crown_is_exact_without_unstable_neurons():
    rng = np.random.default_rng(3)
    W1, W2 = rng.standard_normal((6, 3)), rng.standard_normal((4, 6))
    # a large bias keeps every ReLU active on the box: the network is affine there
    net = Network([Dense(W1, np.full(6, 50.0)), ReLU(), Dense(W2, rng.standard_normal(4))], (3,))
    box = Box(np.full(3, -1.0), np.full(3, 1.0))
    C = np.eye(4)[:1] - np.eye(4)[1:]
    A = C @ W2 @ W1  # the atoms' input coefficients, exactly
    exact = C @ (W2 @ np.full(6, 50.0) + net.layers[2].bias) - np.abs(A).sum(axis=1)
    got = _bounds(net, box, C, np.zeros(3), Method.CROWN)
    assert np.all(got <= exact) and np.allclose(got, exact, rtol=1e-7, atol=1e-7)
    ibp = _bounds(net, box, C, np.zeros(3), Method.IBP)
    assert np.all(ibp < got - 1e-3)  # interval arithmetic is loose on the same problem


def test_the_engine_certifies_falsifies_and_takes_its_options():
    assert engine_class("crown") is LinearBoundsEngine
    assert LinearBoundsConfig(method="alpha-crown").kind is Method.ALPHA_CROWN
    with pytest.raises(ConfigError, match="option 'method'"):
        LinearBoundsConfig(method="beta")
    net = Network([Dense(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2))], (2,))
    xs = np.array([[0.9, 0.1], [0.5, 0.5 - 1e-3]])
    spec = vs.LocalRobustness(0.1, Norm.LINF)
    for method in Method:
        result = LinearBoundsEngine(LinearBoundsConfig(method=method.value)).check(net, spec, xs)
        assert result[0].verdict is Verdict.CERTIFIED  # margin 0.8 > 2 * 0.1
        assert result[1].verdict is Verdict.UNKNOWN  # the ball crosses the boundary
    ordering = vs.SafeOrdering(
        Box(np.array([0.6, 0.0]), np.array([1.0, 0.4])),
        vs.Predicate((vs.Clause.orderings([(0, 1)], 2),)),
    )
    assert LinearBoundsEngine().check(net, ordering)[0].verdict is Verdict.CERTIFIED


@settings(max_examples=30, deadline=None)
@given(
    hard_networks() | cancelling_networks(),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Method)),
)
@example(LOWERING_REGRESSION, 0, Method.CROWN)
def test_bounds_at_a_point_contain_its_exact_outputs(network, seed, method):
    """On the box [x, x], every method's bounds of the outputs contain the exact (rational)
    outputs of the network at x: the lowering's rounding (composed layers that cancel,
    rounded reciprocals) and the float64 propagation are both covered."""
    x = np.random.default_rng(seed).uniform(0, 1, network.input_size)
    m = network.num_classes
    C = np.vstack([np.eye(m), -np.eye(m)])
    low = _bounds(network, Box(x, x), C, np.zeros(2 * m), method)
    exact = exact_logits(network, x.reshape(network.input_shape))
    for i in range(m):
        assert Fraction(float(low[i])) <= exact[i] <= -Fraction(float(low[m + i]))


@settings(deadline=None)
@given(small_networks() | hard_networks(cancelling=False), st.integers(0, 2**32 - 1))
def test_the_gradient_bound_covers_the_gradient_at_sampled_points(network, seed):
    """``gradient_bound`` (the branch and bound's split heuristic) bounds |d atom / dx| at
    every sampled point of the box: a ReLU it drops is inactive on the whole box."""
    n_in = int(np.prod(network.input_shape))
    rng = np.random.default_rng(seed)
    region = Box(*np.sort(rng.uniform(0.0, 1.0, (2, n_in)), axis=0))
    m = network.num_classes
    C = np.concatenate([np.eye(m), np.eye(m)[:1] - np.eye(m)[1:]])
    net = TorchNet.of(lower(network), CPU)
    sets = to_sets([InputSet.of(region)], CPU)
    _, his = crown_bounds(net, sets)
    bound = gradient_bound(net, his, torch.from_numpy(C[None]))[0].numpy()
    module = network.module(torch.float64)
    x = torch.tensor(rng.uniform(region.lo, region.hi, (20, n_in)), requires_grad=True)
    y = module(x.reshape(-1, *network.input_shape)) @ torch.from_numpy(C.T)
    for row in range(C.shape[0]):
        (g,) = torch.autograd.grad(y[:, row].sum(), x, retain_graph=True)
        slack = 1e-9 * (1 + bound[row])
        assert np.all(g.abs().numpy() <= bound[row] + slack), (row, g, bound[row])
