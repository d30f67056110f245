"""Sound global Lipschitz bounds of a network IR (the rule table of the Lipschitz engine).

See ``verispec.engines.lipschitz`` for how the engine uses them.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import verispec.opnorm as opnorm
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
)
from verispec.regions import FloatArray, Norm

_ONE_LIPSCHITZ = (ReLU, GroupSort, Flatten)


@attrs.frozen
class LayerBound:
    """A layer's proven l2 operator-norm bound, whether it is linear, and (for the first linear
    layer, when asked for) its l_inf -> l2 bound."""

    index: int
    kind: str
    l2: float
    linear: bool
    linf_to_l2: float | None = None


def _folded_weight(
    layer: Dense | Conv2d, norm_layer: Normalize | None, in_shape: tuple[int, ...]
) -> FloatArray:
    """The layer's weight with a preceding normalisation's 1/std folded in."""
    if norm_layer is None:
        return layer.weight
    if isinstance(layer, Dense):
        return layer.weight * norm_layer.scale(in_shape).reshape(1, -1)
    inv = norm_layer.scale(in_shape)[:, 0, 0]
    return layer.weight * inv.reshape(1, -1, 1, 1)


def layer_bounds(
    network: Network, upto: int, fold: bool = True, linf_first: bool = False
) -> list[LayerBound]:
    """Proven bounds for layers ``0 .. upto - 1``. With ``fold``, a Normalize directly before a
    dense or conv layer is folded into it (tighter) and reported with l2 = 1. With
    ``linf_first``, the first linear layer also gets its l_inf -> l2 bound."""
    out: list[LayerBound] = []
    pending: Normalize | None = None
    for i in range(upto):
        want_linf = linf_first and not any(b.linear for b in out)
        layer: Layer = network.layers[i]
        in_shape = network.shapes[i]
        nxt = network.layers[i + 1] if i + 1 < upto else None
        if fold and isinstance(layer, Normalize) and isinstance(nxt, Dense | Conv2d):
            pending = layer
            out.append(LayerBound(i, layer.kind, 1.0, linear=False))
            continue
        if isinstance(layer, Dense):
            w = _folded_weight(layer, pending, network.shapes[i - 1] if pending else in_shape)
            linf = opnorm.dense_linf_to_l2_bound(w) if want_linf else None
            out.append(LayerBound(i, layer.kind, opnorm.dense_l2_bound(w), True, linf))
        elif isinstance(layer, Conv2d):
            w = _folded_weight(layer, pending, in_shape)
            hw = (in_shape[1], in_shape[2])
            l2 = opnorm.conv2d_l2_bound(w, layer.stride, layer.padding, hw)
            linf = (
                opnorm.conv2d_linf_to_l2_bound(w, layer.stride, layer.padding, hw)
                if want_linf
                else None
            )
            out.append(LayerBound(i, layer.kind, l2, True, linf))
        elif isinstance(layer, Normalize):
            scale = np.abs(layer.scale(in_shape))
            out.append(
                LayerBound(
                    i,
                    layer.kind,
                    float(scale.max()) * (1 + opnorm.ROUNDING_ALLOWANCE),
                    True,
                    float(np.linalg.norm(scale)) * (1 + opnorm.ROUNDING_ALLOWANCE),
                )
            )
        elif isinstance(layer, AvgPool2d):
            l2 = opnorm.avgpool2d_l2_bound(layer.kernel, layer.stride)
            in_size, out_size = int(np.prod(in_shape)), int(np.prod(network.shapes[i + 1]))
            linf = min(math.sqrt(out_size), math.sqrt(in_size) * l2)
            out.append(LayerBound(i, layer.kind, l2, True, linf))
        elif isinstance(layer, _ONE_LIPSCHITZ):
            out.append(LayerBound(i, layer.kind, 1.0, linear=False))
        else:  # pragma: no cover - the IR admits no other layer; never default to 1
            raise UnsupportedError(f"layer {i} ({layer.kind}) has no Lipschitz bound")
        pending = None
    return out


@attrs.frozen(eq=False)
class LipschitzBounds:
    """Everything needed to bound how far any linear functional of the logits can move."""

    norm: Norm
    layers: tuple[LayerBound, ...]
    body: float
    head: FloatArray | None  # (m, h) weights of the last dense layer, None if there is none
    head_dual_q: float  # 2.0, or 1.0 for l_inf with no linear layer in the body

    def of(self, c: FloatArray) -> FloatArray:
        """Lipschitz constants (w.r.t. the input norm) of c . f for each row of ``c`` (k, m)."""
        c = np.atleast_2d(c)
        if self.head is None:
            return np.linalg.norm(c, axis=1) * self.body
        return (
            np.linalg.norm(c @ self.head, ord=self.head_dual_q, axis=1)
            * self.body
            * (1 + opnorm.ROUNDING_ALLOWANCE)
        )

    def pairwise(self) -> FloatArray:
        """K (m, m) with K_ij the Lipschitz constant of y_i - y_j."""
        m = self.head.shape[0] if self.head is not None else None
        if m is None:
            raise UnsupportedError("pairwise constants need a final dense layer")
        eye = np.eye(m)
        diffs = (eye[:, None, :] - eye[None, :, :]).reshape(m * m, m)
        return self.of(diffs).reshape(m, m)


def network_lipschitz(network: Network, norm: Norm) -> LipschitzBounds:
    """Sound Lipschitz bounds of ``network`` for perturbations measured in ``norm``."""
    n = len(network.layers)
    last = network.layers[-1]
    head = last.weight if isinstance(last, Dense) else None
    body_end = n - 1 if head is not None else n
    bounds = layer_bounds(network, n, linf_first=norm is Norm.LINF)
    body_bounds = bounds[:body_end]
    first_linear = next((b for b in body_bounds if b.linear), None)
    q = 2.0
    if norm is Norm.L2:
        body = math.prod(b.l2 for b in body_bounds)
    elif first_linear is None:
        body, q = 1.0, 1.0  # only l_inf-1-Lipschitz layers: the head sees an l_inf ball
        if head is None:
            body, q = math.sqrt(network.input_size), 2.0
    else:
        body = (first_linear.linf_to_l2 or math.inf) * math.prod(
            b.l2 for b in body_bounds if b.index > first_linear.index
        )
    return LipschitzBounds(norm, tuple(bounds), body, head, q)
