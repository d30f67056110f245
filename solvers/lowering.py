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
  Composing consecutive linear layers is float64 arithmetic. The lowering therefore keeps,
  per emitted layer, rigorous elementwise bounds ``weight_error[k]`` >= |W_k(exact) - W_k|
  and ``bias_error[k]`` >= |b_k(exact) - b_k| (None where the layer is exact): a product of n
  terms rounds by at most gamma_n |M| |A| (gamma_n = n u / (1 - n u), u = 2^-53), plus
  n 2^-1074 where it underflows, and errors already present propagate through |M|. Every
  bound (``propagation.py``) adds them, and the exact solvers widen their margins by the
  deviation they can cause (``bounds.deviation``), so the verdicts are about the exact
  network, not the rounded one;
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


def _errors(value: Iterable[FloatArray | None]) -> tuple[FloatArray | None, ...]:
    return tuple(None if v is None else frozen_array(v) for v in value)


@attrs.frozen(eq=False)
class PiecewiseLinearNet:
    """Affine layers ``(weights[k], biases[k])`` with ReLU on ``relu[k]`` after every layer but
    the last (see the module docstring)."""

    weights: tuple[FloatArray, ...] = attrs.field(converter=_arrays)
    biases: tuple[FloatArray, ...] = attrs.field(converter=_arrays)
    relu: tuple[NDArray[np.bool_], ...] = attrs.field(converter=_masks)
    weight_error: tuple[FloatArray | None, ...] = attrs.field(default=(), converter=_errors)
    """Per layer, a bound of |W_k(exact) - W_k| elementwise, or None (exact); () when every
    layer is exact."""
    bias_error: tuple[FloatArray | None, ...] = attrs.field(default=(), converter=_errors)
    cache: dict[str, object] = attrs.field(factory=dict, init=False, repr=False)
    """Derived forms built once (the torch tensors of ``propagation.TorchNet.of``, by device)."""

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
        for name, errs, ref in (
            ("weight_error", self.weight_error, self.weights),
            ("bias_error", self.bias_error, self.biases),
        ):
            if errs and len(errs) != len(ref):
                raise ValueError(f"PiecewiseLinearNet needs one {name} per layer (or none)")
            for k, (e, r) in enumerate(zip(errs, ref, strict=False)):
                if e is not None and (e.shape != r.shape or not bool(np.all(e >= 0))):
                    raise ValueError(f"layer {k}: {name} must be >= 0 with shape {r.shape}")

    def weight_errors(self) -> tuple[FloatArray | None, ...]:
        """``weight_error`` with one entry per layer."""
        return self.weight_error or (None,) * self.depth

    def bias_errors(self) -> tuple[FloatArray | None, ...]:
        """``bias_error`` with one entry per layer."""
        return self.bias_error or (None,) * self.depth

    @property
    def exact(self) -> bool:
        """Whether no layer carries a lowering error."""
        return all(e is None for e in (*self.weight_errors(), *self.bias_errors()))

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


U = 2.0**-53
"""The unit roundoff of float64."""

TINY = 2.0**-1074
"""The smallest positive float64: the absolute error of one operation that underflows."""


def _gamma(n: int) -> float:
    """A bound of the relative rounding of a float64 sum of n products (gamma_{n + 1}, the
    error bound's own rounding included)."""
    return 1.01 * (n + 2) * U


def _integral(a: FloatArray) -> bool:
    """Small integers only: products and sums of such matrices are exact in float64."""
    return bool(np.all(a == np.round(a)) and np.abs(a).sum(axis=-1).max(initial=0) < 2.0**40)


def _add(a: FloatArray | None, b: FloatArray | None) -> FloatArray | None:
    if a is None:
        return b
    return a if b is None else a + b


def _up(a: FloatArray | None) -> FloatArray | None:
    """An error bound enlarged for its own rounding (sums of a few non-negative terms)."""
    return None if a is None else a * (1 + 8 * U) + TINY


class _Builder:
    """Accumulates the affine map ``v -> A v + c`` from the last activation's output to the
    current values, with elementwise bounds ``EA``, ``ec`` of its error against the exact
    composition (None: exact)."""

    def __init__(self, size: int) -> None:
        self._reset(size)
        self.weights: list[FloatArray] = []
        self.biases: list[FloatArray] = []
        self.relu: list[NDArray[np.bool_]] = []
        self.weight_error: list[FloatArray | None] = []
        self.bias_error: list[FloatArray | None] = []

    def _reset(self, size: int) -> None:
        self.A: FloatArray = np.eye(size)
        self.c: FloatArray = np.zeros(size)
        self.EA: FloatArray | None = None
        self.ec: FloatArray | None = None
        self.fresh = True  # A is the identity and c is zero (exactly)

    def linear(self, M: FloatArray, shift: FloatArray, M_error: FloatArray | None = None) -> None:
        """Compose the current values v with v -> M v + shift (|M(exact) - M| <= M_error)."""
        if self.fresh:  # M @ I is M, exactly
            self.A, self.c, self.EA, self.ec = M.copy(), shift.copy(), M_error, None
            self.fresh = False
            return
        A, c, EA, ec = self.A, self.c, self.EA, self.ec
        absM, absA, absc = np.abs(M), np.abs(A), np.abs(c)
        self.A, self.c = M @ A, M @ c + shift
        prod = absM @ absA
        n = A.shape[0]
        if not (_integral(M) and _integral(A) and prod.max(initial=0) < 2.0**52):
            err = _add(_gamma(n) * prod + (n + 1) * TINY, None if EA is None else absM @ EA)
            self.EA = _up(err)  # else: sums of small integer products, exact
        elif EA is not None:
            self.EA = _up(absM @ EA)
        c_sum = absM @ absc + np.abs(shift)
        c_err = None
        if not (_integral(M) and _integral(c) and _integral(shift) and c_sum.max() < 2.0**52):
            c_err = _gamma(n) * c_sum + (n + 1) * TINY
        if ec is not None:
            c_err = _add(c_err, absM @ ec)
        if M_error is not None:
            self.EA = _up(_add(self.EA, M_error @ (absA if EA is None else absA + EA)))
            c_err = _add(c_err, M_error @ (absc if ec is None else absc + ec))
        self.ec = _up(c_err)

    def diagonal(
        self,
        scale: FloatArray,
        shift: FloatArray,
        scale_error: FloatArray | None = None,
        shift_error: FloatArray | None = None,
    ) -> None:
        """Compose the current values v with v -> scale * v + shift (elementwise; the exact
        scale and shift within ``scale_error``, ``shift_error`` of these)."""
        if self.fresh:
            self.A, self.c = np.diag(scale), shift.copy()
            self.EA = None if scale_error is None else np.diag(scale_error)
            self.ec, self.fresh = shift_error, False
            return
        A, c, EA, ec = self.A, self.c, self.EA, self.ec
        s = np.abs(scale)
        self.A, self.c = scale[:, None] * A, scale * c + shift
        err = U * (s[:, None] * np.abs(A)) + TINY
        if EA is not None:
            err = err + s[:, None] * EA
        if scale_error is not None:
            err = err + scale_error[:, None] * (np.abs(A) if EA is None else np.abs(A) + EA)
        self.EA = _up(err)
        c_err = _gamma(1) * (s * np.abs(c) + np.abs(shift)) + 2 * TINY
        if ec is not None:
            c_err = c_err + s * ec
        if scale_error is not None:
            c_err = c_err + scale_error * (np.abs(c) if ec is None else np.abs(c) + ec)
        self.ec = _up(_add(c_err, shift_error))

    def activation(self, mask: NDArray[np.bool_]) -> None:
        """Emit the current affine map as a layer followed by ReLU on ``mask``."""
        self._emit()
        self.relu.append(mask)
        self._reset(self.A.shape[0])

    def _emit(self) -> None:
        self.weights.append(self.A)
        self.biases.append(self.c)
        self.weight_error.append(self.EA)
        self.bias_error.append(self.ec)

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
        # Back to n values: v_i - r, v_j + r (an exact integer map).
        M = np.hstack([np.zeros((n, p)), np.eye(n)])
        M[pairs[:, 0], np.arange(p)] = -1.0
        M[pairs[:, 1], np.arange(p)] = 1.0
        self.A, self.c, self.EA, self.ec, self.fresh = M, np.zeros(n), None, None, False

    def finish(self) -> PiecewiseLinearNet:
        self._emit()
        exact = all(e is None for e in (*self.weight_error, *self.bias_error))
        return PiecewiseLinearNet(
            self.weights,
            self.biases,
            self.relu,
            () if exact else self.weight_error,
            () if exact else self.bias_error,
        )


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
    M, shift = _pool_matrix(layer, shape)
    kh, kw = layer.kernel
    exact = (kh * kw) & (kh * kw - 1) == 0  # a power of two: 1 / (kh kw) is exact
    b.linear(M, shift, None if exact else 1.01 * U * M)


@LOWERING.register(Normalize)
def _normalize(b: _Builder, layer: Normalize, shape: Shape) -> None:
    """(x - mean) / std as x * (1 / std) - mean / std (1 / std rounded to nearest once)."""
    inv = 1.0 / channel_vector(layer.std, shape).ravel()
    mean = channel_vector(layer.mean, shape).ravel()
    shift = -mean * inv
    # |1/std - inv| <= u |inv| (+ TINY if it underflows); the shift's exact value -mean/std is
    # within |mean| that + u |mean inv| (+ TINY) of the rounded product.
    inv_err = 1.01 * U * np.abs(inv) + TINY
    b.diagonal(inv, shift, inv_err, np.abs(mean) * inv_err + 1.01 * U * np.abs(shift) + TINY)


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
