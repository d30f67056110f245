"""Shared hypothesis strategies: small networks (dense and conv, ReLU / MinMax / GroupSort,
random, near-degenerate and adversarial weights), points and specifications."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from hypothesis import strategies as st
from torch import nn

import verispec.network as vn
from tests.soundness import BATCHNORM, linear_radius, reference_forward
from verispec.layers import GroupSort, MinMax
from verispec.network import Network
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope
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


def _fill(target: Any, value: FloatArray) -> None:
    """Copy ``value`` into a parameter or buffer (torch types them as optional)."""
    import torch

    if target is None:
        raise ValueError("the module has no such parameter")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.asarray(value)))


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
        _fill(conv.bias, rng.standard_normal(c_out) * 0.1)
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
        _fill(conv.bias, rng.standard_normal(c_out) * 0.1)
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
    assert not isinstance(pre, Ball)
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
        _fill(conv.bias, rng.standard_normal(2) * 0.1)
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
    labels = reference_forward(network, cands).argmax(axis=1)
    other = np.flatnonzero(labels != labels[0])
    if other.size == 0:
        return cands[0]
    a, b = cands[0], cands[other[0]]
    la = labels[0]
    for _ in range(60):
        mid = (a + b) / 2
        if reference_forward(network, mid[None])[0].argmax() == la:
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


# -- issue 12: the classes the suite never generated ---------------------------------------------
#
# Structure (which layers, where, which scale, which weight style) is drawn by hypothesis, so a
# failure shrinks to a readable example; only the matrix entries come from a seed.

BATCHNORM_AVAILABLE = BATCHNORM is not None
"""BatchNorm layers join the generated networks once the IR has them."""

LAYER_SCALES = (1.0, 1e-8, 1e-3, 1e3, 1e8)
"""Per-layer weight scales: five 1e-8 layers make float32 logits subnormal."""
HEAD_SCALES = (1.0, 1e-170, 1e-30, 1e-8, 1e3, 1e30)
"""Last-layer scales: 1e-170 underflows every squared norm, 1e30 overflows float32 products."""
STDS = (0.1, 0.01, 1e-3, -0.1, 3.0)
"""Normalisation std: small ones make 1/std large (the bug only shows then); negative too."""
ROUNDING_OFFSETS = (0.0, 1e-9, -2e-8, 3e-8, 1e-7)
"""Relative offsets below (or at) float32 resolution: 1 + 1e-9, 1 - 2e-8, 10000.0003."""
WEIGHT_STYLES = ("random", "identity", "unrepresentable", "near_duplicate", "duplicate", "zero_row")
HEAD_STYLES = (*WEIGHT_STYLES, "tied", "zero")
BIAS_STYLES = ("random", "zero", "near_tie")


def _hard_weight(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float, style: str
) -> FloatArray:
    """A weight (out, ...) of the given style, times ``scale``, in float64 exactly."""
    out = shape[0]
    fan_in = int(np.prod(shape[1:]))
    w = rng.standard_normal(shape) / np.sqrt(fan_in)
    if style == "identity":
        w = np.eye(out, fan_in).reshape(shape)
    elif style == "unrepresentable":
        base = rng.choice([1.0, 0.5, -1.0, 10000.0], size=shape)
        w = base * (1.0 + rng.choice(ROUNDING_OFFSETS, size=shape))
    elif style == "near_duplicate" and out > 1:
        w[1] = w[0] * (1.0 + rng.choice(ROUNDING_OFFSETS[1:], size=shape[1:]))
    elif style in ("duplicate", "tied") and out > 1:
        w[1] = w[0]
    elif style == "zero_row":
        w[0] = 0.0
    elif style == "zero":
        w[:] = 0.0
    return np.asarray(w * scale)


def _hard_bias(rng: np.random.Generator, n: int, scale: float, style: str) -> FloatArray:
    """A bias: random, zero, or (``near_tie``) filled in later from the logits at the centre."""
    if style == "random":
        return np.asarray(rng.standard_normal(n) * 0.1 * scale)
    return np.zeros(n)


def _near_tie_bias(
    layers: list[Any], input_shape: tuple[int, ...], rng: np.random.Generator
) -> list[Any]:
    """Replace the last dense layer's bias so that the logits at the domain's centre agree up to
    relative offsets of 1e-9 .. 1e-7 (decisions then hinge on float32-invisible digits)."""
    body = Network(tuple(layers[:-1]), input_shape) if len(layers) > 1 else None
    x = np.full((1, *input_shape), 0.5)
    h = reference_forward(body, x)[0] if body is not None else x.ravel()
    head = layers[-1]
    z = head.weight @ h
    mid = float(np.mean(z))
    offsets = rng.choice(ROUNDING_OFFSETS, size=z.size) * max(abs(mid), float(np.abs(z).max()))
    return [*layers[:-1], vn.Dense(head.weight, mid - z + offsets)]


def _normalize_layer(draw: st.DrawFn, rng: np.random.Generator, channels: int) -> vn.Normalize:
    """Normalize with per-channel (or one shared) mean and a drawn, often small, std."""
    std = draw(st.sampled_from(STDS))
    count = draw(st.sampled_from([channels, 1]))
    mean = rng.uniform(0.0, 1.0, count)
    stds = std * rng.uniform(0.5, 1.5, count) if count > 1 else np.array([std])
    return vn.Normalize(mean, stds)


def _batchnorm_layer(draw: st.DrawFn, rng: np.random.Generator, channels: int, dims: int) -> Any:
    """An eval-mode ``nn.BatchNorm1d/2d`` (random running stats, affine weight and bias, small
    variances now and then) converted by ``Network.from_torch``."""
    import torch

    var_scale = draw(st.sampled_from([1.0, 1e-4, 1e-2, 10.0]))
    module = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels).double()
    with torch.no_grad():
        _fill(module.running_mean, rng.uniform(-1.0, 1.0, channels))
        _fill(module.running_var, var_scale * rng.uniform(0.5, 2.0, channels))
        module.weight.copy_(
            torch.from_numpy(rng.choice([-1.0, 1.0], channels) * rng.uniform(0.1, 2.0, channels))
        )
        module.bias.copy_(torch.from_numpy(rng.standard_normal(channels) * 0.1))
    module.eval()
    if dims == 1:
        return Network.from_torch(nn.Sequential(module), (channels,)).layers[0]
    return Network.from_torch(nn.Sequential(module, nn.Flatten()), (channels, 1, 1)).layers[0]


def _maybe_batchnorm(
    draw: st.DrawFn, rng: np.random.Generator, channels: int, dims: int
) -> list[Any]:
    if BATCHNORM_AVAILABLE and draw(st.booleans()):
        return [_batchnorm_layer(draw, rng, channels, dims)]
    return []


def _maybe_normalize(draw: st.DrawFn, rng: np.random.Generator, channels: int) -> list[Any]:
    return [_normalize_layer(draw, rng, channels)] if draw(st.booleans()) else []


def _activation_layers(kind: str, width: int) -> list[Any]:
    if kind == "relu":
        return [vn.ReLU()]
    if kind == "minmax" and width % 2 == 0:
        return [vn.GroupSort(2)]
    return []


def _head(
    draw: st.DrawFn, rng: np.random.Generator, width: int, classes: int
) -> tuple[vn.Dense, str]:
    style = draw(st.sampled_from(HEAD_STYLES))
    scale = draw(st.sampled_from(HEAD_SCALES))
    bias_style = draw(st.sampled_from(BIAS_STYLES))
    w = _hard_weight(rng, (classes, width), scale, style)
    b = _hard_bias(rng, classes, scale, bias_style)
    if style == "tied":
        b[1] = b[0]
    return vn.Dense(w, b), bias_style


def _finish(
    draw: st.DrawFn,
    rng: np.random.Generator,
    layers: list[Any],
    width: int,
    input_shape: tuple[int, ...],
) -> Network:
    """Append [Normalize] [BatchNorm] [linear chain] head [Normalize] and build the network."""
    classes = draw(st.integers(2, 4))
    layers += _maybe_batchnorm(draw, rng, width, 1)
    for _ in range(draw(st.integers(0, 4))):  # a linear chain: e.g. five 1e-8 I layers in all
        scale = draw(st.sampled_from(LAYER_SCALES))
        style = draw(st.sampled_from(["identity", "random"]))
        layers.append(vn.Dense(_hard_weight(rng, (width, width), scale, style), np.zeros(width)))
    layers += _maybe_normalize(draw, rng, width)  # directly before the head
    head, bias_style = _head(draw, rng, width, classes)
    layers.append(head)
    if bias_style == "near_tie":
        layers = _near_tie_bias(layers, input_shape, rng)
    if draw(st.integers(0, 9)) == 0:  # after the head: no final dense layer
        layers += [_normalize_layer(draw, rng, classes)]
    return Network(tuple(layers), input_shape)


@st.composite
def hard_dense_networks(draw: st.DrawFn, max_hidden: int = 12) -> Network:
    """An MLP mixing the issue-12 classes: Normalize anywhere (small std, also directly before
    the head), BatchNorm (when the IR has it), float32-unrepresentable weights, near-duplicate,
    duplicated and zero rows, tied or identical head rows, extreme per-layer and head scales and
    linear chains of scaled layers; at most ``max_hidden`` hidden units."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_in = draw(st.integers(1, 4))
    act = draw(st.sampled_from(["relu", "minmax", "none"]))
    widths = draw(st.lists(st.sampled_from([2, 4]), max_size=2))
    layers: list[Any] = []
    width = n_in
    for new in widths[: 2 if sum(widths) <= max_hidden else 1]:
        layers += _maybe_normalize(draw, rng, width)
        scale = draw(st.sampled_from(LAYER_SCALES))
        style = draw(st.sampled_from(WEIGHT_STYLES))
        bias = _hard_bias(rng, new, scale, draw(st.sampled_from(BIAS_STYLES[:2])))
        layers.append(vn.Dense(_hard_weight(rng, (new, width), scale, style), bias))
        layers += _maybe_batchnorm(draw, rng, new, 1)
        layers += _activation_layers(act, new)
        width = new
    return _finish(draw, rng, layers, width, (n_in,))


@st.composite
def hard_conv_networks(draw: st.DrawFn, max_hidden: int = 12) -> Network:
    """[Normalize] Conv2d [BatchNorm] [Normalize] [activation] [AvgPool] Flatten ... head on a
    1x1 to 3x3 image, with the weight styles and scales of ``hard_dense_networks`` (e.g. a 1x1
    convolution with kernels 10000.0003 and 10000)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c_in = draw(st.integers(1, 2))
    side = draw(st.integers(1, 3))
    k = draw(st.integers(1, min(2, side)))
    stride = draw(st.integers(1, 2))
    c_out = 2
    out = (side - k) // stride + 1
    if c_out * out * out > max_hidden:
        stride, out = 2, (side - k) // 2 + 1
    act = draw(st.sampled_from(["relu", "minmax", "none"]))
    layers: list[Any] = _maybe_normalize(draw, rng, c_in)
    scale = draw(st.sampled_from(LAYER_SCALES))
    style = draw(st.sampled_from(WEIGHT_STYLES))
    weight = _hard_weight(rng, (c_out, c_in, k, k), scale, style)
    bias = _hard_bias(rng, c_out, scale, draw(st.sampled_from(BIAS_STYLES[:2])))
    layers.append(vn.Conv2d(weight, bias, stride, 0))
    layers += _maybe_batchnorm(draw, rng, c_out, 2)  # right after the convolution
    layers += _maybe_normalize(draw, rng, c_out)
    layers += _activation_layers(act, c_out)
    if out >= 2 and draw(st.booleans()):
        layers.append(vn.AvgPool2d(2, 1))
        out -= 1
    layers.append(vn.Flatten())
    return _finish(draw, rng, layers, c_out * out * out, (c_in, side, side))


CHAINS = ((1e-8, 5), (1e-20, 2), (1e-10, 4), (1e-15, 3), (1e8, 5), (1e10, 4), (1e-8, 3))
"""(scale, depth) of extreme-scale chains: five 1e-8 layers give float32 logits of 1e-40
(subnormal), three 1e-15 layers 1e-45 (float32's last subnormal), five 1e8 layers 1e40
(float32 overflow); three 1e-8 layers stay normal."""


@st.composite
def scale_chain_networks(draw: st.DrawFn) -> Network:
    """A chain of square dense layers of one extreme scale (scaled identities or random
    matrices, ReLU between or not), the last one the head: logits whose float32 values are
    subnormal, zero or infinite while their float64 values are fine."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = draw(st.integers(2, 3))
    scale, depth = draw(st.sampled_from(CHAINS))
    style = draw(st.sampled_from(["identity", "random"]))
    relu = draw(st.booleans())
    layers: list[Any] = []
    for i in range(depth):
        bias = (
            np.zeros(width)
            if style == "identity"
            else rng.standard_normal(width) * scale ** (i + 1)
        )
        layers.append(vn.Dense(_hard_weight(rng, (width, width), scale, style), bias))
        if relu and i < depth - 1:
            layers.append(vn.ReLU())
    return Network(tuple(layers), (width,))


@st.composite
def cancelling_networks(draw: st.DrawFn) -> Network:
    """Two consecutive dense layers whose product nearly cancels (W2 W1 is 0 up to rounding
    plus a drawn 0 / 1e-12 / 1e-9 signal, at scales up to 1e16), the biases cancelling too,
    with Normalize / BatchNorm around them: the lowering composes them in float64, and the
    composed coefficients carry absolute errors as large as themselves. The smt engine once
    certified a false class on such a network, before the lowering bounded its error."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_in = draw(st.integers(1, 3))
    hidden = n_in + draw(st.integers(1, 2))
    width = draw(st.sampled_from([2, 4]))
    scale1 = draw(st.sampled_from([1.0, 1e8, 1e-8, 1e16]))
    scale2 = draw(st.sampled_from([1.0, 1e4, 1e-4]))
    signal = draw(st.sampled_from([0.0, 1e-12, 1e-9]))
    W1 = rng.standard_normal((hidden, n_in)) * scale1
    null = np.linalg.svd(W1)[0][:, n_in:].T  # rows u with u W1 = 0 up to rounding
    W2 = (rng.standard_normal((width, hidden - n_in)) @ null) * scale2
    W2 = W2 + signal * scale2 * rng.standard_normal((width, hidden))
    b1 = rng.standard_normal(hidden) * 0.1 * scale1
    b2 = -(W2 @ b1) + signal * scale1 * scale2 * rng.standard_normal(width)
    layers: list[Any] = _maybe_normalize(draw, rng, n_in)
    layers.append(vn.Dense(W1, b1))
    layers += _maybe_batchnorm(draw, rng, hidden, 1)
    layers.append(vn.Dense(W2, b2))
    layers += _activation_layers(draw(st.sampled_from(["relu", "minmax", "none"])), width)
    return _finish(draw, rng, layers, width, (n_in,))


LOWERING_REGRESSION = Network(
    (
        vn.BatchNorm(np.array([9.760671056420785]), np.array([-5.328128406083632])),
        vn.Dense(np.array([[1.0]]), np.array([0.0])),
        vn.Dense(np.array([[1e8]]), np.array([0.0])),
        vn.Dense(np.array([[1e8]]), np.array([0.0])),
        vn.Normalize(np.array([0.37720028425775887]), np.array([-0.1])),
        vn.Dense(
            np.array([[0.49999999], [10000.0003], [0.5000000005], [-1.0000001]]),
            np.array([1.1192587796137391e20, -3.3584467743735303e20, 1.1192583362940748e20,
                      1.1199300211779589e20]),
        ),
    ),
    (1,),
)  # fmt: skip
"""The network on which the smt engine certified a false class (logits near 1e20): the
lowering composed its layers in float64 without an error bound."""


def hard_networks(cancelling: bool = True) -> st.SearchStrategy[Network]:
    """The issue-12 networks: dense, convolutional and extreme-scale chains, and (unless
    ``cancelling`` is False) layers whose composition cancels; small enough for the exact
    solvers."""
    kinds = [hard_dense_networks(), hard_conv_networks(), scale_chain_networks()]
    return st.one_of(*kinds, *([cancelling_networks()] if cancelling else []))


def _relative_gap(network: Network, x: FloatArray, label: int) -> float:
    """(y_label - max other) / max(|y_label|, |other|) on the reference logits."""
    y = reference_forward(network, x[None])[0]
    other = float(np.max(np.delete(y, label)))
    scale = max(abs(float(y[label])), abs(other))
    return (float(y[label]) - other) / scale if scale > 0 else 0.0


def boundary_point(network: Network, seed: int, gap: float = 0.0) -> FloatArray:
    """A point of [0, 1]^input where the top class leads by relative ``gap`` on the reference
    logits (``gap`` 0: on the decision boundary, to the last bit: bisection down to adjacent
    floats), between two random points with different predictions; random if none differ."""
    rng = np.random.default_rng(seed)
    cands = rng.uniform(0, 1, (64, *network.input_shape))
    cands[1:9] = _corners(np.zeros(network.input_shape), np.ones(network.input_shape), 8, rng)
    labels = reference_forward(network, cands).argmax(axis=1)
    ahead = [i for i in range(len(cands)) if _relative_gap(network, cands[i], labels[i]) > gap]
    other = np.flatnonzero(labels != labels[ahead[0]]) if ahead else np.zeros(0, dtype=int)
    if other.size == 0:
        return np.asarray(cands[0])
    a, b, la = cands[ahead[0]], cands[other[0]], int(labels[ahead[0]])
    for _ in range(2000):
        mid = (a + b) / 2
        if np.array_equal(mid, a) or np.array_equal(mid, b):
            break
        if _relative_gap(network, mid, la) > gap:
            a = mid
        else:
            b = mid
    if gap > 0:
        return np.asarray(a)
    return np.asarray(min((a, b), key=lambda p: abs(_relative_gap(network, p, la))))


def _corners(lo: FloatArray, hi: FloatArray, n: int, rng: np.random.Generator) -> FloatArray:
    pick = rng.integers(0, 2, size=(n, *lo.shape)).astype(bool)
    return np.where(pick, hi, lo)


POINT_KINDS = ("random", "tie_1e-9", "boundary", "tiny", "snapped")
TINY_COORDINATES = (1e-24, 3e-24, 1e-12, 1e-300, 0.0)


def hard_points(network: Network, count: int = 3) -> st.SearchStrategy[FloatArray]:
    """``count`` points of [0, 1]^input: random, top two logits 1e-9 apart (relative), exactly
    on a decision boundary, with coordinates near 1e-24 (or 1e-300, 0), or snapped to 0/0.5/1."""

    def make(kinds: list[str], seed: int) -> FloatArray:
        rng = np.random.default_rng(seed)
        out = []
        for i, kind in enumerate(kinds):
            if kind == "tie_1e-9":
                out.append(boundary_point(network, seed + i, 1e-9))
                continue
            if kind == "boundary":
                out.append(boundary_point(network, seed + i))
                continue
            x = rng.uniform(0, 1, network.input_shape)
            if kind in ("tiny", "snapped"):
                values = TINY_COORDINATES if kind == "tiny" else (0.0, 0.5, 1.0)
                mask = rng.random(network.input_shape) < 0.7
                x = np.where(mask, rng.choice(values, size=network.input_shape), x)
                if kind == "tiny":
                    x = np.where(mask, x * rng.uniform(0.5, 2.0, x.shape), x)
            out.append(x)
        return np.stack(out)

    kinds = st.lists(st.sampled_from(POINT_KINDS), min_size=count, max_size=count)
    return st.builds(make, kinds, st.integers(0, 2**32 - 1))


hard_epsilons = st.sampled_from([0.05, 1e-12, 1e-9, 1e-6, 1e-3, 0.3, 1.0, 3.0, 1e300])
"""Tiny (a ball of radius 1e-12 on a boundary), ordinary and huge (1e300: the whole domain)."""


RADIUS_FACTORS = (1.5, 1.001, 1.01, 1.1, 3.0, 10.0, 0.5)
"""eps as a multiple of the linearised radius: just above it, where an over-estimated radius
(a dropped 1/std, an error bound ignoring underflow) certifies what does not hold."""


@st.composite
def hard_point_specs(
    draw: st.DrawFn,
    num_classes: int,
    kinds: tuple[str, ...] = ("LocalRobustness", "RelaxedTopK", "Affinity"),
    network: Network | None = None,
    point: FloatArray | None = None,
) -> LocalRobustness | RelaxedTopK | Affinity:
    """``point_specs`` with the eps of ``hard_epsilons``, or (given a network and a point) a
    multiple of the distance to the point's linearised decision boundary."""
    spec = draw(point_specs(num_classes, kinds))
    eps = draw(hard_epsilons)
    if network is not None and point is not None and draw(st.booleans()):
        radius = linear_radius(network, point, spec.norm)
        scaled = radius * draw(st.sampled_from(RADIUS_FACTORS))
        if 0.0 < radius < 1e300 and 0.0 < scaled < 1e300:  # a subnormal radius * 0.5 is 0
            eps = scaled
    return attrs.evolve(spec, eps=eps)


@st.composite
def hard_safe_orderings(draw: st.DrawFn, network: Network) -> SafeOrdering:
    """A safe ordering whose precondition is a box (half-widths 1e-12 .. 1, possibly on a
    decision boundary) or a polytope around a hard point."""
    n_in, classes = network.input_size, network.num_classes
    (centre,) = draw(hard_points(network, 1))
    c = centre.ravel()
    r = draw(st.sampled_from([0.05, 1e-12, 1e-6, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = network.input_shape
    pre: Box | Polytope
    if draw(st.booleans()):
        widths = rng.uniform(0.2, 1.0, n_in)
        pre = Box((c - r * widths).reshape(shape), (c + r * widths).reshape(shape))
    else:
        A = rng.standard_normal((draw(st.integers(1, 3)), n_in))
        b = A @ c + rng.uniform(0.0, 0.5 * r, A.shape[0]) * np.linalg.norm(A, axis=1)
        pre = Polytope(A, b, Box((c - r).reshape(shape), (c + r).reshape(shape)))
    predicted = draw(
        st.one_of(st.none(), st.sets(st.integers(0, classes - 1), min_size=1, max_size=classes - 1))
    )
    return SafeOrdering(pre, draw(orderings(classes)), predicted)


@st.composite
def disjunction_properties(draw: st.DrawFn) -> tuple[Network, Property]:
    """A small ReLU net on 1-3 inputs and a box, with 2-3 one-atom clauses (a disjunction,
    as VNN-LIB's "not the maximal score" specs compile to) whose offsets put each atom's zero
    inside the range of its values on the box: near-tight disjunctions, where the input branch
    and bound's combined-atom proof (solvers/base.py, ``_disjunction_holds``) is needed."""
    net = draw(small_networks(min_inputs=1, max_inputs=3, activations=("relu",)))
    n_in, m = net.input_shape[0], net.num_classes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centre = rng.uniform(0.2, 0.8, n_in)
    box = Box(centre - rng.uniform(0.05, 0.3, n_in), centre + rng.uniform(0.05, 0.3, n_in))
    C = rng.standard_normal((draw(st.integers(2, 3)), m))
    y = net.forward64(rng.uniform(box.lo, box.hi, (400, n_in)))
    d = -np.quantile(y @ C.T, rng.uniform(0.2, 0.7), axis=0)
    return net, Property(
        box, Predicate(tuple(Clause(c[None], [b]) for c, b in zip(C, d, strict=True)))
    )
