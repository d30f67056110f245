"""A forward pass that also returns a proven bound on its own floating-point error.

Engines run networks in float32 for speed but certify the exact (real-arithmetic) network at
the user's float64 point. ``RoundoffForward`` returns logits y_hat (n, m) and E (n,) with
||y_hat - f(x)||_2 <= E, by the standard error analysis of each layer:

- affine layers (dense, conv): |fl(W h + b) - (W h + b)| <= gamma_{n+3} (|W| |h| + |b|)
  elementwise (any summation order, FMA included; one more rounding for storing the float64
  weights in the working precision), with n the fan-in and gamma_k = k u / (1 - k u);
  in l2: gamma_{n+3} (|| |W| ||_2 ||h||_2 + ||b||_2);
- normalisation (x - mean) / std: two rounded operations on rounded constants,
  <= 5u ||out||_2 + 2u ||mean / std||_2;
- average pooling: a sum of k values and a division, <= gamma_{k+1} ||pool(|h|)||_2;
- ReLU, GroupSort, Flatten are exact;
- propagated error: E_{l+1} <= Lip_l E_l + local_l, with Lip_l the layer's proven l2 bound.

Computed activation norms are inflated by their own rounding allowance. The unit roundoff u is
that of the arithmetic actually used: 2^-24 for float32, 2^-53 for float64, 2^-11 when TF32
matmuls are enabled by the user, 2^-8 under float32 matmul precision "medium" (bfloat16);
cuDNN's TF32 convolutions are switched off inside the pass. The analysis assumes convolutions
computed by summation (direct or GEMM); an extra factor ``SAFETY`` covers reordered kernels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import numpy as np
import torch

import verispec.opnorm as opnorm
from verispec.network import AvgPool2d, Conv2d, Dense, Network, Normalize
from verispec.regions import FloatArray

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
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0**-8  # bfloat16 products may be used
    if precision == "high" or (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32):
        return 2.0**-11  # TF32 products may be used
    return 2.0**-24


@contextmanager
def _exact_convolutions(device: torch.device) -> Iterator[None]:
    """Disable cuDNN TF32 inside the pass (a scoped torch context; restores the old flags)."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    ):
        yield


@attrs.frozen
class _LayerError:
    """Per-layer constants: l2 Lipschitz bound, || |W| ||_2 bound, fan-in, ||bias|| (per point)."""

    lip: float
    abs_norm: float = 0.0
    fan_in: int = 0
    bias_norm: float = 0.0
    kind: str = "exact"


def layer_error_constants(network: Network, lips: list[float]) -> list[_LayerError]:
    """Constants for each layer of ``network``; ``lips`` are the per-layer l2 bounds."""
    out = []
    for i, layer in enumerate(network.layers):
        in_shape, out_shape = network.shapes[i], network.shapes[i + 1]
        if isinstance(layer, Dense):
            out.append(
                _LayerError(
                    lips[i],
                    opnorm.dense_abs_l2_bound(layer.weight),
                    layer.weight.shape[1],
                    float(np.linalg.norm(layer.bias)),
                    "affine",
                )
            )
        elif isinstance(layer, Conv2d):
            _, ci, kh, kw = layer.weight.shape
            absn = opnorm.conv2d_abs_l2_bound(
                layer.weight, layer.stride, layer.padding, (in_shape[1], in_shape[2])
            )
            bias = float(np.linalg.norm(layer.bias)) * math.sqrt(out_shape[1] * out_shape[2])
            out.append(_LayerError(lips[i], absn, ci * kh * kw, bias, "affine"))
        elif isinstance(layer, Normalize):
            shift = np.broadcast_to(
                (layer.mean / layer.std).reshape((-1,) + (1,) * (len(in_shape) - 1)), in_shape
            )
            out.append(
                _LayerError(lips[i], bias_norm=float(np.linalg.norm(shift)), kind="normalize")
            )
        elif isinstance(layer, AvgPool2d):
            k = layer.kernel[0] * layer.kernel[1]
            out.append(_LayerError(lips[i], lips[i], k, 0.0, "pool"))
        else:
            out.append(_LayerError(lips[i]))
    return out


def _norms(h: torch.Tensor, u: float) -> torch.Tensor:
    """Per-row l2 norms of ``h`` as float64, inflated by the rounding of their computation."""
    flat = h.reshape(h.shape[0], -1)
    n = flat.shape[1]
    return torch.linalg.vector_norm(flat, dim=1).to(torch.float64) * (1 + gamma(n + 2, u))


class RoundoffForward:
    """A torch forward pass of ``network`` returning logits and a bound on their error."""

    def __init__(
        self, network: Network, lips: list[float], dtype: torch.dtype, device: torch.device
    ) -> None:
        self.module = network.module(dtype, device)
        self.dtype, self.device = dtype, device
        self.u = unit_roundoff(dtype, device)
        self.constants = layer_error_constants(network, lips)
        self.input_shape = network.input_shape

    def __call__(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """x (n, *input_shape) float64 -> (logits (n, m) float64, error bound E (n,) float64)."""
        x64 = torch.from_numpy(np.array(x, dtype=np.float64)).reshape((-1, *self.input_shape))
        h = x64.to(self.device).to(self.dtype)
        err = torch.linalg.vector_norm(
            (h.to(torch.float64) - x64.to(self.device)).flatten(1), dim=1
        )
        u = self.u
        with torch.no_grad(), _exact_convolutions(self.device):
            for layer, c in zip(self.module, self.constants, strict=True):
                if c.kind == "affine":
                    local = gamma(c.fan_in + 3, u) * (c.abs_norm * _norms(h, u) + c.bias_norm)
                    h = layer(h)
                elif c.kind == "pool":
                    h_in = _norms(h, u)
                    h = layer(h)
                    local = gamma(c.fan_in + 1, u) * c.abs_norm * h_in
                elif c.kind == "normalize":
                    h = layer(h)
                    local = 5 * u * _norms(h, u) + 2 * u * c.bias_norm
                else:
                    h = layer(h)
                    local = torch.zeros_like(err)
                err = c.lip * err + SAFETY * local
        if not bool(torch.all(torch.isfinite(h))):
            bad = ~torch.isfinite(h).all(dim=1)
            err = torch.where(bad, torch.full_like(err, math.inf), err)
        return h.to(torch.float64).cpu().numpy(), err.cpu().numpy()
