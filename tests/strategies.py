"""Shared hypothesis strategies: small networks (dense and conv, ReLU / MinMax / GroupSort,
random, near-degenerate and adversarial weights), points and specifications."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from torch import nn

from verispec.layers import GroupSort, MinMax
from verispec.network import Network
from verispec.properties import Clause, Predicate
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

WEIGHT_SCALES = (1e-6, 0.1, 0.5, 1.0, 3.0)


def _weights(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float, style: str
) -> np.ndarray:
    w = rng.standard_normal(shape) * scale / np.sqrt(np.prod(shape[1:]))
    if style == "duplicate" and shape[0] > 1:
        w[1] = w[0]
    elif style == "zero_row":
        w[0] = 0.0
    return w


def _linear(rng: np.random.Generator, n_in: int, n_out: int, scale: float, style: str) -> nn.Linear:
    import torch

    m = nn.Linear(n_in, n_out)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(_weights(rng, (n_out, n_in), scale, style)))
        m.bias.copy_(torch.from_numpy(rng.standard_normal(n_out) * 0.1 * scale))
    return m


def _activation(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "minmax": MinMax(), "groupsort4": GroupSort(4)}[kind]


@st.composite
def dense_networks(draw: st.DrawFn, max_inputs: int = 5, max_width: int = 8) -> Network:
    """An MLP with 0-2 hidden layers (widths multiples of 4 so every activation fits)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_in = draw(st.integers(1, max_inputs))
    classes = draw(st.integers(2, 4))
    depth = draw(st.integers(0, 2))
    act = draw(st.sampled_from(["relu", "minmax", "groupsort4"]))
    scale = draw(st.sampled_from(WEIGHT_SCALES))
    style = draw(st.sampled_from(["random", "random", "duplicate", "zero_row"]))
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        new = 4 * draw(st.integers(1, max_width // 4))
        layers += [_linear(rng, width, new, scale * 2, style), _activation(act)]
        width = new
    layers.append(_linear(rng, width, classes, scale * 2, style))
    return Network.from_torch(nn.Sequential(*layers), (n_in,))


@st.composite
def conv_networks(draw: st.DrawFn) -> Network:
    """Conv (stride 1-2, padding 0-1) -> activation -> Flatten -> Dense on a small image."""
    import torch

    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c_in = draw(st.integers(1, 2))
    side = draw(st.integers(4, 6))
    c_out = 2 * draw(st.integers(1, 2))
    k = draw(st.integers(2, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    act = draw(st.sampled_from(["relu", "minmax"]))
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.standard_normal(conv.weight.shape) * 0.5))
        conv.bias.copy_(torch.from_numpy(rng.standard_normal(c_out) * 0.1))
    out = (side + 2 * pad - k) // stride + 1
    classes = draw(st.integers(2, 3))
    head = _linear(rng, c_out * out * out, classes, 1.0, "random")
    seq = nn.Sequential(conv, _activation(act), nn.Flatten(), head)
    return Network.from_torch(seq, (c_in, side, side))


def points(network: Network, count: int = 6) -> st.SearchStrategy[np.ndarray]:
    """``count`` points in [0, 1]^input_shape (corners and the centre included sometimes)."""
    shape = (count, *network.input_shape)
    return (
        st.integers(0, 2**32 - 1)
        .map(
            lambda s: np.random.default_rng(s).choice(
                [0.0, 0.5, 1.0, np.nan], size=shape, p=[0.1, 0.1, 0.1, 0.7]
            )
        )
        .map(lambda a: np.where(np.isnan(a), np.random.default_rng(0).uniform(0, 1, a.shape), a))
    )


norms = st.sampled_from([Norm.L2, Norm.LINF])
epsilons = st.sampled_from([0.01, 0.05, 0.1, 0.3])


# -- exact solvers: small piecewise-linear networks, regions and all four spec kinds ----------


@st.composite
def small_networks(
    draw: st.DrawFn,
    min_inputs: int = 2,
    max_inputs: int = 4,
    max_hidden: int = 16,
    activations: tuple[str, ...] = ("relu", "minmax"),
) -> Network:
    """A dense net with 1-2 hidden layers (widths multiples of the activation's group size, at
    most ``max_hidden`` hidden units in all) and 2-4 classes: small enough for the exact
    solvers."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_in = draw(st.integers(min_inputs, max_inputs))
    classes = draw(st.integers(2, 4))
    act = draw(st.sampled_from(activations))
    depth = draw(st.integers(1, 2))
    scale = draw(st.sampled_from((0.5, 1.0, 2.0)))
    style = draw(st.sampled_from(["random", "random", "random", "duplicate"]))
    layers: list[nn.Module] = []
    width, left = n_in, max_hidden
    unit = 4 if act == "groupsort4" else 2  # widths fit the activation's groups
    for i in range(depth):
        most = (left - unit * (depth - 1 - i)) // unit  # leave room for the later layers
        new = unit * draw(st.integers(1, max(1, most)))
        left -= new
        layers += [_linear(rng, width, new, scale * 2, style), _activation(act)]
        width = new
    layers.append(_linear(rng, width, classes, scale * 2, style))
    return Network.from_torch(nn.Sequential(*layers), (n_in,))


@st.composite
def image_networks(draw: st.DrawFn) -> Network:
    """Normalize -> Conv2d -> activation (ReLU / MinMax / GroupSort(4)) -> AvgPool2d ->
    Flatten -> Dense -> ReLU -> Dense on a small image: every layer kind of the IR."""
    import torch

    from verispec.layers import Normalize

    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c_in = draw(st.integers(1, 2))
    side = draw(st.integers(4, 6))
    act = draw(st.sampled_from(["relu", "minmax", "groupsort4"]))
    c_out = 4 if act == "groupsort4" else 2 * draw(st.integers(1, 2))
    k = draw(st.integers(2, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.standard_normal(conv.weight.shape) * 0.5))
        conv.bias.copy_(torch.from_numpy(rng.standard_normal(c_out) * 0.1))
    norm = Normalize(
        torch.from_numpy(rng.uniform(0.2, 0.6, c_in)), torch.from_numpy(rng.uniform(0.2, 1.0, c_in))
    )
    out = (side + 2 * pad - k) // stride + 1
    pool = draw(st.integers(1, min(2, out)))
    pooled = (out - pool) // pool + 1
    hidden = draw(st.integers(2, 6))
    classes = draw(st.integers(2, 3))
    seq = nn.Sequential(
        norm,
        conv,
        _activation(act),
        nn.AvgPool2d(pool, pool),
        nn.Flatten(),
        _linear(rng, c_out * pooled * pooled, hidden, 1.0, "random"),
        nn.ReLU(),
        _linear(rng, hidden, classes, 1.0, "random"),
    )
    return Network.from_torch(seq, (c_in, side, side))


def unit_points(n_in: int) -> st.SearchStrategy[np.ndarray]:
    """One point of [0, 1]^n_in (coordinates at 0, 0.5 or 1 now and then)."""

    def point(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        snap = rng.choice([0.0, 0.5, 1.0, np.nan], size=n_in, p=[0.1, 0.1, 0.1, 0.7])
        return np.where(np.isnan(snap), rng.uniform(0, 1, n_in), snap)

    return st.integers(0, 2**32 - 1).map(point)


region_radii = st.sampled_from([0.05, 0.1, 0.2, 0.4])


@st.composite
def regions(
    draw: st.DrawFn, n_in: int, kinds: tuple[str, ...] = ("box", "linf", "l2", "polytope")
) -> Box | Ball | Polytope:
    """A non-empty region around a point of [0, 1]^n_in: a box, an l_inf ball intersected with
    the domain [0, 1], an l2 ball (with or without the domain) or a polytope with a box (the
    point satisfies its constraints, so it is non-empty)."""
    kind = draw(st.sampled_from(kinds))
    c = draw(unit_points(n_in))
    r = draw(region_radii)
    unit = Box.uniform(0.0, 1.0, (n_in,))
    if kind == "box":
        widths = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(0.2, 1.0, n_in)
        return Box(c - r * widths, c + r * widths)
    if kind == "linf":
        return Ball(c, r, Norm.LINF, unit)
    if kind == "l2":
        return Ball(c, r, Norm.L2, draw(st.sampled_from([None, unit])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(1, 3))
    A = rng.standard_normal((rows, n_in))
    b = A @ c + rng.uniform(0.0, 0.5 * r, rows) * np.linalg.norm(A, axis=1)
    return Polytope(A, b, Box(c - r, c + r))


def _groups_covering(rng: np.random.Generator, num_classes: int) -> list[list[int]]:
    """1-3 random groups of classes, every class in at least one (so they often overlap)."""
    count = int(rng.integers(1, 4))
    groups = [
        [int(v) for v in rng.choice(num_classes, int(rng.integers(1, num_classes + 1)), False)]
        for _ in range(count)
    ]
    for cls in range(num_classes):
        if not any(cls in g for g in groups):
            groups[int(rng.integers(count))].append(cls)
    return groups


@st.composite
def point_specs(
    draw: st.DrawFn,
    num_classes: int,
    kinds: tuple[str, ...] = ("LocalRobustness", "RelaxedTopK", "Affinity"),
) -> LocalRobustness | RelaxedTopK | Affinity:
    """A local-robustness, relaxed top-k or affinity spec (groups may overlap) for a model
    with ``num_classes`` classes, of one of ``kinds`` (class names)."""
    kind = draw(st.sampled_from(kinds))
    eps = draw(region_radii)
    norm = draw(norms)
    if kind == "LocalRobustness":
        return LocalRobustness(eps, norm)
    if kind == "RelaxedTopK":
        return RelaxedTopK(draw(st.integers(1, max(1, num_classes - 1))), eps, norm)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return Affinity(_groups_covering(rng, num_classes), eps, norm, allow_overlap=True)


@st.composite
def orderings(draw: st.DrawFn, num_classes: int) -> Predicate:
    """A DNF of 1-2 clauses, each a conjunction of 1-2 orderings y_a > y_b."""
    pairs = [(a, b) for a in range(num_classes) for b in range(num_classes) if a != b]
    clause = st.lists(st.sampled_from(pairs), min_size=1, max_size=2, unique=True)
    chosen = draw(st.lists(clause, min_size=1, max_size=2))
    return Predicate(tuple(Clause.orderings(c, num_classes) for c in chosen))


@st.composite
def safe_orderings(draw: st.DrawFn, n_in: int, num_classes: int) -> SafeOrdering:
    """A safe-ordering spec with a box or a polytope (with a box) precondition, sometimes
    restricted to inputs predicted in a set of classes."""
    pre = draw(regions(n_in, ("box", "polytope")))
    post = draw(orderings(num_classes))
    predicted = draw(
        st.one_of(
            st.none(),
            st.sets(st.integers(0, num_classes - 1), min_size=1, max_size=num_classes - 1),
        )
    )
    return SafeOrdering(pre, post, predicted)


# -- the soundness suite: adversarial weights, tiny convnets, points at ties ---------------------


@st.composite
def adversarial_networks(draw: st.DrawFn) -> Network:
    """A one-hidden-layer net whose weights are tiny (1e-6), huge (1e2) or ordinary, with
    duplicated or zero rows: the cases where published bounds went wrong."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_in = draw(st.integers(2, 4))
    classes = draw(st.integers(2, 4))
    scale = draw(st.sampled_from((1e-6, 1e-3, 1.0, 1e2)))
    style = draw(st.sampled_from(["duplicate", "zero_row", "random"]))
    width = 2 * draw(st.integers(1, 5))
    layers = [
        _linear(rng, n_in, width, scale, style),
        _activation(draw(st.sampled_from(["relu", "minmax"]))),
        _linear(rng, width, classes, scale, style),
    ]
    return Network.from_torch(nn.Sequential(*layers), (n_in,))


@st.composite
def tiny_conv_networks(draw: st.DrawFn) -> Network:
    """Conv2d(1 -> 2, k 2) -> ReLU/MinMax -> Flatten -> Dense on a 3x3 image (8 hidden units):
    a convnet small enough for the exact solvers."""
    import torch

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    conv = nn.Conv2d(1, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.standard_normal(conv.weight.shape) * 0.7))
        conv.bias.copy_(torch.from_numpy(rng.standard_normal(2) * 0.1))
    act = _activation(draw(st.sampled_from(["relu", "minmax"])))
    head = _linear(rng, 8, draw(st.integers(2, 3)), 1.0, "random")
    return Network.from_torch(nn.Sequential(conv, act, nn.Flatten(), head), (1, 3, 3))


def soundness_networks() -> st.SearchStrategy[Network]:
    """The networks of the soundness suite: ordinary small nets most of the time, adversarial
    weights and tiny convnets now and then."""
    return st.one_of(small_networks(max_hidden=12), adversarial_networks(), tiny_conv_networks())


def near_tie(network: Network, seed: int) -> np.ndarray:
    """A point of [0, 1]^input within ~1e-12 of a decision boundary (two top logits tied), by
    bisection between two points with different predictions; a random point if none differ."""
    rng = np.random.default_rng(seed)
    cands = rng.uniform(0, 1, (64, *network.input_shape))
    labels = network.forward64(cands).argmax(axis=1)
    other = np.flatnonzero(labels != labels[0])
    if other.size == 0:
        return cands[0]
    a, b = cands[0], cands[other[0]]
    la = labels[0]
    for _ in range(60):
        mid = (a + b) / 2
        if network.forward64(mid[None])[0].argmax() == la:
            a = mid
        else:
            b = mid
    return a


def soundness_points(network: Network, count: int = 3) -> st.SearchStrategy[np.ndarray]:
    """``count`` points of [0, 1]^input: random, snapped to the domain's corners and centre, or
    next to a tie between the top two classes."""

    def make(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = []
        for i in range(count):
            kind = rng.choice(["random", "snapped", "tie"], p=[0.5, 0.2, 0.3])
            if kind == "tie":
                out.append(near_tie(network, seed + i))
                continue
            x = rng.uniform(0, 1, network.input_shape)
            if kind == "snapped":
                mask = rng.random(network.input_shape) < 0.5
                x = np.where(mask, rng.choice([0.0, 0.5, 1.0], size=network.input_shape), x)
            out.append(x)
        return np.stack(out)

    return st.integers(0, 2**32 - 1).map(make)
