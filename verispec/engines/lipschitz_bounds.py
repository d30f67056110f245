"""Sound global Lipschitz bounds of a network IR: the Lipschitz rule table.

Each IR layer type has one ``LipschitzRule`` in ``LIPSCHITZ``: its proven l2 operator-norm
bound (``verispec.opnorm``), its l_inf -> l2 bound when it is the first linear layer, and, for
per-element scalings (Normalize, BatchNorm), the diagonal that may be folded into the next
dense or convolutional layer. A type without a rule raises; nothing defaults to 1-Lipschitz.

Folding. A run of diagonal layers (Flatten may sit inside it) directly before a Dense or
Conv2d layer is folded into that layer's weight, ``W diag(s)``, which is tighter than
``||W|| max|s|``. This applies to the *head* too: the head constants ``||W^T c||`` use the
folded head weight, so a normalisation right before the last dense layer is never dropped.
A fold whose products under- or overflow (|value| < 2**-1000 or non-finite) is refused, and the
layers are bounded one by one instead (always sound).

Floating point. Bounds are computed in float64 and inflated (``opnorm.ROUNDING_ALLOWANCE``);
norms are computed on rows rescaled by a power of two (no underflow of squares); products of
constants that underflow are replaced by ``TINY`` = 2**-1000, an upper bound of the true product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

import verispec.opnorm as opnorm
from verispec.errors import UnsupportedError
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
from verispec.regions import FloatArray, Norm
from verispec.rules import RuleTable

TINY = 2.0**-1000
"""Smallest constant used: a computed product below it is replaced by it (an upper bound)."""


@attrs.frozen
class LayerBound:
    """A layer's proven l2 operator-norm bound, whether it is linear, and (for the first linear
    layer, when asked for) its l_inf -> l2 bound. ``weight`` is the (folded) weight of a dense
    layer; ``folded`` marks a diagonal layer folded into the next linear layer (l2 = 1)."""

    index: int
    kind: str
    l2: float
    linear: bool
    linf_to_l2: float | None = None
    weight: FloatArray | None = attrs.field(default=None, eq=False, repr=False)
    folded: bool = False


BoundFn = Callable[[Any, Shape, Shape, "FloatArray | None", bool], tuple[float, float | None]]
"""(layer, input shape, output shape, folded input scale or None, want l_inf -> l2) ->
(l2 bound, l_inf -> l2 bound or None)."""


@attrs.frozen
class LipschitzRule:
    """How one layer type is bounded: ``linear`` layers enter the l_inf first-layer logic;
    ``folds`` layers accept a diagonal folded into their input; ``diagonal`` layers give one."""

    bound: BoundFn
    linear: bool
    folds: bool = False
    diagonal: Callable[[Any, Shape], FloatArray] | None = None
    weight: Callable[[Any, FloatArray | None], FloatArray] | None = None


LIPSCHITZ: RuleTable[LipschitzRule] = RuleTable("the Lipschitz bound")


def _dense_weight(layer: Dense, scale: FloatArray | None) -> FloatArray:
    return layer.weight if scale is None else layer.weight * scale.reshape(1, -1)


def _conv_weight(layer: Conv2d, scale: FloatArray | None) -> FloatArray:
    if scale is None:
        return layer.weight
    per_channel = scale.reshape(scale.shape[0], -1)[:, 0]
    return layer.weight * per_channel.reshape(1, -1, 1, 1)


def _dense_bound(
    layer: Dense, i: Shape, o: Shape, scale: FloatArray | None, linf: bool
) -> tuple[float, float | None]:
    w = _dense_weight(layer, scale)
    return opnorm.dense_l2_bound(w), opnorm.dense_linf_to_l2_bound(w) if linf else None


def _conv_bound(
    layer: Conv2d, i: Shape, o: Shape, scale: FloatArray | None, linf: bool
) -> tuple[float, float | None]:
    w = _conv_weight(layer, scale)
    hw = (i[1], i[2])
    l2 = opnorm.conv2d_l2_bound(w, layer.stride, layer.padding, hw)
    return l2, (
        opnorm.conv2d_linf_to_l2_bound(w, layer.stride, layer.padding, hw) if linf else None
    )


def _diagonal_bound(diag: Callable[[Any, Shape], FloatArray]) -> BoundFn:
    def bound(
        layer: Any, i: Shape, o: Shape, scale: FloatArray | None, linf: bool
    ) -> tuple[float, float | None]:
        s = np.abs(diag(layer, i))
        up = 1 + opnorm.ROUNDING_ALLOWANCE
        return _up(float(s.max()) * up), _up(safe_l2(s.reshape(1, -1))[0] * up)

    return bound


def _normalize_diagonal(layer: Normalize, shape: Shape) -> FloatArray:
    return np.asarray(1.0 / channel_vector(layer.std, shape))


def _batchnorm_diagonal(layer: BatchNorm, shape: Shape) -> FloatArray:
    return np.asarray(channel_vector(layer.scale, shape))


def _pool_bound(
    layer: AvgPool2d, i: Shape, o: Shape, scale: FloatArray | None, linf: bool
) -> tuple[float, float | None]:
    l2 = opnorm.avgpool2d_l2_bound(layer.kernel, layer.stride)
    n_in, n_out = int(np.prod(i)), int(np.prod(o))
    return l2, min(math.sqrt(n_out), math.sqrt(n_in) * l2) * (1 + opnorm.ROUNDING_ALLOWANCE)


def _one_lipschitz(
    layer: Any, i: Shape, o: Shape, scale: FloatArray | None, linf: bool
) -> tuple[float, float | None]:
    """A permutation (GroupSort), a reshape (Flatten) or ReLU: 1-Lipschitz in l2 and l_inf."""
    return 1.0, None


LIPSCHITZ.register(Dense)(LipschitzRule(_dense_bound, True, folds=True, weight=_dense_weight))
LIPSCHITZ.register(Conv2d)(LipschitzRule(_conv_bound, True, folds=True, weight=_conv_weight))
LIPSCHITZ.register(Normalize)(
    LipschitzRule(_diagonal_bound(_normalize_diagonal), True, diagonal=_normalize_diagonal)
)
LIPSCHITZ.register(BatchNorm)(
    LipschitzRule(_diagonal_bound(_batchnorm_diagonal), True, diagonal=_batchnorm_diagonal)
)
LIPSCHITZ.register(AvgPool2d)(LipschitzRule(_pool_bound, True))
LIPSCHITZ.register(ReLU, GroupSort, Flatten)(LipschitzRule(_one_lipschitz, False))


def _up(value: float) -> float:
    """``value`` rounded up one ulp (and at least ``TINY`` when positive)."""
    if value <= 0.0 or not math.isfinite(value):
        return value
    return max(float(np.nextafter(value, math.inf)), TINY)


def safe_l2(rows: FloatArray) -> FloatArray:
    """Upper bounds of the l2 norm of each row of ``rows`` (k, n): each row is rescaled by a
    power of two first, so squares neither underflow nor overflow; inflated for rounding."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    amax = np.max(np.abs(rows), axis=1) if rows.shape[1] else np.zeros(rows.shape[0])
    exps = np.frexp(np.where(amax > 0, amax, 1.0))[1]
    scaled = np.ldexp(rows, -exps[:, None])
    n = rows.shape[1]
    norms = np.sqrt(np.sum(scaled * scaled, axis=1)) * (1 + (n + 4) * 2.0**-52)
    out = np.ldexp(norms, exps)
    return np.where(amax > 0, np.maximum(out, TINY), 0.0)


def _fold_ok(product: FloatArray, a: FloatArray, b: FloatArray) -> bool:
    """Whether an elementwise product of nonzero factors neither under- nor overflowed."""
    if not np.all(np.isfinite(product)):
        return False
    nonzero = (np.broadcast_to(a, product.shape) != 0) & (np.broadcast_to(b, product.shape) != 0)
    return bool(np.all(np.abs(product[nonzero]) >= TINY))


def _fold_plan(network: Network, upto: int) -> dict[int, FloatArray]:
    """Target layer index -> the combined diagonal (over the target's input shape) of the run
    of diagonal layers (and Flattens) directly before it, for each fold that is safe."""
    plan: dict[int, FloatArray] = {}
    i = 0
    while i < upto:
        rule = LIPSCHITZ.rule(network.layers[i], str(i))
        if rule.diagonal is None:
            i += 1
            continue
        scale = np.ones(network.shapes[i])
        ok, j = True, i
        while j < upto:
            layer = network.layers[j]
            r = LIPSCHITZ.rule(layer, str(j))
            if r.diagonal is not None:
                d = r.diagonal(layer, network.shapes[j])
                new = scale * d
                ok = ok and _fold_ok(new, scale, d)
                scale = new
            elif isinstance(layer, Flatten):
                scale = scale.reshape(-1)
            else:
                break
            j += 1
        if j < upto and LIPSCHITZ.rule(network.layers[j], str(j)).folds and ok:
            target = network.layers[j]
            weight_rule = LIPSCHITZ.rule(target, str(j)).weight
            if weight_rule is not None:
                w = weight_rule(target, scale)
                raw = weight_rule(target, None)
                if np.all(np.isfinite(w)) and _fold_ok(w, raw, np.ones(1)):
                    plan[j] = scale
        i = j
    return plan


def layer_bounds(
    network: Network, upto: int, fold: bool = True, linf_first: bool = False
) -> list[LayerBound]:
    """Proven bounds for layers ``0 .. upto - 1``. With ``fold``, runs of diagonal layers
    directly before a dense or conv layer are folded into it (tighter) and reported with
    l2 = 1. With ``linf_first``, the first linear layer also gets its l_inf -> l2 bound."""
    plan = _fold_plan(network, upto) if fold else {}
    folded = {
        k
        for j in plan
        for k in range(j)
        if all(
            LIPSCHITZ.rule(network.layers[m]).diagonal is not None
            or isinstance(network.layers[m], Flatten)
            for m in range(k, j)
        )
    }
    out: list[LayerBound] = []
    for i in range(upto):
        layer = network.layers[i]
        rule = LIPSCHITZ.rule(layer, str(i))
        if i in folded and rule.diagonal is not None:
            out.append(LayerBound(i, layer.kind, 1.0, linear=False, folded=True))
            continue
        want_linf = linf_first and not any(b.linear for b in out)
        scale = plan.get(i)
        l2, linf = rule.bound(layer, network.shapes[i], network.shapes[i + 1], scale, want_linf)
        weight = rule.weight(layer, scale) if rule.weight is not None else None
        out.append(LayerBound(i, layer.kind, l2, rule.linear, linf, weight))
    return out


@attrs.frozen(eq=False)
class LipschitzBounds:
    """Everything needed to bound how far any linear functional of the logits can move."""

    norm: Norm
    layers: tuple[LayerBound, ...]
    body: float
    head: FloatArray | None  # (m, h) folded weights of the last dense layer, None if none
    head_dual_q: float  # 2.0, or 1.0 for l_inf with no linear layer in the body

    def of(self, c: FloatArray) -> FloatArray:
        """Upper bounds of the Lipschitz constants (w.r.t. the input norm) of c . f for each
        row of ``c`` (k, m)."""
        c = np.atleast_2d(np.asarray(c, dtype=np.float64))
        if self.head is None:
            norms = safe_l2(c)
        elif self.head_dual_q == 1.0:
            norms = np.sum(np.abs(c @ self.head), axis=1) * (
                1 + (self.head.shape[1] + 2) * 2.0**-52
            )
        else:
            norms = safe_l2(c @ self.head)
        k = norms * self.body * (1 + opnorm.ROUNDING_ALLOWANCE)
        return np.where((norms > 0) & (self.body > 0), np.maximum(k, TINY), 0.0)

    def pairwise(self) -> FloatArray:
        """K (m, m) with K_ij an upper bound of the Lipschitz constant of y_i - y_j."""
        if self.head is None:
            raise UnsupportedError("pairwise constants need a final dense layer")
        m = self.head.shape[0]
        eye = np.eye(m)
        diffs = (eye[:, None, :] - eye[None, :, :]).reshape(m * m, m)
        return self.of(diffs).reshape(m, m)


def _product_up(values: list[float]) -> float:
    """An upper bound of the product of nonnegative upper bounds (``TINY`` on underflow)."""
    if any(v == 0.0 for v in values):
        return 0.0
    p = math.prod(values) * (1 + (len(values) + 1) * 2.0**-52)
    return _up(p) if p > 0 else TINY


def network_lipschitz(network: Network, norm: Norm) -> LipschitzBounds:
    """Sound Lipschitz bounds of ``network`` for perturbations measured in ``norm``."""
    n = len(network.layers)
    bounds = layer_bounds(network, n, linf_first=norm is Norm.LINF)
    last = network.layers[-1]
    head = bounds[-1].weight if isinstance(last, Dense) else None
    body_bounds = bounds[: n - 1] if head is not None else bounds
    first_linear = next((b for b in body_bounds if b.linear), None)
    q = 2.0
    if norm is Norm.L2:
        body = _product_up([b.l2 for b in body_bounds])
    elif first_linear is None:
        body, q = 1.0, 1.0  # only l_inf-1-Lipschitz layers: the head sees an l_inf ball
        if head is None:
            body, q = _up(math.sqrt(network.input_size) * (1 + 2.0**-50)), 2.0
    else:
        body = _product_up(
            [first_linear.linf_to_l2 if first_linear.linf_to_l2 is not None else math.inf]
            + [b.l2 for b in body_bounds if b.index > first_linear.index]
        )
    return LipschitzBounds(norm, tuple(bounds), body, head, q)
