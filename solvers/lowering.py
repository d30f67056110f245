"""Lower a network IR to the normal form the exact solvers encode: affine maps separated by
partial ReLU layers.

``PiecewiseLinearNet`` computes, on the flattened input h_0 = x.ravel()::

    z_k = W_k h_{k-1} + b_k                           for k = 1..L
    h_k = where(relu_k, max(z_k, 0), z_k)             for k < L  (a mask: pass-through neurons)
    f(x) = z_L

Every supported layer lowers *exactly* (no relaxation):

- Dense, Conv2d, AvgPool2d, Normalize and Flatten are linear and fold into the surrounding
  affine map (convolutions and pooling become dense matrices, which is meant for the small
  inputs the exact solvers handle);
- ReLU starts a new layer with every neuron masked;
- MinMax / GroupSort sorts through compare-swap rounds (odd-even transposition sort, k rounds
  for groups of k). A compare-swap of (a, b) is (min, max) = (a - r, b + r) with
  r = relu(a - b); a round emits a layer holding the differences (ReLU) and the values
  (pass-through), so each compare-swap costs one ReLU.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import numpy as np
import torch
from numpy.typing import NDArray

from verispec.errors import UnsupportedError
from verispec.network import (
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Network,
    Normalize,
    ReLU,
    Shape,
)
from verispec.regions import FloatArray, frozen_array

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


def _torch_linear_map(layer: Layer, shape: Shape) -> tuple[FloatArray, FloatArray]:
    """Dense matrix and shift of a linear layer acting on flattened inputs of ``shape``."""
    n_in = int(np.prod(shape))
    module = layer.to_torch().to(torch.float64).eval()
    with torch.no_grad():
        shift = module(torch.zeros((1, *shape), dtype=torch.float64)).reshape(-1)
        n_out = int(shift.numel())
        if n_in * n_out > MAX_DENSE_ENTRIES:
            raise UnsupportedError(
                f"{layer.kind} on input {shape} lowers to a {n_out}x{n_in} matrix: too large for "
                "the exact solvers (use a fast engine, or a smaller network)"
            )
        cols = module(torch.eye(n_in, dtype=torch.float64).reshape((n_in, *shape)))
        M = (cols.reshape(n_in, n_out) - shift).T
    return np.asarray(M.numpy()), np.asarray(shift.numpy())


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


def lower(network: Network) -> PiecewiseLinearNet:
    """The exact piecewise-linear normal form of ``network``."""
    builder = _Builder(network.input_size)
    for layer, shape in zip(network.layers, network.shapes, strict=False):
        if isinstance(layer, ReLU):
            builder.activation(np.ones(builder.A.shape[0], bool))
        elif isinstance(layer, GroupSort):
            for pairs in _sort_rounds(_groups(shape, layer.group_size)):
                builder.compare_swap(pairs)
        elif isinstance(layer, Flatten):
            continue
        elif isinstance(layer, Dense):
            builder.linear(np.asarray(layer.weight), np.asarray(layer.bias))
        elif isinstance(layer, Conv2d | AvgPool2d | Normalize):
            builder.linear(*_torch_linear_map(layer, shape))
        else:  # pragma: no cover - the IR is a closed set
            raise UnsupportedError(f"the exact solvers cannot lower layer {layer.kind}")
    return builder.finish()
