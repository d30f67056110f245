"""A float64 forward pass with an elementwise, rigorous bound on its own rounding error.

``float_logits(network, x)`` returns logits y_hat (m,) and e (m,) with |y_hat - f(x)| <= e
elementwise, f the exact real-arithmetic network given by the IR's float64 weights. A witness
check (``Property.confirm``) decides with it wherever every atom is clear of zero by its error,
and falls back to exact rationals (``exact_forward``) only where one is not: a band relative
to the outputs alone misses layers whose terms cancel (products near 1e15 summing to 1).

Model (IEEE 754 float64, round to nearest, u = 2^-53; each operation fl(a op b) = (a op b)
(1 + d) + t with |d| <= u and |t| <= ETA = 2^-1074, t = 0 for additions): a sum of n products
evaluated in any order, FMA and blocked GEMM kernels included, is within gamma_n sum |terms|
(+ n ETA for products that underflow) of the exact sum, gamma_n = n u / (1 - n u). Per layer
(the rule table ``FLOAT_ERROR``, one rule per IR layer type), from the computed input h_hat
and its error bound e_h:

- dense / conv (fan-in n): |W| e_h + gamma_{n+1} (|W| |h_hat| + |b|) + (n + 1) ETA;
- Normalize (x - mean) / std: (e_h + gamma_2 |h_hat - mean|) / |std| + ETA, the quotient's
  rounding included (mean and std are the IR's float64 values: no rounding to store them);
- BatchNorm x scale + shift: |scale| e_h + gamma_2 (|scale h_hat| + |shift|) + 2 ETA;
- average pooling (k values, summed then divided by k): mean(e_h) + gamma_{k+1} mean(|h_hat|)
  + ETA;
- ReLU is 1-Lipschitz and exact: e_h; GroupSort: each output's error is at most the largest
  error of its group (sorting is 1-Lipschitz in the max norm); Flatten: unchanged.

Each bound is itself computed in float64, by sums of at most n terms: it is inflated by
(1 + 2 gamma_{n+4} + ROUND_UP), which covers its own rounding. A non-finite value or error
makes the check give up on float64 (the caller decides exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

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

U = 2.0**-53
"""The unit roundoff of float64."""

ETA = 2.0**-1074
"""The smallest subnormal float64: the absolute error of a product that underflows."""

ROUND_UP = 1e-12
"""Relative inflation of every computed error bound (its own rounding: far above k u)."""

Pair = tuple[FloatArray, FloatArray]
ErrorRule = Callable[[Any, FloatArray, FloatArray, Shape], Pair]
"""(layer, flat computed activations h_hat, their error bound e_h, input shape) ->
(flat outputs, their error bound)."""

FLOAT_ERROR: RuleTable[ErrorRule] = RuleTable("the float64 rounding-error pass")


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u) for float64."""
    return n * U / (1 - n * U)


def _up(e: FloatArray, n: int) -> FloatArray:
    """A computed error bound, each of whose terms summed at most n products, rounded up."""
    return np.asarray(e * (1 + 2 * gamma(n + 4) + ROUND_UP), dtype=np.float64)


@FLOAT_ERROR.register(Dense)
def _dense(layer: Dense, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    W, b = layer.weight, layer.bias
    n = W.shape[1]
    A = np.abs(W)
    y = W @ h + b
    err = A @ e + gamma(n + 1) * (A @ np.abs(h) + np.abs(b)) + (n + 1) * ETA
    return y, _up(err, n)


def _conv2d(layer: Conv2d, weight: FloatArray, h: FloatArray, shape: Shape) -> FloatArray:
    out = torch.nn.functional.conv2d(
        torch.tensor(np.asarray(h, dtype=np.float64).reshape(1, *shape)),
        torch.tensor(np.asarray(weight, dtype=np.float64)),
        stride=layer.stride,
        padding=layer.padding,
    )
    return np.asarray(out.numpy().ravel(), dtype=np.float64)


@FLOAT_ERROR.register(Conv2d)
def _conv(layer: Conv2d, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    n = int(np.prod(layer.weight.shape[1:]))
    out = layer.output_shape(shape)
    bias = np.repeat(layer.bias, out[1] * out[2])
    A = np.abs(layer.weight)
    y = _conv2d(layer, layer.weight, h, shape) + bias
    terms = _conv2d(layer, A, np.abs(h), shape) + np.abs(bias)
    err = _conv2d(layer, A, e, shape) + gamma(n + 1) * terms + (n + 1) * ETA
    return y, _up(err, n)


@FLOAT_ERROR.register(Normalize)
def _normalize(layer: Normalize, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    mean = channel_vector(layer.mean, shape).ravel()
    std = channel_vector(layer.std, shape).ravel()
    centred = h - mean
    y = centred / std
    err = (e + gamma(2) * np.abs(centred)) / np.abs(std) + ETA
    return y, _up(err, 2)


@FLOAT_ERROR.register(BatchNorm)
def _batchnorm(layer: BatchNorm, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    scale = channel_vector(layer.scale, shape).ravel()
    shift = channel_vector(layer.shift, shape).ravel()
    y = h * scale + shift
    err = np.abs(scale) * e + gamma(2) * (np.abs(h * scale) + np.abs(shift)) + 2 * ETA
    return y, _up(err, 2)


def _avg(layer: AvgPool2d, h: FloatArray, shape: Shape) -> FloatArray:
    out = torch.nn.functional.avg_pool2d(
        torch.tensor(np.asarray(h, dtype=np.float64).reshape(1, *shape)),
        kernel_size=layer.kernel,
        stride=layer.stride,
    )
    return np.asarray(out.numpy().ravel(), dtype=np.float64)


@FLOAT_ERROR.register(AvgPool2d)
def _pool(layer: AvgPool2d, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    k = layer.kernel[0] * layer.kernel[1]
    err = _avg(layer, e, shape) + gamma(k + 1) * _avg(layer, np.abs(h), shape) + ETA
    return _avg(layer, h, shape), _up(err, k)


@FLOAT_ERROR.register(ReLU)
def _relu(layer: ReLU, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    return np.maximum(h, 0.0), e


@FLOAT_ERROR.register(GroupSort)
def _groupsort(layer: GroupSort, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    grid = h.reshape((shape[0] // layer.group_size, layer.group_size, -1))
    worst = e.reshape(grid.shape).max(axis=1, keepdims=True)
    return np.sort(grid, axis=1).ravel(), np.broadcast_to(worst, grid.shape).ravel().copy()


@FLOAT_ERROR.register(Flatten)
def _flatten(layer: Flatten, h: FloatArray, e: FloatArray, shape: Shape) -> Pair:
    return h, e


def float_logits(network: Network, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Float64 logits (m,) of one point ``x`` (input shape) and a bound (m,) of their error
    against the exact network; the error is inf where a value or bound is not finite."""
    h = np.asarray(x, dtype=np.float64).ravel()
    e = np.zeros_like(h)
    with np.errstate(all="ignore"):
        for i, (layer, shape) in enumerate(zip(network.layers, network.shapes, strict=False)):
            h, e = FLOAT_ERROR.rule(layer, str(i))(layer, h, e, shape)
        bad = ~(np.isfinite(h) & np.isfinite(e))
    return h, np.where(bad, np.inf, e)
