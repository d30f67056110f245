"""Lower a network IR to the normal form the exact solvers encode: affine maps separated by
partial ReLU layers.

``PiecewiseLinearNet`` computes, on the flattened input h_0 = x.ravel()::

    z_k = W_k h_{k-1} + b_k                           for k = 1..L
    h_k = where(relu_k, max(z_k, 0), z_k)             for k < L  (a mask: pass-through neurons)
    f(x) = z_L

Every layer lowers through its rule in ``LOWERING`` (one per IR layer type; a type without a
rule raises), exactly and on the IR's float64 values (no relaxation, no float32 module):

- Dense, Conv2d, AvgPool2d, Normalize, BatchNorm and Flatten are linear and fold into the
  surrounding affine map (convolutions and pooling become dense matrices, which is meant for
  the small inputs the exact solvers handle). A single layer's matrix is exact, except the
  reciprocals 1 / std (Normalize) and 1 / (kh kw) (AvgPool2d), rounded to nearest once.
  Composing consecutive linear layers is float64 arithmetic (relative error <= gamma_n per
  coefficient, n the inner dimension); the solvers' certification margin (their tolerance)
  must dominate it;
- ReLU starts a new layer with every neuron masked;
- MinMax / GroupSort sorts through compare-swap rounds (odd-even transposition sort, k rounds
  for groups of k). A compare-swap of (a, b) is (min, max) = (a - r, b + r) with
  r = relu(a - b); a round emits a layer holding the differences (ReLU) and the values
  (pass-through), so each compare-swap costs one ReLU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

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
from verispec.regions import FloatArray, frozen_array
from verispec.rules import RuleTable

MAX_DENSE_ENTRIES = 20_000_000
"""Largest dense matrix a lowered convolution may become (160 MB in float64)."""


def _frozen_bool(value: Iterable[bool] | NDArray[np.bool_]) -> NDArray[np.bool_]:
    arr = np.array(value, dtype=bool, copy=True)
    arr.setflags(write=False)
    return arr


def _arrays(value: Iterable[FloatArray]) -> tuple[FloatArray, ...]:
    return tuple(frozen_array(v) for v in value)


def _masks(value: Iterable[NDArray[np.bool_]]) -> tuple[NDArray[np.bool_], ...]:
    return tuple(_frozen_bool(v) for v in value)


@attrs.frozen(eq=False)
class PiecewiseLinearNet:
    """Affine layers ``(weights[k], biases[k])`` with ReLU on ``relu[k]`` after every layer but
    the last (see the module docstring)."""

    weights: tuple[FloatArray, ...] = attrs.field(converter=_arrays)
    biases: tuple[FloatArray, ...] = attrs.field(converter=_arrays)
    relu: tuple[NDArray[np.bool_], ...] = attrs.field(converter=_masks)

    def __attrs_post_init__(self) -> None:
        if not self.weights or len(self.biases) != len(self.weights):
            raise ValueError("PiecewiseLinearNet needs one bias per weight and >= 1 layer")
        if len(self.relu) != len(self.weights) - 1:
            raise ValueError("PiecewiseLinearNet needs a ReLU mask for every hidden layer")
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {k}: weight {w.shape} and bias {b.shape} do not match")
            if k and w.shape[1] != self.weights[k - 1].shape[0]:
                raise ValueError(f"layer {k}: {w.shape[1]} inputs after {w.shape[0]} outputs")
            if k < len(self.relu) and self.relu[k].shape != (w.shape[0],):
                raise ValueError(f"layer {k}: ReLU mask of shape {self.relu[k].shape}")

    @property
    def depth(self) -> int:
        """Number of affine layers L."""
        return len(self.weights)

    @property
    def input_size(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def num_outputs(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def num_relus(self) -> int:
        return int(sum(m.sum() for m in self.relu))

    def forward(self, x: FloatArray) -> FloatArray:
        """Float64 outputs (n, m) for flattened inputs ``x`` (n, d)."""
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        for k in range(self.depth):
            z = h @ self.weights[k].T + self.biases[k]
            h = np.where(self.relu[k], np.maximum(z, 0.0), z) if k < len(self.relu) else z
        return h

    def pre_activations(self, x: FloatArray) -> list[FloatArray]:
        """The pre-activations z_1..z_L of flattened inputs ``x`` (n, d)."""
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = []
        for k in range(self.depth):
            z = h @ self.weights[k].T + self.biases[k]
            out.append(z)
            h = np.where(self.relu[k], np.maximum(z, 0.0), z) if k < len(self.relu) else z
        return out


class _Builder:
    """Accumulates the affine map from the last activation's output to the current values."""

    def __init__(self, size: int) -> None:
        self.A: FloatArray = np.eye(size)
        self.c: FloatArray = np.zeros(size)
        self.weights: list[FloatArray] = []
        self.biases: list[FloatArray] = []
        self.relu: list[NDArray[np.bool_]] = []

    def linear(self, M: FloatArray, shift: FloatArray) -> None:
        """Compose the current values v with v -> M v + shift."""
        self.A = M @ self.A
        self.c = M @ self.c + shift

    def diagonal(self, scale: FloatArray, shift: FloatArray) -> None:
        """Compose the current values v with v -> scale * v + shift (elementwise)."""
        self.A = scale[:, None] * self.A
        self.c = scale * self.c + shift

    def activation(self, mask: NDArray[np.bool_]) -> None:
        """Emit the current affine map as a layer followed by ReLU on ``mask``."""
        self.weights.append(self.A)
        self.biases.append(self.c)
        self.relu.append(mask)
        self.A = np.eye(self.A.shape[0])
        self.c = np.zeros(self.A.shape[0])

    def compare_swap(self, pairs: NDArray[np.int64]) -> None:
        """Replace (v_i, v_j) by (min, max) for each row (i, j) of ``pairs`` (disjoint)."""
        n = self.A.shape[0]
        p = len(pairs)
        # Emitted layer: [v_i - v_j for each pair] (ReLU) followed by v (pass-through).
        D = np.zeros((p, n))
        D[np.arange(p), pairs[:, 0]] = 1.0
        D[np.arange(p), pairs[:, 1]] = -1.0
        self.linear(np.vstack([D, np.eye(n)]), np.zeros(p + n))
        self.activation(np.concatenate([np.ones(p, bool), np.zeros(n, bool)]))
        # Back to n values: v_i - r, v_j + r.
        M = np.hstack([np.zeros((n, p)), np.eye(n)])
        M[pairs[:, 0], np.arange(p)] = -1.0
        M[pairs[:, 1], np.arange(p)] = 1.0
        self.A = M
        self.c = np.zeros(n)

    def finish(self) -> PiecewiseLinearNet:
        return PiecewiseLinearNet([*self.weights, self.A], [*self.biases, self.c], self.relu)


def _conv_matrix(layer: Conv2d, shape: Shape) -> tuple[FloatArray, FloatArray]:
    """Dense matrix and shift of a convolution on flattened inputs of ``shape``. The matrix is
    the float64 convolution (no bias) of the identity basis: every entry is one kernel weight
    times 1.0 or an exact zero, so it is exact; the shift is the bias per output position."""
    n_in = int(np.prod(shape))
    out_shape = layer.output_shape(shape)
    n_out = int(np.prod(out_shape))
    _check_size(layer, shape, n_in, n_out)
    kernel = torch.from_numpy(np.array(layer.weight, dtype=np.float64))
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=torch.float64).reshape((n_in, *shape))
        cols = F.conv2d(basis, kernel, None, layer.stride, layer.padding)
    M = np.ascontiguousarray(cols.reshape(n_in, n_out).numpy().T)
    shift = np.repeat(np.asarray(layer.bias, dtype=np.float64), n_out // out_shape[0])
    return M, shift


def _pool_matrix(layer: AvgPool2d, shape: Shape) -> tuple[FloatArray, FloatArray]:
    """Average pooling as a matrix with entries 1 / (kh kw) (rounded to nearest once when
    kh kw is not a power of two: relative error <= 2**-53 per coefficient)."""
    c = shape[0]
    out_shape = layer.output_shape(shape)
    n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
    _check_size(layer, shape, n_in, n_out)
    kh, kw = layer.kernel
    sh, sw = layer.stride
    M = np.zeros((n_out, n_in))
    weight = 1.0 / (kh * kw)
    index_in = np.arange(n_in).reshape(shape)
    index_out = np.arange(n_out).reshape(out_shape)
    for i in range(out_shape[1]):
        for j in range(out_shape[2]):
            window = index_in[:, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(c, -1)
            M[index_out[:, i, j][:, None], window] = weight
    return M, np.zeros(n_out)


def _check_size(layer: Layer, shape: Shape, n_in: int, n_out: int) -> None:
    if n_in * n_out > MAX_DENSE_ENTRIES:
        raise UnsupportedError(
            f"{layer.kind} on input {shape} lowers to a {n_out}x{n_in} matrix: too large for "
            "the exact solvers (use a fast engine, or a smaller network)"
        )


def _sort_rounds(groups: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Compare-swap rounds of odd-even transposition sort on every group (rows of flat indices,
    ascending order within a row)."""
    k = groups.shape[1]
    rounds = []
    for r in range(k):
        starts = np.arange(r % 2, k - 1, 2)
        if starts.size:
            pairs = np.stack([groups[:, starts], groups[:, starts + 1]], axis=-1)
            rounds.append(pairs.reshape(-1, 2))
    return rounds


def _groups(shape: Shape, group_size: int) -> NDArray[np.int64]:
    """Flat indices of each GroupSort group: consecutive channels at each position."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    c = shape[0]
    grouped = index.reshape((c // group_size, group_size, -1))  # (groups, size, positions)
    return grouped.transpose(0, 2, 1).reshape(-1, group_size)


LowerRule = Callable[[Any, Any, Shape], None]
"""(builder, layer of the registered type, input shape) -> None: appends the layer's exact map."""

LOWERING: RuleTable[LowerRule] = RuleTable("the exact lowering")


@LOWERING.register(ReLU)
def _relu(b: _Builder, layer: ReLU, shape: Shape) -> None:
    b.activation(np.ones(b.A.shape[0], bool))


@LOWERING.register(GroupSort)
def _groupsort(b: _Builder, layer: GroupSort, shape: Shape) -> None:
    for pairs in _sort_rounds(_groups(shape, layer.group_size)):
        b.compare_swap(pairs)


@LOWERING.register(Flatten)
def _flatten(b: _Builder, layer: Flatten, shape: Shape) -> None:
    """The IR flattens in C order, which is the order of the lowered values: the identity."""


@LOWERING.register(Dense)
def _dense(b: _Builder, layer: Dense, shape: Shape) -> None:
    b.linear(np.asarray(layer.weight), np.asarray(layer.bias))


@LOWERING.register(Conv2d)
def _conv(b: _Builder, layer: Conv2d, shape: Shape) -> None:
    b.linear(*_conv_matrix(layer, shape))


@LOWERING.register(AvgPool2d)
def _pool(b: _Builder, layer: AvgPool2d, shape: Shape) -> None:
    b.linear(*_pool_matrix(layer, shape))


@LOWERING.register(Normalize)
def _normalize(b: _Builder, layer: Normalize, shape: Shape) -> None:
    """(x - mean) / std as x * (1 / std) - mean / std (1 / std rounded to nearest once)."""
    inv = 1.0 / channel_vector(layer.std, shape).ravel()
    b.diagonal(inv, -channel_vector(layer.mean, shape).ravel() * inv)


@LOWERING.register(BatchNorm)
def _batchnorm(b: _Builder, layer: BatchNorm, shape: Shape) -> None:
    b.diagonal(
        channel_vector(layer.scale, shape).ravel(), channel_vector(layer.shift, shape).ravel()
    )


def lower(network: Network) -> PiecewiseLinearNet:
    """The exact piecewise-linear normal form of ``network`` (see the module docstring)."""
    builder = _Builder(network.input_size)
    for i, (layer, shape) in enumerate(zip(network.layers, network.shapes, strict=False)):
        LOWERING.rule(layer, str(i))(builder, layer, shape)
    return builder.finish()
