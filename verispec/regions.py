"""Input regions: l_p balls, boxes and polytopes over the network's input space.

Every region stores its arrays as read-only float64 numpy arrays with the network's input
shape (``Ball.center``, ``Box.lo``/``Box.hi``) or flattened (``Polytope.A`` acts on the
flattened input). Membership tests are exact (no tolerance: the closed region of the real
numbers, decided with error-free transformations and, at a near-tie, rational arithmetic);
``inside(x)`` moves a witness that a projection or a solver left a few ulps outside back into
the region, exactly checked, or returns None.
"""

from __future__ import annotations

import enum
import math
from fractions import Fraction

import attrs
import numpy as np
from numpy.typing import ArrayLike, NDArray

from verispec.errors import SpecError

FloatArray = NDArray[np.float64]

_NUDGES = 64
"""How many times ``inside`` nudges a point towards the centre before giving up."""


class Norm(enum.Enum):
    """The norm of a perturbation ball."""

    L2 = "l2"
    LINF = "linf"

    @classmethod
    def parse(cls, text: str) -> Norm:
        """``"l2"`` / ``"linf"`` (also ``"inf"``) -> Norm; anything else raises SpecError."""
        key = text.strip().lower()
        aliases = {"l2": cls.L2, "2": cls.L2, "linf": cls.LINF, "inf": cls.LINF, "l_inf": cls.LINF}
        if key not in aliases:
            raise SpecError(f"unknown norm {text!r}: use 'l2' or 'linf'")
        return aliases[key]

    def of(self, v: FloatArray) -> FloatArray:
        """Norm of each row of ``v`` (n, d) -> (n,)."""
        if self is Norm.L2:
            return np.asarray(np.linalg.norm(v, axis=-1))
        return np.asarray(np.abs(v).max(axis=-1))


def frozen_array(value: ArrayLike) -> FloatArray:
    """A read-only float64 copy of ``value``."""
    arr = np.array(value, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


def _finite(instance: object, attribute: attrs.Attribute, value: FloatArray) -> None:
    if not np.all(np.isfinite(value)):
        raise SpecError(f"{type(instance).__name__}.{attribute.name} contains NaN or infinity")


@attrs.frozen(eq=False)
class Box:
    """The axis-aligned box {x : lo <= x <= hi}; ``lo``, ``hi`` have the input shape."""

    lo: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    hi: FloatArray = attrs.field(converter=frozen_array, validator=_finite)

    def __attrs_post_init__(self) -> None:
        if self.lo.shape != self.hi.shape:
            raise SpecError(f"Box: lo shape {self.lo.shape} != hi shape {self.hi.shape}")
        if np.any(self.lo > self.hi):
            raise SpecError("Box: lo > hi in some coordinate (empty box)")

    @classmethod
    def uniform(cls, lo: float, hi: float, shape: tuple[int, ...]) -> Box:
        """The box [lo, hi]^shape."""
        return cls(np.full(shape, lo), np.full(shape, hi))

    @property
    def center(self) -> FloatArray:
        """(lo + hi) / 2, input shape."""
        return (self.lo + self.hi) / 2.0

    @property
    def l2_radius(self) -> float:
        """Half the l2 diagonal: the l2 distance from the centre to the farthest corner."""
        return float(np.linalg.norm((self.hi - self.lo).ravel()) / 2.0)

    def contains(self, x: FloatArray) -> bool:
        """Whether ``x`` (input shape) lies in the closed box (exact comparisons)."""
        x = np.asarray(x, dtype=np.float64).reshape(self.lo.shape)
        return bool(np.all(x >= self.lo) and np.all(x <= self.hi))

    def inside(self, x: FloatArray) -> FloatArray:
        """``x`` clipped into the box (exact)."""
        return self.clip(np.asarray(x, dtype=np.float64).reshape(self.lo.shape))

    def clip(self, x: FloatArray) -> FloatArray:
        """Project ``x`` (..., input shape) onto the box coordinate-wise."""
        return np.clip(x, self.lo, self.hi)


@attrs.frozen(eq=False)
class Ball:
    """{x : ||x - center|| <= eps}, intersected with ``domain`` when one is given."""

    center: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    eps: float = attrs.field(converter=float)
    norm: Norm = attrs.field(validator=attrs.validators.instance_of(Norm))
    domain: Box | None = attrs.field(default=None)

    @eps.validator
    def _check_eps(self, attribute: attrs.Attribute, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise SpecError(f"Ball.eps must be finite and >= 0, got {value}")

    def __attrs_post_init__(self) -> None:
        if self.domain is not None:
            if self.domain.lo.shape != self.center.shape:
                raise SpecError(
                    f"Ball: domain shape {self.domain.lo.shape} != centre shape {self.center.shape}"
                )
            if not self.domain.contains(self.center):
                raise SpecError("Ball: the centre lies outside the data domain")

    def contains(self, x: FloatArray) -> bool:
        """Whether ``x`` lies in the closed ball (and the domain), decided exactly."""
        x = np.asarray(x, dtype=np.float64).reshape(self.center.shape)
        if self.domain is not None and not self.domain.contains(x):
            return False
        if self.norm is Norm.LINF:
            return bool(np.all(_within(x, self.center, self.eps)))
        return _l2_within(x.ravel(), self.center.ravel(), self.eps)

    def inside(self, x: FloatArray) -> FloatArray | None:
        """A point of the closed ball (and domain) at or next to ``x``: ``x`` itself when it lies
        in the region, else ``x`` clipped (l_inf) or pulled towards the centre (l2) until the
        exact test passes; None if that fails."""
        x = np.array(x, dtype=np.float64).reshape(self.center.shape)
        c = self.center
        if self.contains(x):
            return x
        if self.domain is not None:
            x = self.domain.clip(x)
        if self.norm is Norm.LINF:
            x = np.clip(x, c - self.eps, c + self.eps)
            for _ in range(_NUDGES):
                bad = ~_within(x, c, self.eps)
                if not bad.any():
                    break
                x = np.where(bad, np.nextafter(x, c), x)
        else:
            dist = float(np.linalg.norm((x - c).ravel()))
            factor = self.eps / dist if dist > 0 else 0.0
            for k in range(_NUDGES):
                if self.contains(x):
                    break
                x = c + (x - c) * (factor * (1.0 - 2.0 ** (k - 52)))
                if self.domain is not None:
                    x = self.domain.clip(x)
        return x if self.contains(x) else None


@attrs.frozen(eq=False)
class Polytope:
    """{x : A x.ravel() <= b}, intersected with ``box`` when one is given.

    ``A`` is (k, d) over the flattened input, ``b`` is (k,).
    """

    A: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    b: FloatArray = attrs.field(converter=frozen_array, validator=_finite)
    box: Box | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.A.ndim != 2 or self.b.shape != (self.A.shape[0],):
            raise SpecError(
                f"Polytope: A must be (k, d) and b (k,), got {self.A.shape}, {self.b.shape}"
            )
        if self.box is not None and self.box.lo.size != self.A.shape[1]:
            raise SpecError(
                f"Polytope: box has {self.box.lo.size} coordinates, A has {self.A.shape[1]} columns"
            )

    def contains(self, x: FloatArray) -> bool:
        """Whether ``x`` satisfies A x <= b (and the box), decided exactly."""
        if self.box is not None and not self.box.contains(x):
            return False
        flat = np.asarray(x, dtype=np.float64).ravel()
        value = self.A @ flat
        slack = _dot_error(self.A, flat)
        if np.all(value + slack <= self.b):
            return True
        if np.any(value - slack > self.b):
            return False
        close = np.flatnonzero(value + slack > self.b)
        xs = [Fraction(v) for v in flat.tolist()]
        return all(
            sum((Fraction(a) * v for a, v in zip(self.A[i].tolist(), xs, strict=True)), Fraction(0))
            <= Fraction(float(self.b[i]))
            for i in close
        )

    def inside(self, x: FloatArray) -> FloatArray | None:
        """``x`` (clipped into the box) when it satisfies the constraints exactly, else None."""
        x = np.asarray(x, dtype=np.float64)
        if self.box is not None:
            x = self.box.clip(x.reshape(self.box.lo.shape))
        return x if self.contains(x) else None


Region = Ball | Box | Polytope


def _within(x: FloatArray, c: FloatArray, eps: float) -> NDArray[np.bool_]:
    """Elementwise, exactly: |x - c| <= eps. ``d + err = x - c`` exactly (TwoSum)."""
    d = x - c
    bb = d - x
    err = (x - (d - bb)) + (-c - bb)
    upper = (d < eps) | ((d == eps) & (err <= 0))
    lower = (d > -eps) | ((d == -eps) & (err >= 0))
    return np.asarray(upper & lower & np.isfinite(d))


def _dot_error(A: FloatArray, x: FloatArray) -> FloatArray:
    """A bound on the rounding error of ``A @ x`` (k,), any summation order, with underflow."""
    n = A.shape[1]
    u = 2.0**-53
    g = (n + 2) * u / (1 - (n + 2) * u)
    return np.asarray(g * (np.abs(A) @ np.abs(x)) * 2 + (n + 2) * 2.0**-1073)


def _l2_within(x: FloatArray, c: FloatArray, eps: float) -> bool:
    """Exactly: ||x - c||_2 <= eps (a float64 test with an error bound, rationals if close)."""
    d = x - c
    if not np.all(np.isfinite(d)):
        return False
    amax = float(np.max(np.abs(d))) if d.size else 0.0
    if amax == 0.0:
        return True
    if eps == 0.0:
        return False
    e = math.frexp(amax)[1]
    if math.frexp(eps)[1] - e > 500:  # every |d_i| < 2^e: ||d|| < sqrt(n) 2^e, far below eps
        return True  # (tested before scaling: eps 2^-e overflows for a subnormal amax)
    scaled_sq = float(np.sum(np.ldexp(d, -e) ** 2))
    scaled_eps = math.ldexp(eps, -e)
    scaled_eps_sq = scaled_eps**2
    rel = 8 * (d.size + 4) * 2.0**-53 + 1e-12
    if scaled_sq * (1 + rel) < scaled_eps_sq * (1 - rel) and scaled_eps_sq > 2.0**-900:
        return True
    if scaled_sq * (1 - rel) > scaled_eps_sq * (1 + rel) and scaled_sq > 2.0**-900:
        return False
    total = sum(
        ((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x.tolist(), c.tolist(), strict=True)),
        Fraction(0),
    )
    return total <= Fraction(eps) ** 2
