"""The self-correcting layer against brute force over every permutation of the logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from verispec.errors import SpecError, UnsupportedError
from verispec.network import Dense, Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box, Polytope
from verispec.selfcorrect import SelfCorrecting
from verispec.specs import SafeOrdering

DIMS = 2
"""Inputs of the test networks: 2 coordinates."""


def _ordering(disjuncts: list[list[tuple[int, int]]], n: int, region=None, pred=None):
    post = Predicate(tuple(Clause.orderings(d, n) for d in disjuncts))
    box = region if region is not None else Box(np.full(DIMS, -1.0), np.full(DIMS, 1.0))
    return SafeOrdering(box, post, pred)


@st.composite
def constraint_sets(draw, max_classes: int = 6):
    """n classes and 1-4 constraints of 1-3 disjuncts of 1-3 orderings each: cycles within
    and across constraints come up often (contradictory sets)."""
    n = draw(st.integers(2, max_classes))
    pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])
    clause = st.lists(pair, min_size=1, max_size=3, unique=True)
    constraint = st.lists(clause, min_size=1, max_size=3)
    return n, draw(st.lists(constraint, min_size=1, max_size=4))


def _logits(draw, n: int, rows: int) -> np.ndarray:
    """Distinct logits per row: near-ties at 1e-9 relative, huge and tiny scales."""
    scale = draw(st.sampled_from([1.0, 1e-9, 1e6, 1e-300, 1e300]))
    out = []
    for _ in range(rows):
        base = draw(st.permutations(list(range(n))))
        gap = draw(st.sampled_from([1.0, 1e-9]))
        out.append(np.array(base, dtype=np.float64) * gap * scale + draw(st.floats(-1, 1)) * scale)
    return np.array(out)


def _layer(n: int, sets, top: str = "max") -> SelfCorrecting:
    net = Network([Dense(np.zeros((n, DIMS)), np.zeros(n))], (DIMS,))
    return SelfCorrecting(net, [_ordering(d, n) for d in sets], top=top)


def _holds(sets, mask, z) -> bool:
    """Every active constraint has a disjunct whose orderings z satisfies strictly."""
    return all(
        any(all(z[a] > z[b] for a, b in d) for d in disjuncts)
        for disjuncts, on in zip(sets, mask, strict=True)
        if on
    )


@settings(deadline=None)
@given(st.data())
def test_the_layer_matches_brute_force_over_all_permutations(data):
    n, sets = data.draw(constraint_sets())
    rows = data.draw(st.integers(1, 6))
    y = _logits(data.draw, n, rows)
    masks = np.array(
        data.draw(
            st.lists(
                st.lists(st.booleans(), min_size=len(sets), max_size=len(sets)),
                min_size=rows,
                max_size=rows,
            )
        )
    )
    top_is = data.draw(st.sampled_from(["max", "min"]))
    sign = 1.0 if top_is == "max" else -1.0  # sign * scores: the prediction is the argmax
    layer = _layer(n, sets, top_is)
    yt = torch.from_numpy(y)
    got = layer.revise_masked(torch.from_numpy(masks), yt)
    out = got.logits.numpy()
    assert out.shape == (rows, n + 1)
    for r in range(rows):
        perms = [y[r][list(p)] for p in itertools.permutations(range(n))]
        good = [z for z in perms if _holds(sets, masks[r], z)]
        abstained = bool(got.abstained[r])
        assert abstained == (not good), (y[r], masks[r])
        assert (np.argmax(sign * out[r]) == n) == abstained  # the abstain score is the top iff
        if abstained:
            assert np.array_equal(out[r, :n], y[r])
            continue
        z = out[r, :n]
        assert sign * out[r, n] < (sign * z).min()
        assert _holds(sets, masks[r], z), (y[r], z)
        if _holds(sets, masks[r], y[r]):
            assert np.array_equal(z, y[r]) and not got.changed[r]
        else:
            assert got.changed[r]
            # a permutation of y's values, except that values made strictly decreasing move
            # by a few ulps at most
            assert np.allclose(np.sort(z), np.sort(y[r]), rtol=1e-12, atol=0)
        top = int(np.argmax(sign * y[r]))
        if any(int(np.argmax(sign * g)) == top for g in good):
            assert int(np.argmax(sign * z)) == top
        # batched results equal row-by-row results
        alone = layer.revise_masked(torch.from_numpy(masks[r : r + 1]), yt[r : r + 1])
        assert torch.equal(alone.logits[0], got.logits[r])


@settings(deadline=None)
@given(constraint_sets(max_classes=5), st.data())
def test_ties_never_break_a_constraint(spec, data):
    """With tied logits the layer still answers only with outputs that satisfy every active
    constraint strictly (tied values are spread by an ulp), or abstains."""
    n, sets = spec
    y = np.array([data.draw(st.lists(st.sampled_from([0.0, 1.0, -2.5]), min_size=n, max_size=n))])
    mask = np.ones((1, len(sets)), dtype=bool)
    got = _layer(n, sets).revise_masked(torch.from_numpy(mask), torch.from_numpy(y))
    if not got.abstained[0]:
        assert _holds(sets, mask[0], got.logits[0, :n].numpy())


def test_preconditions_box_polytope_and_predicted_in():
    n = 3
    net = Network([Dense(np.zeros((n, DIMS)), np.zeros(n))], (DIMS,))
    left = Box(np.array([-1.0, -1.0]), np.array([0.0, 1.0]))
    half = Polytope(np.array([[1.0, 1.0]]), np.array([0.0]))  # x0 + x1 <= 0
    constraints = [
        _ordering([[(1, 0)]], n, left),
        _ordering([[(2, 1)]], n, half, pred=[0]),
    ]
    layer = SelfCorrecting(net, constraints)
    x = torch.tensor([[-0.5, 0.2], [0.5, 0.2], [-0.9, 0.1], [0.5, -0.9]], dtype=torch.float64)
    y = torch.tensor(
        [[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.0, 3.0, 0.0], [3.0, 1.0, 2.0]], dtype=torch.float64
    )
    active = layer.active(x, y).numpy()
    # row 0: in the box and x0 + x1 <= 0 with class 0 on top; row 1: neither region;
    # row 2: both regions, but class 1 on top; row 3: the half plane only
    assert active.tolist() == [[True, True], [False, False], [True, False], [False, True]]
    tie = torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64)
    assert layer.active(x[:1], tie).numpy().tolist() == [[True, True]]  # a tie counts as in


def test_the_layer_sits_on_a_network_and_gradients_flow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIMS, 8), nn.ReLU(), nn.Linear(8, 4))
    layer = SelfCorrecting(model, [_ordering([[(3, 0), (3, 1)]], 4)], input_shape=(DIMS,))
    x = torch.rand(64, DIMS) * 2 - 1
    out = layer(x)
    assert out.shape == (64, 5)
    z = out[:, :4].detach().numpy()
    assert np.all((z[:, 3] > z[:, 0]) & (z[:, 3] > z[:, 1]))
    loss = nn.functional.cross_entropy(out, torch.zeros(64, dtype=torch.long))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_non_ordering_atoms_and_too_many_choices_are_refused():
    n = 3
    bound = Predicate((Clause(np.array([[1.0, 0.0, 0.0]]), np.array([-2.0])),))
    box = Box(np.zeros(DIMS), np.ones(DIMS))
    net = Network([Dense(np.zeros((n, DIMS)), np.zeros(n))], (DIMS,))
    with pytest.raises(SpecError, match=r"constraint 0: clause 0, atom 0 is not an ordering"):
        SelfCorrecting(net, [SafeOrdering(box, bound)])
    many = [_ordering([[(1, 0)], [(2, 0)], [(0, 1)], [(2, 1)]], n) for _ in range(7)]
    with pytest.raises(UnsupportedError, match="disjunct combinations"):
        SelfCorrecting(net, many)
