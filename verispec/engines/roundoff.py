"""A forward pass that also returns a proven bound on its own floating-point error.

Engines run networks in float32 (or float64) for speed but certify the exact real-arithmetic
network given by the IR's float64 weights, at the user's float64 point. ``RoundoffForward``
returns logits y_hat (n, m) and E (n,) with ||y_hat - f(x)||_2 <= E.

Model of the arithmetic (IEEE 754, round to nearest, working precision with unit roundoff u
and underflow unit eta = the smallest normal number, 2**-126 in float32 and 2**-1022 in float64,
so that flushing denormals to zero is covered too):
every operation gives fl(a op b) = (a op b)(1 + d) + e with |d| <= u, |e| <= eta (e = 0 for
additions); storing a float64 constant c in the working precision gives c (1 + d) + e.
With gamma_k = k u / (1 - k u), each layer contributes a *local* error, in l2 over its
outputs, at the computed input h (the rule table ``ROUNDOFF``, one rule per IR layer type):

- dense / conv (fan-in n, m outputs): the weights and bias are rounded once, the sum of n
  products is evaluated in any order (FMA included), so per output
  |err| <= gamma_{n+3} (|W| |h| + |b|) + eta (||h||_1 + n + 3); in l2:
  gamma_{n+3} (|| |W| ||_2 ||h||_2 + ||b||_2) + 1.01 eta sqrt(m) (sqrt(n) ||h||_2 + n + 3);
- Normalize (x - mean) / std with rounded mean and std:
  (theta ||y_hat|| + (1 + theta) (u ||mean / std|| + eta ||1 / std||) + eta sqrt(m)) / (1 - theta)
  with theta = (1 + u)^2 / (1 - r) - 1 and r = u + eta / min|std| the relative rounding of std
  (r >= 1/4: E = inf);
- BatchNorm x * scale + shift with rounded scale and shift:
  gamma_3 max|scale| ||h|| + eta ||h|| + gamma_2 ||shift|| + u ||y_hat|| + 3 eta sqrt(m);
- average pooling: a sum of k values and a division, <= gamma_{k+1} L ||h|| + 2 eta sqrt(m);
- ReLU, GroupSort (a permutation) and Flatten are exact: 0;
- propagated: E_{l+1} <= Lip_l E_l + SAFETY * local_l, Lip_l the layer's proven l2 bound.

Storing the float64 input in float32 adds u ||x|| + eta sqrt(d) (float64: exact). Norms ||h||
are upper bounds: the float32 norm inflated by its rounding plus a term for squares that
underflow, or (float64, tiny rows, overflow) float64 norms of power-of-two rescaled rows; each
is computed once per pass. A constant that overflows the working precision makes the pass
refuse to run (``UnsupportedError``: use float64). The pass runs inside
``certified_arithmetic`` (``verispec/precision.py``): no TF32 or bfloat16 matmuls and cuDNN
off, so a CUDA convolution is im2col followed by a GEMM and a CPU one oneDNN's direct
algorithm, each a sum in some order, which the analysis covers (``SAFETY`` covers reordered
kernels). The unit roundoff is that of the arithmetic in force inside it: 2^-24 for float32,
2^-53 for float64 (``unit_roundoff`` reads the flags: 2^-11 where TF32, 2^-8 where bfloat16
matmuls are allowed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

import verispec.opnorm as opnorm
from verispec.errors import UnsupportedError
from verispec.ir import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Normalize,
    ReLU,
    Shape,
    channel_vector,
)
from verispec.network import Network
from verispec.precision import certified_arithmetic, float32_matmul_arithmetic
from verispec.regions import FloatArray
from verispec.rules import RuleTable

SAFETY = 4.0
"""Multiplier on every local rounding term (covers non-standard summation in kernels)."""


def gamma(k: int, u: float) -> float:
    """gamma_k = k u / (1 - k u); infinite once k u >= 1."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


def unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff of the arithmetic torch uses for ``dtype`` on ``device``."""
    if dtype == torch.float64:
        return 2.0**-53
    if dtype != torch.float32:
        raise ValueError(f"certifying forward passes run in float32 or float64, not {dtype}")
    return {"bf16": 2.0**-8, "tf32": 2.0**-11, "ieee": 2.0**-24}[float32_matmul_arithmetic()]


def underflow_unit(dtype: torch.dtype) -> float:
    """The absolute error of one rounding near zero: the smallest *normal* number of ``dtype``,
    so that the bound also holds where denormals are flushed to zero (FTZ/DAZ, as some CPU
    settings and GPU kernels do), not only half the smallest subnormal."""
    return 2.0**-126 if dtype == torch.float32 else 2.0**-1022


def _max_finite(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


@attrs.frozen
class Precision:
    """The working arithmetic: unit roundoff ``u``, underflow unit ``eta``."""

    u: float
    eta: float


Norms = Callable[[torch.Tensor], torch.Tensor]
"""h (n, ...) -> per-row upper bounds of ||h||_2 (n,) as float64."""

LocalError = Callable[[torch.Tensor, torch.Tensor, Norms], torch.Tensor]
"""(computed input h, computed output y, norms) -> local error bound (n,) float64."""


@attrs.frozen
class LayerError:
    """One layer's error model: its l2 Lipschitz bound and its local-error function."""

    lip: float
    local: LocalError


ErrorRule = Callable[[Any, Shape, Shape, float, Precision], LayerError]
"""(layer, input shape, output shape, l2 bound, precision) -> LayerError."""

ROUNDOFF: RuleTable[ErrorRule] = RuleTable("the rounding-error bound")


def _check_representable(name: str, values: FloatArray, dtype: torch.dtype) -> None:
    if values.size and float(np.max(np.abs(values))) > _max_finite(dtype):
        raise UnsupportedError(
            f"{name} holds values up to {float(np.max(np.abs(values))):.3g}, beyond the "
            f"{dtype} range: certify with precision float64"
        )


def _affine(
    abs_norm: float, fan_in: int, bias_norm: float, outputs: int, lip: float, p: Precision
) -> LayerError:
    g = gamma(fan_in + 3, p.u)
    under = 1.01 * p.eta * math.sqrt(outputs)
    root_n = math.sqrt(fan_in)

    def local(h: torch.Tensor, y: torch.Tensor, norms: Norms) -> torch.Tensor:
        hn = norms(h)
        return g * (abs_norm * hn + bias_norm) + under * (root_n * hn + fan_in + 3)

    return LayerError(lip, local)


@ROUNDOFF.register(Dense)
def _dense(layer: Dense, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    return _affine(
        opnorm.dense_abs_l2_bound(layer.weight),
        int(layer.weight.shape[1]),
        _norm64(layer.bias),
        int(o[0]),
        lip,
        p,
    )


@ROUNDOFF.register(Conv2d)
def _conv(layer: Conv2d, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    _, ci, kh, kw = layer.weight.shape
    absn = opnorm.conv2d_abs_l2_bound(layer.weight, layer.stride, layer.padding, (i[1], i[2]))
    bias = _norm64(layer.bias) * math.sqrt(o[1] * o[2]) * (1 + 2.0**-50)
    return _affine(absn, int(ci * kh * kw), bias, int(np.prod(o)), lip, p)


@ROUNDOFF.register(Normalize)
def _normalize(layer: Normalize, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    shift = _norm64(channel_vector(layer.mean / layer.std, i)) * (1 + 2.0**-50)
    inv = _norm64(channel_vector(1.0 / layer.std, i)) * (1 + 2.0**-50)
    r = p.u + p.eta / float(np.min(np.abs(layer.std)))
    n = int(np.prod(o))
    if r >= 0.25:
        return LayerError(lip, lambda h, y, norms: torch.full_like(norms(h), math.inf))
    # y_hat = y (1 + theta) - e_m (1 + theta) / std + e, |theta| <= (1 + u)^2 / (1 - r) - 1
    theta = (1 + p.u) ** 2 / (1 - r) - 1
    rel = theta / (1 - theta) * (1 + 2.0**-40)
    const = ((1 + theta) * (p.u * shift + p.eta * inv) + p.eta * math.sqrt(n)) / (1 - theta)

    def local(h: torch.Tensor, y: torch.Tensor, norms: Norms) -> torch.Tensor:
        return rel * norms(y) + const

    return LayerError(lip, local)


@ROUNDOFF.register(BatchNorm)
def _batchnorm(layer: BatchNorm, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    smax = float(np.max(np.abs(layer.scale)))
    shift = _norm64(channel_vector(layer.shift, i)) * (1 + 2.0**-50)
    n = int(np.prod(o))
    g2, g3 = gamma(2, p.u), gamma(3, p.u)

    def local(h: torch.Tensor, y: torch.Tensor, norms: Norms) -> torch.Tensor:
        hn = norms(h)
        return (
            (g3 * smax + 1.01 * p.eta) * hn + g2 * shift + p.u * norms(y) + 3 * p.eta * math.sqrt(n)
        )

    return LayerError(lip, local)


@ROUNDOFF.register(AvgPool2d)
def _pool(layer: AvgPool2d, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    g = gamma(layer.kernel[0] * layer.kernel[1] + 1, p.u)
    under = 2 * p.eta * math.sqrt(int(np.prod(o)))
    return LayerError(lip, lambda h, y, norms: g * lip * norms(h) + under)


@ROUNDOFF.register(ReLU, GroupSort, Flatten)
def _exact(layer: Layer, i: Shape, o: Shape, lip: float, p: Precision) -> LayerError:
    """max(x, 0), a permutation and a reshape are computed exactly."""
    return LayerError(lip, lambda h, y, norms: torch.zeros(h.shape[0], dtype=torch.float64))


_CONSTANTS: dict[type, tuple[str, ...]] = {
    Dense: ("weight", "bias"),
    Conv2d: ("weight", "bias"),
    Normalize: ("mean", "std"),
    BatchNorm: ("scale", "shift"),
}


def _norm64(values: Any) -> float:
    """An upper bound of ||values||_2 (any shape), without underflow of the squares."""
    flat = np.asarray(values, dtype=np.float64).reshape(1, -1)
    return float(_safe_rows(torch.from_numpy(np.array(flat)), 2.0**-53)[0])


def _safe_rows(h: torch.Tensor, u64: float) -> torch.Tensor:
    """Upper bounds of the l2 norm of each row of ``h`` (n, ...), computed in float64 on rows
    rescaled by a power of two, inflated by the rounding of the computation."""
    flat = h.reshape(h.shape[0], -1).to(torch.float64)
    n = flat.shape[1]
    if n == 0:
        return torch.zeros(h.shape[0], dtype=torch.float64, device=h.device)
    amax = flat.abs().amax(dim=1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    exps = torch.frexp(safe).exponent
    scaled = torch.ldexp(flat, -exps[:, None].to(torch.float64))
    total = torch.linalg.vector_norm(scaled, dim=1) * (1 + gamma(n + 4, u64)) + 2.0**-1000
    out = torch.ldexp(total, exps.to(torch.float64)) + 2.0**-1074  # a subnormal result rounds
    return torch.where(amax > 0, out, torch.zeros_like(out))


def check_representable(network: Network, dtype: torch.dtype) -> None:
    """Raise ``UnsupportedError`` (naming the layer) if a constant overflows ``dtype``."""
    for k, layer in enumerate(network.layers):
        for name in _CONSTANTS.get(type(layer), ()):
            _check_representable(f"layer {k} ({layer.kind}) {name}", getattr(layer, name), dtype)


def layer_errors(network: Network, lips: list[float], p: Precision) -> list[LayerError]:
    """The error model of each layer of ``network``; ``lips`` are the per-layer l2 bounds."""
    return [
        ROUNDOFF.rule(layer, str(k))(layer, network.shapes[k], network.shapes[k + 1], lips[k], p)
        for k, layer in enumerate(network.layers)
    ]


class RoundoffForward:
    """A torch forward pass of ``network`` returning logits and a bound on their error."""

    def __init__(
        self, network: Network, lips: list[float], dtype: torch.dtype, device: torch.device
    ) -> None:
        for k, layer in enumerate(network.layers):
            for name in _CONSTANTS.get(type(layer), ()):
                _check_representable(
                    f"layer {k} ({layer.kind}) {name}", getattr(layer, name), dtype
                )
        self.module = network.module(dtype, device)
        self.dtype, self.device = dtype, device
        with certified_arithmetic():  # the arithmetic every pass runs in
            self.precision = Precision(unit_roundoff(dtype, device), underflow_unit(dtype))
        self.errors = layer_errors(network, lips, self.precision)
        self.input_shape = network.input_shape

    def _norms(self, h: torch.Tensor) -> torch.Tensor:
        """Per-row upper bounds of ||h||_2 (float64). float32 rows: the float32 norm (any
        summation, relative error <= gamma_{n+4}) plus sqrt(n) 2^-63 for squares that
        underflow or flush to zero (each loses < 2^-126); rows that overflow, and rows below
        2^-30 (where that floor would dominate), are recomputed on power-of-two rescaled
        float64 rows. float64: always rescaled."""
        if h.dtype != torch.float32:
            return _safe_rows(h, 2.0**-53)
        flat = h.reshape(h.shape[0], -1)
        n = flat.shape[1]
        r = torch.linalg.vector_norm(flat, dim=1)
        out = r.to(torch.float64) * (1 + gamma(n + 4, 2.0**-24)) + math.sqrt(n) * 2.0**-63
        redo = ~torch.isfinite(r) | (r < 2.0**-30)  # overflow, or tiny rows (no absolute floor)
        if bool(redo.any()):
            out[redo] = _safe_rows(flat[redo], 2.0**-53)
        return out

    def __call__(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """x (n, *input_shape) float64 -> (logits (n, m) float64, error bound E (n,) float64)."""
        arr = np.asarray(x, dtype=np.float64)
        arr = arr if arr.flags.writeable else arr.copy()
        x64 = torch.from_numpy(arr).reshape((-1, *self.input_shape))
        h = x64.to(device=self.device, dtype=self.dtype)
        cache: list[tuple[torch.Tensor, torch.Tensor]] = []

        def norms(t: torch.Tensor) -> torch.Tensor:
            """``_norms`` once per tensor of this pass (an output is the next layer's input).
            Only the current layer's input and output are remembered: holding every
            intermediate tensor defeats the allocator's reuse (a third slower on CPU)."""
            for seen, value in cache:
                if seen is t:
                    return value
            value = self._norms(t)
            cache.append((t, value))
            del cache[:-2]
            return value

        p = self.precision
        d = h[0].numel()
        if self.dtype == torch.float64:
            err = torch.zeros(h.shape[0], dtype=torch.float64, device=self.device)
        else:  # storing x: |h - x| <= u |x| + eta elementwise, and |x| <= (1 + u) |h| + eta
            err = (p.u * (1 + 2 * p.u) * norms(h) + 2 * p.eta * math.sqrt(d)) * (1 + 2.0**-40)
        with torch.no_grad(), certified_arithmetic():
            for layer, model in zip(self.module, self.errors, strict=True):
                y = layer(h)
                local = model.local(h, y, norms)
                err = model.lip * err + SAFETY * local
                h = y
        err = err * (1 + 2.0**-40) + 2.0**-1000  # rounding of the bound's own arithmetic
        if not bool(torch.all(torch.isfinite(h))):
            bad = ~torch.isfinite(h).all(dim=1)
            err = torch.where(bad, torch.full_like(err, math.inf), err)
        return h.to(torch.float64).cpu().numpy(), err.cpu().numpy()
