"""Lowering to the piecewise-linear normal form: exact on every layer kind, well-formed masks,
and a clear error for convolutions too large to densify."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from verispec.solvers.bounds import InputSet, deviation, interval_bounds
from verispec.solvers.lowering import PiecewiseLinearNet, lower

from tests.strategies import (
    LOWERING_REGRESSION,
    conv_networks,
    dense_networks,
    hard_networks,
    image_networks,
    small_networks,
)
from verispec.errors import UnsupportedError
from verispec.exact_forward import exact_logits
from verispec.layers import GroupSort, MinMax
from verispec.network import Conv2d, Dense, Flatten, Network, ReLU


def _inputs(network: Network, seed: int, n: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, size=(n, *network.input_shape))
    x[0] = 0.0  # every compare-swap ties at the origin when biases vanish
    return x


def _assert_exact(network: Network, seed: int) -> None:
    x = _inputs(network, seed)
    pl = lower(network)
    got = pl.forward(x.reshape(len(x), -1))
    np.testing.assert_allclose(got, network.forward64(x), rtol=1e-9, atol=1e-9)


@given(dense_networks(), st.integers(0, 2**32 - 1))
def test_dense_networks_lower_exactly(network, seed):
    _assert_exact(network, seed)


@given(small_networks(activations=("relu", "minmax")), st.integers(0, 2**32 - 1))
def test_small_networks_lower_exactly(network, seed):
    _assert_exact(network, seed)


@settings(max_examples=15)
@given(conv_networks(), st.integers(0, 2**32 - 1))
def test_conv_networks_lower_exactly(network, seed):
    _assert_exact(network, seed)


@settings(max_examples=15)
@given(image_networks(), st.integers(0, 2**32 - 1))
def test_normalize_conv_groupsort_avgpool_flatten_lower_exactly(network, seed):
    kinds = {layer.kind for layer in network.layers}
    assert {"normalize", "conv2d", "avgpool2d", "flatten", "dense"} <= kinds
    _assert_exact(network, seed)


def test_groupsort4_on_ties_and_all_orders():
    """GroupSort(4) after the identity: every permutation of 4 distinct values (and ties) sorts."""
    seq = nn.Sequential(nn.Linear(4, 4), GroupSort(4), nn.Linear(4, 4))
    with torch.no_grad():
        for lin in (seq[0], seq[2]):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    net = Network.from_torch(seq, (4,))
    perms = np.array(list(itertools.permutations([0.1, 2.0, -3.0, 0.5])))
    ties = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 0.0, -1.0]])
    x = np.vstack([perms, ties])
    got = lower(net).forward(x)
    np.testing.assert_allclose(got, np.sort(x, axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, net.forward64(x), rtol=0, atol=1e-12)


@given(small_networks(), st.integers(0, 2**32 - 1))
def test_pre_activations_chain_to_the_output(network, seed):
    pl = lower(network)
    x = _inputs(network, seed).reshape(32, -1)
    zs = pl.pre_activations(x)
    assert len(zs) == pl.depth
    for k, z in enumerate(zs):
        assert z.shape == (32, pl.weights[k].shape[0])
    np.testing.assert_array_equal(zs[-1], pl.forward(x))
    # h_k recomputed from z_k feeds z_{k+1}
    for k in range(pl.depth - 1):
        h = np.where(pl.relu[k], np.maximum(zs[k], 0), zs[k])
        np.testing.assert_allclose(zs[k + 1], h @ pl.weights[k + 1].T + pl.biases[k + 1])


def _hidden_widths(network: Network) -> list[int]:
    return [layer.weight.shape[0] for layer in network.layers[:-1] if isinstance(layer, Dense)]


@given(dense_networks())
def test_masks_and_shapes(network):
    """ReLU: one fully masked layer per hidden layer. GroupSort(g) on width w: g rounds of
    odd-even transposition sort (one for MinMax); each round's layer holds its compare-swaps
    (one ReLU each) followed by the w pass-through values."""
    pl = lower(network)
    widths = _hidden_widths(network)
    acts = [layer for layer in network.layers if layer.kind in ("relu", "groupsort")]
    assert len(pl.relu) == pl.depth - 1
    assert pl.input_size == network.input_size
    assert pl.num_outputs == network.num_classes
    for k, mask in enumerate(pl.relu):
        assert mask.dtype == bool and mask.shape == (pl.weights[k].shape[0],)
        assert not mask.flags.writeable
    for w in pl.weights:
        assert not w.flags.writeable
    if not acts:
        assert pl.depth == 1
        return
    if acts[0].kind == "relu":
        assert pl.depth == len(widths) + 1
        assert all(m.all() for m in pl.relu)
        assert pl.num_relus == sum(widths)
        return
    g = acts[0].group_size
    rounds = g if g > 2 else 1
    swaps_per_group = sum(len(range(r % 2, g - 1, 2)) for r in range(g))
    assert pl.depth == rounds * len(widths) + 1
    assert pl.num_relus == sum(w // g * swaps_per_group for w in widths)
    for mask in pl.relu:
        n_swaps = int(mask.sum())
        assert mask.shape[0] - n_swaps in widths  # the pass-through values
        assert mask[:n_swaps].all() and not mask[n_swaps:].any()


def test_minmax_is_one_relu_per_pair():
    seq = nn.Sequential(nn.Linear(3, 6), MinMax(), nn.Linear(6, 2))
    pl = lower(Network.from_torch(seq, (3,)))
    assert pl.depth == 2 and pl.num_relus == 3
    assert pl.relu[0].tolist() == [True] * 3 + [False] * 6


def test_linear_only_network_is_one_affine_map():
    seq = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    net = Network.from_torch(seq, (3,))
    pl = lower(net)
    assert pl.depth == 1 and pl.num_relus == 0 and pl.relu == ()
    W = seq[1].weight.double() @ seq[0].weight.double()
    np.testing.assert_allclose(pl.weights[0], W.detach().numpy(), atol=1e-12)


def test_too_large_convolution_raises():
    conv = Conv2d(np.ones((8, 1, 3, 3)), np.zeros(8), 1, 1)
    net = Network((conv, Flatten(), Dense(np.zeros((2, 8 * 64 * 64)), np.zeros(2))), (1, 64, 64))
    with pytest.raises(UnsupportedError, match="too large"):
        lower(net)


def test_piecewise_linear_net_validates_its_shapes():
    w1, b1 = np.ones((3, 2)), np.zeros(3)
    w2, b2 = np.ones((1, 3)), np.zeros(1)
    PiecewiseLinearNet([w1, w2], [b1, b2], [np.ones(3, bool)])  # fine
    with pytest.raises(ValueError, match="ReLU mask"):
        PiecewiseLinearNet([w1, w2], [b1, b2], [])
    with pytest.raises(ValueError, match="do not match"):
        PiecewiseLinearNet([w1, w2], [np.zeros(2), b2], [np.ones(3, bool)])
    with pytest.raises(ValueError, match="inputs after"):
        PiecewiseLinearNet([w1, np.ones((1, 4))], [b1, b2], [np.ones(3, bool)])
    with pytest.raises(ValueError, match="ReLU mask of shape"):
        PiecewiseLinearNet([w1, w2], [b1, b2], [np.ones(2, bool)])
    with pytest.raises(ValueError, match="one bias per weight"):
        PiecewiseLinearNet([], [], [])


def _exact_lowered(pl: PiecewiseLinearNet, x: np.ndarray) -> list[Fraction]:
    """The lowered network's outputs at ``x`` in exact rational arithmetic."""
    h = [Fraction(float(v)) for v in x.ravel()]
    for k in range(pl.depth):
        W, b = pl.weights[k], pl.biases[k]
        z = [
            sum((Fraction(float(w)) * v for w, v in zip(W[i], h, strict=True)), Fraction(0))
            + Fraction(float(b[i]))
            for i in range(W.shape[0])
        ]
        if k < len(pl.relu):
            z = [max(v, Fraction(0)) if m else v for v, m in zip(z, pl.relu[k], strict=True)]
        h = z
    return h


@settings(max_examples=40, deadline=None)
@given(hard_networks(), st.integers(0, 2**32 - 1))
@example(LOWERING_REGRESSION, 0)
def test_the_deviation_bounds_the_lowering_error_exactly(network, seed):
    """At points of [0, 1]^d, the exact network's outputs and the exact outputs of the lowered
    network (composed in float64) differ by at most ``bounds.deviation``: the lowering's error
    bounds hold, in rational arithmetic."""
    pl = lower(network)
    rng = np.random.default_rng(seed)
    for x in rng.uniform(0, 1, (3, network.input_size)):
        inp = InputSet(x, x)
        dev = deviation(pl, inp, interval_bounds(pl, inp))
        exact = exact_logits(network, x.reshape(network.input_shape))
        low = _exact_lowered(pl, x)
        gap = [abs(a - b) for a, b in zip(exact, low, strict=True)]
        if dev is None:
            assert all(g == 0 for g in gap)
        else:
            assert all(g <= Fraction(float(d)) for g, d in zip(gap, dev[-1], strict=True))


def test_the_regression_network_carries_a_lowering_error_and_exact_ones_do_not():
    assert not lower(LOWERING_REGRESSION).exact
    plain = Network(
        (Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(np.ones((1, 2)), np.zeros(1))), (2,)
    )
    assert lower(plain).exact
