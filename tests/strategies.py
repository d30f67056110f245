"""Shared hypothesis strategies: small networks (dense and conv, ReLU / MinMax / GroupSort,
random, near-degenerate and adversarial weights), points and specifications."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from torch import nn

from verispec.layers import GroupSort, MinMax
from verispec.network import Network
from verispec.regions import Norm

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
