"""Typed schedules for certified training: epsilon warm-up and learning-rate warm-up / decay.

Every schedule maps (epoch, total epochs) -> a value; epochs count from 0.
"""

from __future__ import annotations

import enum
import math

import attrs


class Ramp(enum.Enum):
    """The shape of a warm-up from ``start`` to 1."""

    LINEAR = "linear"
    LOG = "log"
    COSINE = "cosine"
    CONSTANT = "constant"


def _fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must lie in [0, 1], got {value}"
        )


@attrs.frozen
class EpsSchedule:
    """eps(t) = eps * f(t): f rises from ``start`` to 1 by the fraction ``warmup`` of training
    (linear, log-spaced or cosine), then stays at 1."""

    eps: float = attrs.field(converter=float, validator=attrs.validators.ge(0.0))
    ramp: Ramp = Ramp.LINEAR
    start: float = attrs.field(default=0.0, validator=_fraction)
    warmup: float = attrs.field(default=0.3, validator=_fraction)

    def at(self, epoch: int, epochs: int) -> float:
        """The training eps for ``epoch`` (0-based) of ``epochs``."""
        if self.ramp is Ramp.CONSTANT or self.warmup == 0.0:
            return self.eps
        t = min(1.0, (epoch + 1) / max(1.0, self.warmup * epochs))
        if self.ramp is Ramp.LINEAR:
            f = self.start + (1 - self.start) * t
        elif self.ramp is Ramp.COSINE:
            f = self.start + (1 - self.start) * (1 - math.cos(math.pi * t)) / 2
        else:
            lo = max(self.start, 1e-3)
            f = math.exp(math.log(lo) + t * (0 - math.log(lo)))
        return self.eps * f


@attrs.frozen
class LrSchedule:
    """Linear warm-up over ``warmup`` of training, then cosine decay to ``final`` times ``lr``."""

    lr: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))
    warmup: float = attrs.field(default=0.0, validator=_fraction)
    final: float = attrs.field(default=0.0, validator=_fraction)

    def at(self, epoch: int, epochs: int) -> float:
        """The learning rate for ``epoch`` (0-based) of ``epochs``."""
        warm = self.warmup * epochs
        if epoch < warm:
            return self.lr * (epoch + 1) / warm
        span = max(1.0, epochs - warm)
        t = min(1.0, (epoch - warm) / span)
        return self.lr * (self.final + (1 - self.final) * (1 + math.cos(math.pi * t)) / 2)


@attrs.frozen
class LambdaSchedule:
    """The TRADES weight: rises linearly from ``start`` to ``end`` over training."""

    start: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    end: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))

    def at(self, epoch: int, epochs: int) -> float:
        t = epoch / max(1, epochs - 1)
        return self.start + (self.end - self.start) * t
