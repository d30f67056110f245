"""The network's logits in exact rational arithmetic: the exact-forward rule table.

Used where float64 cannot decide: a witness whose float64 violation is within rounding of zero
(``Property.confirm``), or a point whose ranking of the classes is a near-tie. Each IR layer
type has one rule in ``EXACT_FORWARD`` mapping a vector of ``Fraction`` (object array, the
flattened activations) to the next; every float64 field converts to a Fraction exactly, so the
result is the real-valued network's output. Costly (Python objects): meant for single points.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from verispec.ir import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Normalize,
    ReLU,
    Shape,
    channel_vector,
)
from verispec.network import Network
from verispec.regions import FloatArray
from verispec.rules import RuleTable

ObjArray = np.ndarray
ExactRule = Callable[[Any, ObjArray, Shape], ObjArray]
"""(layer, flattened exact activations (object array of Fraction), input shape) -> output."""

EXACT_FORWARD: RuleTable[ExactRule] = RuleTable("the exact rational forward pass")


def fractions(values: Any) -> ObjArray:
    """A float64 array as an object array of exactly equal Fractions (same shape)."""
    arr = np.asarray(values, dtype=np.float64)
    out = np.empty(arr.shape, dtype=object)
    out.flat[:] = [Fraction(v) for v in arr.ravel().tolist()]
    return out


def _matvec(M: ObjArray, h: ObjArray) -> ObjArray:
    return np.array([sum((a * b for a, b in zip(row, h, strict=True)), Fraction(0)) for row in M])


@EXACT_FORWARD.register(Dense)
def _dense(layer: Dense, h: ObjArray, shape: Shape) -> ObjArray:
    return _matvec(fractions(layer.weight), h) + fractions(layer.bias)


@EXACT_FORWARD.register(Conv2d)
def _conv(layer: Conv2d, h: ObjArray, shape: Shape) -> ObjArray:
    c, height, width = shape
    ph, pw = layer.padding
    sh, sw = layer.stride
    kh, kw = layer.weight.shape[2:]
    out = layer.output_shape(shape)
    padded = np.full((c, height + 2 * ph, width + 2 * pw), Fraction(0), dtype=object)
    padded[:, ph : ph + height, pw : pw + width] = h.reshape(shape)
    w = fractions(layer.weight)
    res = np.full(out, Fraction(0), dtype=object)
    for a in range(kh):
        for b in range(kw):
            window = padded[
                :, a : a + sh * (out[1] - 1) + 1 : sh, b : b + sw * (out[2] - 1) + 1 : sw
            ]
            res = res + np.tensordot(w[:, :, a, b], window, axes=([1], [0]))
    bias = fractions(layer.bias)
    return (res + bias[:, None, None]).ravel()


@EXACT_FORWARD.register(AvgPool2d)
def _pool(layer: AvgPool2d, h: ObjArray, shape: Shape) -> ObjArray:
    c = shape[0]
    kh, kw = layer.kernel
    sh, sw = layer.stride
    out = layer.output_shape(shape)
    grid = h.reshape(shape)
    k = Fraction(1, kh * kw)
    res = np.empty(out, dtype=object)
    for ch in range(c):
        for i in range(out[1]):
            for j in range(out[2]):
                window = grid[ch, i * sh : i * sh + kh, j * sw : j * sw + kw].ravel()
                res[ch, i, j] = sum(window.tolist(), Fraction(0)) * k
    return res.ravel()


@EXACT_FORWARD.register(Normalize)
def _normalize(layer: Normalize, h: ObjArray, shape: Shape) -> ObjArray:
    mean = fractions(channel_vector(layer.mean, shape).ravel())
    std = fractions(channel_vector(layer.std, shape).ravel())
    return np.array([(a - m) / s for a, m, s in zip(h, mean, std, strict=True)], dtype=object)


@EXACT_FORWARD.register(BatchNorm)
def _batchnorm(layer: BatchNorm, h: ObjArray, shape: Shape) -> ObjArray:
    scale = fractions(channel_vector(layer.scale, shape).ravel())
    shift = fractions(channel_vector(layer.shift, shape).ravel())
    return h * scale + shift


@EXACT_FORWARD.register(ReLU)
def _relu(layer: ReLU, h: ObjArray, shape: Shape) -> ObjArray:
    return np.array([v if v > 0 else Fraction(0) for v in h], dtype=object)


@EXACT_FORWARD.register(GroupSort)
def _groupsort(layer: GroupSort, h: ObjArray, shape: Shape) -> ObjArray:
    c = shape[0]
    grid = h.reshape((c // layer.group_size, layer.group_size, -1))
    out = np.empty_like(grid)
    for g in range(grid.shape[0]):
        for p in range(grid.shape[2]):
            out[g, :, p] = sorted(grid[g, :, p].tolist())
    return out.reshape(-1)


@EXACT_FORWARD.register(Flatten)
def _flatten(layer: Flatten, h: ObjArray, shape: Shape) -> ObjArray:
    return h  # C-order flattening: the flat vector is unchanged


def exact_logits(network: Network, x: FloatArray) -> list[Fraction]:
    """f(x) exactly, for one point ``x`` (input shape)."""
    h = fractions(np.asarray(x, dtype=np.float64).ravel())
    for i, (layer, shape) in enumerate(zip(network.layers, network.shapes, strict=False)):
        h = EXACT_FORWARD.rule(layer, str(i))(layer, h, shape)
    return list(h)
