"""Input regions: l_p balls, boxes and polytopes over the network's input space.

Every region stores its arrays as read-only float64 numpy arrays with the network's input
shape (``Ball.center``, ``Box.lo``/``Box.hi``) or flattened (``Polytope.A`` acts on the
flattened input). Membership tests take a tolerance so that float64 witnesses produced by a
projection or a solver are not rejected for a last-bit rounding difference.
"""

from __future__ import annotations

import enum
import math

import attrs
import numpy as np
from numpy.typing import ArrayLike, NDArray

from verispec.errors import SpecError

FloatArray = NDArray[np.float64]

MEMBERSHIP_TOL = 1e-9
"""Absolute slack allowed when testing whether a witness lies in a region."""


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

    def contains(self, x: FloatArray, tol: float = MEMBERSHIP_TOL) -> bool:
        """Whether ``x`` (input shape) lies in the box, up to ``tol``."""
        return bool(np.all(x >= self.lo - tol) and np.all(x <= self.hi + tol))

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

    def contains(self, x: FloatArray, tol: float = MEMBERSHIP_TOL) -> bool:
        """Whether ``x`` lies in the ball (and the domain), up to ``tol``."""
        dist = float(self.norm.of((x - self.center).reshape(1, -1))[0])
        inside = dist <= self.eps + tol
        return inside and (self.domain is None or self.domain.contains(x, tol))


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

    def contains(self, x: FloatArray, tol: float = MEMBERSHIP_TOL) -> bool:
        """Whether ``x`` satisfies A x <= b (and the box), up to ``tol``."""
        scale = 1.0 + np.abs(self.A) @ np.abs(x.ravel())
        ok = bool(np.all(self.A @ x.ravel() <= self.b + tol * scale))
        return ok and (self.box is None or self.box.contains(x, tol))


Region = Ball | Box | Polytope
