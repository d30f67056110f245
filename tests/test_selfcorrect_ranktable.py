"""The self-correcting layer's fast path (answers by ranking) against its general path, on the
inputs where they could part: ties, NaN and infinite logits, spans that overflow, float32
inputs on the edges of float64 preconditions, predicted-in gates, and layers too large for
the table."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verispec.network import Dense, Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box
from verispec.selfcorrect import SelfCorrecting
from verispec.selfcorrect.layer import _down32, _up32
from verispec.selfcorrect.ranktable import MAX_CLASSES
from verispec.specs import SafeOrdering

DIMS = 2

EDGES = [-1.0, -0.1, 0.0, 1e-40, 0.1, 1.0 / 3.0, 1.0]
"""Box bounds: float64 values float32 cannot hold (0.1, 1/3, a float32 subnormal's
neighbourhood) and ones it can."""


def _near(v: float) -> list[float]:
    """v and the float32 values just around it."""
    f = np.float32(v)
    return [
        v,
        float(f),
        float(np.nextafter(f, np.float32(-1))),
        float(np.nextafter(f, np.float32(1))),
    ]


@st.composite
def layers(draw):
    n = draw(st.integers(2, MAX_CLASSES + 1))  # one past the table: the general path alone
    pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])
    clause = st.lists(pair, min_size=1, max_size=3, unique=True)
    constraints = []
    for _ in range(draw(st.integers(1, 4))):
        disjuncts = draw(st.lists(clause, min_size=1, max_size=3))
        lo = np.array([draw(st.sampled_from(EDGES)) for _ in range(DIMS)])
        hi = np.maximum(lo, [draw(st.sampled_from(EDGES)) for _ in range(DIMS)])
        pred = draw(st.none() | st.sets(st.integers(0, n - 1), min_size=1))
        post = Predicate(tuple(Clause.orderings(d, n) for d in disjuncts))
        constraints.append(SafeOrdering(Box(lo, hi), post, pred))
    top = draw(st.sampled_from(["max", "min"]))
    net = Network([Dense(np.zeros((n, DIMS)), np.zeros(n))], (DIMS,))
    return n, SelfCorrecting(net, constraints, top=top)


def _rows(draw, n: int, rows: int) -> np.ndarray:
    special = [0.0, -0.0, 1.0, 1e-9, 1e-310, 3e38, -3e38, 1e308, np.inf, -np.inf, np.nan]
    value = st.floats(-4, 4) | st.sampled_from(special) | st.integers(-3, 3).map(float)
    return np.array([[draw(value) for _ in range(n)] for _ in range(rows)])


@settings(deadline=None, max_examples=60)
@given(layers(), st.data())
def test_the_fast_path_equals_the_general_path(spec, data):
    n, layer = spec
    rows = data.draw(st.integers(1, 8))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    coords = [c for v in EDGES for c in _near(v)]
    x = torch.tensor(
        [[data.draw(st.sampled_from(coords)) for _ in range(DIMS)] for _ in range(rows)],
        dtype=dtype,
    )
    y = torch.from_numpy(_rows(data.draw, n, rows)).to(dtype)
    got = layer.revise(x, y)
    # the reference: the preconditions by float64 comparisons of the input as given, then
    # the general path
    x64 = x.double().numpy()
    inside = np.array(
        [
            [
                bool(np.all((c.precondition.lo <= p) & (p <= c.precondition.hi)))
                for c in layer.constraints
            ]
            for p in x64
        ]
    ).reshape(rows, len(layer.constraints))
    want = layer.revise_masked(layer.gate(torch.from_numpy(inside), y), y)
    np.testing.assert_array_equal(got.logits.numpy(), want.logits.numpy())
    assert torch.equal(got.changed, want.changed) and torch.equal(got.abstained, want.abstained)
    assert torch.equal(layer.active(x, y), layer.gate(torch.from_numpy(inside), y))


@given(
    st.floats(allow_nan=False) | st.sampled_from([1e-46, 1e-45, 3.4028235e38, 3.4028236e38]),
    st.floats(width=32, allow_nan=False),
)
def test_bounds_rounded_inward_to_float32_decide_as_float64_does(v, x):
    bound = np.array([v])
    x32 = np.float32(x)
    assert (x32 >= bound[0]) == (x32 >= _up32(bound)[0])
    assert (x32 <= bound[0]) == (x32 <= _down32(bound)[0])


def test_a_batch_builds_each_mask_once_and_agrees_across_batches():
    n = 4
    box = Box(np.zeros(DIMS), np.ones(DIMS))
    post = Predicate((Clause.orderings([(3, 0)], n),))
    net = Network([Dense(np.zeros((n, DIMS)), np.zeros(n))], (DIMS,))
    layer = SelfCorrecting(net, [SafeOrdering(box, post)])
    x = torch.tensor([[0.5, 0.5], [2.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    both = layer.revise(x, y)
    assert both.changed.tolist() == [True, False]
    z = both.logits[0, :n]
    assert z[3] > z[0] and int(torch.argmax(both.logits[1])) == 0
    for r in range(2):  # row by row, with the table already built
        alone = layer.revise(x[r : r + 1], y[r : r + 1])
        assert torch.equal(alone.logits[0], both.logits[r])
