"""The engine protocol, the engine registry and shared batching helpers.

An engine checks a specification on a network, batched over points::

    engine.supports(network, spec)                  # raises UnsupportedError with the reason
    engine.check(network, spec, xs, labels, domain) # -> list[CheckResult], one per point

For a global property (``SafeOrdering``) ``xs`` is empty and ``check`` returns one result.
Engines are registered by name with ``@register_engine`` and built from their typed config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import CheckResult
from verispec.specs import Spec


class Engine(Protocol):
    """What every engine provides."""

    name: ClassVar[str]

    def supports(self, network: Network, spec: Spec) -> None:
        """Raise ``UnsupportedError`` (naming the spec, region or layer) if ``check`` cannot run."""

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        """Check ``spec`` at every point of ``xs`` (n, *input_shape); labels (n,) are recorded."""
        ...


ENGINES: dict[str, type[Any]] = {}
"""Registered engine classes by name. Each has a ``Config`` attrs class and ``__init__(config)``."""

E = TypeVar("E")


def register_engine(name: str) -> Callable[[type[E]], type[E]]:
    """Class decorator adding an engine to ``ENGINES`` under ``name``."""

    def add(cls: type[E]) -> type[E]:
        if name in ENGINES:
            raise ValueError(f"engine {name!r} registered twice")
        ENGINES[name] = cls
        return cls

    return add


def engine_class(name: str) -> type[Any]:
    """The engine class registered as ``name``; unknown names raise UnsupportedError."""
    _load_builtin_engines()
    if name not in ENGINES:
        raise UnsupportedError(f"unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def _load_builtin_engines() -> None:
    """Import the modules that register the built-in engines (explicit, no import-time magic)."""
    from verispec.engines import exact, lipschitz, projections, smoothing  # noqa: F401


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def resolve_device(device: str) -> torch.device:
    """A torch device from a user string; a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"device {device!r} requested but CUDA is not available here")
    return dev
