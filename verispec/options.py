"""Validators for engine and solver options (attrs ``Config`` classes).

Each raises ``ConfigError`` naming the class and the option, so a bad value (NaN, infinity, a
negative count, a float where a count belongs, an unknown device) is refused where it is given:
in the library when the ``Config`` is built, in a spec file with the table and the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

from verispec.errors import ConfigError, DeviceError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _where(instance: Any, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _fail(instance: Any, attribute: attrs.Attribute[Any], message: str) -> ConfigError:
    return ConfigError(
        f"option {attribute.name!r} ({_where(instance, attribute)}) {message}", attribute.name
    )


def integer(minimum: int) -> Validator:
    """An int (not a bool) >= ``minimum``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(instance, attribute, f"must be an integer, got {value!r}")
        if value < minimum:
            raise _fail(instance, attribute, f"must be >= {minimum}, got {value}")

    return check


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = True,
    high_open: bool = True,
) -> Validator:
    """A finite real number in the interval from ``low`` to ``high`` (open ends by default)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(instance, attribute, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise _fail(instance, attribute, f"must be finite, got {value}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            raise _fail(
                instance,
                attribute,
                f"must be {' and '.join(p for p in (lo, hi) if p)}, got {value}",
            )

    return check


def seed(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A random seed: an integer >= 0."""
    integer(0)(instance, attribute, value)


DEVICE_CHOICES = "cpu, cuda, cuda:N (N a GPU index) or mps"
"""The torch devices verispec runs on, as a message names them."""


def parse_device(device: str) -> torch.device:
    """A torch device from a user string, without checking it is available: ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``; anything else raises ``ConfigError`` naming the valid choices."""
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device {device!r} is not a device name: use {DEVICE_CHOICES}")
    try:
        dev = torch.device(device.strip())
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}: use {DEVICE_CHOICES}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported: use {DEVICE_CHOICES}")
    return dev


def resolve_device(device: str) -> torch.device:
    """A torch device from a user string, available on this machine: an unknown name, or a GPU
    that is absent, raises ``DeviceError`` naming the device and the valid choices."""
    try:
        dev = parse_device(device)
    except ConfigError as err:
        raise DeviceError(str(err)) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} requested but CUDA is not available here: use cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"device {device!r}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} requested but MPS is not available here: use cpu")
    return dev


def device(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A torch device string verispec runs on (``cpu``, ``cuda``, ``cuda:N``, ``mps``); whether
    it is available is checked when the engine is built (``resolve_device``)."""
    if not isinstance(value, str):
        raise _fail(instance, attribute, f"must be a device name such as 'cpu', got {value!r}")
    try:
        parse_device(value)
    except ConfigError as err:
        raise _fail(instance, attribute, f"is not valid: {err}") from None


def one_of(*choices: str) -> Validator:
    """One of the given strings."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise _fail(instance, attribute, f"must be one of {', '.join(choices)}; got {value!r}")

    return check


def flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A boolean."""
    if not isinstance(value, bool):
        raise _fail(instance, attribute, f"must be true or false, got {value!r}")
